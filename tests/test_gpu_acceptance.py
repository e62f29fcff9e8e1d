"""benchmarks/gpu_acceptance.py cannot rot between GPU runs: its CPU smoke mode runs here (every check
listed, PASS or SKIPPED, the CUDA-only ones never PASS), and the runner keeps checks isolated."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"

from benchmarks.gpu_checks import runner as acc
from benchmarks.gpu_checks.common import CHECKS, Check, CheckFailed, Ctx, Skip


def test_cpu_smoke_mode_lists_every_check(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {ln.split()[1]: ln.split()[0] for ln in proc.stdout.splitlines()
             if ln.split() and ln.split()[0] in ("PASS", "FAIL", "SKIPPED")}
    names = [c.name for c in CHECKS]
    assert len(names) == len(set(names)) and len(names) >= 20
    assert set(lines) == set(names), proc.stdout
    assert set(lines.values()) <= {"PASS", "SKIPPED"}, proc.stdout
    for c in CHECKS:
        if c.cuda_only:
            assert lines[c.name] == "SKIPPED", c.name
    # every area of the issue has its named checks
    for prefix in ("amp_classification_", "amp_multilabel_", "amp_segmentation_", "amp_pretrain_",
                   "augment_", "parallel_dataparallel", "parallel_ddp", "throughput_", "loader_wait",
                   "kill_resume_cuda", "speed_compile", "speed_pinned", "speed_fused", "speed_cudnn", "speed_jpeg"):
        assert any(n.startswith(prefix) for n in names), prefix
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert [c["name"] for c in report["checks"]] == names
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch"] == torch.__version__
    md = (tmp_path / "gpu_acceptance.md").read_text()
    assert "| check | status | figures |" in md and all(f"| {n} |" in md for n in names)


def ctx(tmp_path: Path, budget: float = 60.0) -> Ctx:
    return Ctx(torch.device("cpu"), True, 0, tmp_path, time.monotonic() + budget)


def test_runner_isolates_checks_and_never_passes_cuda_only_on_cpu(tmp_path):
    def boom(c):
        raise ZeroDivisionError("x")

    def bad(c):
        raise CheckFailed("too slow", {"ratio": 0.5})

    def skip(c):
        raise Skip("no bf16")

    def fine(c):
        return {"value": 1.0}

    got = {name: acc.run_check(Check(name, fn, cuda_only=cuda, exercise=ex), ctx(tmp_path))
           for name, fn, cuda, ex in (("boom", boom, False, False), ("bad", bad, False, False),
                                      ("skip", skip, False, False), ("fine", fine, False, False),
                                      ("cuda_ran", fine, True, True), ("cuda_not_run", boom, True, False))}
    assert got["boom"].status == "FAIL" and "ZeroDivisionError" in got["boom"].reason
    assert got["bad"].status == "FAIL" and got["bad"].figures == {"ratio": 0.5}
    assert got["skip"].status == "SKIPPED" and got["skip"].reason == "no bf16"
    assert got["fine"].status == "PASS" and "value 1" in got["fine"].line()
    assert got["cuda_ran"].status == "SKIPPED" and got["cuda_ran"].figures == {"value": 1.0}
    assert got["cuda_not_run"].status == "SKIPPED" and got["cuda_not_run"].reason == "needs CUDA"
    late = acc.run_check(Check("late", fine, est_s=100), ctx(tmp_path, budget=1.0))
    assert late.status == "SKIPPED" and "time budget" in late.reason
