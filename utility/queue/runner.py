"""The queue loop: read Jobs.csv, start what may start, watch, write every change at once.

The loop blocks on an event queue (child exits, signals) with a timeout that is the nearest
watchdog deadline / retry time / file re-read (0.5 s, to notice edits).  Every status change
is a compare-and-swap on the one line of the job (jobsfile.update_many), so edits made while
the queue runs are never overwritten.
"""
from __future__ import annotations

import dataclasses
import os
import queue as _queue
import signal
import time

from pathlib import Path
from typing import Optional

from utility.queue import jobsfile, scheduler
from utility.queue.base import Echo, Launch, LaunchError, LogDirError, slug
from utility.queue.book import Active, JobBook, Key
from utility.queue.deps import Dependants, read_checked
from utility.queue.errors import QueueError
from utility.queue.jobsfile import Line
from utility.queue.recovery import Recovery
from utility.queue.state import HOST, StateLog, proc_start_ticks
from utility.queue.watchdogs import Watchdogs
from utility.queue.writes import SETTLE, StatusWriter

FILE_POLL = 0.02         # seconds between stat() checks of the jobs file (new lines, edits)
EXIT_QUIET = 0.3         # no exit while someone else changed the file this recently (s)
MISSING_GRACE = 10.0     # with nothing to supervise, wait this long for a missing file (s)
INTERRUPTED_EXITS = (130, 143)   # 128 + SIGINT / SIGTERM: the job stopped itself after a signal
MAX_INTERRUPTIONS = 10   # interruptions in a row that are resumed without counting as attempts


