"""test_ci.csv: a percentile bootstrap interval over subjects for every test metric of a run.

One row per metric of test.log (``avg_val_loss`` excepted: the loss is not re-aggregated): the
reported value, the interval's bounds at ``level``, the number of resamples and how many of them left
the metric undefined (e.g. AUC of a resample without positives; those are left out of the
percentiles), and the numbers of subjects and samples resampled. See docs/uncertainty.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from utility.metrics.bootstrap import BootstrapSettings, Resampler, Samples, percentile_ci

COLUMNS = ["metric", "value", "ci_low", "ci_high", "level", "resamples", "undefined", "subjects", "samples",
           "over", "seed"]


def ci_rows(row: dict[str, float], samples: Samples, subjects: Any,
            settings: BootstrapSettings) -> list[dict[str, Any]]:
    """The rows of test_ci.csv for the metric row ``row`` (as test.log has it) of these samples."""
    res = Resampler(samples, subjects)
    dist = res.distribution(settings)
    out = []
    for metric, value in row.items():
        if metric not in dist:
            continue
        low, high, undefined = percentile_ci(dist[metric], settings.level)
        out.append({"metric": metric, "value": float(value), "ci_low": low, "ci_high": high,
                    "level": settings.level, "resamples": settings.resamples, "undefined": undefined,
                    "subjects": res.n_subjects, "samples": len(res.codes), "over": "subjects",
                    "seed": settings.seed})
    return out

