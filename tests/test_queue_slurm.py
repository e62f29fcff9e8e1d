"""The SLURM backend against a real cluster (.ci/slurm_setup.sh brings up a one-node one).
Skipped when sbatch/sinfo are missing or the cluster does not answer."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

from test_queue_helpers import (latest, queue_output, run_queue, start_queue,
                                statuses, stop, wait_for, write_jobs)


def _cluster():
    for c in ("sbatch", "sinfo", "squeue", "scancel"):
        if not shutil.which(c):
            return None, f"{c} not installed (run .ci/slurm_setup.sh as root)"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T|%G"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"sinfo failed: {e}"
    if r.returncode != 0:
        return None, f"SLURM cluster does not answer: {r.stderr.strip()}"
    rows = [x.split("|") for x in r.stdout.split()]
    if not any(st.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")
               for st, *_ in rows):
        return None, f"no usable SLURM node: {r.stdout.strip()}"
    return {"gpus": any("gpu" in (g[0] if g else "") for _, *g in rows)}, ""


CLUSTER, WHY = _cluster()
pytestmark = pytest.mark.skipif(CLUSTER is None, reason=WHY)
PY = sys.executable


def slurm_state(job_id):
    r = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True,
                       text=True, timeout=10)
    for tok in r.stdout.split():
        if tok.startswith("JobState="):
            return tok.split("=", 1)[1]
    return None


def test_submit_and_track_to_completed_and_failed(tmp_path):
    lines = [f'{PY} -c "print(\'hello from slurm\')",open,gpus=0',
             f"{PY} -c \"import sys; sys.exit(3)\",open,gpus=0",
             '"echo a,b",open,gpus=0']
    if CLUSTER["gpus"]:
        lines.append("echo cvd=$CUDA_VISIBLE_DEVICES,open,shell=1;gpus=1")
    jobs = write_jobs(tmp_path, "# slurm\n" + "\n".join(lines) + "\n")
    r = run_queue(tmp_path, jobs, "--backend", "slurm", "--poll", "0.3", timeout=28)
    assert r.returncode == 1, r.stdout + r.stderr          # one job failed
    st = statuses(jobs)
    assert st[:3] == ["completed", "failed", "completed"], r.stdout
    lt = latest(tmp_path, jobs)
    ok = lt[(f"{PY} -c \"print('hello from slurm')\"", 0)]
    bad = lt[(f'{PY} -c "import sys; sys.exit(3)"', 0)]
    assert ok["backend"] == "slurm" and ok["slurm_id"].isdigit()
    assert ok["exit_code"] == 0 and bad["exit_code"] == 3
    assert open(ok["log"]).read() == "hello from slurm\n"     # logs where the local backend puts them
    assert os.path.dirname(ok["log"]) == str(tmp_path / "logs")
    assert slurm_state(ok["slurm_id"]) in ("COMPLETED", None)
    assert slurm_state(bad["slurm_id"]) in ("FAILED", None)
    assert open(lt[("echo a,b", 0)]["log"]).read() == "a,b\n"
    assert "[L2] hello from slurm" in r.stdout
    if CLUSTER["gpus"]:
        assert st[3] == "completed"
        assert open(lt[("echo cvd=$CUDA_VISIBLE_DEVICES", 0)]["log"]).read() == "cvd=0\n"


def test_sigterm_cancels_with_scancel_and_reopens(tmp_path):
    (tmp_path / "long.py").write_text(
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    text = f"{PY} long.py,open,gpus=0\n"
    jobs = write_jobs(tmp_path, text)
    q = start_queue(tmp_path, jobs, "--backend", "slurm", "--poll", "0.3")
    try:
        wait_for(lambda: "[L1] started" in queue_output(tmp_path), timeout=20,
                 what="the SLURM job to run")
        job_id = latest(tmp_path, jobs)[(f"{PY} long.py", 0)]["slurm_id"]
        assert slurm_state(job_id) == "RUNNING"
        q.send_signal(signal.SIGTERM)
        rc = q.wait(timeout=20)
    finally:
        stop(q)
    assert rc == 128 + signal.SIGTERM, queue_output(tmp_path)
    assert slurm_state(job_id) in ("CANCELLED", None)
    assert jobs.read_text() == text
    assert latest(tmp_path, jobs)[(f"{PY} long.py", 0)]["status"] == "open"


def test_restart_after_queue_crash_tracks_submitted_job(tmp_path):
    (tmp_path / "wait.py").write_text(
        "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\nprint('done')\n")
    jobs = write_jobs(tmp_path, f"{PY} wait.py,open,gpus=0\n")
    q = start_queue(tmp_path, jobs, "--backend", "slurm", "--poll", "0.3")
    try:
        wait_for(lambda: "submitted as SLURM job" in queue_output(tmp_path), timeout=20,
                 what="submission")
        q.send_signal(signal.SIGKILL)
        q.wait(timeout=10)
    finally:
        stop(q)
    assert statuses(jobs) == ["running"]
    job_id = latest(tmp_path, jobs)[(f"{PY} wait.py", 0)]["slurm_id"]
    (tmp_path / "go").touch()
    r = run_queue(tmp_path, jobs, "--backend", "slurm", "--poll", "0.3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"tracking SLURM job {job_id} again" in r.stdout
    assert statuses(jobs) == ["completed"]                 # not submitted twice
    assert sum(1 for x in os.listdir(tmp_path / "logs") if x.endswith(".sbatch")) == 1


def test_after_is_submitted_with_afterok_and_a_failed_dependency_cancels(tmp_path):
    """The dependant of a submitted job is submitted at once with --dependency=afterok and
    SLURM starts it after the dependency completed; the pending dependant of a failed job
    is cancelled and marked failed without running."""
    (tmp_path / "rec.py").write_text(
        "import sys, time\nt0 = time.time()\ntime.sleep(float(sys.argv[2]))\n"
        "open(sys.argv[1] + '.t', 'w').write(f'{t0} {time.time()}')\nsys.exit(int(sys.argv[3]))\n")
    text = (f"{PY} rec.py pre 1.5 0,open,gpus=0;id=pre\n"
            f"{PY} rec.py ft 0 0,open,gpus=0;after=pre\n"
            f"{PY} rec.py bad 1.5 4,open,gpus=0;id=bad\n"
            f"{PY} rec.py dep 0 0,open,gpus=0;after=bad\n")
    jobs = write_jobs(tmp_path, text)
    r = run_queue(tmp_path, jobs, "--backend", "slurm", "--poll", "0.3", timeout=40)
    assert r.returncode == 1, r.stdout + r.stderr
    assert statuses(jobs) == ["completed", "completed", "failed", "failed"], r.stdout
    lt = latest(tmp_path, jobs)
    pre, ft = lt[(f"{PY} rec.py pre 1.5 0", 0)], lt[(f"{PY} rec.py ft 0 0", 0)]
    dep = lt[(f"{PY} rec.py dep 0 0", 0)]
    bad = lt[(f"{PY} rec.py bad 1.5 4", 0)]
    assert ft["dependency"] == f"afterok:{pre['slurm_id']}"
    assert ft["start_time"] < pre["end_time"]              # submitted while pre ran
    pre_t = [float(x) for x in (tmp_path / "pre.t").read_text().split()]
    ft_t = [float(x) for x in (tmp_path / "ft.t").read_text().split()]
    assert ft_t[0] >= pre_t[1] - 0.05                      # ... but started after it
    assert dep.get("dependency") == f"afterok:{bad['slurm_id']}"
    assert dep["reason"] == "dependency L3 (id=bad) failed" and dep["status"] == "failed"
    assert not (tmp_path / "dep.t").exists()               # never ran
    assert slurm_state(dep["slurm_id"]) in ("CANCELLED", None)


TRAIN = """\
import os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
if os.path.exists('ckpt'):                 # resumed: finish quickly
    print('resumed from', open('ckpt').read(), flush=True)
    time.sleep(1)
    open('train.done', 'w').write(repr(time.time()))
    sys.exit(0)
