"""Timeouts, no-output timeouts, retries with backoff -> failed."""
import os
import sys
import time

from test_queue_helpers import latest, records, run_queue, statuses, write_jobs

SCRIPT = """\
import os, signal, sys, time
mode = sys.argv[1]
if mode == 'sleep':
    time.sleep(30)
elif mode == 'hang':                       # prints, then "randomly hangs"
    print('step 1', flush=True)
    time.sleep(30)
elif mode == 'chatty':                     # slow but alive: output every 0.2 s for 2 s
    for i in range(10):
        print('step', i)
        time.sleep(0.2)
elif mode == 'stubborn':                   # ignores SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open('stubborn.pid', 'w').write(str(os.getpid()))
    time.sleep(30)
elif mode == 'flaky':                      # fails until its third attempt
    n = int(open('count').read()) + 1 if os.path.exists('count') else 1
    open('count', 'w').write(str(n))
    open('times', 'a').write(f'{time.time()}\\n')
    sys.exit(0 if n >= 3 else 1)
elif mode == 'broken':
    n = int(open('bcount').read()) + 1 if os.path.exists('bcount') else 1
    open('bcount', 'w').write(str(n))
    sys.exit(2)
"""


def _setup(tmp_path, text):
    (tmp_path / "job.py").write_text(SCRIPT)
    return write_jobs(tmp_path, text)


def test_timeout_kills_and_fails(tmp_path):
    jobs = _setup(tmp_path, "python job.py sleep,open,timeout=1\n")
    t0 = time.monotonic()
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert time.monotonic() - t0 < 10
    assert r.returncode == 1
    assert statuses(jobs) == ["failed"]
    rec = latest(tmp_path, jobs)[("python job.py sleep", 0)]
    assert rec["reason"] == "timeout after 1 s" and rec["exit_code"] == -15


def test_no_output_timeout_catches_hangs_but_not_slow_jobs(tmp_path):
    jobs = _setup(tmp_path, "python job.py hang,open,no_output_timeout=1;gpus=0\n"
                            "python job.py chatty,open,no_output_timeout=1;gpus=0\n")
    t0 = time.monotonic()
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert time.monotonic() - t0 < 10
    assert statuses(jobs) == ["failed", "completed"], r.stdout
    lt = latest(tmp_path, jobs)
    assert lt[("python job.py hang", 0)]["reason"] == "no output for 1 s"
    assert open(lt[("python job.py hang", 0)]["log"]).read() == "step 1\n"


def test_sigkill_after_grace_when_sigterm_is_ignored(tmp_path):
    jobs = _setup(tmp_path, "python job.py stubborn,open,timeout=0.5\n")
    t0 = time.monotonic()
    r = run_queue(tmp_path, jobs, "--gpus", "none", "--kill-grace", "1")
    assert time.monotonic() - t0 < 10
    assert statuses(jobs) == ["failed"]
    assert latest(tmp_path, jobs)[("python job.py stubborn", 0)]["exit_code"] == -9, r.stdout


def test_retries_with_backoff_then_success(tmp_path):
    jobs = _setup(tmp_path, "python job.py flaky,open,retries=2;backoff=0.3\n")
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0, r.stdout
    assert statuses(jobs) == ["completed"]
    assert (tmp_path / "count").read_text() == "3"
    t = [float(x) for x in (tmp_path / "times").read_text().split()]
    assert t[1] - t[0] >= 0.3 and t[2] - t[1] >= 0.6          # backoff doubles
    ends = [r["status"] for r in records(tmp_path, jobs) if r["event"] == "end"]
    assert ends == ["retry", "retry", "completed"]
    assert latest(tmp_path, jobs)[("python job.py flaky", 0)]["attempts"] == 3


def test_retries_exhausted_is_failed(tmp_path):
    jobs = _setup(tmp_path, "python job.py broken,open,retries=1;backoff=0\ntrue,open,\n")
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 1
    assert statuses(jobs) == ["failed", "completed"]
    assert (tmp_path / "bcount").read_text() == "2"
    rec = latest(tmp_path, jobs)[("python job.py broken", 0)]
    assert rec["exit_code"] == 2 and rec["attempts"] == 2 and rec["status"] == "failed"


def test_job_commented_out_while_waiting_for_retry_is_dropped(tmp_path):
    jobs = _setup(tmp_path, "python job.py broken,open,retries=5;backoff=3\n")
    from test_queue_helpers import replace_text, start_queue, stop, wait_for
    q = start_queue(tmp_path, jobs, "--gpus", "none")
    try:
        wait_for(lambda: (tmp_path / "bcount").exists(), what="first attempt")
        wait_for(lambda: "retry 1/5" in (tmp_path / "queue_stdout.txt").read_text(),
                 what="retry to be scheduled")
        replace_text(jobs, "#python job.py broken,running,retries=5;backoff=3\n")
        assert q.wait(timeout=10) == 0
    finally:
        stop(q)
    assert (tmp_path / "bcount").read_text() == "1"
    assert jobs.read_text() == "#python job.py broken,running,retries=5;backoff=3\n"
