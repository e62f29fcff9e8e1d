"""Adversarial queue and preemption cases (issue 25): each states its input, the expected exit code and
message fragment, and proves that nothing the user owns changed and that no file appeared outside the
output root (the queue's --log-dir).

Mistakes in the input run in-process through the queue's ``main`` (fast); what is the behaviour of
processes (a job's status following its own line, interrupted jobs resumed, a full disk mid-run, a
real training run signalled after its last step) runs QueueManager.py as a subprocess on tiny jobs.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import make_folder_dataset, small_run_config, task_dict, write_yaml
from utility.errors import Stopped, UserError
from utility.queue import jobsfile
from utility.queue.cli import main as queue_main
from utility.queue.parsecache import ParseCache
from utility.queue.state import StateLog
from utility.training import session
from utility.training.callbacks import Callback, CallbackList
from utility.training.stopsignal import StopOnSignal

REPO = Path(__file__).resolve().parents[2]
QM = REPO / "QueueManager.py"
PY = sys.executable


# ----------------------------------------------------------------------------- the workspace

@dataclass
class Ws:
    root: Path

    @property
    def user(self) -> Path:
        return self.root / "user"

    @property
    def out(self) -> Path:
        return self.root / "out"          # the queue's --log-dir: the only place outputs may appear

    def jobs(self, text: str | bytes, name: str = "Jobs.csv") -> Path:
        p = self.user / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def args(self, jobs: Path, *extra: str) -> list[str]:
        return ["--jobs", str(jobs), "--log-dir", str(self.out), "--gpus", "none", "--quiet", *extra]


def snapshot(root: Path) -> dict[str, object]:
    """Every path under root: bytes of regular files, the target of links, the kind of the rest
    (a FIFO is never opened)."""
    out: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir" if p.is_dir() else "special"
    return out


def outside_out(root: Path) -> set[str]:
    return {k for k in snapshot(root) if not (k == "out" or k.startswith("out/"))}


@pytest.fixture
def ws(tmp_path) -> Ws:
    w = Ws(tmp_path)
    w.user.mkdir()
    return w


def call_queue(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = queue_main(argv)
    return rc, err.getvalue() + out.getvalue()


# ----------------------------------------------------------------------------- input mistakes (in-process)

def big_line(ws: Ws) -> list[str]:
    return ws.args(ws.jobs("echo " + "x" * 1_000_000 + ",open,gpus=0\n"))


def fifo(ws: Ws) -> list[str]:
    os.mkfifo(ws.user / "Jobs.csv")
    return ws.args(ws.user / "Jobs.csv")


def loop(ws: Ws) -> list[str]:
    os.symlink(ws.user / "b.csv", ws.user / "a.csv")
    os.symlink(ws.user / "a.csv", ws.user / "b.csv")
    return ws.args(ws.user / "a.csv")


def full_disk(ws: Ws) -> list[str]:
    """--log-dir on a full disk: its state log is /dev/full (every write: ENOSPC)."""
    ws.out.mkdir()
    os.symlink("/dev/full", ws.out / "queue_state.jsonl")
    return ws.args(ws.jobs("echo hi,open,gpus=0\n"))


def log_dir_under_file(ws: Ws) -> list[str]:
    (ws.user / "a_file").write_text("x")
    return ["--jobs", str(ws.jobs("echo hi,open,gpus=0\n")), "--log-dir", str(ws.user / "a_file" / "logs"),
            "--gpus", "none"]


def jobs_with(text: str | bytes, *extra: str) -> Callable[[Ws], list[str]]:
    return lambda ws: ws.args(ws.jobs(text), *extra)


MISTAKES = {  # case: (build argv, exit code, fragment of the one-line message)
    "gpus_garbage": (jobs_with("echo hi,open,gpus=0\n", "--gpus", "garbage"), 2, "'garbage' is not a GPU id"),
    "gpus_twice": (jobs_with("echo hi,open,gpus=0\n", "--gpus", "0,0"), 2, "listed twice"),
    "gpus_negative": (jobs_with("echo hi,open,gpus=0\n", "--gpus", "-1"), 2, "is not a GPU id"),
    "one_megabyte_line": (big_line, 2, "at most 65536 are allowed"),
    "fifo_as_jobs_file": (fifo, 2, "is not a regular file"),
    "symlink_loop": (loop, 2, "Too many levels of symbolic links"),
    "jobs_file_is_a_directory": (lambda ws: ws.args(ws.user), 2, "is a directory"),
    "missing_jobs_file": (lambda ws: ws.args(ws.user / "nope.csv"), 2, "does not exist"),
    "full_disk_log_dir": (full_disk, 2, "No space left on device"),
    "log_dir_under_a_file": (log_dir_under_file, 2, "Not a directory"),
    "binary_jobs_file": (jobs_with(b"\x00\xff\xfe\x89PNG\r\n\x1a\n"), 2, "expected '<command>,<status>"),
    "unknown_status": (jobs_with("echo hi,opne,\n"), 2, "unknown status 'opne'"),
    "unknown_option": (jobs_with("echo hi,open,gpu=1;retires=2\n"), 2, "unknown option 'retires'"),
    "bad_duration": (jobs_with("echo hi,open,timeout=soon\n"), 2, "bad duration 'soon'"),
    "after_unknown_id": (jobs_with("echo a,open,after=nobody\n"), 2, "no job has id=nobody"),
    "dependency_cycle": (jobs_with("echo a,open,id=a;after=b\necho b,open,id=b;after=a\n"), 2, "dependency cycle"),
    "max_parallel_zero": (jobs_with("echo hi,open,\n", "--max-parallel", "0"), 2, "--max-parallel must be"),
    "signal_before_zero": (jobs_with("echo hi,open,\n", "--signal-before", "0"), 2, "--signal-before must be"),
    "workdir_missing": (lambda ws: ws.args(ws.jobs("echo hi,open,\n"), "--workdir", str(ws.user / "no")), 2,
                        "is not a directory"),
    "dry_run_fifo": (lambda ws: fifo(ws) + ["--dry-run"], 2, "is not a regular file"),
    "status_symlink_loop": (lambda ws: ["status"] + loop(ws), 2, "Too many levels of symbolic links"),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_input_mistakes_are_one_line_and_touch_nothing(ws, case):
    build, code, fragment = MISTAKES[case]
    argv = build(ws)
    before = snapshot(ws.user)
    t0 = time.monotonic()
    rc, text = call_queue(argv)
    assert rc == code, text
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    assert len(errors) == 1 and fragment in errors[0], text
    assert "Traceback" not in text and len(errors[0]) < 400, text
    assert time.monotonic() - t0 < 60                      # a hang guard, not a speed test
    assert snapshot(ws.user) == before                     # nothing the user owns changed
    assert outside_out(ws.root) == {"user", *(f"user/{k}" for k in before)}
    assert not (ws.out / "queue_state.jsonl").exists() or (ws.out / "queue_state.jsonl").is_symlink()


# ----------------------------------------------------------------------------- the queue's behaviour (subprocess)

def run_qm(ws: Ws, jobs: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(QM), *ws.args(jobs, *extra)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ws.user))


def start_qm(ws: Ws, jobs: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([PY, str(QM), *ws.args(jobs, *extra)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(ws.user))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout                  # a hang guard only
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def statuses(jobs: Path) -> list[str]:
    return [ln.status for ln in jobsfile.read_jobs(str(jobs)) if ln.kind == "job"]


COUNTER = """\
import os, sys, time
n = len(os.listdir('runs')) if os.path.isdir('runs') else 0
os.makedirs('runs', exist_ok=True)
open(f'runs/{n}', 'w').close()
if sys.argv[1] == 'twin':          # first run succeeds; the second waits for 'go', then fails
    if n == 0:
        sys.exit(0)
    while not os.path.exists('go'):
        time.sleep(0.02)
    sys.exit(3)
