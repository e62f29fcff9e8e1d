"""Adversarial configs (finetuning and pretraining entries): alias bombs, binary files, bad run names,
nonsense ranges. Each row: input, expected exit code, message fragment (see harness.py)."""
from __future__ import annotations

import pytest

from adversarial.harness import BOMB, Case, check, yaml_text
from utility.runs.finetune import main as finetune_main
from utility.runs.pretrain import main as pretrain_main


def cfg_file(ws, **over) -> list[str]:
    return ["-c", str(ws.write_config("c.yaml", **over))]


def raw_cfg(text: str | bytes):
    return lambda ws: ["-c", str(ws.file("c.yaml", text))]


def base(ws) -> str:
    return yaml_text(ws.cfg())


def short_message(ws, text: str) -> None:
    assert len(text) < 3000, len(text)


FINETUNE = [
    Case("alias-bomb-in-file", lambda ws: ["-c", str(ws.file("c.yaml", base(ws) + BOMB + "w_l: *l8\n"))], 2, "alias"),
    Case("alias-bomb-on-command-line", lambda ws: [*cfg_file(ws), "--w_l", "[" + BOMB.replace("\n", ", ") + "]"],
         2, "alias"),
    Case("binary-config", raw_cfg(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x10"), 2, "not a text file"),
    Case("latin1-config", raw_cfg("name: caf\xe9\n".encode("latin-1")), 2, "not UTF-8"),
    Case("config-is-a-folder", lambda ws: ["-c", str(ws.data)], 2, "config file not found"),
    Case("negative-seed", lambda ws: cfg_file(ws, seed=-1), 2, "'seed'"),
    Case("absolute-run-name", lambda ws: cfg_file(ws, name=str(ws.root / "escape")), 2, "no leading '/'"),
    Case("dot-run-name", lambda ws: cfg_file(ws, name="."), 2, "no '.' or '..' parts"),
    Case("dotdot-run-name", lambda ws: cfg_file(ws, name="a/../../x"), 2, "no '.' or '..' parts"),
    Case("newline-run-name", lambda ws: cfg_file(ws, name="run\n"), 2, "control characters"),
    Case("tilde-run-name", lambda ws: cfg_file(ws, name="~/x"), 2, "'~'"),
    Case("backslash-run-name", lambda ws: cfg_file(ws, name="a\\b"), 2, "backslash"),
    Case("run-name-too-long", lambda ws: cfg_file(ws, name="r" * 300), 2, "200 bytes"),
    Case("output-root-is-a-file", lambda ws: [*cfg_file(ws), "--output_root", str(ws.file("taken.txt", "x"))],
         2, "is a file"),
    Case("all-zero-w_l", lambda ws: cfg_file(ws, w_l=[0, 0]), 2, "w_l"),
    Case("zero-width-window", lambda ws: cfg_file(ws, normalizer="windowed", window=[5, 5]), 2, "low < high"),
    Case("huge-value-message-is-short", lambda ws: [*cfg_file(ws), "--lr", "x" * 1_000_000], 2, "'lr'",
         short_message),
    Case("huge-unknown-key-is-short", lambda ws: [*cfg_file(ws), "--" + "k" * 100_000, "1"], 2, "unknown config key",
         short_message),
    Case("task-file-binary", lambda ws: cfg_file(ws, task=str(ws.file("t.yaml", b"\x00\x01\x02binary"))), 2,
         "not a text file"),
    Case("task-file-alias-bomb", lambda ws: cfg_file(ws, task=str(ws.file("t.yaml", BOMB))), 2, "alias"),
    Case("task-zero-width-window", lambda ws: cfg_file(ws, task=str(ws.file("t.yaml", yaml_text(
        {**yaml_load(ws.task), "normalizer": "windowed", "window": [0, 0]})))), 2, "low < high"),
    Case("model-path-symlink-loop", lambda ws: cfg_file(ws, model_path=str(loop(ws))), 2, "symlink loop"),
]

PRETRAIN = [
    Case("temperature-zero", lambda ws: ["-c", str(ws.pretrain_config(temperature=0))], 2, "temperature"),
    Case("temperature-tiny", lambda ws: ["-c", str(ws.pretrain_config(temperature=1e-30))], 2, "temperature"),
    Case("moco-temperature-tiny", lambda ws: ["-c", str(ws.pretrain_config(
        method="mocov2", method_settings={"temperature": 1e-9}))], 2, "temperature"),
    Case("empty-dataset_base_dir", lambda ws: ["-c", str(ws.pretrain_config(dataset_base_dir=[]))], 2,
         "dataset_base_dir"),
    Case("missing-dataset_base_dir", lambda ws: ["-c", str(ws.pretrain_config(
        dataset_base_dir=[str(ws.user / "nope")]))], 2, "not found"),
]


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())


def loop(ws):
    a, b = ws.user / "loop_a.tar", ws.user / "loop_b.tar"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


@pytest.mark.parametrize("case", FINETUNE, ids=repr)
def test_finetune_config(case, tmp_path):
    check(case, finetune_main, tmp_path)


@pytest.mark.parametrize("case", PRETRAIN, ids=repr)
def test_pretrain_config(case, tmp_path):
    check(case, lambda argv: pretrain_main(argv, "pretrain.py"), tmp_path)
