"""The frozen-embedding commands: embed, knn, probe."""
from __future__ import annotations

from typing import Any

from utility.analysis.features import cached_embeddings
from utility.analysis.knn import knn_rows
from utility.analysis.outputs import announce, write_csv
from utility.analysis.probe import probe_rows
from utility.analysis.source import SPLITS, check_split, open_subject


def _embed_splits(subject: Any, splits: list[str], args: Any) -> dict[str, dict]:
    cache = subject.out_dir("embed", args.cache_dir)
    out = {}
    for s in splits:
        path, out[s] = cached_embeddings(subject, s, cache)
        print(f"embeddings {s}: {out[s]['features'].shape[0]} x {out[s]['features'].shape[1]} ({path})")
    return out


def embed(args: Any) -> int:
    subject = open_subject(args)
    for s in args.splits:
        check_split(s)
    subject.network()  # the weights must fit before anything is written
    args.cache_dir = args.out or args.cache_dir
    _embed_splits(subject, args.splits, args)
    return 0


def knn(args: Any) -> int:
    subject = open_subject(args)
    subject.require_labels("knn")
    queries = [s for s in args.splits if s != "train"]
    for s in queries:
        check_split(s)
    subject.network()
    emb = _embed_splits(subject, ["train", *queries], args)
    rows = knn_rows(emb["train"], {s: emb[s] for s in queries}, args.k, args.temperature, subject.classes,
                    subject.multilabel)
    out = subject.out_dir("knn", args.out)
    announce("knn", [write_csv(out / "knn.csv", rows)])
    for r in rows:
        metric = subject.task.primary_metric
        print(f"knn {r['split']} k={r['k']}: {metric} {r.get(metric, float('nan')):.4f}")
    return 0


def probe(args: Any) -> int:
    subject = open_subject(args)
    subject.require_labels("probe")
    subject.network()
    emb = _embed_splits(subject, list(SPLITS), args)
    metric = subject.task.primary_metric
    rows = probe_rows(emb, subject.classes, subject.multilabel, metric, subject.task.primary_mode,
                      args.probes, args.C, subject.cfg.seed)
    out = subject.out_dir("probe", args.out)
    announce("probe", [write_csv(out / "probe.csv", rows)])
    for r in rows:
        if r["split"] == "test":
            print(f"probe {r['probe']} (C={r['C']:g} chosen on val): test {metric} {r.get(metric, float('nan')):.4f}")
    return 0
