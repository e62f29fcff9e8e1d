"""SIGTERM and Ctrl-C during training: finish the current step, save a resume checkpoint, exit.

The queue (docs/QUEUE.md) and SLURM stop a job with SIGTERM and kill it after a grace period; a
run that died at once lost everything since its last epoch checkpoint. While :class:`StopOnSignal`
is active the first SIGTERM/SIGINT only sets a flag the engine reads after every step; a second
one stops at once (the old behaviour). DataLoader workers ignore both (``utility.data.loader.worker_ignores_stop``):
they end with their parent, which must not see them die first.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any, Optional

from utility.errors import STOP_SIGNALS as SIGNALS



class StopOnSignal:
    """Context manager; ``requested`` is the signal number once a stop was asked for (else 0).
    ``then`` is what the first signal's message says happens next (the session changes it while the
    final test runs: the test is finished rather than thrown away)."""

    def __init__(self) -> None:
        self.requested = 0
        self.then = "saving a checkpoint after the current step, then stopping"
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested:  # a second signal: stop now, as without this handler
            self.__exit__()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.requested = signum
        print(f"\n{signal.Signals(signum).name}: {self.then} (send it again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
