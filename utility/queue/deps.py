"""Job dependencies: ``id=<id>`` names a job, ``after=<id>[+<id>...]`` makes a job wait.

A dependant starts only when every job it is after is ``completed``. If one of them ends
``failed``, the dependant is marked ``failed`` (reason in queue_state.jsonl and in
``QueueManager.py status``) without being started. Statuses are read from the file each
time, so a dependency set back to ``open`` makes its still-open dependants wait again, but
it reopens nothing by itself: a dependant already ``completed`` or ``failed`` stays so.

An unknown id (in an open line), an id given twice and a cycle are mistakes in the file: before the queue
starts they stop it (exit 2, naming the line); in lines added while it runs they are
reported and those lines are skipped.

A backend that can hand the ordering to its scheduler (SLURM: ``--dependency=afterok``)
returns a reference for a job it runs (``Backend.dependency_ref``); the dependant is then
submitted as soon as its dependencies are submitted, on their last allowed attempt. When
such a dependency fails, the dependants waiting in the scheduler are cancelled and marked
failed by the queue.
"""
from __future__ import annotations

import signal
import time
from typing import Callable, Optional, Sequence

from utility.queue.book import Active, JobBook
from utility.queue.errors import QueueError
from utility.queue.jobsfile import Line, read_jobs

Key = tuple[str, int]


def describe(ln: Line) -> str:
    return f"L{ln.lineno} (id={ln.options.id})"


class Graph:
    """The ids and dependencies of one read of the jobs file."""

    def __init__(self, lines: Sequence[Line], path: str = "Jobs.csv"):
        self.path = path
        self.by_id: dict[str, Line] = {}
        self.broken: dict[Key, str] = {}        # key -> message naming the line
        self.by_key: dict[Key, Line] = {}
        jobs = [ln for ln in lines if ln.kind == "job"]
        self.used = any(ln.options.id or ln.options.after for ln in jobs)
        if not self.used:
            return
        for ln in jobs:
            self.by_key[ln.key] = ln
            i = ln.options.id
            if i is None:
                continue
            if i in self.by_id:
                self._break(ln, f"id={i} is already the id of line {self.by_id[i].lineno}")
            else:
                self.by_id[i] = ln
        for ln in jobs:
            if ln.status != "open":
                continue                        # done or started: a deleted dependency is fine
            for a in ln.options.after:
                if a not in self.by_id:
                    self._break(ln, f"after={a}: no job has id={a}")
                    break
        self._find_cycles(jobs)

    def _break(self, ln: Line, msg: str) -> None:
        if ln.key not in self.broken:
            self.broken[ln.key] = f"{self.path}:{ln.lineno}: {msg}\n    {ln.raw.rstrip()}"

    def _find_cycles(self, jobs: list[Line]) -> None:
        color: dict[Key, int] = {}              # 1: on the path, 2: done
        for start in jobs:
            if color.get(start.key) or not start.options.after:
                continue
            path: list[Line] = []
            stack: list[tuple[Line, int]] = [(start, 0)]
            while stack:
                ln, i = stack.pop()
                if i == 0:
                    color[ln.key] = 1
                    path.append(ln)
                deps = self.deps(ln)
                if i < len(deps):
                    stack.append((ln, i + 1))
                    d = deps[i]
                    c = color.get(d.key)
                    if c == 1:
                        loop = path[[p.key for p in path].index(d.key):]
                        text = " -> ".join(f"L{p.lineno}" for p in loop + [d])
                        for p in loop:
                            self._break(p, f"dependency cycle {text}")
                    elif c is None:
                        stack.append((d, 0))
                else:
                    color[ln.key] = 2
                    path.pop()

    def deps(self, ln: Line) -> list[Line]:
        return [self.by_id[a] for a in ln.options.after if a in self.by_id]

    def errors(self) -> list[str]:
        return [m for _, m in sorted(self.broken.items(), key=lambda kv: self.by_key[kv[0]].lineno)]

    def doomed(self) -> dict[Key, str]:
        """Open dependants that can never run because a job they wait for (directly or
        through other open dependants) is failed: key -> reason."""
        out: dict[Key, str] = {}
        changed = True
        while changed:
            changed = False
            for ln in self.by_key.values():
                if ln.status != "open" or not ln.options.after or ln.key in out \
                        or ln.key in self.broken:
                    continue
                for d in self.deps(ln):
                    if d.status == "failed" or d.key in out:
                        out[ln.key] = f"dependency {describe(d)} failed"
                        changed = True
                        break
        return out

    def progressing(self, ln: Line, stuck: Callable[[Line], bool],
                    memo: dict[Key, bool]) -> bool:
        """Will this job end some day without the user doing anything (running, or open and
        able to start once its own dependencies are done)?"""
        if ln.key in memo:
            return memo[ln.key]
        memo[ln.key] = False                    # guards against cycles in broken files
        if ln.status in ("running", "completed"):
            ok = True
        elif ln.status != "open" or stuck(ln) or ln.key in self.broken:
            ok = False
        else:
            ok = all(self.progressing(d, stuck, memo) for d in self.deps(ln))
        memo[ln.key] = ok
        return ok