class Runner:
    """The queue loop, composed of: the job book (what runs, messages, records, status
    changes), the status writer, the dependency rules, the recovery of stale 'running' lines
    and the watchdogs; the backend starts and tracks the jobs."""

    def __init__(self, jobs_path: str, log_dir: str, backend, gpus: list[str], echo: Echo,
                 watch: bool = False, max_parallel: Optional[int] = None,
                 kill_grace: float = 30.0, workdir: Optional[str] = None):
        self.path = os.path.abspath(jobs_path)
        self.cwd = os.path.abspath(workdir) if workdir else str(Path(self.path).parent)
        self.log_dir = os.path.abspath(log_dir)
        self.backend = backend
        self.events = backend.events
        self.total = list(gpus)
        self.watch = watch
        self.max_parallel = max_parallel
        self.state = StateLog(self.log_dir, self.path)
        self.writer = StatusWriter(self.path, lambda msg: echo.message(f"[queue] {msg}"))
        self.book = JobBook(self.state, self.writer, echo)
        self.deps = Dependants(self.book, backend, self.path)
        self.recovery = Recovery(self.book, backend, kill_grace)
        self.watchdogs = Watchdogs(backend, kill_grace, self.book.say)
        self.stop_signal: Optional[int] = None
        self.force_kill = False
        self.unrunnable: set[Key] = set()    # jobs reported as needing too many GPUs
        self.my_start = proc_start_ticks(os.getpid())
        self._gone: dict[Key, float] = {}    # retry-waiting jobs absent from the file since
        self._cache_sig = None
        self._cache_lines: list[Line] = []
        self._dirty = True               # dispatch() needs to look at the file again
        self._pending = True

    # -- the jobs file ----------------------------------------------------------------------
    def read_lines(self) -> Optional[list[Line]]:
        """Tolerant read while running: a line the user is half-way through editing is
        reported and skipped, not fatal. None while the file is missing or unreadable."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            self.writer.note_missing("" if isinstance(e, FileNotFoundError) else f" ({e})")
            return None
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == self._cache_sig:
            self.writer.note_back()
            return self._cache_lines          # unchanged since the last parse
        self._dirty = True
        try:
            text, st = jobsfile.read_text(self.path)
        except QueueError as e:
            self.writer.note_missing(f" or unreadable ({e})")
            return None
        self.writer.note_back()
        errors: list[str] = []
        lines = self.writer.file.cache.parse(text, errors)
        for e in errors:
            self.book.warn_once(f"skipping a line: {e}")
        self._follow_moves(lines)
        self._cache_sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        self._cache_lines = lines
        return lines

    def _follow_moves(self, lines: list[Line]) -> None:
        """Lines whose occurrence changed (an earlier identical line was deleted): the state
        log follows them, and so do the records this queue writes for its jobs."""
        for command, moves in self.writer.file.cache.take_moves().items():
            self.book.record({"event": "renumber", "command": command,
                               "moves": [list(m) for m in moves]})
        by_key = {ln.key: ln for ln in lines if ln.kind == "job"}
        for act in self.book.active.values():
            cur = by_key.get(act.key)
            if cur is not None and (cur.occurrence, cur.lineno) != (act.line.occurrence,
                                                                    act.line.lineno):
                act.line = dataclasses.replace(act.line, occurrence=cur.occurrence,
                                               lineno=cur.lineno)

    def flush(self, claims=()) -> list[bool]:
        return self.writer.flush(claims)

    # -- signals ----------------------------------------------------------------------------
    def install_signals(self) -> None:
        def handler(signum, frame):
            self.events.put(("signal", signum))     # SimpleQueue.put is signal-safe
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, handler)

    # -- starting ---------------------------------------------------------------------------
    def _busy(self) -> tuple[list[str], bool, int]:
        busy, excl, n = set(), False, 0
        for a in self.book.active.values():
            if a.running:
                busy.update(a.gpus)
                excl = excl or a.exclusive
                n += 1
        return [g for g in self.total if g not in busy], excl, n

    def dispatch(self, lines: list[Line]) -> bool:
        """Start what may start. Returns True when open work remains in the file."""
        now = time.monotonic()
        by_key = {a.key: a for a in self.book.active.values()}
        cands = []
        pending_work = False
        seen = {ln.key for ln in lines if ln.kind == "job"}
        graph = self.deps.graph(lines)       # None: no line uses id=/after=
        memo: dict = {}
        after: dict = {}

        def stuck(d: Line) -> bool:
            return not self.backend.can_ever_run(*self.backend.need_of(d.options, len(self.total)),
                                                 len(self.total))
        for act in list(self.book.active.values()):
            if not act.running and act.key not in seen:      # waiting for a retry, edited out
                since = self._gone.setdefault(act.key, now)  # (or a save is half-way)
                if now - since < SETTLE:
                    pending_work = True
                    continue
                self.book.say(f"L{act.line.lineno} was removed from the file; no more retries")
                del self.book.active[act.token]
            self._gone.pop(act.key, None)
        for ln in lines:
            if ln.kind != "job":
                continue
            act = by_key.get(ln.key)
            if act is not None:
                if act.running:
                    continue
                if ln.status != "running":          # user edited a job waiting for a retry
                    self.book.active.pop(act.token, None)
                    if ln.status != "open":
                        continue
                    act = None
                else:
                    pending_work = True
                    if act.retry_at is not None and act.retry_at > now:
                        continue
            elif ln.status != "open":
                continue
            need, excl = self.backend.need_of(ln.options, len(self.total))
            c = scheduler.Candidate((ln, act), need, excl)
            if not self.backend.can_ever_run(need, excl, len(self.total)):
                self.unrunnable.add(ln.key)
                self.book.warn_once(f"line {ln.lineno} needs {need} GPUs but only {len(self.total)} "
                               f"are available; not started")
                continue
            if graph is not None and act is None and ln.options.after:
                ready, waiting, after[ln.key] = self.deps.gate(graph, ln, by_key, stuck, memo)
                if not ready:
                    pending_work = pending_work or waiting
                    continue
            pending_work = True
            cands.append(c)
        if self.stop_signal is not None or self.book.fatal is not None or not cands:
            self.flush()
            return pending_work
        self._start(cands, after)
        return pending_work

    def _start(self, cands: list[scheduler.Candidate], after: dict[Key, list[int]]) -> None:
        """Claim the chosen candidates (open -> running, one write) and launch them."""
        free, excl, n = self._busy()
        chosen = self.backend.select(cands, free, self.total, n, excl, self.max_parallel)
        fresh = [c.ref[0].key for c, _ in chosen if c.ref[1] is None]
        claimed = dict(zip(fresh, self.flush(fresh)))     # one write for all of them
        for c, gpus in chosen:
            ln, act = c.ref
            if self.book.fatal is not None:  # the log directory failed while starting the others
                if act is None and claimed.get(ln.key):
                    self.book.queue_status(ln.key, "open")
                continue
            if act is None:
                if not claimed.get(ln.key):
                    continue            # edited or claimed by another queue meanwhile
                act = self.book.add(ln.key, ln, 1, gpus, after=after.get(ln.key, []))
                self.book.ended_here.pop(ln.key, None)
            else:
                act.attempt += 1
                act.line = ln
                act.gpus = gpus
            act.exclusive = c.exclusive
            self._launch(act, c.need)

    def _launch(self, act: Active, need: int) -> None:
        ln = act.line
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}_L{ln.lineno}_{slug(ln.command)}"
        if act.attempt > 1:
            name += f"_try{act.attempt}"
        act.log_path = str(Path(self.log_dir) / f"{name}.log")
        launch = Launch(act.token, ln.command, ln.options, act.gpus,
                        self.backend.gpu_request(need, act.gpus),
                        self.cwd, act.log_path, f"L{ln.lineno}", act.attempt,
                        {"after": self.deps.refs(act.after)} if act.after else {})
        act.started, act.started_wall = time.monotonic(), time.time()
        act.retry_at, act.kill_reason, act.kill_at = None, None, None
        base = {"command": ln.command, "occurrence": ln.occurrence, "line": ln.lineno,
                "attempt": act.attempt, "gpus": act.gpus, "log": act.log_path,
                "start_time": act.started_wall, "queue_pid": os.getpid(),
                "queue_proc_start": self.my_start, "host": HOST}
        where = self.backend.where(need, act.gpus)
        self.book.say(f"start L{ln.lineno} (attempt {act.attempt}, {where}): {ln.command}  "
                 f"-> {act.log_path}")
        try:
            handle = self.backend.start(launch)
        except LogDirError as e:                # not the job's fault: it stays open
            self.book.queue_status(act.key, "open")
            del self.book.active[act.token]
            self.book.log_dir_failed(str(e))
            return
        except LaunchError as e:
            self.book.say(f"line {ln.lineno}: {e}")
            self.book.record(dict(base, event="start", backend=self.backend.name))
            act.running = True
            self._finished(act, 127, "could not start")
            return
        hrec = handle.record()
        act.running = True
        self.book.record(dict(base, event="start", **hrec))
        note = self.backend.started_note(hrec)
        if note:
            self.book.say(f"L{ln.lineno} {note}")

    # -- finishing --------------------------------------------------------------------------
    def on_exit(self, token: int, rc: int, reason: Optional[str]) -> None:
        act = self.book.active.get(token)
        if act is None:
            return
        self.backend.forget(token)
        self._finished(act, rc, reason)

    def _finished(self, act: Active, rc: int, reason: Optional[str]) -> None:
        act.running = False
        ln = act.line
        dur = time.time() - act.started_wall
        reason = act.kill_reason or reason
        rec = {"event": "end", "command": ln.command, "occurrence": ln.occurrence,
               "attempt": act.attempt, "exit_code": rc, "end_time": time.time()}
        if act.stopping or act.reopen:
            why, said = (("queue stopped", f"stopped (exit {rc})") if act.stopping
                         else ("dependency resubmitted", "cancelled (its dependency was interrupted)"))
            self.book.record(dict(rec, status="open", reason=why))
            self.book.queue_status(act.key, "open")
            self.book.say(f"L{ln.lineno} {said}; marked open again")
            del self.book.active[act.token]
            return
        if rc == 0 and not act.kill_reason and not reason:
            self.book.record(dict(rec, status="completed", reason="exit 0"))
            self.book.queue_status(act.key, "completed")
            self.book.ended_here[act.key] = "completed"
            self.book.completed_count += 1
            self.book.say(f"L{ln.lineno} completed in {dur:.1f} s")
            del self.book.active[act.token]
            return
        if self._interrupted(act, rc, reason):
            return
        why = reason or f"exit code {rc}" + (f", after {act.interruptions} interruptions"
                                             if rc in INTERRUPTED_EXITS and act.interruptions else "")
        if act.counted <= ln.options.retries and not act.no_retry:
            delay = ln.options.backoff * (2 ** (act.counted - 1))
            act.retry_at = time.monotonic() + delay
            act.gpus = []
            self.book.record(dict(rec, status="retry", reason=why))
            self.book.say(f"L{ln.lineno} failed ({why}); retry {act.counted}/{ln.options.retries} "
                     f"in {delay:g} s")
            return
        self.book.record(dict(rec, status="failed", reason=why))
        self.book.queue_status(act.key, "failed")
        self.book.ended_here[act.key] = "failed"
        self.book.failed_count += 1
        self.book.say(f"L{ln.lineno} failed ({why}) after {act.attempt} attempt(s); log: {act.log_path}")
        del self.book.active[act.token]
        self.deps.cancel_after(act)

    def _interrupted(self, act: Active, rc: int, reason: Optional[str]) -> bool:
        """Exit 130/143 that the queue did not cause (a shutdown, a preemption, someone's
        kill): the job saved a checkpoint and stopped. It is resumed without using up a retry
        (at most MAX_INTERRUPTIONS times per job; the queue's own timeouts always count)."""
        if rc not in INTERRUPTED_EXITS or reason or act.kill_reason or act.no_retry or \
                act.interruptions >= MAX_INTERRUPTIONS:
            return False
        act.interruptions += 1
        ln = act.line
        delay = ln.options.backoff
        act.retry_at = time.monotonic() + delay
        act.gpus = []
        self.book.record({"event": "end", "command": ln.command, "occurrence": ln.occurrence,
                           "attempt": act.attempt, "exit_code": rc, "end_time": time.time(),
                           "status": "interrupted", "reason": f"interrupted (exit {rc})"})
        self.book.say(f"L{ln.lineno} interrupted (exit {rc}: stopped by a signal from outside the "
                 f"queue); resuming it in {delay:g} s, not counted as a retry "
                 f"({act.interruptions}/{MAX_INTERRUPTIONS})")
        self.deps.reopen_after(act)
        return True

    # -- shutdown ---------------------------------------------------------------------------
    def begin_stop(self, signum: int) -> None:
        if self.stop_signal is not None:
            if not self.force_kill:
                self.force_kill = True
                self.book.say("second signal: killing the jobs")
                for act in self.book.active.values():
                    if act.running:
                        self.backend.kill(act.token)
            return
        self.stop_signal = signum
        name = signal.Signals(signum).name
        running = [a for a in self.book.active.values() if a.running]
        self.book.say(f"{name}: forwarding it to {len(running)} running job(s) and waiting for them "
                 f"(send it again to kill them)")
        for act in list(self.book.active.values()):
            act.stopping = True
            if act.running:
                self.backend.signal(act.token, signum)
            else:                                   # waiting for a retry
                self.book.record({"event": "end", "command": act.line.command,
                                   "occurrence": act.line.occurrence, "status": "open",
                                   "reason": "queue stopped", "end_time": time.time()})
                self.book.queue_status(act.key, "open")
                del self.book.active[act.token]

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        try:
            os.makedirs(self.log_dir, exist_ok=True)
        except OSError as e:
            raise QueueError(f"--log-dir {self.log_dir}: {e.strerror}")
        read_checked(self.path, settle=1.0)  # strict: malformed files are reported up front
        # can the state log be written (a full disk)? before anything is claimed (exit 2)
        self.state.append({"event": "queue", "queue_pid": os.getpid(), "host": HOST})
        self.install_signals()
        self.recovery.recover(self.read_lines() or [])
        missing_since: Optional[float] = None
        while True:
            self.writer.drain()             # lines appended to a file the queue replaced
            now = time.monotonic()
            if self.stop_signal is None:
                lines = self.read_lines()
                if lines is None:           # missing: start nothing, keep supervising
                    missing_since = missing_since or now
                    if self.writer.due():
                        self.flush()
                    pending = True
                else:
                    missing_since = None
                    if self._dirty or self.recovery.pending:
                        self.recovery.repair_reverted(lines, now)
                    if self._dirty or self.writer.due() or self.writer.claims_failed or \
                            self._gone or any(a.retry_at is not None and a.retry_at <= now
                                              for a in self.book.active.values()):
                        # something changed: the file, a job ended, a retry is due
                        self._dirty = False
                        self._pending = self.dispatch(lines)
                    pending = self._pending
            else:
                if self.writer.due():
                    self.flush()
                pending = False
            if self.book.fatal is not None:      # jobs waiting for a retry will not get it here
                for act in [a for a in self.book.active.values() if not a.running and a.retry_at]:
                    self.book.queue_status(act.key, "open")
                    del self.book.active[act.token]
            if not self.book.active:
                if self.stop_signal is not None:
                    return self._stopped()
                if self.book.fatal is not None:
                    self._stopped()
                    raise QueueError(f"{self.book.fatal}; jobs not started are still 'open'")
                if missing_since is not None and not self.writer.outbox and not self.watch \
                        and now - missing_since > MISSING_GRACE:
                    raise QueueError(f"jobs file {self.path} disappeared (nothing was "
                                     f"running; waited {MISSING_GRACE:g} s for it)")
                if not pending and not self.watch and not self.writer.outbox and \
                        not self.writer.touched_by_others(EXIT_QUIET) and \
                        not self.writer.held_open(now):
                    break
            deadline = self.watchdogs.check(self.book.active.values())
            self.backend.poll()
            timeout = FILE_POLL
            if self.backend.poll_interval:
                timeout = min(timeout, self.backend.poll_interval)
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
            self._wait_events(timeout)
        self.writer.close()
        self.book.say(f"done: {self.book.completed_count} completed, {self.book.failed_count} failed")
        return 1 if self.book.failed_count or self.unrunnable else 0

    def _stopped(self) -> int:
        """Write what is pending, let go of the file; the exit status of a stop by signal."""
        self.writer.retry_at = 0.0
        self.flush()
        if self.writer.outbox:
            self.book.say(f"{len(self.writer.outbox)} status change(s) not written "
                     f"({Path(self.path).name} is "
                     f"{'missing' if self.writer.missing else 'not writable'}); "
                     f"{self.state.path} has them and the next start of the queue writes them")
        self.writer.close(wait=1.0)
        return 128 + (self.stop_signal or 0)

    def _wait_events(self, timeout: float) -> None:
        try:
            ev = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except _queue.Empty:
            return
        self._dirty = True
        while True:
            self._handle(ev)
            try:
                ev = self.events.get_nowait()
            except _queue.Empty:
                return

    def _handle(self, ev) -> None:
        if ev[0] == "exit":
            _, tok, rc, reason = ev
            self.on_exit(tok, rc, reason)
        elif ev[0] == "signal":
            self.begin_stop(ev[1])
