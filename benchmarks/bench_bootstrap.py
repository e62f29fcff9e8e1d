"""test_ci.csv's bootstrap over subjects (utility/metrics/bootstrap.py) vs the plain way: draw subjects,
gather their samples, recompute each metric with scikit-learn (numpy for segmentation), per resample.

    python benchmarks/bench_bootstrap.py [--samples 10000] [--subjects 2000] [--resamples 1000] [--naive 20]

Three synthetic test sets of --samples samples in --subjects subjects: 3-class classification (all its
metrics incl. per-class AUC), 14-label multi-label (CX8-like: per-label AUC/F1/precision/recall/IoU) and
4-class segmentation (per-image confusion counts, BraTS regions). Ours runs all --resamples; the
baseline runs --naive resamples and is scaled to --resamples. Prints ``name: ours X s, baseline Y s,
ratio R`` (seconds for --resamples resamples; single process, whatever the machine's load).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from utility.metrics.bootstrap import BootstrapSettings, Resampler
from utility.metrics.classification import ClassificationMetrics
from utility.metrics.resampled import ClassificationSamples, SegmentationSamples
from utility.metrics.segmentation import SegmentationMetrics, per_image_counts


def naive(compute, subjects: np.ndarray, resamples: int, seed: int = 0) -> float:
    """Seconds for ``resamples`` resamples, each gathering the drawn subjects' samples and recomputing."""
    codes = np.unique(subjects, return_inverse=True)[1]
    members = [np.flatnonzero(codes == s) for s in range(codes.max() + 1)]
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(resamples):
        compute(np.concatenate([members[s] for s in rng.integers(0, len(members), len(members))]))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--subjects", type=int, default=2000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--naive", type=int, default=20, help="baseline resamples actually run (then scaled)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    n = a.samples
    subjects = rng.integers(0, a.subjects, n).astype(str)
    settings = BootstrapSettings(a.resamples, 0.95, 0)
    cases = []
    for name, k, multilabel in (("multiclass_3", 3, False), ("multilabel_14", 14, True)):
        logits = torch.randn(n, k)
        y = torch.randint(0, 2, (n, k)) if multilabel else torch.randint(0, k, (n,))
        m = ClassificationMetrics(k, multilabel)
        m.update(logits, y)
        st = m.state()
        samples = ClassificationSamples(st["probs"], st["targets"], multilabel, m.class_names)

        def compute(i, st=st, m=m, k=k, multilabel=multilabel):
            mm = ClassificationMetrics(k, multilabel)
            mm.load_states([{"probs": st["probs"][i], "targets": st["targets"][i]}])
            mm.compute(0.0)

        cases.append((name, samples, compute))
    seg = SegmentationMetrics(4, regions={"ET": [3], "TC": [1, 3], "WT": [1, 2, 3]})
    pred, truth = torch.randint(0, 4, (n, 16, 16)), torch.randint(0, 4, (n, 16, 16))
    counts = per_image_counts(pred, truth, 4).numpy()

    def seg_compute(i):
        s = SegmentationMetrics(4, regions=seg.regions)
        s.cm = torch.from_numpy(counts[i].sum(0).reshape(4, 4))
        s.compute(0.0)

    cases.append(("segmentation_4", SegmentationSamples(counts, seg), seg_compute))
    for name, samples, compute in cases:
        t0 = time.perf_counter()
        Resampler(samples, subjects).distribution(settings)
        ours = time.perf_counter() - t0
        base = naive(compute, subjects, a.naive) * a.resamples / a.naive
        print(f"bootstrap {name} ({n} samples, {a.subjects} subjects, {a.resamples} resamples): "
              f"ours {ours:.2f} s, baseline {base:.2f} s, ratio {base / ours:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
