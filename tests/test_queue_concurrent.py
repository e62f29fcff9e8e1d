"""Other processes write Jobs.csv while the queue runs: appenders (`>>`, a script holding the
file open), editor-style saves (move away, write anew), deletion. Real concurrent writers;
every line they wrote must survive and every job must run exactly once."""
import os
import signal
import subprocess
import sys
import time

from test_queue_helpers import (jobsfile, latest, queue_output, run_queue,
                                start_queue, statuses, stop, wait_for, write_jobs)

# Appends lines to Jobs.csv as fast as it can for `secs` seconds; every `every`-th line is a
# job that appends its id to runs.txt, the others are comments. mode 'reopen' opens the file
# for every line (like `echo ... >> Jobs.csv`), mode 'held' keeps one O_APPEND descriptor.
APPENDER = """\
import os, sys, time
tag, secs, every, mode = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
end = time.time() + secs
lines = []
held = open('Jobs.csv', 'a') if mode == 'held' else None
n = 0
while time.time() < end:
    n += 1
    if n % every == 0:
        line = f'echo {tag}-{n} >> runs.txt,open,gpus=0;shell=1\\n'
    else:
        line = f'# {tag} note {n}\\n'
    if held is None:
        with open('Jobs.csv', 'a') as f:
            f.write(line)
    else:
        held.write(line)
        held.flush()
    lines.append(line)
    if n % 4 == 0:
        time.sleep(0.001)          # about a shell loop's pace; unthrottled is ~20k lines/s
open(tag + '.written', 'w').write(''.join(lines))
"""

# Saves the file the way an editor with a backup does: move it away, write it anew a few ms
# later (adding a job line every few saves). It reads the moved-away copy, so it never
# overwrites a change of the queue (an editor saving a stale buffer would, with any tool).
SAVER = """\
import os, sys, time
secs, every = float(sys.argv[1]), int(sys.argv[2])
end = time.time() + secs
added = []
n = 0
while time.time() < end:
    n += 1
    os.rename('Jobs.csv', 'Jobs.csv~')
    time.sleep(0.005)
    with open('Jobs.csv~') as f:
        text = f.read()
    if n % every == 0:
        line = f'echo s-{n} >> runs.txt,open,gpus=0;shell=1\\n'
        text += line
        added.append(line)
    with open('Jobs.csv', 'w') as f:
        f.write(text)
    os.unlink('Jobs.csv~')
    time.sleep(0.01)
open('saver.written', 'w').write(''.join(added))
"""


def _job_id(raw):
    return raw.split(" >> ")[0].split()[-1]


def _check_every_line_once(tmp_path, jobs, written):
    """Each written line is in the final file exactly once (job lines with any status)."""
    final = jobs.read_text().splitlines(keepends=True)
    norm = {}
    for raw in final:
        ln = jobsfile.parse_line(raw, 0)
        key = raw if ln.kind != "job" else ln.with_status("open")
        norm[key] = norm.get(key, 0) + 1
    missing = [w for w in written if norm.get(w, 0) == 0]
    twice = [w for w in written if norm.get(w, 0) > 1]
    assert not missing, f"{len(missing)} of {len(written)} lines lost, e.g. {missing[:3]}"
    assert not twice, f"lines present twice: {twice[:3]}"


def _check_runs(tmp_path, job_lines):
    runs = (tmp_path / "runs.txt").read_text().split() if (tmp_path / "runs.txt").exists() else []
    ids = [_job_id(x) for x in job_lines]
    counts = {i: runs.count(i) for i in ids}
    assert [i for i, c in counts.items() if c != 1] == [], \
        f"jobs not run exactly once: {[(i, c) for i, c in counts.items() if c != 1][:5]}"
    assert len(runs) == len(ids)