def read_checked(path: str, settle: float = 0.0) -> list[Line]:
    """Strict read plus the dependency checks (QueueError naming the first bad line)."""
    lines = read_jobs(path, settle)
    errors = Graph(lines, path).errors()
    if errors:
        raise QueueError(errors[0])
    return lines


def waits_text(graph: Graph, ln: Line) -> str:
    """'waits for L3 (id=pre, running)' for the status table and the dry run."""
    rest = [f"L{d.lineno} (id={d.options.id}, {d.status})" if d is not None else f"id={a} (no such job)"
            for a, d in ((a, graph.by_id.get(a)) for a in ln.options.after)
            if d is None or d.status != "completed"]
    return "waits for " + ", ".join(rest) if rest else "dependencies completed"


class Dependants:
    """For the queue loop: which open dependants may start, which must fail, and what happens
    to those handed to the backend's scheduler when a dependency fails or is interrupted."""

    def __init__(self, book: JobBook, backend, path: str):
        self.book, self.backend, self.path = book, backend, path
        self.marked: set[Key] = set()          # dependants this queue marked failed

    def graph(self, lines: Sequence[Line]) -> Optional[Graph]:
        """The dependency graph of this read (None: no line uses id=/after=); fails the open
        dependants of failed jobs and stops adopted ones whose dependency failed meanwhile."""
        g = Graph(lines, self.path)
        if not g.used:
            return None
        for msg in g.errors():
            self.book.warn_once(f"skipping a line: {msg}")
        self.marked = {k for k in self.marked if k in g.by_key and g.by_key[k].status == "open"}
        for key, reason in g.doomed().items():
            if key not in self.marked:
                self._fail(g.by_key[key], reason)
        for act in list(self.book.active.values()):   # adopted from SLURM, its dependency failed
            bad = [g.by_id[a] for a in act.line.options.after if a in g.by_id and g.by_id[a].status == "failed"]
            if act.adopted and bad and act.running and not act.kill_reason and not act.stopping:
                self._stop(act, bad[0])
        return g

    def _fail(self, ln: Line, reason: str) -> None:
        self.marked.add(ln.key)
        self.book.record({"event": "end", "command": ln.command, "occurrence": ln.occurrence,
                          "status": "failed", "reason": reason, "exit_code": None,
                          "log": None, "start_time": None, "end_time": time.time()})
        self.book.queue_status(ln.key, "failed", expect=("open",))
        self.book.failed_count += 1
        self.book.say(f"L{ln.lineno} failed: {reason}; not started")

    def gate(self, g: Graph, ln: Line, by_key: dict, stuck: Callable[[Line], bool],
             memo: dict[Key, bool]) -> tuple[bool, bool, list[int]]:
        """(may start now, keeps the queue waiting, tokens of dependencies it is handed to
        the backend after) for an open line with after=."""
        if ln.key in g.broken or ln.key in self.marked:
            return False, False, []
        tokens: list[int] = []
        ready, pending = True, True
        for d in g.deps(ln):
            if d.status == "completed":
                continue
            act = by_key.get(d.key)
            if d.status == "running" and act is not None and act.running and \
                    act.counted > d.options.retries and \
                    self.backend.dependency_ref(act.token) is not None:
                tokens.append(act.token)        # the backend's scheduler orders them
                continue
            ready = False
            pending = pending and g.progressing(d, stuck, memo)
        if not ready and not pending:
            self.book.warn_once(f"line {ln.lineno} {waits_text(g, ln)}, which cannot run; not started")
        return ready, pending, tokens if ready else []

    def refs(self, tokens: Sequence[int]) -> list[str]:
        return [r for r in (self.backend.dependency_ref(t) for t in tokens) if r is not None]

    def cancel_after(self, failed: Active) -> None:
        """A dependency failed for good: its dependants handed to the backend's scheduler
        (also those a restarted queue adopted from SLURM) are cancelled and end failed,
        without retries."""
        for act in list(self.book.active.values()):
            mine = failed.token in act.after or (act.adopted and failed.line.options.id is not None
                                                 and failed.line.options.id in act.line.options.after)
            if mine and act.running and not act.stopping:
                self._stop(act, failed.line)

    def reopen_after(self, interrupted: Active) -> None:
        """A dependency was interrupted and will be started again (under a new backend
        reference): its dependants handed to the backend's scheduler after the old one are
        cancelled and marked open, to be handed after the new one."""
        for act in list(self.book.active.values()):
            if interrupted.token in act.after and act.running and not act.stopping:
                act.reopen = True
                self.backend.signal(act.token, signal.SIGTERM)

    def _stop(self, act: Active, failed: Line) -> None:
        act.kill_reason = f"dependency {describe(failed)} failed"
        act.no_retry = True
        self.book.say(f"L{act.line.lineno}: {act.kill_reason}; cancelling it")
        self.backend.signal(act.token, signal.SIGTERM)
