"""The metric names a task reports (test.log columns), known before any run: a study's ``metrics:``
naming a metric no task has would give empty columns in summary.csv and report.html, so it is
refused when the study is planned."""
from __future__ import annotations

import warnings
from typing import Iterable

import torch

from utility.config.tasks import TaskSpec, load_task
from utility.errors import UserError

PLACEHOLDER = "class"  # tasks whose classes come from the data: per-class names are not known yet


def task_metric_names(task: TaskSpec) -> set[str]:
    """Every column a test of ``task`` writes, from a one-sample probe of its metrics class."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task.type == "segmentation":
            from utility.metrics.segmentation import SegmentationMetrics

            n = len(task.classes or [])
            m = SegmentationMetrics(n, task.classes, task.regions, task.avg_classes)
            m.update(torch.zeros(1, 2, 2, dtype=torch.int64), torch.zeros(1, 2, 2, dtype=torch.int64))
        else:
            from utility.metrics.classification import ClassificationMetrics

            names = task.classes or [f"{PLACEHOLDER}{i}" for i in range(2)]
            ml = task.type == "multilabel"
            m = ClassificationMetrics(len(names), ml, names)
            c = len(names)
            m.update(torch.zeros(1, c), torch.zeros(1, c) if ml else torch.zeros(1, dtype=torch.int64))
        return set(m.compute(float("nan")))


def check_study_metrics(metrics: Iterable[str], tasks: Iterable[str]) -> None:
    """Refuse a metric that none of the study's tasks reports (per-class names are accepted for
    tasks whose class list is only known from their data)."""
    specs = [load_task(t) for t in tasks]
    known = set().union(*(task_metric_names(s) for s in specs)) if specs else set()
    open_classes = any(not s.classes for s in specs)
    for metric in metrics:
        if metric in known or (open_classes and "class" in metric):
            continue
        shown = ", ".join(sorted(k for k in known if PLACEHOLDER + "0" not in k and PLACEHOLDER + "1" not in k)[:12])
        raise UserError(f"study key 'metrics': '{metric}' is not a metric of any of its tasks "
                        f"({', '.join(t.name for t in specs)}); they report e.g. {shown}")
