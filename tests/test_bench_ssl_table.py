"""benchmarks/bench_ssl_methods.py's table: paired gains over the random encoder with Student-t 95 % CIs
(checked against scipy), and MAE on a ResNet reported as n/a with the reason (in-process, no training)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_ssl_methods.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ssl_methods", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_mean_ci_is_the_student_t_interval(bench):
    vals = [0.61, 0.70, 0.66, 0.72]
    lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
    m, half = bench.mean_ci(vals)
    assert m == pytest.approx(np.mean(vals)) and half == pytest.approx((hi - lo) / 2)


def test_table_pairs_gains_by_seed_and_marks_mae_on_resnet_na(bench):
    rows = [{"method": "random encoder", "backbone": "vit", "seed": s, "linear": lin, "knn": 0.5, "s_epoch": float("nan")}
            for s, lin in ((1, 0.40), (2, 0.30), (3, 0.50))]
    rows += [{"method": "mae", "backbone": "vit", "seed": s, "linear": lin, "knn": 0.6, "s_epoch": 2.0}
             for s, lin in ((3, 0.70), (1, 0.55), (2, 0.45))]  # another order than the random rows
    text = bench.table(rows, ["mae"], ["vit", "resnet18"])
    gains = [0.55 - 0.40, 0.45 - 0.30, 0.70 - 0.50]
    g, half = bench.mean_ci(gains)
    mae_vit = next(line for line in text.splitlines() if line.startswith("| mae | vit |"))
    assert f"{g:.3f} ± {half:.3f}" in mae_vit and "| 3 |" in mae_vit
    mae_resnet = next(line for line in text.splitlines() if line.startswith("| mae | resnet18 |"))
    assert "n/a" in mae_resnet and "masks ViT patches" in mae_resnet


def test_linear_eval_probes_run_apart(bench, monkeypatch, tmp_path):
    """The default probe is the standardised 30-epoch one; --probe plain (the issue's protocol) uses the
    plain head in runs of their own names, so both can live in one --work folder."""
    calls = []
    monkeypatch.setattr(bench, "run", lambda main, argv: calls.append(argv) or "")
    monkeypatch.setattr(bench, "last_value", lambda path, col: str(path))
    got = [bench.linear_eval(tmp_path / "e.tar", "vit", "x_vit_1", 1, tmp_path, "cpu", p) for p in ("batchnorm", "plain")]
    assert calls[0][-4:] == ["--head_norm", "batchnorm", "--epochs", "30"] and calls[1][-2:] == ["--head_norm", "none"]
    assert "bench/linear_x_vit_1" in calls[0] and "bench/linear_plain_x_vit_1" in calls[1]
    assert got[0] != got[1]
