"""Adversarial study files and options: unreadable or exploding YAML, metrics no task reports, a jobs
file in a folder that does not exist or that is not a file."""
from __future__ import annotations

import pytest

from adversarial.harness import BOMB, Case, check, yaml_text
from utility.study.cli import main as study_main


def study(ws, **over) -> dict:
    return {"name": "S", "pretrain": {"Scratch": None}, "finetune": {"config": str(ws.config)},
            "tasks": [str(ws.task)], "output_root": str(ws.out), "config_dir": str(ws.out / "cfgs"), **over}


def study_file(text_of):
    return lambda ws: ["-c", str(ws.file("study.yaml", text_of(ws))), "--plan-only"]


def plan(extra: list[str], **over):
    return lambda ws: ["-c", str(ws.file("study.yaml", yaml_text(study(ws, **over)))), "--plan-only", *extra(ws)]


def nothing(ws) -> list[str]:
    return []


def planned(ws, text: str) -> None:
    assert (ws.out / "studies" / "S" / "Jobs.csv").is_file()


CASES = [
    Case("study-binary", study_file(lambda ws: b"\x1f\x8b\x08\x00binary\x00"), 2, "not a text file"),
    Case("study-alias-bomb", study_file(lambda ws: BOMB + yaml_text(study(ws))), 2, "alias"),
    Case("study-not-a-mapping", study_file(lambda ws: "- a\n- b\n"), 2, "must hold a mapping"),
    Case("metric-no-task-has", plan(nothing, metrics=["acuracy"]), 2, "'acuracy' is not a metric"),
    Case("metric-of-another-task-type", plan(nothing, metrics=["dice_mean_fg"]), 2, "'dice_mean_fg'"),
    Case("jobs-into-missing-folder", plan(lambda ws: ["--jobs", str(ws.root / "nowhere" / "Jobs.csv")]), 2,
         "does not exist"),
    Case("jobs-is-a-folder", plan(lambda ws: ["--jobs", str(ws.data)]), 2, "not a regular file"),
    Case("unknown-study-key", plan(nothing, metric=["accuracy"]), 2, "did you mean 'metrics'"),
    Case("study-name-escapes", plan(nothing, name="../up"), 2, "'name'"),
    Case("known-metric-is-planned", plan(nothing, metrics=["accuracy", "auc_macro"]), 0, "study S", planned),
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_studies(case, tmp_path):
    check(case, study_main, tmp_path)
