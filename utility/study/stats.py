"""summary.csv: per (source, task, mode, grid point) and metric the mean, std, 95 % confidence interval
(t distribution) over the repeats, and against every other source the percent change of the mean and a
two-sided t-test over the repeats (seeds or folds): paired on the repeats both sources have (when at
least two are common; a source that lacks some repeats is compared on the others), Welch's when they
share fewer than two, with Hedges' g. Statistics use the test metrics of the last model
(``last_<metric>``, the predecessor's test.log). Columns added later (uncertainty over subjects,
adjusted p-values: utility/study/subject_stats.py, multiplicity.py) come after the original ones.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats


def describe(values: Sequence[float]) -> dict[str, float]:
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    std = float(x.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def compare(a: dict[Any, float], b: dict[Any, float]) -> tuple[float, float, str]:
    """(percent change of mean(a) over mean(b), two-sided p-value, test name). ``a``/``b`` map a
    repeat id to its value; ids on both sides make the test paired (on those ids)."""
    r = seed_test(a, b)
    return r["pct"], r["p"], r["kind"]


def seed_test(a: dict[Any, float], b: dict[Any, float]) -> dict[str, Any]:
    """:func:`compare`'s numbers plus ``repeats`` (the common repeats a paired test used, else 0) and
    ``g`` (Hedges' g of the values the test used)."""
    from utility.study.multiplicity import hedges_g

    a = {k: v for k, v in a.items() if not math.isnan(v)}
    b = {k: v for k, v in b.items() if not math.isnan(v)}
    out: dict[str, Any] = {"pct": float("nan"), "p": float("nan"), "kind": "", "repeats": 0, "g": float("nan")}
    if not a or not b:
        return out
    ma, mb = float(np.mean(list(a.values()))), float(np.mean(list(b.values())))
    out["pct"] = (ma - mb) / abs(mb) * 100 if mb != 0 else float("nan")
    common = sorted(set(a) & set(b), key=str)
    if len(common) > 1:
        x, y = [a[k] for k in common], [b[k] for k in common]
        out.update(p=float(stats.ttest_rel(x, y).pvalue), kind="paired t-test", repeats=len(common))
    elif len(a) > 1 and len(b) > 1:
        x, y = list(a.values()), list(b.values())
        out.update(p=float(stats.ttest_ind(x, y, equal_var=False).pvalue), kind="Welch t-test")
    else:
        return out
    out["g"] = hedges_g(x, y)
    return out


def group_key(row: dict[str, Any], grid_keys: Sequence[str]) -> tuple:
    return (row["task"], row["mode"], *(str(row.get(k)) for k in grid_keys))


def summarize(rows: list[dict[str, Any]], metrics_of: dict[str, list[str]], sources: list[str],
              grid_keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (source, task, mode, grid point, metric) over the completed runs."""
    out: list[dict[str, Any]] = []
    done = [r for r in rows if r.get("status") == "completed"]
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for r in done:
        groups.setdefault(group_key(r, grid_keys), {}).setdefault(r["source"], []).append(r)
    order = {t: i for i, t in enumerate(metrics_of)}       # the study's task order
    for key in sorted(groups, key=lambda k: (order.get(k[0], len(order)), str(k))):
        task, mode, *grid = key
        by_source = groups[key]
        for metric in metrics_of.get(task, []):
            col = f"last_{metric}"
            values = {s: {_rep(r): float(r.get(col, float("nan"))) for r in rs} for s, rs in by_source.items()}
            for s in sources:
                if s not in values:
                    continue
                row: dict[str, Any] = {"source": s, "task": task, "mode": mode,
                                       **dict(zip(grid_keys, grid)), "metric": metric}
                row.update(describe(list(values[s].values())))
                for other in sources:
                    if other == s or other not in values:
                        continue
                    t = seed_test(values[s], values[other])
                    row[f"pct_change_vs_{other}"] = t["pct"]
                    row[f"p_vs_{other}"] = t["p"]
                    row[f"test_vs_{other}"] = t["kind"]
                    row[f"repeats_vs_{other}"] = t["repeats"]
                    row[f"hedges_g_vs_{other}"] = t["g"]
                row["ci95_over"] = "folds" if any(k.startswith("fold") for k in values[s]) else "seeds"
                out.append(row)
    return out


def _rep(row: dict[str, Any]) -> str:
    return f"seed{row['seed']}" if row.get("seed", "") != "" else f"fold{row.get('fold')}"


ADDED = ("repeats_vs_", "hedges_g_vs_", "p_holm_vs_", "p_bh_vs_", "ci95_over", "n_subjects", "subjects_ci95_",
         "diff_vs_", "diff_ci95_low_vs_", "diff_ci95_high_vs_", "p_subjects_vs_", "p_subjects_holm_vs_",
         "p_subjects_bh_vs_")   # columns added after the first release: kept after the others


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    columns = [c for c in columns if not c.startswith(ADDED)] + [c for c in columns if c.startswith(ADDED)]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, columns or ["source", "task", "mode", "metric", "n", "mean"])
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