def _wait_all_done(q, jobs, n_jobs, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert q.poll() is None, f"the queue exited ({q.poll()})"
        try:
            text = jobs.read_text()
        except OSError:
            text = ""
        if text.count(",completed,") >= n_jobs and ",open," not in text and \
                ",running," not in text:
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {n_jobs} jobs to complete")


def test_fast_appenders_lose_no_line_and_run_every_job_once(tmp_path):
    (tmp_path / "appender.py").write_text(APPENDER)
    jobs = write_jobs(tmp_path, "# appended to while the queue runs\n"
                                "echo first >> runs.txt,open,gpus=0;shell=1\n")
    q = start_queue(tmp_path, jobs, "--gpus", "none", "--watch", "--quiet",
                    "--max-parallel", "4")
    try:
        wait_for(lambda: (tmp_path / "runs.txt").exists(), what="the first job")
        ws = [subprocess.Popen([sys.executable, "appender.py", tag, "4", "60", mode],
                               cwd=str(tmp_path))
              for tag, mode in (("a", "reopen"), ("b", "reopen"), ("c", "held"))]
        for w in ws:
            assert w.wait(timeout=30) == 0
        written = []
        for tag in "abc":
            written += (tmp_path / f"{tag}.written").read_text().splitlines(keepends=True)
        job_lines = [x for x in written if not x.startswith("#")]
        assert len(written) > 3000 and len(job_lines) > 50
        _wait_all_done(q, jobs, len(job_lines) + 1, timeout=20)
        assert q.poll() is None, queue_output(tmp_path)          # never gave up
        q.send_signal(signal.SIGTERM)
        assert q.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        stop(q)
    _check_every_line_once(tmp_path, jobs, written)
    _check_runs(tmp_path, job_lines + ["echo first >> runs.txt,open,\n"])
    assert "keeps changing" not in queue_output(tmp_path)


def test_editor_saves_while_jobs_run(tmp_path):
    (tmp_path / "saver.py").write_text(SAVER)
    start = "".join(f"echo j{i} >> runs.txt,open,gpus=0;shell=1\n" for i in range(40))
    jobs = write_jobs(tmp_path, "# saved by an editor while the queue runs\n" + start)
    q = start_queue(tmp_path, jobs, "--gpus", "none", "--watch", "--quiet")
    try:
        wait_for(lambda: (tmp_path / "runs.txt").exists(), what="the queue to run jobs")
        s = subprocess.Popen([sys.executable, "saver.py", "4", "3"], cwd=str(tmp_path))
        assert s.wait(timeout=30) == 0
        added = (tmp_path / "saver.written").read_text().splitlines(keepends=True)
        assert len(added) > 20
        _wait_all_done(q, jobs, 40 + len(added), timeout=20)
        assert q.poll() is None, queue_output(tmp_path)
        q.send_signal(signal.SIGTERM)
        assert q.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        stop(q)
    _check_every_line_once(tmp_path, jobs, start.splitlines(keepends=True) + added)
    _check_runs(tmp_path, start.splitlines(keepends=True) + added)
    out = queue_output(tmp_path)
    assert "does not exist" not in out and "error" not in out.lower(), out


GATE = """\
import os, sys, time
name = sys.argv[1]
open(name + '.started', 'w').close()
end = time.time() + 20
while not os.path.exists(name + '.go') and time.time() < end:
    time.sleep(0.02)
with open('ran.txt', 'a') as f:
    f.write(name + '\\n')
"""


def test_deleted_file_waits_supervises_and_records_the_end(tmp_path):
    (tmp_path / "gate.py").write_text(GATE)
    text = "## E1\npython gate.py a,open,\n"
    jobs = write_jobs(tmp_path, text)
    q = start_queue(tmp_path, jobs, "--gpus", "none")
    try:
        wait_for(lambda: (tmp_path / "a.started").exists(), what="job a to start")
        saved = jobs.read_text()
        os.unlink(jobs)                                      # rm Jobs.csv
        wait_for(lambda: "is missing" in queue_output(tmp_path), what="the message")
        (tmp_path / "a.go").touch()                         # the job ends meanwhile
        wait_for(lambda: (tmp_path / "ran.txt").exists(), what="job a to end")
        time.sleep(0.5)
        assert q.poll() is None, queue_output(tmp_path)     # still waiting for the file
        jobs.write_text(saved)                               # the user puts it back
        assert q.wait(timeout=15) == 0, queue_output(tmp_path)
    finally:
        stop(q)
    out = queue_output(tmp_path)
    assert out.count("is missing") == 1, out                 # said once
    assert jobs.read_text() == "## E1\npython gate.py a,completed,\n"
    assert (tmp_path / "ran.txt").read_text().split() == ["a"]


def test_end_recorded_while_file_missing_is_not_rerun_after_restart(tmp_path):
    (tmp_path / "gate.py").write_text(GATE)
    jobs = write_jobs(tmp_path, "python gate.py a,open,\ntrue,completed,\n")
    q = start_queue(tmp_path, jobs, "--gpus", "none")
    try:
        wait_for(lambda: (tmp_path / "a.started").exists(), what="job a to start")
        saved = jobs.read_text()
        os.rename(jobs, tmp_path / "Jobs.csv.bak")             # an editor moved it away ...
        (tmp_path / "a.go").touch()
        wait_for(lambda: (tmp_path / "ran.txt").exists(), what="job a to end")
        wait_for(lambda: latest(tmp_path, jobs).get(("python gate.py a", 0), {}).get("ended"),
                 what="the end record")
        q.send_signal(signal.SIGTERM)                           # ... and the queue is stopped
        assert q.wait(timeout=10) == 128 + signal.SIGTERM, queue_output(tmp_path)
    finally:
        stop(q)
    assert saved == "python gate.py a,running,\ntrue,completed,\n"
    os.rename(tmp_path / "Jobs.csv.bak", jobs)
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "ran.txt").read_text().split() == ["a"]           # not run again
    assert jobs.read_text() == "python gate.py a,completed,\ntrue,completed,\n"


