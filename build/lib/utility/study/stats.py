"""summary.csv: per (source, task, mode, grid point) and metric the mean, std, 95 % confidence interval
(t distribution) over the repeats, and against every other source the percent change of the mean and a
two-sided t-test: paired when both sources ran the same repeats (seeds or folds), Welch's otherwise.
Statistics use the test metrics of the last model (``last_<metric>``, the predecessor's test.log)."""
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
    repeat id to its value; the same ids on both sides make the test paired."""
    a = {k: v for k, v in a.items() if not math.isnan(v)}
    b = {k: v for k, v in b.items() if not math.isnan(v)}
    if not a or not b:
        return float("nan"), float("nan"), ""
    ma, mb = float(np.mean(list(a.values()))), float(np.mean(list(b.values())))
    pct = (ma - mb) / abs(mb) * 100 if mb != 0 else float("nan")
    if set(a) == set(b) and len(a) > 1:
        keys = sorted(a, key=str)
        res = stats.ttest_rel([a[k] for k in keys], [b[k] for k in keys])
        kind = "paired t-test"
    elif len(a) > 1 and len(b) > 1:
        res = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
        kind = "Welch t-test"
    else:
        return pct, float("nan"), ""
    p = float(res.pvalue)
    return pct, p, kind


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
                    pct, p, kind = compare(values[s], values[other])
                    row[f"pct_change_vs_{other}"] = pct
                    row[f"p_vs_{other}"] = p
                    row[f"test_vs_{other}"] = kind
                out.append(row)
    return out


def _rep(row: dict[str, Any]) -> str:
    return f"seed{row['seed']}" if row.get("seed", "") != "" else f"fold{row.get('fold')}"


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, columns or ["source", "task", "mode", "metric", "n", "mean"])
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
