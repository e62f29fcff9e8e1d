"""Status changes the queue loop writes into the jobs file.

Changes are queued (``queue``) and written together with the claims of the jobs that start
next (``flush``): one locked compare-and-swap write (jobsfile.update_many) per loop
iteration instead of several.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Tuple

from . import jobsfile

Key = Tuple[str, int]


class StatusWriter:
    def __init__(self, path: str, say: Callable[[str], None]):
        self.path = path
        self.say = say
        self.outbox: List[Tuple[Key, str, Optional[Tuple[str, ...]]]] = []

    def queue(self, key: Key, new: str, expect=("running",)) -> None:
        """A status change for the next flush."""
        self.outbox.append((key, new, expect))

    def flush(self, claims: Sequence[Key] = ()) -> List[bool]:
        """Write the queued status changes plus `claims` (keys to move open -> running) in
        one go; return whether each claim succeeded."""
        queued = self.outbox
        self.outbox = []
        changes = queued + [(k, "running", ("open",)) for k in claims]
        results = jobsfile.update_many(self.path, changes)
        for (key, new, _), (changed, cur) in zip(queued, results):
            if changed:
                continue
            if cur is None:
                self.say(f"job no longer in {os.path.basename(self.path)} (edited out); "
                         f"not writing '{new}': {key[0]}")
            else:
                self.say(f"line {cur.lineno} was changed to '{cur.status}' meanwhile; "
                         f"keeping it (not writing '{new}')")
        return [changed for changed, _ in results[len(queued):]]
