"""A tiny study end to end through the real queue: SimCLR pretraining, finetuning runs that wait
for it, a source whose pretraining crashes (its finetuning runs never start and are reported as
failed), results/summary/report, status, and a second run that adds and reruns nothing completed."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from scipy import stats

from conftest import HANG_GUARD_S, REPO, make_folder_dataset, small_run_config, task_dict, write_yaml

STUDY = REPO / "pkgs" / "Study" / "study.py"


def study(*args, timeout=HANG_GUARD_S):
    env = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(STUDY), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study_e2e")
    make_folder_dataset(tmp / "data" / "tiny", ["a", "b", "c"], 8, size=16)
    (tmp / "data" / "empty").mkdir()
    task = write_yaml(tmp / "tasks" / "tiny.yaml", task_dict())
    ft = write_yaml(tmp / "ft.yaml", small_run_config(name="base", task=str(task), data_root=str(tmp / "data")))
    simclr = {"name": "x", "dataset": "Custom_2D", "dataset_base_dir": str(tmp / "data" / "tiny" / "train"),
              "data_format": [".png"], "resnet": "resnet18", "image_size": 12, "shape_desired": [16, 16],
              "batch_size": 8, "epochs": 1, "num_workers": 0, "device": "cpu", "projection_dim": 16,
              "verbose": False}
    pre = write_yaml(tmp / "pre.yaml", simclr)
    broken = write_yaml(tmp / "broken.yaml", {**simclr, "dataset_base_dir": str(tmp / "data" / "empty")})
    spec = {"name": "E", "pretrain": {"Scratch": None, "SSL": {"config": str(pre)},
                                      "Broken": {"config": str(broken)}},
            "finetune": {"config": str(ft)}, "tasks": [str(task)], "modes": {"lineval": {"frozen_encoder": True}},
            "repeats": {"seeds": [1, 2]}, "gpus_per_job": 0,
            "output_root": str(tmp / "out"), "config_dir": str(tmp / "cfgs")}
    path = write_yaml(tmp / "study.yaml", spec)
    first = study("-c", path)
    return {"tmp": tmp, "path": path, "first": first, "task": str(task),
            "sdir": tmp / "out" / "studies" / "E", "jobs": tmp / "out" / "studies" / "E" / "Jobs.csv"}


def test_study_runs_through_the_queue_in_dependency_order(done):
    r = done["first"]
    assert r.returncode == 1, r.stdout + r.stderr       # the broken source failed
    assert "Traceback" not in r.stderr
    recs = [json.loads(x) for x in (done["sdir"] / "queue" / "queue_state.jsonl").read_text().splitlines()]
    starts = {x["command"]: x for x in recs if x["event"] == "start"}
    ends = {x["command"]: x for x in recs if x["event"] == "end"}
    pre_cmd = next(c for c in starts if "SimCLR/main.py" in c and "PT_SSL" in c)
    ssl_ft = [c for c in starts if "finetune.py" in c and "PT_SSL_FT" in c]
    assert len(ssl_ft) == 2 and ends[pre_cmd]["status"] == "completed"
    assert all(starts[c]["start_time"] >= ends[pre_cmd]["end_time"] for c in ssl_ft)
    assert not [c for c in starts if "PT_Broken_FT" in c]            # never started
    broken_ft = [x for c, x in ends.items() if "PT_Broken_FT" in c]
    assert len(broken_ft) == 2 and all(x["reason"].startswith("dependency L") for x in broken_ft)


def test_results_summary_and_report(done):
    res = rows(done["sdir"] / "results.csv")
    assert len(res) == 6
    by = {(r["source"], r["seed"]): r for r in res}
    for src in ("Scratch", "SSL"):
        for seed in ("1", "2"):
            assert by[(src, seed)]["status"] == "completed" and by[(src, seed)]["epochs"] == "1"
    for seed in ("1", "2"):
        assert by[("Broken", seed)]["status"] == "failed"
        assert by[("Broken", seed)]["reason"] == "not started: its pretraining E/Broken failed"
    summ = {r["source"]: r for r in rows(done["sdir"] / "summary.csv")}
    a = [float(by[("SSL", s)]["last_accuracy"]) for s in ("1", "2")]
    b = [float(by[("Scratch", s)]["last_accuracy"]) for s in ("1", "2")]
    assert float(summ["SSL"]["mean"]) == pytest.approx(sum(a) / 2, rel=1e-9)
    assert summ["SSL"]["test_vs_Scratch"] == "paired t-test"
    if a[0] - b[0] != a[1] - b[1]:                                   # else the p-value is undefined
        assert float(summ["SSL"]["p_vs_Scratch"]) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-6)
    # uncertainty over subjects from the runs' own predictions (each test image its own subject here)
    ssl1 = done["tmp"] / "out" / "finetuning" / by[("SSL", "1")]["run"]
    n_test = len(rows(ssl1 / "predictions_test_last.csv"))
    assert summ["SSL"]["n_subjects"] == str(n_test) and summ["SSL"]["ci95_over"] == "seeds"
    assert float(summ["SSL"]["subjects_ci95_low"]) <= float(summ["SSL"]["subjects_ci95_high"])
    diff = sum(x - y for x, y in zip(a, b)) / 2
    assert float(summ["SSL"]["diff_vs_Scratch"]) == pytest.approx(diff, abs=1e-9)
    assert 0 < float(summ["SSL"]["p_subjects_vs_Scratch"]) <= 1
    ci = {r["metric"]: r for r in rows(ssl1 / "test_ci.csv")}
    assert by[("SSL", "1")]["last_accuracy_subjects_ci_low"] == ci["accuracy"]["ci_low"]
    page = (done["sdir"] / "report.html").read_text()
    crash = done["tmp"] / "out" / "pretraining" / "E" / "Broken" / "crash.log"
    assert crash.is_file() and str(crash) in page
    assert "not started: its pretraining E/Broken failed" in page and page.count("data:image/png;base64,") >= 2
    out = done["first"].stdout
    assert "report:  " + str(done["sdir"] / "report.html") in out and "SSL" in out


def test_status_replan_and_reopen_of_what_failed(done):
    st = study("status", "-c", done["path"])
    assert st.returncode == 0, st.stderr
    assert "6 finetuning runs: 4 completed, 0 running, 2 failed, 0 missing" in st.stdout
    crash = done["tmp"] / "out" / "pretraining" / "E" / "Broken" / "crash.log"
    assert f"pretraining Broken (E/Broken): failed (crash log {crash})" in st.stdout
    assert "pretraining SSL (E/SSL): completed" in st.stdout
    assert "failed: E/PT_Broken_FT_tiny_lineval_f1 (not started: its pretraining E/Broken failed" in st.stdout
    before = done["jobs"].read_text()
    again = study("-c", done["path"], "--plan-only")
    assert again.returncode == 0 and "0 new configs" in again.stdout and "0 new jobs" in again.stdout
    assert done["jobs"].read_text() == before                      # no duplicate jobs
    # what the next full run does first: reopen the failed lines, nothing completed
    from utility.study.cli import reopen_unfinished
    from utility.study.plan import make_plan
    from utility.study.spec import load_study

    lines = reopen_unfinished(make_plan(load_study(done["path"])))
    after = done["jobs"].read_text().splitlines()
    assert len(lines) == 3 and all("Broken" in after[n - 1] and ",open," in after[n - 1] for n in lines)
    changed = [i + 1 for i, (x, y) in enumerate(zip(before.splitlines(), after)) if x != y]
    assert changed == sorted(lines)
    assert sum(",completed," in x for x in after) == 5              # SSL pretraining + 4 finetunes
