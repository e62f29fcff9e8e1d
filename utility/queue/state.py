"""Per-job records: an append-only JSON-lines file (one record per event).

Every start and end of an attempt appends one line (flock + fsync), e.g.

    {"event": "start", "jobs": "/abs/Jobs.csv", "command": "...", "occurrence": 0,
     "attempt": 1, "pid": 123, "host": "box", "boot_id": "...", "proc_start": 4567,
     "queue_pid": 99, "queue_proc_start": 4000, "gpus": ["0"], "log": "...", "time": 1700000000.0}
    {"event": "end", ..., "exit_code": 0, "status": "completed", "reason": "exit", "time": ...}

A torn last line (power loss) is skipped when reading.  The file lives in the log directory
(default logs_and_checkpoints/queue/queue_state.jsonl).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from utility.queue.errors import QueueError

STATE_NAME = "queue_state.jsonl"
HOST = socket.gethostname()


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


BOOT_ID = boot_id()


def proc_start_ticks(pid: int) -> Optional[int]:
    """Start time of a process (clock ticks after boot) to tell a pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        rest = data[data.rindex(b")") + 2:].split()
        return int(rest[19])            # field 22 of stat; fields after 'comm' start at 3
    except (ValueError, IndexError):
        return None


def process_alive(pid: Optional[int], host: Optional[str], boot: Optional[str],
                  start: Optional[int]) -> Optional[bool]:
    """True/False when decidable on this machine; None when the record is from another host."""
    if not pid:
        return False
    if host and host != HOST:
        return None
    if boot and BOOT_ID and boot != BOOT_ID:
        return False                    # rebooted since (power loss): gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start is not None:
        now = proc_start_ticks(pid)
        if now is not None and now != start:
            return False                # pid reused by another process
    return True


class StateWriteError(QueueError):
    """The state log cannot be written (a full disk, a read-only --log-dir)."""


class StateLog:
    def __init__(self, log_dir: str, jobs_path: str):
        self.path = str(Path(log_dir) / STATE_NAME)
        self.jobs = os.path.abspath(jobs_path)

    def append(self, record: dict) -> None:
        rec = {"jobs": self.jobs, "time": time.time()}
        rec.update(record)
        line = json.dumps(rec, sort_keys=False) + "\n"
        try:
            self._append(line)
        except OSError as e:
            raise StateWriteError(f"cannot write {self.path} ({e.strerror}); free space there or "
                                  "pass another --log-dir") from None

    def _append(self, line: str) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # a torn line left by a crash must not swallow ours
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = "\n" + line
            # no fsync: after a power loss every job process is gone anyway, and the jobs
            # file (which is fsynced) is what recovery trusts; the page cache survives SIGKILL
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def records(self) -> list[dict]:
        out = []
        try:
            with open(self.path, "rb") as f:
                for raw in f:
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and rec.get("jobs") == self.jobs:
                        out.append(rec)
        except FileNotFoundError:
            pass
        return out

    def latest(self) -> dict[tuple[str, int], dict]:
        """(command, occurrence) -> merged view of its latest attempt (start + end fields),
        plus 'attempts' (number of starts recorded). 'renumber' records (written when the
        occurrence of a line changed while a queue ran) move the views with their lines."""
        view: dict[tuple[str, int], dict] = {}
        for rec in self.records():
            key = (rec.get("command"), rec.get("occurrence", 0))
            if rec.get("event") == "start":
                n = view.get(key, {}).get("attempts", 0) + 1
                view[key] = dict(rec, attempts=n)
            elif rec.get("event") == "renumber":
                # an earlier identical line was deleted or moved: the records follow their lines
                cmd = rec.get("command")
                moved = {o: view.pop((cmd, o), None) for o, _ in rec.get("moves", [])}
                for o, n in rec.get("moves", []):
                    if moved[o] is not None:
                        view[(cmd, n)] = moved[o]
                    else:
                        view.pop((cmd, n), None)
            elif rec.get("event") in ("end", "update"):
                cur = view.setdefault(key, {"attempts": 0})
                cur.update({k: v for k, v in rec.items() if k != "event"})
                if rec.get("event") == "end":
                    cur["ended"] = True
        return view
