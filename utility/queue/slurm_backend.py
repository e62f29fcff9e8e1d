"""Hand jobs to SLURM: sbatch to submit, squeue (+ scontrol/sacct) to track, scancel to stop.

Each attempt becomes a small batch script next to its log (``<log>.sbatch``); the job's
output goes to the same log path the local backend would use.  The script writes the
command's exit code to ``<log>.rc``, so the final status is known even on clusters without
accounting (sacct) and after scontrol forgot the job.
"""
from __future__ import annotations

import math
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from utility.queue.base import (Backend, Echo, Launch, LaunchError, LineSplitter, LogDirError, Reconcile,
                   command_argv, slug)
from utility.queue.errors import QueueError
from utility.queue.slurm_script import batch_script, limit_seconds, read_rc, signal_lead
from utility.queue.state import HOST

ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT",
                 "RESV_DEL_HOLD", "STOPPED", "PREEMPTED"}


def slurm_available() -> Optional[str]:
    """None when sbatch/squeue/scancel are on PATH, else the reason they are not usable."""
    missing = [c for c in ("sbatch", "squeue", "scancel") if not shutil.which(c)]
    return f"{', '.join(missing)} not found on PATH" if missing else None


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


class SlurmHandle:
    def __init__(self, launch: Launch, job_id: str):
        self.launch = launch
        self.job_id = job_id
        self.last_output = time.monotonic()
        self.offset = 0
        self.split: Optional[LineSplitter] = None
        self.cancelled = False
        self.state = "PENDING"

    def record(self) -> dict:
        rec = {"backend": "slurm", "slurm_id": self.job_id, "host": HOST}
        if self.launch.extra.get("after"):
            rec["dependency"] = "afterok:" + ":".join(self.launch.extra["after"])
        return rec


