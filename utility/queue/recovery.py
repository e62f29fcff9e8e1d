"""Lines whose 'running' status does not match what runs: left by a queue that died
(recover, at start), or written back by a save made from an older copy of the file after
the job had ended here (repair_reverted, while running)."""
from __future__ import annotations

from dataclasses import dataclass, field

import os
import time
from typing import List, Optional, Tuple

from .jobsfile import Line

REVERT_SETTLE = 1.0     # a line says 'running' again this long (s) before it is repaired



@dataclass
class Active:
    """A job this queue instance owns: running, or waiting for a retry."""
    token: int
    key: Tuple[str, int]
    line: Line
    attempt: int
    gpus: List[str]
    log_path: str = ""
    started: float = 0.0             # monotonic
    started_wall: float = 0.0
    running: bool = False
    retry_at: Optional[float] = None
    kill_reason: Optional[str] = None
    kill_at: Optional[float] = None  # when to escalate to SIGKILL
    stopping: bool = False           # the queue is shutting down: reopen on exit
    exclusive: bool = False
    after: List[int] = field(default_factory=list)   # tokens of the dependencies it was handed after
    no_retry: bool = False           # ends failed without retries (its dependency failed)
    adopted: bool = False            # started by an earlier queue instance (recover)
    interruptions: int = 0           # attempts stopped by a signal from outside (not counted)
    reopen: bool = False             # cancelled to be handed to the backend again (deps)

    @property
    def counted(self) -> int:
        """Attempts that count against `retries` (interrupted ones do not)."""
        return self.attempt - self.interruptions


class Recovery:
    """Mixed into Runner (uses its state, backend, writer and messages)."""

    def recover(self) -> None:
        latest = self.state.latest()
        for ln in self.read_lines() or []:
            if ln.kind != "job" or ln.status != "running":
                continue
            rec = latest.get(ln.slot)
            if rec is None:
                self.say(f"line {ln.lineno} is 'running' with no record of who runs it; "
                         f"running it again")
                self.set_status(ln.key, "open")
                continue
            if rec.get("ended"):
                final = rec.get("status")
                if final in ("completed", "failed"):
                    self.set_status(ln.key, final)      # the crash came between the writes
                else:
                    self.set_status(ln.key, "open")
                continue
            d = self.backend.reconcile(rec, ln.lineno, os.getpid())
            if d.action == "leave":
                self.warn_once(d.message)
                continue
            self.say(d.message)
            if d.action == "adopt":
                self.adopt(ln, rec)
                continue
            if d.action == "stop_rerun":
                self.backend.stop_orphan(d.pid, self.kill_grace)
            self.record({"event": "end", "command": ln.command, "occurrence": ln.occurrence,
                               "status": "open", "reason": "queue died", "end_time": time.time()})
            self.set_status(ln.key, "open")

    def adopt(self, ln: Line, rec: dict) -> None:
        tok = self.next_token
        self.next_token += 1
        act = Active(tok, ln.key, ln, rec.get("attempt", 1), [], rec.get("log", ""),
                     time.monotonic(), rec.get("start_time", time.time()), running=True, adopted=True)
        self.active[tok] = act
        self.backend.adopt(tok, rec, ln)

    def repair_reverted(self, lines: List[Line], now: float) -> None:
        """A job that ended here is 'running' in the file again and nobody runs it: a save
        from a copy read before the queue wrote its end (an editor buffer, an unlocked
        `sed -i`) put the old status back. Once that lasts REVERT_SETTLE s and the state log
        shows no later start (by another queue), write the final status again."""
        if not self.ended_here:
            return
        mine = {a.key for a in self.active.values()}
        mine.update(c.key for c in self.writer.outbox)      # its end is still to be written
        seen = set()
        for ln in lines:
            if ln.kind != "job" or ln.status != "running" or ln.key not in self.ended_here \
                    or ln.key in mine:
                continue
            seen.add(ln.key)
            since = self._reverted.setdefault(ln.key, now)
            if now - since < REVERT_SETTLE:
                continue
            final = self.ended_here[ln.key]
            rec = self.state.latest().get(ln.slot, {})
            del self._reverted[ln.key]
            if not (rec.get("ended") and rec.get("queue_pid") == os.getpid()
                    and rec.get("status") == final):
                del self.ended_here[ln.key]              # someone else runs it now
                continue
            self.say(f"line {ln.lineno} says 'running' again after its job ended here (a "
                     f"save from an older copy of the file); writing '{final}' again")
            self.queue_status(ln.key, final)
        for key in list(self._reverted):
            if key not in seen:
                del self._reverted[key]
