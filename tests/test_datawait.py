"""Data wait in every run (utility/training/datawait.py and the engine's train.log columns): the share of
step time spent waiting for the loader, images/s, and the loader-bound notice.

The arithmetic is checked with a fake clock (no dependence on this machine's speed); the engine test
slows its loader by sleeping in the dataset so the notice must appear whatever the machine's load."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset


from utility.training.datawait import NOTICE_SHARE, WAIT_COLUMNS, DataWait, batch_images
from utility.training.engine import TRAIN_COLUMNS, Amp, EpochSampler, Trainer, TrainerOptions


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def slow_batches(clock: FakeClock, n: int, load_s: float, batch: int = 4):
    for _ in range(n):
        clock.t += load_s  # the loader takes load_s per batch
        yield {"image": torch.zeros(batch, 1, 2, 2)}


def consume(dw: DataWait, clock: FakeClock, loader, step_s: float) -> list:
    """The training loop's side: each step computes for step_s, then a window is taken."""
    out = []
    for _ in dw.batches(loader):
        clock.t += step_s
        out.append(dw.window())
    return out


def test_window_share_and_images_per_s_exact(capsys):
    clock = FakeClock()
    dw = DataWait(world=2, clock=clock)
    wins = consume(dw, clock, slow_batches(clock, 6, load_s=3.0), step_s=1.0)
    for w in wins:  # each window: 3 s waiting of 4 s, 4 images per rank x 2 ranks per 4 s
        assert w.data_wait == pytest.approx(0.75)
        assert w.images_per_s == pytest.approx(2.0)
    # run totals exclude each epoch's first batch (worker start-up): 5 counted steps
    assert dw.counted_steps == 5 and dw.share == pytest.approx(0.75)
    assert dw.check_notice() is not None and dw.check_notice() is None  # once per run
    err = capsys.readouterr().err
    assert err.count("waiting for data") == 1
    assert "75 %" in err
    for fix in ("num_workers", "live_cache", "tf_device"):
        assert fix in err


def test_fast_loader_gives_no_notice(capsys):
    clock = FakeClock()
    dw = DataWait(clock=clock)
    wins = consume(dw, clock, slow_batches(clock, 8, load_s=0.01), step_s=1.0)
    assert all(0 <= w.data_wait < NOTICE_SHARE for w in wins)
    assert dw.check_notice(at_epoch_end=True) is None
    assert "waiting for data" not in capsys.readouterr().err


def test_slow_first_batch_alone_is_not_flagged():
    """Worker start-up makes each epoch's first batch slow; that alone is not a loader-bound run."""
    clock = FakeClock()
    dw = DataWait(clock=clock)

    def loader():
        for i in range(6):
            clock.t += 50.0 if i == 0 else 0.01
            yield {"image": torch.zeros(2, 1)}

    consume(dw, clock, loader(), step_s=1.0)
    assert dw.share < NOTICE_SHARE and dw.check_notice(at_epoch_end=True) is None


def test_batch_images_formats():
    assert batch_images({"image": torch.zeros(5, 3)}, 1) == 5
    assert batch_images((torch.zeros(7, 2), torch.zeros(7)), 1) == 7
    assert batch_images({"image": [torch.zeros(3, 1), torch.zeros(3, 1)]}, 1) == 3
    assert batch_images({"other": 1}, 9) == 9


class SlowTensors(Dataset):
    """Samples that take ``delay`` seconds each to load (an artificially slow loader)."""

    def __init__(self, n: int, delay: float) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y, self.delay = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g), delay

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return {"image": self.x[i], "target": self.y[i]}


class Method:
    def train_loss(self, model, batch, ctx):
        return torch.nn.functional.cross_entropy(model(batch["image"]), batch["target"]), len(batch["target"])


def run_engine(run_dir: Path, delay: float) -> tuple[list[dict[str, str]], list[str]]:
    run_dir.mkdir()
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    ds = SlowTensors(24, delay)
    loader = DataLoader(ds, batch_size=4, sampler=EpochSampler(len(ds), 0))
    opts = TrainerOptions(epochs=1, seed=0, verbose=False, log_every=2)
    tr = Trainer(model, Method(), torch.optim.SGD(model.parameters(), lr=0.1), None, Amp(torch.device("cpu")),
                 run_dir, opts)
    tr.save = lambda: None
    tr.fit(loader, None)
    tr.close()
    with (run_dir / "train.log").open(newline="") as fh:
        rows = list(csv.reader(fh))
    return [dict(zip(rows[0], r)) for r in rows[1:]], rows[0]


def test_engine_writes_wait_columns_and_flags_a_slow_loader(tmp_path, capsys):
    rows, header = run_engine(tmp_path / "slow", delay=0.05)  # 0.2 s per batch of 4 vs a tiny Linear
    assert header == TRAIN_COLUMNS + WAIT_COLUMNS  # after the predecessor's columns
    assert len(rows) == 6
    waits = [float(r["data_wait"]) for r in rows]
    assert all(0.0 <= w <= 1.0 for w in waits)
    assert min(waits) > NOTICE_SHARE  # the loader sleeps for far longer than the step computes
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    # 4 images per 0.2 s of sleep at most: images/s cannot exceed 20
    assert all(float(r["images_per_s"]) <= 20.0 + 1e-6 for r in rows)
    err = capsys.readouterr().err
    assert err.count("waiting for data (loader-bound)") == 1, err
    tags = tb_tags(tmp_path / "slow" / "tensorboard")
    assert {"train/data_wait", "train/images_per_s", "train/loss"} <= tags


def tb_tags(logdir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_engine_resumes_an_older_train_log_with_its_own_columns(tmp_path):
    """A run begun before these columns existed keeps its train.log header on resume (no ragged rows)."""
    run = tmp_path / "old"
    run.mkdir()
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opts = TrainerOptions(epochs=2, seed=0, verbose=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tr = Trainer(model, Method(), opt, None, Amp(torch.device("cpu")), run, opts)
    tr.save()  # a checkpoint at epoch 0
    tr.close()
    (run / "train.log").write_text("epoch,step,loss,lr,global_step\n")
    tr = Trainer(model, Method(), opt, None, Amp(torch.device("cpu")), run, opts)
    assert tr.resume()
    ds = SlowTensors(8, 0.0)
    tr.fit(DataLoader(ds, batch_size=4, sampler=EpochSampler(len(ds), 0)), None)
    tr.close()
    with (run / "train.log").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == TRAIN_COLUMNS and len(rows) == 5 and all(len(r) == 5 for r in rows)