HOLDER = """\
import os, time
f = open('Jobs.csv', 'a')                 # opened before the queue writes anything
open('opened', 'w').close()
time.sleep(1.5)
f.write('echo late >> runs.txt,open,gpus=0;shell=1\\n')
f.flush()
time.sleep(0.5)
f.close()
"""


def test_queue_waits_for_a_program_holding_the_replaced_file_open(tmp_path):
    """--once: the queue's writes replaced Jobs.csv, but a script still has the old file
    open and appends a job later; the queue carries it over and runs it before exiting."""
    (tmp_path / "holder.py").write_text(HOLDER)
    jobs = write_jobs(tmp_path, "true,open,gpus=0\n")
    h = subprocess.Popen([sys.executable, "holder.py"], cwd=str(tmp_path))
    try:
        wait_for(lambda: (tmp_path / "opened").exists(), what="the holder")
        r = run_queue(tmp_path, jobs, "--gpus", "none")
        assert h.wait(timeout=10) == 0
    finally:
        stop(h)
    assert r.returncode == 0, r.stdout + r.stderr
    assert jobs.read_text() == "true,completed,gpus=0\necho late >> runs.txt,completed,gpus=0;shell=1\n"
    assert (tmp_path / "runs.txt").read_text() == "late\n"


def test_final_status_overwritten_by_a_stale_save_is_written_again(tmp_path):
    """A save made from a copy read while the job ran puts 'running' back after the queue
    wrote 'completed': the queue writes 'completed' again and does not run the job again;
    a line that another queue has started meanwhile is left alone."""
    jobs = write_jobs(tmp_path, "echo a >> runs.txt,open,gpus=0;shell=1\n"
                                "echo b >> runs.txt,open,gpus=0;shell=1\n")
    q = start_queue(tmp_path, jobs, "--gpus", "none", "--watch")
    try:
        wait_for(lambda: statuses(jobs) == ["completed", "completed"], what="both jobs")
        # another queue (this test's process) starts b: its record comes first, then it
        # writes 'running'; at the same time a stale save puts 'running' back for a
        rec = {"event": "start", "jobs": str(jobs), "command": "echo b >> runs.txt",
               "occurrence": 0, "attempt": 1, "pid": os.getpid(), "queue_pid": os.getpid(),
               "host": os.uname().nodename, "backend": "local", "start_time": time.time()}
        import json
        with open(tmp_path / "logs" / "queue_state.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        stale = jobs.read_text().replace(",completed,", ",running,")
        tmp = tmp_path / "stale"
        tmp.write_text(stale)
        os.replace(tmp, jobs)
        wait_for(lambda: statuses(jobs) == ["completed", "running"], timeout=10,
                 what="a's status written again")
        time.sleep(1.5)
        assert statuses(jobs) == ["completed", "running"]       # b is left to its queue
        assert q.poll() is None
        q.send_signal(signal.SIGTERM)
        assert q.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        stop(q)
    assert (tmp_path / "runs.txt").read_text().split() == ["a", "b"]      # nothing ran twice
    assert "line 1 says 'running' again" in queue_output(tmp_path)
