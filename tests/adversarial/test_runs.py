"""Adversarial runs: a loss that diverges, names that break CSV files, a run path that is a file.
Two cases train for real (tiny data, 1 epoch, in-process); the rest fail before work."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from adversarial.harness import Case, check
from conftest import make_folder_dataset, task_dict, write_yaml
from utility.runs.finetune import main as finetune_main
from utility.training.finite import NonFiniteLoss, check_losses
from utility.training.rundir import CsvLog, write_table

ODD = ['comma,name', 'quote"name', "new\nline", "semi;colon", " lead space", ""]


def diverging(ws) -> list[str]:
    return ["-c", str(ws.write_config("c.yaml", optimizer="SGD", lr=1e38))]


def diverged_outcome(ws, text: str) -> None:
    run_dir = ws.out / "finetuning" / "adv" / "run"
    rows = list(csv.DictReader((run_dir / "train.log").open(newline="")))
    assert any(not math.isfinite(float(r["loss"])) for r in rows)  # the bad step is in train.log
    assert not (run_dir / "checkpoint_last.pt").exists() and not (run_dir / "finetuned_model.tar").exists()


def odd_classes(ws) -> list[str]:
    """Class folders and a broken file whose names need CSV quoting."""
    make_folder_dataset(ws.data / "odd", ['a,b', 'c"d'], 4)
    (ws.data / "odd" / "test" / 'a,b' / 'broken,"x".png').write_bytes(b"not a png")
    task = write_yaml(ws.user / "tasks" / "odd.yaml", task_dict(name="odd", root="odd"))
    return ["-c", str(ws.write_config("c.yaml", task=str(task), max_bad_fraction=0.5))]


def odd_outcome(ws, text: str) -> None:
    run_dir = ws.out / "finetuning" / "adv" / "run"
    rows = list(csv.DictReader((run_dir / "predictions_test_last.csv").open(newline="")))
    assert len(rows) == 8 and {r["target"] for r in rows} == {'a,b', 'c"d'}
    assert {r["predicted"] for r in rows} <= {'a,b', 'c"d'}
    probs = np.array([[float(r[c]) for c in rows[0] if c.startswith("prob_")] for r in rows])
    assert probs.shape == (8, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    bad = list(csv.DictReader((run_dir / "bad_files.csv").open(newline="")))
    assert [(b["split"], b["file"]) for b in bad] == [("test", str(ws.data / "odd" / "test" / 'a,b' / 'broken,"x".png'))]


def run_path_is_file(ws) -> list[str]:
    (ws.out / "finetuning" / "adv").mkdir(parents=True)
    (ws.out / "finetuning" / "adv" / "run").write_text("a file where the run folder would go")
    return ["-c", str(ws.config)]


CASES = [
    Case("loss-diverges-stops-at-step", diverging, 2, "training loss became", diverged_outcome),
    Case("class-and-file-names-need-quoting", odd_classes, 0, "skipped unreadable", odd_outcome),
    Case("run-path-is-a-file", run_path_is_file, 2, "adv/run"),
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_runs(case, tmp_path):
    check(case, finetune_main, tmp_path)


def test_non_finite_loss_names_its_step():
    check_losses([0.5, 0.4], [1, 2], 1)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(NonFiniteLoss, match=r"at global step 12 \(epoch 3\).*Likely causes: lr too high"):
            check_losses([0.3, bad, 0.2], [11, 12, 13], 3)


def test_csv_logs_read_back_equal(tmp_path):
    rows = [{"file": name, "value": i} for i, name in enumerate(ODD)]
    write_table(tmp_path / "t.csv", ["file", "value"], rows)
    log = CsvLog(tmp_path / "log.csv", ["file", "value"])
    for r in rows:
        log.write(r)
    log.keep_rows(lambda r: r["value"] != "0")  # the rewrite path too
    log.close()
    table = list(csv.DictReader((tmp_path / "t.csv").open(newline="")))
    kept = list(csv.DictReader((tmp_path / "log.csv").open(newline="")))
    assert [r["file"] for r in table] == ODD and [r["value"] for r in table] == [str(i) for i in range(len(ODD))]
    assert [r["file"] for r in kept] == ODD[1:]
