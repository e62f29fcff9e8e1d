"""Run jobs as child processes of the queue on this machine.

Each attempt runs in its own session/process group (so signals reach torchrun's workers and
shell pipelines too), with stdout+stderr going through a pipe that one thread copies to the
job's log file and echoes with a prefix.  A second thread waits for the exit and posts an
event; the queue loop blocks on those events, so the next job starts within milliseconds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from utility.queue import scheduler
from utility.queue.base import Backend, Echo, Launch, LaunchError, LineSplitter, LogDirError, command_argv
from utility.queue.state import BOOT_ID, HOST, proc_start_ticks

PYTHON_NAMES = ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}")


def local_argv(command: str, shell: bool, python: str = sys.executable):
    """The argv a job runs with; a leading python/python3 becomes the interpreter (venv)
    that runs the queue, so jobs see the same packages however PATH is set."""
    argv = command_argv(command, shell)
    if not shell and argv and argv[0] in PYTHON_NAMES:
        argv[0] = python
    return argv


class LocalHandle:
    def __init__(self, launch: Launch, proc: subprocess.Popen, log_file):
        self.launch = launch
        self.proc = proc
        self.pid = proc.pid
        self.log_file = log_file
        self.last_output = time.monotonic()
        self.started = time.monotonic()

    def record(self) -> dict:
        return {"backend": "local", "pid": self.pid, "pgid": self.pid, "host": HOST,
                "boot_id": BOOT_ID, "proc_start": proc_start_ticks(self.pid)}


class LocalBackend(Backend):
    name = "local"
    poll_interval: Optional[float] = None       # events arrive by themselves
    enforces_timeout = False                    # the loop's watchdog does it

    def __init__(self, events=None, echo: Optional[Echo] = None, python: Optional[str] = None):
        self.events = events
        self.echo = echo
        self.python = python or sys.executable
        self.handles: dict[int, LocalHandle] = {}

    # -- placement: the loop packs jobs onto this machine's GPUs ----------------------------
    def need_of(self, opts, total: int) -> tuple[int, bool]:
        if opts.gpus == "all":
            return total, True                  # every GPU, alone
        return int(opts.gpus), False

    def can_ever_run(self, need: int, exclusive: bool, total: int) -> bool:
        return scheduler.runnable(scheduler.Candidate(None, need, exclusive), total)

    def select(self, cands, free, total, n_running, exclusive_running, max_parallel):
        return scheduler.select(cands, free, total, n_running, exclusive_running, max_parallel)

    def gpu_request(self, need: int, gpus: Sequence[str]) -> int:
        return len(gpus)

    def where(self, need: int, gpus: Sequence[str]) -> str:
        return f"GPUs {','.join(gpus)}" if gpus else "no GPU"

    # -- start ------------------------------------------------------------------------------
    def start(self, launch: Launch) -> LocalHandle:
        argv = local_argv(launch.command, launch.options.shell, self.python)
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(launch.gpus)
        env["PYTHONUNBUFFERED"] = "1"   # live output: the echo and the no-output watchdog
        env["QUEUE_JOB_LOG"] = launch.log_path
        env["QUEUE_JOB_ATTEMPT"] = str(launch.attempt)
        try:
            Path(launch.log_path).parent.mkdir(parents=True, exist_ok=True)
            log = open(launch.log_path, "ab", buffering=0)
        except OSError as e:
            raise LogDirError(f"cannot write the job log {launch.log_path} ({e.strerror})")
        try:
            proc = subprocess.Popen(argv, cwd=launch.cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        except (OSError, ValueError) as e:
            msg = f"[queue] could not start {argv[0] if argv else launch.command!r}: {e}\n"
            log.write(msg.encode())
            log.close()
            raise LaunchError(msg.strip())
        h = LocalHandle(launch, proc, log)
        self.handles[launch.token] = h
        reader = threading.Thread(target=self._pump, args=(h,), daemon=True,
                                  name=f"queue-out-{launch.token}")
        reader.start()
        threading.Thread(target=self._wait, args=(h, reader), daemon=True,
                         name=f"queue-wait-{launch.token}").start()
        return h

    def _pump(self, h: LocalHandle) -> None:
        fd = h.proc.stdout.fileno()
        split = LineSplitter(self.echo, h.launch.label)
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                h.last_output = time.monotonic()
                try:
                    h.log_file.write(data)
                except OSError:
                    pass
                split.feed(data)
        finally:
            split.flush()

    def _wait(self, h: LocalHandle, reader: threading.Thread) -> None:
        rc = h.proc.wait()
        reader.join(timeout=1.0)
        if reader.is_alive():
            # a leftover process of the job keeps the pipe open: the job is over, end them
            self._killpg(h.pid, signal.SIGKILL)
            reader.join(timeout=5.0)
        else:
            self._killpg(h.pid, signal.SIGKILL)     # stray workers left in the group
        try:
            h.proc.stdout.close()
        except OSError:
            pass
        try:
            h.log_file.close()
        except OSError:
            pass
        self.events.put(("exit", h.launch.token, rc, None))

    # -- control ----------------------------------------------------------------------------
    @staticmethod
    def _killpg(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def signal(self, token: int, sig: int) -> None:
        h = self.handles.get(token)
        if h is not None and h.proc.returncode is None:
            self._killpg(h.pid, sig)
