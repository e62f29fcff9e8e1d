"""SimCLR training step through the engine vs a bare PyTorch loop, in one process.

    python benchmarks/bench_simclr_step.py [--model resnet18] [--size 32] [--crop 24] [--batch 32] [--steps 10]

Both sides run the same work per step: the same SimCLRViews module (two augmented views per image,
made on the device), the same SimCLRModel (encoder + projection head), NT-Xent, LARS. "ours" is
``Trainer.fit`` with ``SimCLRMethod`` (as ``pkgs/SimCLR/main.py`` runs it, checkpoint writing
excluded: that is per epoch, not per step); "baseline" is a hand-written loop. Runs alternate
(bare, engine, bare, engine, ...) with the same seed, and the medians are compared, so drift in
machine speed hits both equally. Prints ``simclr_step_s: ours X, baseline Y, ratio R`` (seconds per
step; target ours/baseline <= 1.05).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset


from utility.data.sampler import EpochSampler
from utility.training.engine import Amp, Trainer, TrainerOptions
from utility.models import build_encoder
from utility.methods.ntxent import nt_xent
from utility.training.optim import build_optimizer
from utility.methods.simclr import SimCLRMethod, SimCLRModel, SimCLRViews, projection_head

TEMPERATURE = 0.5


class Unlabeled(Dataset):
    """Pre-made [0, 1] images in memory, in the sample format the pipeline produces."""

    def __init__(self, n: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "target": 0, "index": i, "valid": True, "bad": ""}


def make_model(name: str, device: torch.device) -> SimCLRModel:
    torch.manual_seed(0)
    enc, width = build_encoder(name)
    return SimCLRModel(enc, projection_head(width, width, 128, "predecessor")).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(loader: DataLoader, model: SimCLRModel, views: SimCLRViews, device: torch.device) -> float:
    opt = build_optimizer(model, "LARS", 0.3, 1e-6)
    model.train()
    torch.manual_seed(1)
    sync(device)
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        v1, v2 = views(x)
        z1, z2 = model(v1, v2)
        loss = nt_xent(z1, z2, TEMPERATURE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    float(loss.detach())  # wait for the device, as the engine's last log flush does
    return (time.perf_counter() - t0) / len(loader)


def engine(loader: DataLoader, model: SimCLRModel, views: SimCLRViews, device: torch.device, out: Path) -> float:
    opt = build_optimizer(model, "LARS", 0.3, 1e-6)
    method = SimCLRMethod(views, TEMPERATURE, 3)
    opts = TrainerOptions(epochs=1, seed=0, verbose=False, train_columns=["epoch", "step", "loss", "datetime",
                                                                          "lr", "global_step"])
    trainer = Trainer(model, method, opt, None, Amp(device, "off"), out, opts)
    trainer.save = lambda: None  # checkpoint writing is per epoch, not part of the step
    torch.manual_seed(1)
    sync(device)
    t0 = time.perf_counter()
    trainer.fit(loader, None)
    dt = (time.perf_counter() - t0) / len(loader)
    trainer.close()
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=32, help="stored image size")
    ap.add_argument("--crop", type=int, default=24, help="view size (image_size)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    ds = Unlabeled(args.batch * args.steps, args.size)
    loader = DataLoader(ds, batch_size=args.batch, sampler=EpochSampler(len(ds), 0))
    views = SimCLRViews(args.crop).to(device)
    warm = make_model(args.model, device)
    bare(DataLoader(ds, batch_size=args.batch, sampler=EpochSampler(args.batch * 2, 0)), warm, views, device)
    b_times, e_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            b_times.append(bare(loader, make_model(args.model, device), views, device))
            run = Path(tmp) / f"r{r}"
            run.mkdir()
            e_times.append(engine(loader, make_model(args.model, device), views, device, run))
    b, e = statistics.median(b_times), statistics.median(e_times)
    print(f"# {args.model}, {args.size}px images, {args.crop}px views, batch {args.batch}, "
          f"{args.steps} steps x {args.repeats} repeats on {device}, {torch.get_num_threads()} threads")
    print(f"# per-run s/step bare {[round(t, 4) for t in b_times]} engine {[round(t, 4) for t in e_times]}")
    print(f"simclr_step_s: ours {e:.4f}, baseline {b:.4f}, ratio {e / b:.3f}")
    print(f"images_per_s: ours {args.batch / e:.1f}, baseline {args.batch / b:.1f}, ratio {b / e:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
