"""Shared helpers for the QueueManager tests (no tests in here)."""
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QM = os.path.join(REPO, "QueueManager.py")

from utility.queue import jobsfile
from utility.queue.state import StateLog


def write_jobs(tmp_path, text, name="Jobs.csv"):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def qm_args(tmp_path, jobs, *args):
    return [sys.executable, QM, "--jobs", str(jobs), "--log-dir", str(tmp_path / "logs"),
            *map(str, args)]


def run_queue(tmp_path, jobs, *args, timeout=25, env=None):
    return subprocess.run(qm_args(tmp_path, jobs, *args), capture_output=True, text=True,
                          timeout=timeout, cwd=str(tmp_path), env=env)


def start_queue(tmp_path, jobs, *args, env=None):
    out = open(tmp_path / "queue_stdout.txt", "wb")
    return subprocess.Popen(qm_args(tmp_path, jobs, *args), stdout=out,
                            stderr=subprocess.STDOUT, cwd=str(tmp_path), env=env)


def queue_output(tmp_path):
    try:
        return (tmp_path / "queue_stdout.txt").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for(cond, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def statuses(jobs):
    return [ln.status for ln in jobsfile.read_jobs(str(jobs)) if ln.kind == "job"]


def records(tmp_path, jobs):
    return StateLog(str(tmp_path / "logs"), str(jobs)).records()


def latest(tmp_path, jobs):
    return StateLog(str(tmp_path / "logs"), str(jobs)).latest()


def replace_text(path, text):
    """Edit the file the way editors do (write a temp file, rename over)."""
    tmp = str(path) + ".edit"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def stop(proc, sig=signal.SIGKILL):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def py(code):
    """A job command running `code` with the queue's Python (quoted for the jobs file)."""
    return jobsfile.format_job_line(f"python -c {shlex_quote(code)}").rsplit(",", 2)[0]


def shlex_quote(s):
    import shlex
    return shlex.quote(s)
