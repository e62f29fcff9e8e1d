"""Lines whose 'running' status does not match what runs: left by a queue that died
(recover, at start), or written back by a save made from an older copy of the file after
the job had ended here (repair_reverted, while running)."""
from __future__ import annotations

import os
import time

from utility.queue.book import JobBook, Key
from utility.queue.jobsfile import Line

REVERT_SETTLE = 1.0     # a line says 'running' again this long (s) before it is repaired


class Recovery:
    def __init__(self, book: JobBook, backend, kill_grace: float):
        self.book, self.backend, self.kill_grace = book, backend, kill_grace
        self._reverted: dict[Key, float] = {}     # since when a line says 'running' again

    def recover(self, lines: list[Line]) -> None:
        """At start: each 'running' line is checked against its latest record."""
        book = self.book
        latest = book.state.latest()
        for ln in lines:
            if ln.kind != "job" or ln.status != "running":
                continue
            rec = latest.get(ln.slot)
            if rec is None:
                book.say(f"line {ln.lineno} is 'running' with no record of who runs it; "
                         f"running it again")
                book.set_status(ln.key, "open")
                continue
            if rec.get("ended"):
                final = rec.get("status")
                # the crash came between the writes
                book.set_status(ln.key, final if final in ("completed", "failed") else "open")
                continue
            d = self.backend.reconcile(rec, ln.lineno, os.getpid())
            if d.action == "leave":
                book.warn_once(d.message)
                continue
            book.say(d.message)
            if d.action == "adopt":
                self.adopt(ln, rec)
                continue
            if d.action == "stop_rerun":
                self.backend.stop_orphan(d.pid, self.kill_grace)
            book.record({"event": "end", "command": ln.command, "occurrence": ln.occurrence,
                         "status": "open", "reason": "queue died", "end_time": time.time()})
            book.set_status(ln.key, "open")

    def adopt(self, ln: Line, rec: dict) -> None:
        act = self.book.add(ln.key, ln, rec.get("attempt", 1), [], log_path=rec.get("log", ""),
                            started=time.monotonic(), started_wall=rec.get("start_time", time.time()),
                            running=True, adopted=True)
        self.backend.adopt(act.token, rec, ln)

    def repair_reverted(self, lines: list[Line], now: float) -> None:
        """A job that ended here is 'running' in the file again and nobody runs it: a save
        from a copy read before the queue wrote its end (an editor buffer, an unlocked
        `sed -i`) put the old status back. Once that lasts REVERT_SETTLE s and the state log
        shows no later start (by another queue), write the final status again."""
        book = self.book
        if not book.ended_here:
            return
        mine = {a.key for a in book.active.values()}
        mine.update(c.key for c in book.writer.outbox)      # its end is still to be written
        seen = set()
        for ln in lines:
            if ln.kind != "job" or ln.status != "running" or ln.key not in book.ended_here \
                    or ln.key in mine:
                continue
            seen.add(ln.key)
            since = self._reverted.setdefault(ln.key, now)
            if now - since < REVERT_SETTLE:
                continue
            final = book.ended_here[ln.key]
            rec = book.state.latest().get(ln.slot, {})
            del self._reverted[ln.key]
            if not (rec.get("ended") and rec.get("queue_pid") == os.getpid()
                    and rec.get("status") == final):
                del book.ended_here[ln.key]              # someone else runs it now
                continue
            book.say(f"line {ln.lineno} says 'running' again after its job ended here (a "
                     f"save from an older copy of the file); writing '{final}' again")
            book.queue_status(ln.key, final)
        for key in list(self._reverted):
            if key not in seen:
                del self._reverted[key]

    @property
    def pending(self) -> bool:
        """A reverted line is being watched (the loop must look at the file again)."""
        return bool(self._reverted)
