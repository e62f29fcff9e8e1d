"""Predictions and what is read from them: predict, curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from utility.analysis import curves as cv
from utility.analysis import plots
from utility.analysis.evaluate import evaluate, write_predictions
from utility.analysis.outputs import announce, write_csv
from utility.analysis.source import check_split, open_subject
from utility.errors import UserError


def predict(args: Any) -> int:
    subject = open_subject(args)
    check_split(args.split)
    model = subject.network(need_head=True)
    row, method = evaluate(model, subject, args.split)
    out = subject.out_dir("predict", args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = write_predictions(method, out, args.split)
    written.append(write_csv(out / f"metrics_{args.split}.csv", [{"split": args.split, "weights": subject.weights, **row}]))
    announce("predict", written)
    metric = subject.task.primary_metric
    print(f"predict {args.split}: {metric} {row.get(metric, float('nan')):.4f}")
    return 0


def _scores(subject: Any, args: Any) -> tuple[Any, str]:
    """The run's own test predictions, a given predictions file, or a fresh prediction."""
    if args.predictions:
        return cv.read_predictions(Path(args.predictions), subject.multilabel, subject.classes), args.predictions
    if subject.run_dir is not None and not args.weights and args.split == "test":
        path = subject.run_dir / f"predictions_test_{args.which}.csv"
        if path.is_file():
            return cv.read_predictions(path, subject.multilabel, subject.classes), str(path)
    model = subject.network(need_head=True)
    _, method = evaluate(model, subject, args.split)
    st = method.metrics.state()
    return cv.Scores(st["probs"].astype(np.float64), st["targets"], subject.classes, subject.multilabel), \
        f"{subject.weights} on {args.split}"


def curves(args: Any) -> int:
    subject = open_subject(args)
    subject.require_labels("curves")
    check_split(args.split)
    if any(not 0 < r <= 1 for r in args.recall):
        raise UserError(f"--recall values must be in (0, 1], got {args.recall}")
    s, source = _scores(subject, args)
    out = subject.out_dir("curves", args.out)
    out.mkdir(parents=True, exist_ok=True)
    roc, pr = cv.roc_points(s), cv.pr_points(s)
    bins, ece = cv.calibration(s, args.bins)
    written = [write_csv(out / "roc_points.csv", roc), write_csv(out / "pr_points.csv", pr),
               write_csv(out / "precision_at_recall.csv", cv.precision_at_recall_rows(s, args.recall)),
               write_csv(out / "summary.csv", [*cv.summary_rows(s), {"class": "all", "ece": ece, "n": len(s.probs)}]),
               write_csv(out / "calibration.csv", bins)]
    def series(rows: list[dict], x: str, y: str) -> list:
        return [(np.array([r[x] for r in rows if r["class"] == c]), np.array([r[y] for r in rows if r["class"] == c]), c)
                for c in s.classes if any(r["class"] == c for r in rows)]
    written.append(plots.lines(out / "roc.png", series(roc, "fpr", "tpr"), "false positive rate", "true positive rate",
                               "ROC per class", diagonal=True))
    written.append(plots.lines(out / "pr.png", series(pr, "recall", "precision"), "recall", "precision", "PR per class"))
    cm = cv.confusion(s)
    if s.multilabel:
        flat = cm.reshape(len(s.classes), 4)
        written.append(plots.heatmap(out / "confusion.png", flat, s.classes, ["tn", "fp", "fn", "tp"],
                                     "per-label confusion at 0.5", fmt="{:.0f}"))
    else:
        written.append(plots.heatmap(out / "confusion.png", cm, s.classes, s.classes, "confusion matrix",
                                     "predicted", "true", fmt="{:.0f}"))
    edges = np.array([b["bin_low"] for b in bins] + [bins[-1]["bin_high"]])
    written.append(plots.reliability(out / "reliability.png", np.array([b["confidence"] for b in bins], float),
                                     np.array([b["accuracy"] for b in bins], float), edges, ece))
    announce("curves", written)
    print(f"curves from {source}: ECE {ece:.4f}")
    return 0
