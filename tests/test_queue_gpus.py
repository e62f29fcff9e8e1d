"""GPU detection, packing and ordering (fake GPUs via --gpus)."""
import json
import os
import subprocess
import sys

import pytest

from test_queue_helpers import QM, run_queue, statuses, write_jobs
from utility.queue import gpus as gpus_mod
from utility.queue import scheduler
from utility.queue.errors import QueueError

REC = """\
import json, os, sys, time
name, secs = sys.argv[1], float(sys.argv[2])
t0 = time.time()
time.sleep(secs)
with open('runs.jsonl', 'a') as f:
    f.write(json.dumps({'name': name, 'cvd': os.environ.get('CUDA_VISIBLE_DEVICES'),
                        'start': t0, 'end': time.time()}) + '\\n')
"""


def runs(tmp_path):
    rows = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    return {r["name"]: r for r in rows}


def overlap(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_packing_disjoint_gpus_side_by_side(tmp_path):
    (tmp_path / "rec.py").write_text(REC)
    jobs = write_jobs(tmp_path, "python rec.py a 1,open,gpus=2\npython rec.py b 1,open,gpus=1\n"
                                "python rec.py c 1,open,gpus=1\npython rec.py d 0.1,open,gpus=0\n")
    r = run_queue(tmp_path, jobs, "--gpus", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    rs = runs(tmp_path)
    assert rs["a"]["cvd"] == "0,1" and rs["b"]["cvd"] == "2" and rs["c"]["cvd"] == "3"
    assert rs["d"]["cvd"] == ""
    assert overlap(rs["a"], rs["b"]) and overlap(rs["a"], rs["c"]) and overlap(rs["b"], rs["c"])
    assert statuses(jobs) == ["completed"] * 4


def test_explicit_gpu_ids(tmp_path):
    (tmp_path / "rec.py").write_text(REC)
    jobs = write_jobs(tmp_path, "python rec.py a 0.5,open,gpus=1\npython rec.py b 0.5,open,gpus=1\n"
                                "python rec.py c 0,open,gpus=1\n")
    r = run_queue(tmp_path, jobs, "--gpus", "5,7")
    assert r.returncode == 0, r.stderr
    rs = runs(tmp_path)
    assert {rs["a"]["cvd"], rs["b"]["cvd"]} == {"5", "7"} and rs["c"]["cvd"] in ("5", "7")
    assert rs["c"]["start"] >= min(rs["a"]["end"], rs["b"]["end"]) - 0.05


def test_default_job_takes_all_gpus_and_runs_alone(tmp_path):
    (tmp_path / "rec.py").write_text(REC)
    jobs = write_jobs(tmp_path, "python rec.py a 0.3,open,\npython rec.py b 0.3,open,gpus=1\n"
                                "python rec.py c 0.3,open,\n")
    r = run_queue(tmp_path, jobs, "--gpus", "3")
    assert r.returncode == 0, r.stderr
    rs = runs(tmp_path)
    assert rs["a"]["cvd"] == "0,1,2" and rs["c"]["cvd"] == "0,1,2"
    assert not overlap(rs["a"], rs["b"]) and not overlap(rs["b"], rs["c"])
    assert rs["a"]["end"] <= rs["b"]["start"] <= rs["b"]["end"] <= rs["c"]["start"]


def test_big_head_job_is_not_starved_by_small_later_jobs(tmp_path):
    """2 GPUs: a(1 GPU, long) runs; b needs 2 and must wait; c (1 GPU) would fit next to a
    but must not overtake b; d (no GPU) may backfill."""
    (tmp_path / "rec.py").write_text(REC)
    jobs = write_jobs(tmp_path, "python rec.py a 1,open,gpus=1\npython rec.py b 0.3,open,gpus=2\n"
                                "python rec.py c 0.3,open,gpus=1\npython rec.py d 0.2,open,gpus=0\n")
    r = run_queue(tmp_path, jobs, "--gpus", "2")
    assert r.returncode == 0, r.stderr
    rs = runs(tmp_path)
    assert rs["b"]["cvd"] == "0,1"
    assert rs["b"]["start"] >= rs["a"]["end"] - 0.05
    assert rs["c"]["start"] >= rs["b"]["start"]            # file order for GPU jobs
    assert rs["d"]["start"] < rs["a"]["end"]               # CPU-only job backfilled


def test_job_needing_more_gpus_than_exist_is_reported_and_left_open(tmp_path):
    jobs = write_jobs(tmp_path, "true,open,gpus=3\ntrue,open,gpus=1\n")
    r = run_queue(tmp_path, jobs, "--gpus", "2")
    assert r.returncode == 1
    assert "line 1 needs 3 GPUs but only 2 are available" in r.stdout
    assert statuses(jobs) == ["open", "completed"]


def test_max_parallel(tmp_path):
    (tmp_path / "rec.py").write_text(REC)
    jobs = write_jobs(tmp_path, "".join(f"python rec.py {n} 0.3,open,gpus=0\n" for n in "abc"))
    r = run_queue(tmp_path, jobs, "--gpus", "none", "--max-parallel", "2")
    assert r.returncode == 0
    rs = runs(tmp_path)
    assert overlap(rs["a"], rs["b"])
    assert rs["c"]["start"] >= min(rs["a"]["end"], rs["b"]["end"]) - 0.05


def test_gpu_detection_from_environment(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="2,3")
    jobs = write_jobs(tmp_path, "true,open,gpus=1\n")
    r = subprocess.run([sys.executable, QM, "--jobs", str(jobs), "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=20)
    assert "GPUs: 2,3 (CUDA_VISIBLE_DEVICES)" in r.stdout, r.stdout + r.stderr
    assert "wave 0: L1 on GPUs 2" in r.stdout
    env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, QM, "--jobs", str(jobs), "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=20)
    assert "GPUs: none" in r.stdout and "never: L1 needs 1 GPUs" in r.stdout


def test_parse_gpus_arg():
    assert gpus_mod.parse_gpus_arg("8") == [str(i) for i in range(8)]
    assert gpus_mod.parse_gpus_arg("0,1,2,3") == ["0", "1", "2", "3"]
    assert gpus_mod.parse_gpus_arg("3,") == ["3"]
    assert gpus_mod.parse_gpus_arg("none") == [] and gpus_mod.parse_gpus_arg("0") == []
    with pytest.raises(QueueError):
        gpus_mod.parse_gpus_arg("1,1")


def test_scheduler_rules():
    C = scheduler.Candidate
    total = ["0", "1", "2", "3"]
    a, b, c, d = C("a", 2, False), C("b", 3, False), C("c", 1, False), C("d", 0, False)
    # 3 free: a starts, b blocks (1 left), c must not overtake b, d (CPU) may
    got = scheduler.select([a, b, c, d], ["0", "1", "2"], total, 1, False)
    assert [(x.ref, g) for x, g in got] == [("a", ["0", "1"]), ("d", [])]
    # an exclusive job waits for an empty machine and holds back everything after it
    e = C("e", 0, True)
    assert scheduler.select([e, c], total, total, 1, False) == []
    assert [(x.ref, g) for x, g in scheduler.select([e, c], total, total, 0, False)] == \
        [("e", total)]
    assert scheduler.select([c], total, total, 1, True) == []
    plan = scheduler.simulate([a, b, c], total)
    assert [(w, x.ref) for w, x, _ in plan] == [(0, "a"), (1, "b"), (1, "c")]
