"""Status writes while other programs write the jobs file: the write itself (in process, with
the other writer's move placed exactly in the window that matters), symlinks, shell=."""
import os
import subprocess
import sys
import threading
import time

import pytest

from test_queue_helpers import jobsfile, run_queue, write_jobs
from utility.queue import safewrite
from utility.queue.errors import QueueError

try:
    from utility.queue import safewrite
except ImportError:          # the tree before safewrite.py: the tests below still run
    safewrite = None

RUNNING = [(("a", 0), "running", ("open",))]


def test_append_through_a_descriptor_opened_before_the_write_is_kept(tmp_path):
    """A script holding Jobs.csv open (O_APPEND) keeps appending to the file the queue just
    replaced; those lines must end up in the jobs file."""
    jobs = write_jobs(tmp_path, "a,open,\n")
    held = open(jobs, "a")

    def late_appends():
        time.sleep(0.15)
        held.write("b,open,\n")
        held.flush()
        time.sleep(0.15)
        held.write("c,open,\n")
        held.close()

    t = threading.Thread(target=late_appends)
    t.start()
    try:
        assert [c for c, _ in safewrite.update_many(str(jobs), RUNNING)] == [True]
        t.join()
        time.sleep(0.1)
    finally:
        t.join()
    assert jobs.read_text() == "a,running,\nb,open,\nc,open,\n"


@pytest.mark.skipif(safewrite is None, reason="needs safewrite")
def test_partial_lines_wait_for_their_end_and_the_watch_ends_with_the_writer(tmp_path):
    jobs = write_jobs(tmp_path, "# x\na,open,\n")
    fd = os.open(jobs, os.O_WRONLY | os.O_APPEND)
    jf = safewrite.JobsFile(str(jobs))
    assert [c for c, _ in jf.update(RUNNING)] == [True]
    os.write(fd, b"b,op")
    jf.drain()
    assert jobs.read_text() == "# x\na,running,\n"            # half a line: not yet
    os.write(fd, b"en,\nc,")
    jf.drain()
    assert jobs.read_text() == "# x\na,running,\nb,open,\n"
    assert jf.busy()
    os.write(fd, b"open,")                                  # no newline at the end
    os.close(fd)
    jf.drain()                                              # the writer is gone: all of it
    assert jobs.read_text() == "# x\na,running,\nb,open,\nc,open,"
    assert not jf.busy()


def test_a_save_landing_between_read_and_write_is_not_overwritten(tmp_path, monkeypatch):
    """An editor's rename lands after the queue read the file and before it replaced it:
    the saved file (with its new line) must stay, with the queue's change applied on it."""
    jobs = write_jobs(tmp_path, "a,open,\n")
    saved = "a,open,\n# saved by an editor\nz,open,\n"
    real_replace = os.replace
    done = []

    def save_first():
        if not done:
            done.append(1)
            tmp = str(jobs) + ".editor"
            with open(tmp, "w") as f:
                f.write(saved)
            real_replace(tmp, jobs)

    def replace(a, b, **kw):
        if os.path.abspath(str(b)) == str(jobs):
            save_first()
        return real_replace(a, b, **kw)

    monkeypatch.setattr(os, "replace", replace)
    if safewrite is not None:
        real_exchange = safewrite.exchange

        def exchange(a, b):
            save_first()
            return real_exchange(a, b)
        monkeypatch.setattr(safewrite, "exchange", exchange)
    try:
        safewrite.update_many(str(jobs), RUNNING)
    except QueueError:
        pass                                                  # may say 'try again'
    assert done
    text = jobs.read_text()
    assert "# saved by an editor\nz,open,\n" in text, text
    if safewrite is not None:
        assert text == "a,running,\n# saved by an editor\nz,open,\n"


@pytest.mark.skipif(safewrite is None, reason="needs safewrite")
def test_missing_file_is_reported_and_not_created(tmp_path):
    jobs = tmp_path / "Jobs.csv"
    with pytest.raises(safewrite.Missing):
        safewrite.JobsFile(str(jobs)).update(RUNNING)
    assert not jobs.exists()


