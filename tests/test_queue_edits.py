"""Edits made while the queue runs are honoured and never overwritten."""
import os
import sys

from test_queue_helpers import (queue_output, replace_text, start_queue, statuses,
                                stop, wait_for, write_jobs)

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


def test_append_comment_out_and_reopen_while_running(tmp_path):
    (tmp_path / "gate.py").write_text(GATE)
    text = ("## E1\n"
            "python gate.py a,open,\n"
            "python gate.py b,open,\n"
            "python gate.py c,completed,\n")
    jobs = write_jobs(tmp_path, text)
    q = start_queue(tmp_path, jobs, "--gpus", "1")
    try:
        wait_for(lambda: (tmp_path / "a.started").exists(), what="job a to start")
        assert statuses(jobs) == ["running", "open", "completed"]
        # the user edits the file while 'a' runs
        cur = jobs.read_text()
        assert cur == text.replace("gate.py a,open,", "gate.py a,running,")
        edited = (cur.replace("python gate.py b,open,", "#python gate.py b,open,")
                  .replace("python gate.py c,completed,", "python gate.py c,open,")
                  + "# appended while running\npython gate.py d,open,\n")
        replace_text(jobs, edited)
        for n in "acd":
            (tmp_path / f"{n}.go").touch()
        assert q.wait(timeout=25) == 0, queue_output(tmp_path)
    finally:
        stop(q)
    assert (tmp_path / "ran.txt").read_text().split() == ["a", "c", "d"]
    assert not (tmp_path / "b.started").exists()          # commented out while queued
    assert jobs.read_text() == ("## E1\n"
                                "python gate.py a,completed,\n"
                                "#python gate.py b,open,\n"
                                "python gate.py c,completed,\n"
                                "# appended while running\n"
                                "python gate.py d,completed,\n")


def test_user_status_edit_of_a_running_job_wins(tmp_path):
    """Reopening a job while it runs: the queue does not overwrite 'open' with 'completed'
    when it ends, and runs it again."""
    (tmp_path / "gate.py").write_text(GATE)
    jobs = write_jobs(tmp_path, "python gate.py a,open,\n")
    q = start_queue(tmp_path, jobs, "--gpus", "none")
    try:
        wait_for(lambda: (tmp_path / "a.started").exists(), what="job a to start")
        replace_text(jobs, "python gate.py a,open,\n")        # user: "run it again"
        (tmp_path / "a.go").touch()
        assert q.wait(timeout=25) == 0, queue_output(tmp_path)
    finally:
        stop(q)
    assert (tmp_path / "ran.txt").read_text().split() == ["a", "a"]
    assert jobs.read_text() == "python gate.py a,completed,\n"
    assert "changed to 'open' meanwhile" in queue_output(tmp_path)


def test_job_deleted_while_running_is_not_written_back(tmp_path):
    (tmp_path / "gate.py").write_text(GATE)
    jobs = write_jobs(tmp_path, "python gate.py a,open,\n# keep me\n")
    q = start_queue(tmp_path, jobs, "--gpus", "none")
    try:
        wait_for(lambda: (tmp_path / "a.started").exists(), what="job a to start")
        replace_text(jobs, "# keep me\n# a was removed by hand\n")
        (tmp_path / "a.go").touch()
        assert q.wait(timeout=25) == 0, queue_output(tmp_path)
    finally:
        stop(q)
    assert jobs.read_text() == "# keep me\n# a was removed by hand\n"
