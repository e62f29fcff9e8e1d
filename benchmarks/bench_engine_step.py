"""Engine training step vs a bare PyTorch loop: same model, batches, optimizer, in one process.

    python benchmarks/bench_engine_step.py [--model resnet18] [--size 64] [--batch 32] [--steps 30]

Prints ``name: ours X, baseline Y, ratio R`` (seconds per step; target engine/bare <= 1.05).
Runs alternate (bare, engine, bare, engine, ...) and the median of each is compared, so drift in
machine speed hits both equally.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


from utility.methods.classification import ClassificationMethod
from utility.data.sampler import EpochSampler
from utility.training.engine import Amp, Trainer, TrainerOptions
from utility.models import Classifier, build_encoder


class Synthetic(Dataset):
    """Pre-made images in memory, in the sample format the pipeline produces."""

    def __init__(self, n: int, size: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "target": self.y[i], "index": i, "valid": True, "bad": ""}


def make_model(name: str, classes: int, device: torch.device) -> Classifier:
    torch.manual_seed(0)
    enc, width = build_encoder(name)
    return Classifier(enc, width, classes).to(device)


def bare(loader: DataLoader, model: torch.nn.Module, device: torch.device) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["target"].to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    float(loss.detach())  # wait for the device, as the engine's last log flush does
    return (time.perf_counter() - t0) / len(loader)


def engine(loader: DataLoader, model: Classifier, device: torch.device, classes: int, out: Path) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    method = ClassificationMethod(classes, False, [str(i) for i in range(classes)], 3)
    opts = TrainerOptions(epochs=1, seed=0, verbose=False)
    trainer = Trainer(model, method, opt, None, Amp(device, "off"), out, opts)
    trainer.save = lambda: None  # checkpoint writing is per epoch, not part of the step
    t0 = time.perf_counter()
    trainer.fit(loader, None)
    dt = (time.perf_counter() - t0) / len(loader)
    trainer.close()
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    classes = 10
    ds = Synthetic(args.batch * args.steps, args.size, classes)
    loader = DataLoader(ds, batch_size=args.batch, sampler=EpochSampler(len(ds), 0))
    warm = make_model(args.model, classes, device)
    bare(DataLoader(ds, batch_size=args.batch, sampler=EpochSampler(args.batch * 3, 0)), warm, device)
    b_times, e_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            b_times.append(bare(loader, make_model(args.model, classes, device), device))
            run = Path(tmp) / f"r{r}"
            run.mkdir()
            e_times.append(engine(loader, make_model(args.model, classes, device), device, classes, run))
    b, e = statistics.median(b_times), statistics.median(e_times)
    print(f"# {args.model} {args.size}px batch {args.batch}, {args.steps} steps x {args.repeats} repeats on {device}")
    print(f"train_step_s: ours {e:.4f}, baseline {b:.4f}, ratio {e / b:.3f}")
    print(f"images_per_s: ours {args.batch / e:.1f}, baseline {args.batch / b:.1f}, ratio {b / e:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