@pytest.mark.skipif(safewrite is None, reason="needs safewrite")
def test_in_place_rewrite_of_the_replaced_file_is_kept_aside(tmp_path):
    """An editor that opened the file before the queue replaced it truncates and rewrites
    it (nano, VS Code): its version went to the replaced file; it is kept next to it."""
    jobs = write_jobs(tmp_path, "a,open,\n# old\n")
    ed = os.open(jobs, os.O_WRONLY)
    jf = safewrite.JobsFile(str(jobs))
    jf.update(RUNNING)
    os.ftruncate(ed, 0)
    os.pwrite(ed, b"a,open,\n# the editor's version, longer than before\n", 0)
    os.close(ed)
    jf.drain()
    assert jobs.read_text() == "a,running,\n# old\n"           # nothing half carried over
    assert len(jf.conflicts) == 1
    side = jf.conflicts[0]
    assert open(side).read() == "a,open,\n# the editor's version, longer than before\n"


def test_symlinked_jobs_file_is_written_through(tmp_path):
    (tmp_path / "real").mkdir()
    target = write_jobs(tmp_path / "real", "true,open,\n# keep\n", name="jobs.csv")
    link = tmp_path / "Jobs.csv"
    link.symlink_to(os.path.join("real", "jobs.csv"))
    r = run_queue(tmp_path, link, "--gpus", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "jobs.csv")
    assert target.read_text() == "true,completed,\n# keep\n"
    assert (tmp_path / "real" / ".jobs.csv.lock").exists()    # the lock sits at the target
    assert not (tmp_path / ".Jobs.csv.lock").exists()


@pytest.mark.parametrize("opt", ["shell=", "shell= ", "shell=on", "shell"])
def test_shell_needs_an_explicit_true_value(tmp_path, opt):
    text = f"# x\necho hi > out.txt,open,{opt}\n"
    jobs = write_jobs(tmp_path, text)
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"Jobs.csv:2: bad option field '{opt.strip()}'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out.txt").exists()
    assert jobs.read_text() == text


def test_shell_false_values_and_true_values(tmp_path):
    jobs = write_jobs(tmp_path, "echo a > no1.txt,open,shell=0\necho b > no2.txt,open,shell=no\n"
                                "echo c > no3.txt,open,shell=False\n"
                                "echo d > yes1.txt,open,shell=1\necho e > yes2.txt,open,shell=YES\n"
                                "echo f > yes3.txt,open,shell=true\n")
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any((tmp_path / f"no{i}.txt").exists() for i in (1, 2, 3))
    assert [(tmp_path / f"yes{i}.txt").read_text() for i in (1, 2, 3)] == ["d\n", "e\n", "f\n"]


def test_empty_shell_value_added_while_running_is_a_line_error(tmp_path):
    (tmp_path / "wait.py").write_text(
        "import os, time\nopen('started', 'w').close()\n"
        "while not os.path.exists('go'):\n    time.sleep(0.02)\n")
    jobs = write_jobs(tmp_path, "python wait.py,open,gpus=0\n")
    q = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "..",
                                                       "QueueManager.py"),
                          "--jobs", str(jobs), "--log-dir", str(tmp_path / "logs"),
                          "--gpus", "none"], cwd=str(tmp_path), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 15
        while not (tmp_path / "started").exists() and time.monotonic() < end:
            time.sleep(0.02)
        with open(jobs, "a") as f:
            f.write("echo hi > out.txt,open,shell=\n")
        time.sleep(0.3)
        (tmp_path / "go").touch()
        out, _ = q.communicate(timeout=20)
    finally:
        if q.poll() is None:
            q.kill()
    assert q.returncode == 0, out
    assert "skipping a line: " in out and "Jobs.csv:2: bad option field 'shell='" in out
    assert not (tmp_path / "out.txt").exists()
    assert statuses_loose(jobs) == ["completed"]


def statuses_loose(jobs):
    return [ln.status for ln in jobsfile.parse_text(jobs.read_text(), strict=False)
            if ln.kind == "job"]
