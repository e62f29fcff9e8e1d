"""SIGTERM/SIGINT forwarding, and SIGKILL of the queue (crash) with recovery on restart."""
import json
import os
import signal
import sys
import time

from test_queue_helpers import (jobsfile, latest, queue_output, run_queue,
                                start_queue, statuses, stop, wait_for, write_jobs)

TRAP = """\
import os, signal, sys, time
name = sys.argv[1]
def on(sig, frame):
    open(name + '.got', 'w').write(signal.Signals(sig).name)
    sys.exit(128 + sig)
signal.signal(signal.SIGTERM, on)
signal.signal(signal.SIGINT, on)
open(name + '.pid', 'w').write(str(os.getpid()))
time.sleep(30)
open(name + '.finished', 'w').close()
"""


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_is_forwarded_and_jobs_reopened(tmp_path):
    (tmp_path / "trap.py").write_text(TRAP)
    text = "# two jobs side by side\npython trap.py a,open,gpus=1\npython trap.py b,open,gpus=1\n"\
           "python trap.py c,open,gpus=1\n"
    jobs = write_jobs(tmp_path, text)
    q = start_queue(tmp_path, jobs, "--gpus", "2")
    try:
        wait_for(lambda: (tmp_path / "a.pid").exists() and (tmp_path / "b.pid").exists(),
                 what="two jobs to start")
        assert statuses(jobs) == ["running", "running", "open"]
        t0 = time.monotonic()
        q.send_signal(signal.SIGTERM)
        rc = q.wait(timeout=20)
        assert time.monotonic() - t0 < 10
    finally:
        stop(q)
    out = queue_output(tmp_path)
    assert rc == 128 + signal.SIGTERM, out
    assert (tmp_path / "a.got").read_text() == "SIGTERM"
    assert (tmp_path / "b.got").read_text() == "SIGTERM"
    assert not (tmp_path / "c.pid").exists()              # nothing new starts while stopping
    assert jobs.read_text() == text                        # both marked open again
    lt = latest(tmp_path, jobs)
    assert lt[("python trap.py a", 0)]["status"] == "open"
    assert lt[("python trap.py a", 0)]["exit_code"] == 128 + signal.SIGTERM


def test_sigint_is_forwarded(tmp_path):
    (tmp_path / "trap.py").write_text(TRAP)
    jobs = write_jobs(tmp_path, "python trap.py a,open,\n")
    q = start_queue(tmp_path, jobs, "--gpus", "none")
    try:
        wait_for(lambda: (tmp_path / "a.pid").exists(), what="job to start")
        q.send_signal(signal.SIGINT)
        rc = q.wait(timeout=20)
    finally:
        stop(q)
    assert rc == 128 + signal.SIGINT
    assert (tmp_path / "a.got").read_text() == "SIGINT"
    assert statuses(jobs) == ["open"]


RESUMABLE = """\
import os, sys, time
# first run: 'train' for a long time; a rerun finds the checkpoint and finishes
if os.path.exists('ckpt'):
    open('runs.txt', 'a').write('resumed\\n')
    sys.exit(0)
open('ckpt', 'w').close()
open('runs.txt', 'a').write('first\\n')
open('job.pid', 'w').write(str(os.getpid()))
time.sleep(60)
"""


def test_sigkill_of_queue_leaves_valid_file_and_restart_reruns(tmp_path):
    (tmp_path / "train.py").write_text(RESUMABLE)
    text = "## E1\npython train.py,open,\ntrue,open,\n"
    jobs = write_jobs(tmp_path, text)
    q = start_queue(tmp_path, jobs, "--gpus", "none")
    try:
        wait_for(lambda: (tmp_path / "job.pid").exists(), what="job to start")
        q.send_signal(signal.SIGKILL)
        q.wait(timeout=10)
    finally:
        stop(q)
    # the file is valid and says what was going on
    assert jobs.read_text() == "## E1\npython train.py,running,\ntrue,open,\n"
    assert [ln.status for ln in jobsfile.read_jobs(str(jobs)) if ln.kind == "job"] == \
        ["running", "open"]
    orphan = int((tmp_path / "job.pid").read_text())
    assert pid_alive(orphan)             # its own process group survived the queue
    r = run_queue(tmp_path, jobs, "--gpus", "none", "--kill-grace", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "still runs; stopping it" in r.stdout
    wait_for(lambda: not pid_alive(orphan), timeout=5, what="orphan to be gone")
    assert (tmp_path / "runs.txt").read_text().split() == ["first", "resumed"]
    assert jobs.read_text() == "## E1\npython train.py,completed,\ntrue,completed,\n"


def test_restart_after_power_loss_reruns_dead_running_jobs(tmp_path):
    """A 'running' line whose process is gone (e.g. after a power cut) runs again."""
    jobs = write_jobs(tmp_path, "echo again,running,\necho fresh,open,\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    # a record of a start on this host by a process that no longer exists
    rec = {"event": "start", "jobs": str(jobs), "command": "echo again", "occurrence": 0,
           "attempt": 1, "pid": 2 ** 22 + 12345, "host": os.uname().nodename,
           "queue_pid": 2 ** 22 + 12344, "backend": "local", "start_time": time.time() - 60}
    (logs / "queue_state.jsonl").write_text(json.dumps(rec) + "\n" + '{"torn": ')
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "left 'running' by a queue that died" in r.stdout
    assert "[L1] again" in r.stdout
    assert statuses(jobs) == ["completed", "completed"]
