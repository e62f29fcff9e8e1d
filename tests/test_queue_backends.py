"""The backend protocol: the questions the queue loop asks, answered by each backend."""
import os
import re
import subprocess
import sys

from test_queue_helpers import (QM, REPO, queue_output, start_queue, stop,
                                wait_for, write_jobs)
from utility.queue import base
from utility.queue.jobsfile import parse_options
from utility.queue.local_backend import LocalBackend
from utility.queue.slurm_backend import SlurmBackend


def test_both_backends_implement_the_protocol():
    local = LocalBackend()
    slurm = SlurmBackend(None, None, all_gpus=3, check=False)   # no cluster needed to plan
    for b in (local, slurm):
        assert isinstance(b, base.Backend)
    assert not getattr(base.Backend, "__abstractmethods__", set()) - {
        "need_of", "can_ever_run", "select", "gpu_request", "where", "start", "signal"}
    everything, two = parse_options(""), parse_options("gpus=2")
    # locally gpus=all means every GPU and alone; SLURM asks for the --gpus count, not alone
    assert local.need_of(everything, 4) == (4, True)
    assert local.need_of(two, 4) == (2, False)
    assert slurm.need_of(everything, 4) == (3, False)
    assert SlurmBackend(None, None, check=False).need_of(everything, 4) == (0, False)
    assert slurm.need_of(two, 0) == (2, False)
    assert local.can_ever_run(2, False, 1) is False and local.can_ever_run(9, True, 1) is True
    assert slurm.can_ever_run(64, False, 0) is True              # the cluster decides
    assert local.gpu_request(3, ["0", "1"]) == 2 and slurm.gpu_request(3, []) == 3
    assert local.where(0, ["0", "1"]) == "GPUs 0,1" and local.where(0, []) == "no GPU"
    assert slurm.where(2, []) == "sbatch --gres=gpu:2" and slurm.where(0, []) == "sbatch"


def test_reconcile_decisions():
    local = LocalBackend()
    slurm = SlurmBackend(None, None, check=False)
    srec = {"backend": "slurm", "slurm_id": "42"}
    d = local.reconcile(srec, 3, os.getpid())
    assert d.action == "leave" and "SLURM job 42" in d.message and "--backend slurm" in d.message
    assert slurm.reconcile(srec, 3, os.getpid()).action == "adopt"
    dead = {"backend": "local", "pid": 2 ** 22 + 5, "queue_pid": 2 ** 22 + 4,
            "host": os.uname().nodename}
    for b in (local, slurm):
        d = b.reconcile(dead, 7, os.getpid())
        assert d.action == "rerun" and d.message.startswith("line 7 was left 'running'")
    other_host = dict(dead, host="elsewhere-" + os.uname().nodename)
    assert local.reconcile(other_host, 7, os.getpid()).action == "leave"
    # an orphan: its queue (a dead pid) is gone, the job (this very process) still runs
    orphan = dict(dead, pid=os.getpid(), proc_start=None)
    d = local.reconcile(orphan, 2, 1)
    assert d.action == "stop_rerun" and d.pid == os.getpid()


def test_dry_run_uses_the_same_gpu_need_as_the_runner(tmp_path):
    """--backend slurm without --gpus submits gpus=all jobs with no GPU request; the dry run
    said --gres=gpu:<detected GPUs>."""
    jobs = write_jobs(tmp_path, "true,open,\ntrue,open,gpus=1\n")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1")
    r = subprocess.run([sys.executable, QM, "--jobs", str(jobs), "--backend", "slurm",
                        "--dry-run"], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "submit L1 (sbatch): true" in r.stdout, r.stdout
    assert "submit L2 (sbatch --gres=gpu:1): true" in r.stdout
    r = subprocess.run([sys.executable, QM, "--jobs", str(jobs), "--backend", "slurm",
                        "--dry-run", "--gpus", "4"], env=env, capture_output=True, text=True,
                       timeout=20)
    assert "submit L1 (sbatch --gres=gpu:4): true" in r.stdout, r.stdout


def test_runner_asks_the_backend_and_modules_stay_small():
    qdir = os.path.join(REPO, "utility", "queue")
    runner = open(os.path.join(qdir, "runner.py")).read()
    assert not re.search(r"backend\.name\s*[!=]=", runner)
    assert "slurm" not in runner.lower().replace("slurm_id", "")
    cli = open(os.path.join(qdir, "cli.py")).read()
    assert 'o.gpus == "all"' not in cli and "need_of" in cli
    for name in os.listdir(qdir):
        if name.endswith(".py"):
            with open(os.path.join(qdir, name)) as f:
                assert sum(1 for _ in f) < 500, name


GATE = """\
import os, time
open('a.started', 'w').close()
end = time.time() + 20
while not os.path.exists('a.go') and time.time() < end:
    time.sleep(0.02)
"""


def test_exit_status_comes_from_state_not_from_warning_text(tmp_path):
    """A line broken while the queue runs is skipped with a warning; the warning quoting
    'GPUs but only' must not turn the exit status into 1."""
    (tmp_path / "gate.py").write_text(GATE)
    jobs = write_jobs(tmp_path, "python gate.py,open,\n")
    q = start_queue(tmp_path, jobs, "--gpus", "none")
    try:
        wait_for(lambda: (tmp_path / "a.started").exists(), what="the job to start")
        with open(jobs, "a") as f:
            f.write("echo it needs 3 GPUs but only 2 exist,unsure,\n")
        wait_for(lambda: "skipping a line" in queue_output(tmp_path), what="the warning")
        (tmp_path / "a.go").touch()
        rc = q.wait(timeout=20)
    finally:
        stop(q)
    assert rc == 0, queue_output(tmp_path)
