"""One run directory, one process: a second run with the same name stops at once instead of
writing into the first one's logs.

The lock is a POSIX record lock (``lockf``) on ``run.lock`` in the run directory, so it dies with its
process: a lock left by a killed run is free and taken over (and said so). Not ``flock``: a flock is
shared with forked children, so DataLoader workers that outlive a SIGKILLed run for a few seconds would
keep its directory locked and the resume (or the queue's retry) would be refused. The file holds the holder's pid, host
and start time for the message; a run that ends cleanly empties it.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Optional

from utility.errors import UserError

LOCK_NAME = "run.lock"


class RunLock:
    """Held from :meth:`acquire` until :meth:`release` or the end of the process."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fh: Optional[IO[str]] = None
        self._claimed = False

    def acquire(self) -> "RunLock":
        """Lock (the file is not changed yet: a finished run, looked at again, stays untouched)."""
        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            raise UserError(f"cannot create {self.path}: {exc.strerror}; check output_root") from None
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(_read(fh))
            fh.close()
            raise UserError(f"run directory {self.path.parent} is in use by {holder}; wait for it to end, "
                            "stop it, or choose another name (nothing was touched)") from None
        self._fh = fh
        atexit.register(self.release)  # any ordinary end empties it; only a killed process leaves it
        return self

    def claim(self) -> None:
        """Write this process's pid and host (for the message another run gets); a lock left by a
        killed process is taken over, and said so."""
        assert self._fh is not None, "claim() after acquire()"
        fh = self._fh
        previous = _read(fh)
        if previous:
            print(f"note: taking over the lock of {_describe(previous)}, which is no longer running",
                  file=sys.stderr)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        fh.flush()
        self._claimed = True

    def release(self) -> None:
        """Empty the file (a clean end leaves nothing to take over) and unlock."""
        if self._fh is None:
            return
        try:
            if self._claimed:
                self._fh.seek(0)
                self._fh.truncate()
        except OSError:
            pass
        self._fh.close()  # closing drops the lock
        self._fh = None


def _read(fh: IO[str]) -> dict:
    try:
        fh.seek(0)
        data = json.loads(fh.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"
            + (f" (started {holder['started']})" if holder.get("started") else ""))
