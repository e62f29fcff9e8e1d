"""Uncertainty over subjects (patients) in a study, from the runs' per-sample test predictions.

For one task, mode and grid point every run predicts the same test set (predictions_test_last.csv,
aligned by file). One set of subject resamples (utility/metrics/bootstrap.py, seed ``SETTINGS.seed``)
is applied to every run of the group, so all comparisons in it are paired over subjects. Per source
the metric of a resample is the mean over its repeats (seeds/folds), which gives
``subjects_ci95_low/high``: the percentile interval of the repeat-mean over subject resamples, models
held fixed. Per pair of sources the difference of those means is taken on the repeats both have
(all repeats of each when they share none): ``diff_vs_<o>`` with its interval and a two-sided bootstrap
p-value ``p_subjects_vs_<o>``. Runs without a predictions file (save_predictions: false, or a run from
before subjects were written) are left out; a group without any gets no subject columns.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from utility.metrics.bootstrap import BootstrapSettings, Resampler, percentile_ci, two_sided_p
from utility.metrics.resampled import ClassificationSamples, SegmentationSamples
from utility.metrics.segmentation import SegmentationMetrics
from utility.study.results import RunState
from utility.study.stats import group_key

SETTINGS = BootstrapSettings(resamples=1000, level=0.95, seed=0)
Run = tuple[np.ndarray, np.ndarray, Any]   # files (sorted), subjects, per-sample statistics


def read_run(run_dir: Path, task: Any) -> Optional[Run]:
    """A run's test predictions as (files, subjects, samples), sorted by file; None without them."""
    import pandas as pd

    path = run_dir / "predictions_test_last.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        header = next(csv.reader(fh), [])
    if "subject" not in header:
        return None
    numeric = [c for c in header if c.startswith(("prob_", "px_true"))]
    df = pd.read_csv(path, dtype={c: str for c in header if c not in numeric}, keep_default_na=False,
                     na_values={c: ["nan"] for c in numeric})
    if not len(df):
        return None
    df = df.sort_values("file", kind="stable")
    classes_file = run_dir / "classes.txt"
    classes = classes_file.read_text().splitlines() if classes_file.is_file() else None
    if task.type == "segmentation":
        cols = [c for c in df.columns if c.startswith("px_true")]
        k = math.isqrt(len(cols))
        metrics = SegmentationMetrics(k, classes, task.regions, task.avg_classes)
        samples: Any = SegmentationSamples(df[cols].to_numpy(np.int64), metrics)
    else:
        cols = [c for c in df.columns if c.startswith("prob_")]
        names = classes or [c[len("prob_"):] for c in cols]
        probs = df[cols].to_numpy(np.float64).astype(np.float32)
        if task.type == "multilabel":
            sets = [set(t.split("|")) if t else set() for t in df["target"]]
            targets = np.array([[n in s for n in names] for s in sets], dtype=np.int64)
        else:
            pos = {n: i for i, n in enumerate(names)}
            targets = np.array([pos[t] for t in df["target"]], dtype=np.int64)
        samples = ClassificationSamples(probs, targets, task.type == "multilabel", names)
    return df["file"].to_numpy(str), df["subject"].to_numpy(str), samples


def _rep(st: RunState) -> str:
    return f"seed{st.run.seed}" if st.run.seed is not None else f"fold{st.run.fold}"


def _group_runs(states: list[RunState], grid_keys: Sequence[str]) -> dict[tuple, dict[str, dict[str, Path]]]:
    groups: dict[tuple, dict[str, dict[str, Path]]] = {}
    for st in states:
        if st.status == "completed":
            key = group_key({"task": st.run.task, "mode": st.run.mode, **st.run.grid}, grid_keys)
            groups.setdefault(key, {}).setdefault(st.run.source, {})[_rep(st)] = st.run_dir
    return groups


def _distributions(by_source: dict[str, dict[str, Path]], task: Any, settings: BootstrapSettings
                   ) -> tuple[dict[str, dict[str, tuple[dict, dict]]], int]:
    """source -> repeat -> (point metrics, resampled metrics) for the runs on the group's test set."""
    out: dict[str, dict[str, tuple[dict, dict]]] = {}
    ref: Optional[Run] = None
    n_subjects = 0
    for src, reps in by_source.items():
        for rep, run_dir in sorted(reps.items()):
            got = read_run(run_dir, task)
            if got is None:
                continue
            ref = ref or got
            if not np.array_equal(got[0], ref[0]):     # another test set: not comparable per subject
                continue
            res = Resampler(got[2], ref[1])
            n_subjects = res.n_subjects
            out.setdefault(src, {})[rep] = (res.point(), res.distribution(settings))
    return out, n_subjects


def _mean(runs: dict[str, tuple[dict, dict]], reps: list[str], metric: str) -> tuple[float, np.ndarray]:
    return (float(np.mean([runs[r][0][metric] for r in reps])),
            np.mean([runs[r][1][metric] for r in reps], axis=0))


def add_subject_statistics(summary: list[dict[str, Any]], states: list[RunState], sources: Sequence[str],
                           grid_keys: Sequence[str], settings: BootstrapSettings = SETTINGS) -> None:
    """Add the subject columns (module docstring) to the summary rows, in place."""
    from utility.config.tasks import load_task

    rows = {(r["source"], group_key(r, grid_keys), r["metric"]): r for r in summary}
    for key, by_source in _group_runs(states, grid_keys).items():
        per, n_subjects = _distributions(by_source, load_task(key[0]), settings)
        for src, runs in per.items():
            for (s, k, metric), row in rows.items():
                first = next(iter(runs.values()))
                if s != src or k != key or metric not in first[1]:
                    continue
                _, dist = _mean(runs, list(runs), metric)
                low, high, _ = percentile_ci(dist, settings.level)
                row.update(n_subjects=n_subjects, subjects_ci95_low=low, subjects_ci95_high=high)
                for other in sources:
                    if other == src or other not in per:
                        continue
                    common = sorted(set(runs) & set(per[other]))
                    pa, da = _mean(runs, common or list(runs), metric)
                    pb, db = _mean(per[other], common or list(per[other]), metric)
                    low, high, _ = percentile_ci(da - db, settings.level)
                    row.update({f"diff_vs_{other}": pa - pb, f"diff_ci95_low_vs_{other}": low,
                                f"diff_ci95_high_vs_{other}": high, f"p_subjects_vs_{other}": two_sided_p(da - db)})