class SlurmBackend(Backend):
    name = "slurm"
    enforces_timeout = True          # timeout -> sbatch --time; SLURM ends the job

    def __init__(self, events, echo: Optional[Echo], partition: Optional[str] = None,
                 time_limit: Optional[str] = None, sbatch_args: str = "",
                 poll_interval: float = 5.0, all_gpus: Optional[int] = None,
                 check: bool = True, signal_before: int = 120, max_requeues: int = 20):
        """all_gpus: GPUs a gpus=all job asks for (the --gpus count; None: no GPU request).
        check=False builds a backend that only plans (--dry-run without sbatch).
        signal_before / max_requeues: see slurm_script.py."""
        why = slurm_available() if check else None
        if why:
            raise QueueError(f"--backend slurm: {why}")
        self.all_gpus = all_gpus
        self.signal_before, self.max_requeues = signal_before, max_requeues
        self.events = events
        self.echo = echo
        self.partition = partition
        self.time_limit = time_limit
        try:
            self.sbatch_args = shlex.split(sbatch_args or "")
        except ValueError as e:
            raise QueueError(f"--sbatch-args: {e}")
        self.poll_interval = poll_interval
        self.handles: dict[int, SlurmHandle] = {}
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self._next_poll = 0.0

    # -- placement: SLURM places the jobs; every job is submitted in file order ------------
    def need_of(self, opts, total: int) -> tuple[int, bool]:
        if opts.gpus == "all":
            return (self.all_gpus or 0), False
        return int(opts.gpus), False

    def can_ever_run(self, need: int, exclusive: bool, total: int) -> bool:
        return True                      # the cluster decides

    def select(self, cands, free, total, n_running, exclusive_running, max_parallel):
        room = (max_parallel - n_running) if max_parallel else len(cands)
        return [(c, []) for c in list(cands)[:max(room, 0)]]

    def gpu_request(self, need: int, gpus: Sequence[str]) -> int:
        return need

    def where(self, need: int, gpus: Sequence[str]) -> str:
        return f"sbatch --gres=gpu:{need}" if need else "sbatch"

    def started_note(self, record: dict) -> Optional[str]:
        if not record.get("slurm_id"):
            return None
        dep = f" (--dependency={record['dependency']})" if record.get("dependency") else ""
        return f"submitted as SLURM job {record['slurm_id']}{dep}"

    def dependency_ref(self, token: int) -> Optional[str]:
        h = self.handles.get(token)
        return h.job_id if h is not None else None

    def reconcile(self, rec: dict, lineno: int, my_pid: int) -> Reconcile:
        if rec.get("backend") == "slurm" and rec.get("slurm_id"):
            return Reconcile("adopt", f"line {lineno}: tracking SLURM job "
                                      f"{rec.get('slurm_id')} again")
        return super().reconcile(rec, lineno, my_pid)

    # -- submit -----------------------------------------------------------------------------
    def script_text(self, launch: Launch) -> str:
        argv = command_argv(launch.command, launch.options.shell)
        return batch_script(argv, launch.command, launch.cwd, launch.log_path, launch.attempt,
                            launch.options.timeout is not None, self.max_requeues)

    def sbatch_argv(self, launch: Launch, script: str) -> list[str]:
        o = launch.options
        argv = ["sbatch", "--parsable", f"--job-name=q_{slug(launch.command, 40)}",
                f"--output={launch.log_path}", "--open-mode=append", f"--chdir={launch.cwd}"]
        if launch.gpu_count:
            argv.append(f"--gres=gpu:{launch.gpu_count}")
        if launch.extra.get("after"):
            argv.append("--dependency=afterok:" + ":".join(launch.extra["after"]))
        limit = None
        if o.timeout is not None:
            minutes = max(1, math.ceil(o.timeout / 60))
            argv.append(f"--time={minutes}")
            limit = minutes * 60
        elif self.time_limit:
            argv.append(f"--time={self.time_limit}")
            limit = limit_seconds(self.time_limit)
        # checkpoint before the limit, then requeue (slurm_script.py)
        argv += ["--requeue", f"--signal=B:USR1@{signal_lead(limit, self.signal_before)}"]
        part = o.partition or self.partition
        if part:
            argv.append(f"--partition={part}")
        argv += self.sbatch_args
        if o.sbatch:
            try:
                argv += shlex.split(o.sbatch)
            except ValueError as e:
                raise LaunchError(f"sbatch option {o.sbatch!r}: {e}")
        argv.append(script)
        return argv

    def start(self, launch: Launch) -> SlurmHandle:
        script = launch.log_path[:-4] + ".sbatch" if launch.log_path.endswith(".log") \
            else launch.log_path + ".sbatch"
        try:
            Path(launch.log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(script, "w") as f:
                f.write(self.script_text(launch))
            os.chmod(script, 0o755)
        except OSError as e:
            raise LogDirError(f"cannot write the batch script {script} ({e.strerror})")
        argv = self.sbatch_argv(launch, script)
        try:
            out = _run(argv, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise LaunchError(f"sbatch failed: {e}")
        if out.returncode != 0:
            raise LaunchError(f"sbatch refused the job: {out.stderr.strip() or out.stdout.strip()}")
        job_id = out.stdout.strip().split(";")[0].strip()
        if not job_id.isdigit():
            raise LaunchError(f"sbatch printed no job id: {out.stdout.strip()!r}")
        h = SlurmHandle(launch, job_id)
        self.handles[launch.token] = h
        self._next_poll = 0.0
        return h

    def adopt(self, token: int, rec: dict, line) -> None:
        launch = Launch(token, line.command, line.options, [], 0, "", rec.get("log", ""),
                        f"L{line.lineno}", rec.get("attempt", 1))
        h = SlurmHandle(launch, str(rec["slurm_id"]))
        try:
            h.offset = Path(launch.log_path).stat().st_size
        except OSError:
            pass
        self.handles[token] = h
        self._next_poll = 0.0

    # -- track ------------------------------------------------------------------------------
    def poll(self) -> None:
        if not self.handles or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + self.poll_interval
        for h in self.handles.values():
            self._tail(h)
        try:
            out = _run(["squeue", "-h", "-u", self.user, "-o", "%i|%T"])
        except (OSError, subprocess.SubprocessError) as e:
            self.echo.message(f"[queue] squeue failed ({e}); will retry")
            return
        if out.returncode != 0:
            self.echo.message(f"[queue] squeue failed: {out.stderr.strip()}; will retry")
            return
        states = {}
        for row in out.stdout.splitlines():
            if "|" in row:
                jid, st = row.split("|", 1)
                states[jid.strip()] = st.strip()
        for tok, h in list(self.handles.items()):
            st = states.get(h.job_id)
            if st is not None and st in ACTIVE_STATES:
                if h.state in ("RUNNING", "COMPLETING") and st in ("PENDING", "REQUEUED"):
                    self.echo.message(f"[queue] {h.launch.label} requeued by SLURM (time limit or "
                                      f"preemption); it resumes from its checkpoint")
                h.state = st
                continue
            rc, reason = self._final(h)
            if rc is None:
                continue                 # not settled yet; ask again next poll
            self._tail(h)
            if h.split:
                h.split.flush()
            self.events.put(("exit", tok, rc, reason))
            del self.handles[tok]

    def _final(self, h: SlurmHandle):
        """(exit code, reason or None) of a job squeue no longer lists."""
        state, code, sig = None, None, 0
        try:
            out = _run(["scontrol", "-o", "show", "job", h.job_id])
            if out.returncode == 0:
                m = re.search(r"\bJobState=(\S+)", out.stdout)
                e = re.search(r"\bExitCode=(\d+):(\d+)", out.stdout)
                state = m.group(1) if m else None
                if e:
                    code, sig = int(e.group(1)), int(e.group(2))
        except (OSError, subprocess.SubprocessError):
            pass
        if state is None and shutil.which("sacct"):
            try:
                out = _run(["sacct", "-n", "-P", "-X", "-j", h.job_id, "-o", "State,ExitCode"])
                row = out.stdout.strip().splitlines()[0] if out.returncode == 0 and \
                    out.stdout.strip() else ""
                if row:
                    st, ec = row.split("|", 1)
                    state = st.split()[0]
                    a, _, b = ec.partition(":")
                    code, sig = int(a or 0), int(b or 0)
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
        if state in ACTIVE_STATES:
            return None, None
        rc_from_file, own_timeout = read_rc(h.launch.log_path)
        if own_timeout and h.launch.options.timeout is not None:
            return rc_from_file, f"timeout after {h.launch.options.timeout:g} s (stopped by SLURM " \
                                 "before its time limit)"
        if state is None and rc_from_file is None:
            return 1, "SLURM lost track of the job (no squeue/scontrol/sacct record)"
        if state is not None:
            state = state.upper()
        if state == "COMPLETED" or (state is None and rc_from_file == 0):
            return (rc_from_file if rc_from_file is not None else (code or 0)), None
        if rc_from_file is not None and state in (None, "FAILED"):
            return rc_from_file, None
        if state == "CANCELLED":
            return 128 + (sig or signal.SIGTERM), None if h.cancelled else "cancelled in SLURM"
        if state == "TIMEOUT":
            return 124, "SLURM time limit reached"
        rc = code if code else (128 + sig if sig else 1)
        return rc, f"SLURM state {state}"

    def _tail(self, h: SlurmHandle) -> None:
        path = h.launch.log_path
        try:
            size = Path(path).stat().st_size
        except OSError:
            return
        if size <= h.offset:
            return
        h.last_output = time.monotonic()
        try:
            with open(path, "rb") as f:
                f.seek(h.offset)
                data = f.read(size - h.offset)
        except OSError:
            return
        h.offset += len(data)
        if h.split is None:
            h.split = LineSplitter(self.echo, h.launch.label)
        h.split.feed(data)

    # -- control ----------------------------------------------------------------------------
    def signal(self, token: int, sig: int) -> None:
        h = self.handles.get(token)
        if h is None:
            return
        h.cancelled = True
        argv = ["scancel", h.job_id]
        if sig not in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
            argv = ["scancel", f"--signal={signal.Signals(sig).name[3:]}", h.job_id]
        try:
            _run(argv)
        except (OSError, subprocess.SubprocessError) as e:
            self.echo.message(f"[queue] scancel {h.job_id} failed: {e}")
        self._next_poll = 0.0

