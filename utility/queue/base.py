"""The backend protocol (what the queue loop asks a backend), what the loop hands a backend
(Launch), and the prefixed echo of job output."""
from __future__ import annotations

import abc
import os
import re
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence

from utility.queue.jobsfile import JobOptions
from utility.queue.scheduler import Candidate
from utility.queue.state import process_alive


@dataclass
class Launch:
    token: int                   # the loop's id for this attempt
    command: str
    options: JobOptions
    gpus: list[str]              # assigned GPU ids (local) / requested count via len (SLURM)
    gpu_count: int               # GPUs to request (SLURM); len(gpus) locally
    cwd: str
    log_path: str
    label: str                   # echo prefix, e.g. 'L12'
    attempt: int = 1
    extra: dict = field(default_factory=dict)


class LaunchError(Exception):
    """The job could not be started (program not found, sbatch refused it, ...)."""


class LogDirError(LaunchError):
    """The job's log (or batch script) cannot be written: the queue's --log-dir is full or not
    writable. Not the job's fault: the queue starts nothing more and ends with this message."""


def command_argv(command: str, shell: bool) -> list[str]:
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


class Reconcile(NamedTuple):
    """What to do with a line left 'running' by an earlier queue instance (see
    Backend.reconcile): action 'adopt' (track the job again), 'rerun' (mark it open),
    'stop_rerun' (stop the orphaned process group `pid`, then mark it open) or 'leave'."""
    action: str
    message: str
    pid: Optional[int] = None


class Backend(abc.ABC):
    """The questions the queue loop asks a backend, and the job control it needs.

    Placement: need_of / can_ever_run / select / gpu_request / where.
    Recovery: reconcile (a record of an attempt started by another queue instance).
    Control: start / adopt / signal / kill / last_output / forget / poll.
    Subclasses keep ``handles[token]`` objects with a ``last_output`` attribute (monotonic
    time of the job's last output line)."""

    name: str = ""
    poll_interval: Optional[float] = None     # call poll() this often (None: events arrive)
    enforces_timeout: bool = False            # the backend ends jobs at their timeout itself
    handles: dict

    # -- placement --------------------------------------------------------------------------
    @abc.abstractmethod
    def need_of(self, opts: JobOptions, total: int) -> tuple[int, bool]:
        """(GPUs the job needs, whether it must run alone) given `total` GPUs of the queue."""

    @abc.abstractmethod
    def can_ever_run(self, need: int, exclusive: bool, total: int) -> bool:
        """False when the job can never start here (more GPUs than exist)."""

    @abc.abstractmethod
    def select(self, cands: Sequence[Candidate], free: Sequence[str], total: Sequence[str],
               n_running: int, exclusive_running: bool,
               max_parallel: Optional[int]) -> list[tuple[Candidate, list[str]]]:
        """Which candidates start now, each with the GPU ids the loop hands it."""

    @abc.abstractmethod
    def gpu_request(self, need: int, gpus: Sequence[str]) -> int:
        """The GPU count written into Launch.gpu_count."""

    @abc.abstractmethod
    def where(self, need: int, gpus: Sequence[str]) -> str:
        """How the start message describes where the job goes."""

    def dependency_ref(self, token: int) -> Optional[str]:
        """A reference the backend's own scheduler can order a later job after (SLURM: the
        job id), or None: dependants then start only once their dependencies completed."""
        return None

    def started_note(self, record: dict) -> Optional[str]:
        """An extra line after a start (e.g. the SLURM job id), or None."""
        return None

    # -- recovery ---------------------------------------------------------------------------
    def reconcile(self, rec: dict, lineno: int, my_pid: int) -> Reconcile:
        """Decide about a 'running' line whose latest attempt (`rec`, not ended) was started
        by some queue instance. Default: SLURM records are left alone, local processes are
        checked by pid, host, boot id and process start time."""
        if rec.get("backend") == "slurm":
            return Reconcile("leave", f"line {lineno} runs as SLURM job {rec.get('slurm_id')}; "
                                      "left alone (use --backend slurm to track it)")
        qalive = process_alive(rec.get("queue_pid"), rec.get("host"), rec.get("boot_id"),
                               rec.get("queue_proc_start"))
        jalive = process_alive(rec.get("pid"), rec.get("host"), rec.get("boot_id"),
                               rec.get("proc_start"))
        if qalive is None or jalive is None:
            return Reconcile("leave", f"line {lineno} is running on host {rec.get('host')}; "
                                      "left alone")
        if qalive and rec.get("queue_pid") != my_pid:
            return Reconcile("leave", f"line {lineno} is run by another queue (pid "
                                      f"{rec.get('queue_pid')}); left alone")
        if jalive:
            return Reconcile("stop_rerun", f"line {lineno}: its queue died but the job (pid "
                                           f"{rec['pid']}) still runs; stopping it to run it "
                                           "again", rec["pid"])
        return Reconcile("rerun", f"line {lineno} was left 'running' by a queue that died; "
                                  "running it again")

    @staticmethod
    def stop_orphan(pgid: int, grace: float) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` s, wait until it is gone."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                return
            end = time.monotonic() + wait
            while time.monotonic() < end:
                try:
                    os.killpg(pgid, 0)
                except (ProcessLookupError, PermissionError):
                    return
                time.sleep(0.05)

    # -- control ----------------------------------------------------------------------------
    @abc.abstractmethod
    def start(self, launch: Launch):
        """Start an attempt; return a handle with record() -> dict. LaunchError if it cannot."""

    def adopt(self, token: int, rec: dict, line) -> None:
        """Track an attempt started by an earlier queue instance (reconcile said 'adopt')."""
        raise NotImplementedError(f"the {self.name} backend adopts no jobs")

    @abc.abstractmethod
    def signal(self, token: int, sig: int) -> None:
        """Send `sig` to the job (its whole process group / scancel)."""

    def poll(self) -> None:
        """Called once per loop iteration (track jobs that send no events)."""

    def kill(self, token: int) -> None:
        self.signal(token, signal.SIGKILL)

    def last_output(self, token: int) -> float:
        h = self.handles.get(token)
        return h.last_output if h else time.monotonic()

    def forget(self, token: int) -> None:
        self.handles.pop(token, None)