t0 = time.time()
print('training', flush=True)
while not stop and time.time() - t0 < 150:  # 'trains' until the time-limit signal
    time.sleep(0.05)
if not stop:
    sys.exit(1)
open('ckpt', 'w').write(f'{time.time() - t0:.1f} s')
print('checkpoint saved', flush=True)
sys.exit(143)
"""


def test_time_limit_signal_checkpoints_requeues_and_resumes_before_afterok(tmp_path):
    """A job longer than its 1-minute limit: SLURM signals it before the limit (USR1 to the
    batch script -> SIGTERM to the job), it checkpoints and exits 143, the script requeues
    it (same job id), it resumes and completes; its afterok dependant starts only then."""
    (tmp_path / "train.py").write_text(TRAIN)
    dep = f"{PY} -c \"import time; open('dep.start', 'w').write(repr(time.time()))\""
    jobs = write_jobs(tmp_path, f"{PY} train.py,open,gpus=0;id=train\n{dep},open,gpus=0;after=train\n")
    r = run_queue(tmp_path, jobs, "--backend", "slurm", "--time", "1", "--signal-before", "50",
                  "--poll", "0.5", timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert statuses(jobs) == ["completed", "completed"], r.stdout
    assert "checkpoint saved" in r.stdout and "resumed from" in r.stdout, r.stdout
    # the queue's "requeued by SLURM" line needs a poll to fall in the short PENDING spell of the requeue;
    # the requeue itself is proven by one submission (attempts 1) that checkpointed, resumed and completed
    lt = latest(tmp_path, jobs)
    train, after = lt[(f"{PY} train.py", 0)], lt[(dep, 0)]
    assert train["attempts"] == 1 and train["exit_code"] == 0     # one submission, requeued
    assert after["dependency"] == f"afterok:{train['slurm_id']}"
    sbatch = open(train["log"][:-4] + ".sbatch").read()
    assert "scontrol requeue" in sbatch
    r2 = subprocess.run(["scontrol", "-o", "show", "job", train["slurm_id"]], capture_output=True,
                        text=True, timeout=10)
    if r2.returncode == 0 and "Restarts=" in r2.stdout:
        assert "Restarts=0" not in r2.stdout, r2.stdout
    done = float((tmp_path / "train.done").read_text())
    assert float((tmp_path / "dep.start").read_text()) >= done - 0.05   # after the real end
