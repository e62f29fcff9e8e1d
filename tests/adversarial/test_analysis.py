"""Adversarial analysis: a colleague's run whose task would run its own Python, option values that
make no sense, outputs onto files, embedding caches renamed or truncated."""
from __future__ import annotations

import numpy as np
import pytest

from adversarial.harness import BOMB, Case, check, yaml_text
from conftest import task_dict, write_yaml
from utility.analysis.cli import main as analyze_main
from utility.analysis.features import read_cached
from utility.config.loader import dump_config, validate
from utility.config.schemas import FTEConfig
from utility.runs.knn_eval import main as knn_eval_main

READER = "import pathlib\np = pathlib.Path({marker!r})\np.parent.mkdir(parents=True, exist_ok=True)\np.write_text('imported')\ndef label(path, ctx):\n    return path.parent.name\n"


def colleague_run(ws):
    """A run directory received from someone else: its task's reader is a .py file beside it."""
    run = ws.user / "colleague_run"
    marker = ws.out / "reader_was_imported"
    (run / "task").mkdir(parents=True)
    (run / "task" / "reader.py").write_text(READER.format(marker=str(marker)))
    task = write_yaml(run / "task" / "tiny.yaml", task_dict(layout={"reader": "reader.py:label"}))
    cfg = validate(FTEConfig, ws.cfg(task=str(task)), "test")
    dump_config(cfg, run / "config.yaml")
    (run / "finetuned_model.tar").write_bytes(b"weights of a colleague")
    return run, marker


def knn(*extra):
    def build(ws):
        run, _ = colleague_run(ws)
        return ["knn", "--run", str(run), "--out", str(ws.out / "knn"), "--cache_dir", str(ws.out / "cache"), *extra]
    return build


def not_imported(ws, text):
    assert not (ws.out / "reader_was_imported").exists()


def imported(ws, text):
    assert (ws.out / "reader_was_imported").read_text() == "imported"


def run_cmd(command, *extra):
    def build(ws):
        run, _ = colleague_run(ws)
        return [command, "--run", str(run), "--out", str(ws.out / command), *extra]
    return build


def bomb_run(ws):
    run = ws.user / "bomb_run"
    run.mkdir()
    (run / "config.yaml").write_text(BOMB + "name: x\n")
    return ["knn", "--run", str(run)]


def pretraining_run(ws):
    run, marker = colleague_run(ws)
    write_yaml(run / "config.yaml", {"name": "p", "resnet": "resnet18",
                                     "monitor": {"task": str(run / "task" / "tiny.yaml")}})
    return ["-e", str(run / "encoder_pretrained.tar")]


CASES = [
    Case("run-code-refused", knn(), 2, "reader.py", not_imported),
    Case("run-code-trusted", knn("--trust-run-code"), 2, "cannot load weights", imported),
    Case("k-zero", knn("--k", "0"), 2, "--k 0 is out of range", not_imported),
    Case("temperature-zero", knn("--temperature", "0"), 2, "--temperature 0.0 is out of range"),
    Case("temperature-tiny", knn("--temperature", "1e-30"), 2, "--temperature 1e-30 is out of range"),
    Case("temperature-nan", knn("--temperature", "nan"), 2, "--temperature nan is out of range"),
    Case("bins-zero", run_cmd("curves", "--bins", "0"), 2, "--bins 0 is out of range"),
    Case("C-zero", run_cmd("probe", "--C", "1", "0"), 2, "--C 0.0 is out of range"),
    Case("C-negative", run_cmd("probe", "--C", "-1"), 2, "--C -1.0 is out of range"),
    Case("lr-find-one-step", run_cmd("lr-find", "--steps", "1"), 2, "--steps 1 is out of range"),
    Case("lr-find-end-below-start", run_cmd("lr-find", "--start_lr", "1", "--end_lr", "0.1"), 2, "--end_lr"),
    Case("gradcam-no-images", run_cmd("gradcam", "--images", "0"), 2, "--images 0 is out of range"),
    Case("negative-seed", knn("--seed", "-1"), 2, "--seed -1 is out of range"),
    Case("out-is-a-file", lambda ws: knn()(ws)[:3] + ["--out", str(ws.file("o.txt", "x"))], 2, "is a file"),
    Case("run-without-config", lambda ws: ["knn", "--run", str(ws.data)], 2, "no config.yaml"),
    Case("run-config-alias-bomb", bomb_run, 2, "alias"),
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_analysis(case, tmp_path):
    check(case, analyze_main, tmp_path)


def test_knn_eval_refuses_code_of_a_pretraining_run(tmp_path):
    case = Case("knn-eval-run-code", pretraining_run, 2, "--trust-run-code", not_imported)
    check(case, knn_eval_main, tmp_path)


def test_embedding_cache_checked_on_read(tmp_path, capsys):
    path = tmp_path / "tiny_val_k.npz"
    np.savez(path, features=np.ones((2, 3)), index=np.arange(2), key=np.asarray("k"), weights_sha256=np.asarray("w1"))
    assert read_cached(path, "k", "w1")["features"].shape == (2, 3)
    assert read_cached(path, "k", "w2") is None  # renamed from other weights
    assert read_cached(path, "k2", "w1") is None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert read_cached(path, "k", "w1") is None  # truncated
    err = capsys.readouterr().err
    assert "other weights" in err and "damaged" in err
