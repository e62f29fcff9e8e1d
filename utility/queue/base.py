"""What the queue loop hands a backend, and the prefixed echo of job output."""
from __future__ import annotations

import re
import shlex
import sys
import threading
from dataclasses import dataclass, field
from typing import List

from .jobsfile import JobOptions


@dataclass
class Launch:
    token: int                   # the loop's id for this attempt
    command: str
    options: JobOptions
    gpus: List[str]              # assigned GPU ids (local) / requested count via len (SLURM)
    gpu_count: int               # GPUs to request (SLURM); len(gpus) locally
    cwd: str
    log_path: str
    label: str                   # echo prefix, e.g. 'L12'
    attempt: int = 1
    extra: dict = field(default_factory=dict)


class LaunchError(Exception):
    """The job could not be started (program not found, sbatch refused it, ...)."""


def command_argv(command: str, shell: bool) -> List[str]:
    return ["/bin/sh", "-c", command] if shell else shlex.split(command)


def slug(command: str, n: int = 48) -> str:
    words = command.split()
    # skip interpreter-ish first words so 'python pkgs/FTE/finetune.py -c x.yaml' names the script
    while len(words) > 1 and (words[0].startswith("-") or
                              re.fullmatch(r"(python[0-9.]*|torchrun|env|bash|sh|srun)", words[0])):
        words = words[1:]
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(words)).strip("_.")
    return (s[:n].rstrip("_.") or "job")


class Echo:
    """Writes job output to the queue's stdout, one prefix per line, lines never interleaved."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.lock = threading.Lock()

    def message(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text.rstrip("\n") + "\n")
            sys.stdout.flush()

    def lines(self, prefix: bytes, data: bytes) -> None:
        if not self.enabled or not data:
            return
        out = b"".join(prefix + ln + b"\n" for ln in data.split(b"\n"))
        with self.lock:
            try:
                sys.stdout.flush()
                sys.stdout.buffer.write(out)
                sys.stdout.buffer.flush()
            except (OSError, ValueError):
                pass


class LineSplitter:
    """Buffers partial lines of a job's output for the echo."""

    def __init__(self, echo: Echo, label: str, limit: int = 65536):
        self.echo, self.prefix, self.limit = echo, f"[{label}] ".encode(), limit
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        if b"\n" in self.buf:
            done, self.buf = self.buf.rsplit(b"\n", 1)
            self.echo.lines(self.prefix, done)
        if len(self.buf) > self.limit:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.echo.lines(self.prefix, self.buf)
            self.buf = b""


class HandleTable:
    """What both backends keep per job token: ``handles[token]`` with ``last_output`` (monotonic
    time of the job's last output line); kill = the backend's ``signal`` with SIGKILL."""

    handles: dict

    def signal(self, token: int, sig: int) -> None:  # pragma: no cover - each backend overrides
        raise NotImplementedError

    def kill(self, token: int) -> None:
        import signal as _signal

        self.signal(token, _signal.SIGKILL)

    def last_output(self, token: int) -> float:
        import time as _time

        h = self.handles.get(token)
        return h.last_output if h else _time.monotonic()

    def forget(self, token: int) -> None:
        self.handles.pop(token, None)