if sys.argv[1] == 'sleep':         # stopped by the queue's own timeout: exits 143 like training
    import signal
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    time.sleep(60)
sys.exit(int(sys.argv[2]) if n < int(sys.argv[3]) else 0)   # exit code A for the first B runs
"""


@pytest.mark.e2e
def test_identical_lines_each_follow_their_own_job(ws):
    """Line 1 completed; its identical twin (line 2) runs; line 1 is deleted; the twin fails: the line
    left says failed (it said completed: the deleted line's status was written onto it)."""
    (ws.user / "job.py").write_text(COUNTER)
    jobs = ws.jobs("python job.py twin,open,gpus=0\npython job.py twin,open,gpus=0\n")
    q = start_qm(ws, jobs, "--max-parallel", "1")
    try:
        wait_for(lambda: (ws.user / "runs" / "1").exists(), "the twin to start")
        tmp = ws.user / "edit.tmp"
        tmp.write_text("python job.py twin,running,gpus=0\n")
        os.replace(tmp, jobs)                             # the user deletes line 1 (editor save)
        time.sleep(1.5)                                   # longer than the queue's repair delay
        (ws.user / "go").touch()
        out, err = q.communicate(timeout=60)
    finally:
        stop(q)
    assert q.returncode == 1, out + err
    assert statuses(jobs) == ["failed"], out
    rec = StateLog(str(ws.out), str(jobs)).latest()[("python job.py twin", 0)]
    assert rec["exit_code"] == 3 and rec["status"] == "failed"   # its record followed the line
    assert outside_out(ws.root) <= {"user", "user/job.py", "user/Jobs.csv", "user/.Jobs.csv.lock", "user/runs",
                                    "user/runs/0", "user/runs/1", "user/go"}   # the jobs' own files


@pytest.mark.unit
def test_line_identity_survives_edits_and_half_written_reads():
    """The identity of a job line (Line.key) follows the line, not its occurrence; an editor's save
    read half-way (an empty file) changes nothing; occurrence changes are handed to the state log."""
    a, b = "python j.py,completed,\n", "python j.py,running,\n"
    for transient in ("", None):
        cache = ParseCache()
        first = cache.parse(a + b)
        assert [ln.key for ln in first] == [("python j.py", 0), ("python j.py", 1)]
        cache.take_moves()
        if transient is not None:
            assert cache.parse(transient) == []
        left = cache.parse(b)                                 # line 1 deleted
        assert left[0].key == ("python j.py", 1) and left[0].occurrence == 0
        assert cache.take_moves() == {"python j.py": [(1, 0)]}
        again = cache.parse(b + a)                            # a new identical line appended
        assert [ln.key for ln in again] == [("python j.py", 1), ("python j.py", 0)]


INTERRUPTIONS = {  # case: (job line, exit code, final statuses, fragment in the queue's output)
    "outside_signal_twice_no_retries": ("python job.py x 143 2,open,gpus=0;backoff=0", 0, ["completed"],
                                        "not counted as a retry (2/10)"),
    "ctrl_c_exit_130": ("python job.py x 130 1,open,gpus=0;backoff=0", 0, ["completed"], "interrupted (exit 130"),
    "plain_failure_counts": ("python job.py x 1 1,open,gpus=0;backoff=0", 1, ["failed"], "after 1 attempt(s)"),
    "endless_interruptions_end": ("python job.py x 143 99,open,gpus=0;backoff=0", 1, ["failed"],
                                  "after 10 interruptions"),
    "queue_timeout_counts": ("python job.py sleep,open,gpus=0;timeout=1;backoff=0", 1, ["failed"],
                             "timeout after 1 s"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", sorted(INTERRUPTIONS))
def test_interrupted_jobs_resume_without_using_retries(ws, case):
    line, code, final, fragment = INTERRUPTIONS[case]
    (ws.user / "job.py").write_text(COUNTER)
    jobs = ws.jobs(line + "\n")
    r = run_qm(ws, jobs, "--kill-grace", "5")
    assert r.returncode == code, r.stdout + r.stderr
    assert statuses(jobs) == final and fragment in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert jobs.read_text() == line.replace(",open,", f",{final[0]},") + "\n"   # only the status word changed


@pytest.mark.e2e
def test_full_disk_mid_run_leaves_no_line_running(ws):
    """The log directory fills up while a job runs and two lines are appended: the queue starts
    nothing more, supervises the running jobs to their end, and exits 2 with one line."""
    (ws.user / "w.py").write_text("import os, sys, time\nopen(sys.argv[1] + '.started', 'w').close()\n"
                                  "while not os.path.exists('go'):\n    time.sleep(0.02)\n")
    jobs = ws.jobs("python w.py a,open,gpus=0\n")
    capture = ws.root / "queue_output.txt"             # the test's own capture of the terminal
    with open(capture, "w") as out:
        q = subprocess.Popen([PY, str(QM), *ws.args(jobs)], stdout=out, stderr=subprocess.STDOUT,
                             text=True, cwd=str(ws.user))
    try:
        wait_for(lambda: (ws.user / "a.started").exists(), "the first job")
        (ws.out / "queue_state.jsonl").unlink()
        os.symlink("/dev/full", ws.out / "queue_state.jsonl")     # the disk is full from now on
        with open(jobs, "a") as f:
            f.write("python w.py b,open,gpus=0\npython w.py c,open,gpus=0\n")
        wait_for(lambda: "starting no more jobs" in capture.read_text(), "the queue to notice")
        (ws.user / "go").touch()
        q.wait(timeout=60)
    finally:
        stop(q)
    text = capture.read_text()
    assert q.returncode == 2, text
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in text, text
    assert "running" not in statuses(jobs), jobs.read_text()
    assert statuses(jobs)[0] == "completed" and statuses(jobs)[2] == "open"


# ----------------------------------------------------------------------------- the run side of preemption

@pytest.mark.unit
def test_fewer_epochs_than_an_interrupted_run_trained_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: r\n")
    for ck, epochs, ok in (({"epoch": 1, "batch_in_epoch": 3}, 1, False),   # interrupted in epoch 2 of 3
                           ({"epoch": 2, "batch_in_epoch": 0}, 1, False),   # after epoch 2
                           ({"epoch": 2, "batch_in_epoch": 0}, 2, True),    # only the test left
                           ({"epoch": 1, "batch_in_epoch": 3}, 2, True)):
        torch.save({**ck, "finished": False, "model": {}, "optimizer": {}, "scaler": {}, "global_step": 3,
                    "rng": {}}, run / "checkpoint_last.pt")
        if ok:
            assert session.decide_run_state(run, {"name": "r"}, epochs, ()) == "resume"
            continue
        with pytest.raises(UserError) as err:
            session.decide_run_state(run, {"name": "r"}, epochs, ())
        assert f"epochs {epochs} is fewer" in str(err.value) and "epochs >= 2" in str(err.value)


class FakeTrainer:
    """What finish_or_stop needs of a trainer: the stop flag, the epoch, callbacks, save_checkpoint()."""

    def __init__(self, stop: StopOnSignal, finishing: Callback) -> None:
        self.stop, self.epoch, self.finished, self.saved = stop, 3, False, []
        self.callbacks = CallbackList([finishing])

    def _stop_signal(self) -> int:
        return self.stop.requested

    def save_checkpoint(self) -> None:
        self.saved.append(self.finished)


class FinalTest(Callback):
    """Stands for the final test: records that it ran, optionally sending SIGTERM while it runs."""

    def __init__(self, signal_during: bool = False) -> None:
        self.signal_during, self.ran = signal_during, False

    def on_train_end(self, trainer) -> None:
        if self.signal_during:
            os.kill(os.getpid(), signal.SIGTERM)          # arrives while the test runs
            time.sleep(0.05)
        self.ran = True


@pytest.mark.unit
def test_signal_after_the_last_step_never_reports_success_without_the_test():
    """Asked to stop before the final test: Stopped (exit 143), not finished, the test left for the
    resumption. Asked during the final test: the test completes and the run is marked finished."""
    with StopOnSignal() as stop:
        test = FinalTest()
        tr = FakeTrainer(stop, test)
        os.kill(os.getpid(), signal.SIGTERM)         # arrives during the last validation
        time.sleep(0.05)
        with pytest.raises(Stopped) as err:
            session.finish_or_stop(tr)
    assert err.value.exit_code == 143 and "final test" in str(err.value)
    assert not tr.finished and tr.saved == [] and not test.ran

    with StopOnSignal() as stop:
        test = FinalTest(signal_during=True)
        tr = FakeTrainer(stop, test)
        session.finish_or_stop(tr)
    assert test.ran and tr.finished and tr.saved == [True] and stop.requested == signal.SIGTERM


SIGTERM_AT_LAST_VAL = """\
import os, signal, sys
from utility.training import engine
evaluate = engine.Trainer.evaluate
def at_last_val(self, loader, tag, desc):
    # the first attempt is stopped from outside the queue after its last training step
    if desc == 'val' and self.epoch + 1 == self.opts.epochs and os.environ['QUEUE_JOB_ATTEMPT'] == '1':
        os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(self, loader, tag, desc)
engine.Trainer.evaluate = at_last_val
from utility.entry import run_entry
from utility.runs.finetune import main
sys.exit(run_entry(main))
"""


@pytest.mark.e2e
def test_a_real_run_signalled_after_its_last_step_is_resumed_by_the_queue(ws):
    """A finetuning job signalled during its last validation exits 143 with its checkpoint and no test
    results; the queue resumes it without a retry (retries=0) and it ends with its test results."""
    make_folder_dataset(ws.user / "data" / "tiny", ["a", "b"], 4)
    task = write_yaml(ws.user / "tiny.yaml", task_dict())
    cfg = write_yaml(ws.user / "run.yaml", small_run_config(task=task, data_root=str(ws.user / "data"),
                                                            output_root=str(ws.out / "runs"), batch_size=4,
                                                            epochs=2))
    (ws.user / "job.py").write_text(SIGTERM_AT_LAST_VAL)
    jobs = ws.jobs(f"python job.py -c {cfg} --name r,open,gpus=0;backoff=0\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([PY, str(QM), *ws.args(jobs)[:-1]], capture_output=True, text=True, timeout=600,
                       cwd=str(ws.user), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "final test / weights are written when it is started again" in r.stdout, r.stdout
    assert "L1 interrupted (exit 143" in r.stdout and "resuming" in r.stdout, r.stdout
    assert statuses(jobs) == ["completed"]
    run = ws.out / "runs" / "finetuning" / "r"
    assert (run / "test.log").exists() and (run / "test_best.log").exists()
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["finished"] is True
    assert len((run / "val.log").read_text().splitlines()) == 3       # header + 2 epochs, once each
