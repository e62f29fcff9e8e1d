"""--watch mode, and the sbatch command line the SLURM backend builds (no cluster needed)."""
import os
import signal
import sys

from test_queue_helpers import (queue_output, replace_text, start_queue, statuses,
                                stop, wait_for, write_jobs)
from utility.queue.base import Launch
from utility.queue.jobsfile import parse_options
from utility.queue.slurm_backend import SlurmBackend


def test_watch_waits_for_new_lines(tmp_path):
    jobs = write_jobs(tmp_path, "# empty for now\n")
    q = start_queue(tmp_path, jobs, "--gpus", "1", "--watch")
    try:
        wait_for(lambda: "backend local" in queue_output(tmp_path), what="queue up")
        assert q.poll() is None                       # still waiting, not exited
        replace_text(jobs, "# empty for now\necho late,open,gpus=1\n")
        wait_for(lambda: statuses(jobs) == ["completed"], what="appended job to complete")
        assert "[L2] late" in queue_output(tmp_path)
        replace_text(jobs, "# empty for now\necho late,open,gpus=1\n")   # reopen it
        wait_for(lambda: queue_output(tmp_path).count("[L2] late") == 2, what="rerun")
        wait_for(lambda: statuses(jobs) == ["completed"], what="rerun to complete")
        q.send_signal(signal.SIGTERM)
        assert q.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        stop(q)


def test_sbatch_command_line(tmp_path):
    b = SlurmBackend.__new__(SlurmBackend)          # no cluster needed to build the argv
    b.partition, b.time_limit, b.sbatch_args = "gpu", "1-00:00:00", ["--mem=8G"]
    b.signal_before, b.max_requeues = 120, 20
    opts = parse_options("gpus=2;timeout=90m;sbatch=--qos=high --exclusive")
    log = str(tmp_path / "x.log")
    la = Launch(1, "python a.py --w_l [1,2]", opts, [], 2, str(tmp_path), log, "L1")
    argv = b.sbatch_argv(la, "/s.sbatch")
    assert argv[:2] == ["sbatch", "--parsable"]
    for a in (f"--output={log}", f"--chdir={tmp_path}", "--gres=gpu:2", "--time=90",
              "--partition=gpu", "--mem=8G", "--qos=high", "--exclusive"):
        assert a in argv, (a, argv)
    assert argv[-1] == "/s.sbatch"
    la2 = Launch(2, "echo hi", parse_options("partition=debug"), [], 0, str(tmp_path), log, "L2")
    argv2 = b.sbatch_argv(la2, "/s.sbatch")
    assert "--time=1-00:00:00" in argv2 and "--partition=debug" in argv2
    assert not any(a.startswith("--gres") for a in argv2)
    assert "--requeue" in argv and "--signal=B:USR1@120" in argv      # checkpoint, then requeue
    b.time_limit = "0:03:00"                                           # 3 min: signal at half
    assert "--signal=B:USR1@90" in b.sbatch_argv(la2, "/s.sbatch")
    script = b.script_text(la)
    assert "python a.py --w_l '[1,2]'" in script and f"> {log}.rc" in script
    assert '"$rc timeout"' in script and "scontrol requeue" not in script   # its own timeout ends it
    assert "scontrol requeue" in b.script_text(la2) and "-lt 20" in b.script_text(la2)
