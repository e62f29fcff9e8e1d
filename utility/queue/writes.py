"""Status changes the queue loop writes into the jobs file.

Changes are queued (``queue``) and written together with the claims of the jobs that start
next (``flush``): one locked compare-and-swap write (safewrite.JobsFile.update) per loop
iteration instead of several.  A change that cannot be written now (the file is missing,
the disk is full, ...) stays queued and is tried again with backoff; the loop keeps
supervising its jobs meanwhile.  The state log (queue_state.jsonl) already holds every end
before it is queued here, so a queue stopped before the file came back writes them at its
next start (Runner.recover).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from utility.queue.errors import QueueError
from utility.queue.safewrite import JobsFile, Missing

Key = tuple[str, int]
SETTLE = 0.5            # a job absent from the file this long (s) counts as edited out
SAY_MISSING = 1.0       # say that the file is missing once it is gone this long (s)
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0


class _Change:
    __slots__ = ("key", "new", "expect", "absent_since")

    def __init__(self, key: Key, new: str, expect):
        self.key, self.new, self.expect = key, new, expect
        self.absent_since: Optional[float] = None


class StatusWriter:
    def __init__(self, path: str, say: Callable[[str], None]):
        self.path = path
        self.name = Path(path).name
        self.say = say
        self.file = JobsFile(path)
        self.outbox: list[_Change] = []
        self.retry_at = 0.0
        self.backoff = 0.0
        self.missing = False                 # the file was found missing
        self.missing_since = 0.0
        self.said_missing = False            # ... and that was said (once per absence)
        self.problem: Optional[str] = None   # the last write error (said once)
        self.claims_failed = False           # a flush could not try its claims
        self.held_since: Optional[float] = None
        self.said_held = False

    # -- the file's presence ----------------------------------------------------------------
    def note_missing(self, why: str = "") -> None:
        """Editors leave the file missing for milliseconds; say it when it stays so."""
        now = time.monotonic()
        if not self.missing:
            self.missing, self.missing_since = True, now
        if not self.said_missing and now - self.missing_since >= SAY_MISSING:
            self.said_missing = True
            self.say(f"{self.path} is missing{why} (deleted, or moved away); waiting for it "
                     f"to reappear. Running jobs are still supervised; their status changes "
                     f"are written once it is back")

    def note_back(self) -> None:
        if self.missing:
            self.missing = False
            self.retry_at = 0.0
            if self.said_missing:
                self.said_missing = False
                n = len(self.outbox)
                self.say(f"{self.name} is back" + (f"; writing {n} pending status change(s)"
                                                   if n else ""))

    # -- queueing and writing ---------------------------------------------------------------
    def queue(self, key: Key, new: str, expect=("running",)) -> None:
        """A status change for the next flush."""
        self.outbox.append(_Change(key, new, expect))

    def due(self) -> bool:
        """Something is queued and may be tried now."""
        return bool(self.outbox) and time.monotonic() >= self.retry_at

    def settling(self) -> bool:
        return any(c.absent_since is not None for c in self.outbox)

    def flush(self, claims: Sequence[Key] = ()) -> list[bool]:
        """Write the queued status changes plus `claims` (keys to move open -> running) in
        one go; return whether each claim succeeded (all False when nothing could be
        written now: the claimed jobs are simply not started yet)."""
        self.claims_failed = False
        if not self.outbox and not claims:
            return []
        if time.monotonic() < self.retry_at:
            self.claims_failed = bool(claims)
            return [False] * len(claims)
        queued = self.outbox
        changes = [(c.key, c.new, c.expect) for c in queued]
        changes += [(k, "running", ("open",)) for k in claims]
        try:
            results = self.file.update(changes)
        except Missing:
            self.note_missing()
            return self._failed(claims, cap=0.2)      # editors' saves take milliseconds
        except (QueueError, OSError) as e:
            msg = str(e) if isinstance(e, QueueError) else f"{type(e).__name__}: {e}"
            if msg != self.problem:
                self.problem = msg
                self.say(f"could not write {self.name} ({msg}); trying again, jobs keep "
                         f"running")
            return self._failed(claims)
        if self.problem is not None:
            self.say(f"{self.name} written again")
            self.problem = None
        self.note_back()
        self.backoff, self.retry_at = 0.0, 0.0
        now = time.monotonic()
        keep = []
        for c, (changed, cur) in zip(queued, results):
            if changed:
                continue
            if cur is None:
                # absent: edited out, or a save is half-way (file created, not yet written)
                if c.absent_since is None:
                    c.absent_since = now
                if now - c.absent_since < SETTLE:
                    keep.append(c)
                    continue
                self.say(f"job no longer in {self.name} (edited out); "
                         f"not writing '{c.new}': {c.key[0]}")
            else:
                self.say(f"line {cur.lineno} was changed to '{cur.status}' meanwhile; "
                         f"keeping it (not writing '{c.new}')")
        self.outbox = keep
        return [changed for changed, _ in results[len(queued):]]

    def _failed(self, claims, cap: float = BACKOFF_MAX) -> list[bool]:
        self.backoff = min(cap, max(BACKOFF_MIN, self.backoff * 2))
        self.retry_at = time.monotonic() + self.backoff
        self.claims_failed = bool(claims)
        return [False] * len(claims)

    # -- late appends, and the end ----------------------------------------------------------
    def drain(self) -> None:
        try:
            self.file.drain()
        except (QueueError, OSError) as e:
            msg = f"carrying appended lines over: {e}"
            if msg != self.problem:
                self.problem = msg
                self.say(f"could not write {self.name} ({msg}); trying again")
        self._report_conflicts()

    def _report_conflicts(self) -> None:
        while self.file.conflicts:
            side = self.file.conflicts.pop(0)
            self.say(f"a program rewrote {self.name} in place while the queue was replacing "
                     f"it; that version is kept as {side} (merge it by hand)")

    def held_open(self, now: float) -> bool:
        """A program still has a jobs file this queue replaced open for writing: what it
        appends is carried over only while the queue runs, so the queue waits (says so
        after a few seconds)."""
        if not self.file.busy():
            self.held_since = None
            return False
        if self.held_since is None:
            self.held_since = now
        elif not self.said_held and now - self.held_since > 3.0:
            self.said_held = True
            self.say(f"not exiting yet: a program still has {self.name} open for writing "
                     f"(opened before the queue's last write); lines it appends are carried "
                     f"over until it closes the file (Ctrl-C stops the queue anyway)")
        return True

    def touched_by_others(self, quiet: float) -> bool:
        """The file changed within the last `quiet` s and not by this queue (a save may be
        half-way), or it is missing."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        if (st.st_ino, st.st_size, st.st_mtime_ns) == self.file.last_sig:
            return False
        return time.time() - st.st_mtime < quiet

    def close(self, wait: float = 2.0) -> None:
        self.file.close(wait)
        self._report_conflicts()
