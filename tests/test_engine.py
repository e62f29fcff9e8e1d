"""The shared training loop (utility/training/engine.py), in-process with a tiny model and synthetic tensors.

The engine must add nothing to the maths: its losses and weights equal a bare PyTorch loop's with the
same seed, model, data order and optimizer. Also: the epoch sampler, resume at the right sample,
per-step/per-epoch LR scheduling, short_training, NaN samples dropped and class-weighted losses.
"""
from __future__ import annotations

import copy
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parent.parent

from utility.training.engine import Amp, EpochSampler, Trainer, TrainerOptions

N_TRAIN, N_VAL, BATCH, DIM, CLASSES = 40, 12, 8, 6, 3


class Tensors(Dataset):
    """(x, y, index) triples: the index lets a test see which samples a step got."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class SimulatedKill(Exception):
    pass


class TinyMethod:
    """A minimal Method: mean CE for training, summed CE + accuracy for evaluation."""

    def __init__(self, fail_at_call: int | None = None) -> None:
        self.train_calls = 0
        self.eval_calls = 0
        self.seen: list[list[int]] = []
        self.fail_at_call = fail_at_call

    def train_loss(self, model, batch, ctx):
        x, y, idx = batch
        self.train_calls += 1
        if self.fail_at_call is not None and self.train_calls == self.fail_at_call:
            raise SimulatedKill()
        self.seen.append(idx.tolist())
        return F.cross_entropy(model(x), y), int(x.shape[0])

    def eval_begin(self, split):
        self.correct, self.n = 0, 0

    def eval_batch(self, model, batch, ctx):
        x, y, _ = batch
        self.eval_calls += 1
        out = model(x)
        self.correct += int((out.argmax(1) == y).sum())
        self.n += int(y.numel())
        return F.cross_entropy(out, y, reduction="sum").detach(), int(y.numel())

    def eval_end(self, avg_loss):
        return {"accuracy": self.correct / max(self.n, 1), "avg_val_loss": avg_loss}

    def eval_artifacts(self, out_dir, tag):
        pass


def data(seed: int = 0) -> tuple[Tensors, Tensors]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN + N_VAL, DIM, generator=g)
    y = (x[:, 0] > 0.3).long() + (x[:, 1] > 0.5).long()
    return Tensors(x[:N_TRAIN], y[:N_TRAIN]), Tensors(x[N_TRAIN:], y[N_TRAIN:])


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, CLASSES))


def loaders(train: Tensors, val: Tensors, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    return (DataLoader(train, batch_size=BATCH, sampler=EpochSampler(len(train), seed)),
            DataLoader(val, batch_size=BATCH, sampler=EpochSampler(len(val), seed, shuffle=False)))


def make_trainer(model, method, run_dir: Path, epochs: int = 2, lr: float = 0.1, scheduler_fn=None,
                 callbacks=(), **opts: Any) -> Trainer:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    sched = scheduler_fn(opt) if scheduler_fn else None
    run_dir.mkdir(parents=True, exist_ok=True)
    options = TrainerOptions(**{"epochs": epochs, "seed": 0, "verbose": False, "best_metric": "accuracy", **opts})
    return Trainer(model, method, opt, sched, Amp(torch.device("cpu")), run_dir, options, callbacks=callbacks)


def read_log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- maths

def test_engine_loss_and_weights_equal_bare_pytorch_loop(tmp_path):
    train, val = data()
    model = make_model()
    ref = copy.deepcopy(model)
    tr, va = loaders(train, val)
    trainer = make_trainer(model, TinyMethod(), tmp_path / "run", epochs=3,
                           scheduler_fn=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
                           scheduler_interval="step")
    trainer.fit(tr, va)
    trainer.close()

    # the bare loop: same initial weights, same optimizer and schedule, same sample order
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    losses, val_losses = [], []
    for epoch in range(3):
        ref.train()
        order = EpochSampler(N_TRAIN, 0)
        order.set_epoch(epoch)
        idx = order.order()
        for b in range(0, N_TRAIN, BATCH):
            sel = idx[b:b + BATCH]
            loss = F.cross_entropy(ref(train.x[sel]), train.y[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        ref.eval()
        with torch.no_grad():
            val_losses.append(F.cross_entropy(ref(val.x), val.y).item())

    rows = read_log(tmp_path / "run" / "train.log")
    assert len(rows) == len(losses) == 3 * N_TRAIN // BATCH
    np.testing.assert_allclose([float(r["loss"]) for r in rows], losses, rtol=1e-6, atol=1e-7)
    for k, v in ref.state_dict().items():
        assert torch.allclose(model.state_dict()[k].float(), v.float(), atol=1e-6), k
    vrows = read_log(tmp_path / "run" / "val.log")
    np.testing.assert_allclose([float(r["avg_val_loss"]) for r in vrows], val_losses, rtol=1e-6)
    steps = N_TRAIN // BATCH
    np.testing.assert_allclose([float(r["avg_epoch_train_loss"]) for r in vrows],
                               [np.mean(losses[e * steps:(e + 1) * steps]) for e in range(3)], rtol=1e-6)


# ----------------------------------------------------------------------------- sampler & resume

def test_epoch_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(50, 3), EpochSampler(50, 3)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        assert sorted(a) == list(range(50))
        orders.append(list(a))
    assert orders[0] != orders[1] != orders[2]
    other = EpochSampler(50, 4)
    other.set_epoch(0)
    assert list(other) != orders[0]
    # resume part-way: the rest of the same permutation
    a.set_epoch(1, start=17)
    assert list(a) == orders[1][17:] and len(a) == 33
    plain = EpochSampler(7, 3, shuffle=False)
    plain.set_epoch(5, 2)
    assert list(plain) == [2, 3, 4, 5, 6]


def test_resume_mid_epoch_continues_at_the_right_sample(tmp_path):
    train, val = data()
    steps = N_TRAIN // BATCH
    # uninterrupted
    full = TinyMethod()
    t_full = make_trainer(make_model(), full, tmp_path / "full", epochs=2)
    t_full.fit(*loaders(train, val))
    t_full.close()
    full_state = t_full.model.state_dict()

    # killed during the 3rd step of epoch 2; a checkpoint every 2 global steps (the last one after
    # step 1 of epoch 2) while every step is logged: the row of step 2 is past the checkpoint
    first = TinyMethod(fail_at_call=steps + 3)
    t1 = make_trainer(make_model(), first, tmp_path / "killed", epochs=2, checkpoint_every_steps=2, log_every=1)
    with pytest.raises(SimulatedKill):
        t1.fit(*loaders(train, val))
    t1.close()
    logged = [(int(r["epoch"]), int(r["step"])) for r in read_log(tmp_path / "killed" / "train.log")]
    assert logged[-1] == (2, 2)
    second = TinyMethod()
    t2 = make_trainer(make_model(seed=99), second, tmp_path / "killed", epochs=2, checkpoint_every_steps=2,
                      log_every=1)
    assert t2.resume()
    assert (t2.epoch, t2.batch_in_epoch, t2.global_step) == (1, 1, steps + 1)
    t2.fit(*loaders(train, val))
    t2.close()

    # the resumed run got exactly the batches the uninterrupted one got from the checkpoint on
    assert first.seen[:steps + 1] + second.seen == full.seen
    assert second.seen[0] == full.seen[steps + 1]
    rows = read_log(tmp_path / "killed" / "train.log")
    pairs = [(int(r["epoch"]), int(r["step"])) for r in rows]
    assert pairs == [(e, s) for e in (1, 2) for s in range(1, steps + 1)]
    np.testing.assert_allclose([float(r["loss"]) for r in rows],
                               [float(r["loss"]) for r in read_log(tmp_path / "full" / "train.log")], rtol=1e-6)
    for k, v in full_state.items():
        assert torch.allclose(t2.model.state_dict()[k].float(), v.float(), atol=1e-6), k
    assert [int(r["epoch"]) for r in read_log(tmp_path / "killed" / "val.log")] == [1, 2]
    # the epoch mean spans the steps before and after the kill
    full_v = read_log(tmp_path / "full" / "val.log")
    killed_v = read_log(tmp_path / "killed" / "val.log")
    assert float(killed_v[1]["avg_epoch_train_loss"]) == pytest.approx(float(full_v[1]["avg_epoch_train_loss"]),
                                                                        rel=1e-6)


def test_resume_drops_val_rows_written_after_the_checkpoint(tmp_path):
    """Killed after epoch 2's val row was written but before its checkpoint: the resumed run redoes
    epoch 2 and neither log holds a row twice."""
    train, val = data()
    steps = N_TRAIN // BATCH
    t1 = make_trainer(make_model(), TinyMethod(), tmp_path / "run", epochs=3)
    real_save = t1.save

    def save():
        if t1.epoch == 2:
            raise SimulatedKill()
        real_save()
    t1.save = save
    with pytest.raises(SimulatedKill):
        t1.fit(*loaders(train, val))
    t1.close()
    assert [int(r["epoch"]) for r in read_log(tmp_path / "run" / "val.log")] == [1, 2]
    t2 = make_trainer(make_model(), TinyMethod(), tmp_path / "run", epochs=3)
    assert t2.resume() and (t2.epoch, t2.batch_in_epoch) == (1, 0)
    assert [int(r["epoch"]) for r in read_log(tmp_path / "run" / "val.log")] == [1]
    t2.fit(*loaders(train, val))
    t2.close()
    assert [int(r["epoch"]) for r in read_log(tmp_path / "run" / "val.log")] == [1, 2, 3]
    pairs = [(int(r["epoch"]), int(r["step"])) for r in read_log(tmp_path / "run" / "train.log")]
    assert pairs == [(e, s) for e in (1, 2, 3) for s in range(1, steps + 1)]


# ----------------------------------------------------------------------------- scheduling

@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_scheduler_interval(tmp_path, interval):
    train, val = data()
    steps = N_TRAIN // BATCH
    trainer = make_trainer(make_model(), TinyMethod(), tmp_path / interval, epochs=3, lr=0.08,
                           scheduler_fn=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 0.5 ** k),
                           scheduler_interval=interval)
    trainer.fit(*loaders(train, val))
    trainer.close()
    rows = read_log(tmp_path / interval / "train.log")
    lrs = [float(r["lr"]) for r in rows]
    if interval == "step":
        expected = [0.08 * 0.5 ** g for g in range(3 * steps)]
        # and the schedule did not also advance per epoch
        assert trainer.scheduler.last_epoch == 3 * steps
    else:
        expected = [0.08 * 0.5 ** e for e in range(3) for _ in range(steps)]
        assert trainer.scheduler.last_epoch == 3
    np.testing.assert_allclose(lrs, expected, rtol=1e-9)
    assert [int(r["global_step"]) for r in rows] == list(range(1, 3 * steps + 1))


def test_short_training_one_train_and_one_val_batch_per_epoch(tmp_path):
    train, val = data()
    method = TinyMethod()
    trainer = make_trainer(make_model(), method, tmp_path / "short", epochs=3, short_training=True)
    trainer.fit(*loaders(train, val))
    trainer.close()
    assert method.train_calls == 3 and method.eval_calls == 3
    rows = read_log(tmp_path / "short" / "train.log")
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, 1), (2, 1), (3, 1)]
    assert [int(r["epoch"]) for r in read_log(tmp_path / "short" / "val.log")] == [1, 2, 3]
    # the one validation batch: metrics count its 8 samples only
    assert method.n == BATCH


# ----------------------------------------------------------------------------- classification step

def classification_batch(images: torch.Tensor, targets: torch.Tensor, valid=None) -> dict[str, Any]:
    n = images.shape[0]
    valid = torch.ones(n, dtype=torch.bool) if valid is None else valid
    return {"image": images, "target": targets, "index": torch.arange(n), "valid": valid,
            "bad": ["" if v else "nan_inf: image holds NaN or Inf" for v in valid.tolist()]}


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, CLASSES)).eval()


def ctx():
    from utility.training.engine import StepContext
    import contextlib
    return StepContext(torch.device("cpu"), contextlib.nullcontext)


def test_nan_sample_is_dropped_from_the_loss(tmp_path):
    """A .npy image holding NaN: with test_nan_inf the batch loss is finite and equals the loss of the
    batch without it; without test_nan_inf the NaN reaches the loss."""
    from utility.methods.classification import ClassificationMethod
    from utility.data.dataset import ImageDataset, Preprocess
    from utility.data.index import Split

    rng = np.random.default_rng(0)
    paths, targets = [], []
    for i in range(6):
        arr = rng.uniform(-1000, 1000, (12, 12)).astype(np.float32)
        if i == 2:
            arr[5, 5] = np.nan
        p = tmp_path / f"img_{i}.npy"
        np.save(p, arr)
        paths.append(p)
        targets.append(i % CLASSES)
    split = Split("train", paths, targets)
    prep = Preprocess(3, (12, 12), "01_clipped_CT")  # clipping keeps NaN (min-max would zero the image)
    model = conv_model()
    losses = {}
    for flag in (True, False):
        ds = ImageDataset(split, prep, False, CLASSES, test_nan_inf=flag)
        batch = next(iter(DataLoader(ds, batch_size=6, shuffle=False)))
        method = ClassificationMethod(CLASSES, False, ["a", "b", "c"], 3)
        loss, n = method.train_loss(model, batch, ctx())
        losses[flag] = (loss, n, batch)
    loss, n, batch = losses[True]
    assert not bool(batch["valid"][2]) and bool(batch["valid"][[0, 1, 3, 4, 5]].all())
    assert n == 5 and torch.isfinite(loss)
    keep = [0, 1, 3, 4, 5]
    expected = F.cross_entropy(model(batch["image"][keep]), batch["target"][keep])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss_off, n_off, _ = losses[False]
    assert n_off == 6 and torch.isnan(loss_off)  # the feature is what keeps the loss finite

    # evaluation drops it too: the metrics see 5 samples
    ds = ImageDataset(split, prep, False, CLASSES, test_nan_inf=True)
    method = ClassificationMethod(CLASSES, False, ["a", "b", "c"], 3)
    method.eval_begin("val")
    s, d = method.eval_batch(model, next(iter(DataLoader(ds, batch_size=6))), ctx())
    assert float(d) == 5 and torch.isfinite(s)
    assert len(method.metrics) == 5


def test_class_weights_are_torch_weighted_cross_entropy():
    from utility.methods.classification import ClassificationMethod

    g = torch.Generator().manual_seed(1)
    w = [1.0, 3.0, 10.0]
    x = torch.randn(10, 3, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1])
    model = conv_model()
    weighted = ClassificationMethod(CLASSES, False, ["a", "b", "c"], 3, class_weights=w)
    plain = ClassificationMethod(CLASSES, False, ["a", "b", "c"], 3)
    loss_w, _ = weighted.train_loss(model, classification_batch(x, y), ctx())
    loss_p, _ = plain.train_loss(model, classification_batch(x, y), ctx())
    logits = model(x)
    assert loss_w.item() == pytest.approx(F.cross_entropy(logits, y, weight=torch.tensor(w)).item(), rel=1e-6)
    assert loss_p.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert abs(loss_w.item() - loss_p.item()) > 1e-3
    # gradients too (what training sees)
    model.zero_grad()
    weighted.train_loss(model, classification_batch(x, y), ctx())[0].backward()
    g_engine = model[-1].weight.grad.clone()
    model.zero_grad()
    F.cross_entropy(model(x), y, weight=torch.tensor(w)).backward()
    torch.testing.assert_close(g_engine, model[-1].weight.grad)

    # evaluation over a split in uneven batches: sum / sum of weights == weighted mean over the split
    weighted.eval_begin("val")
    tot, den = 0.0, 0.0
    for sl in (slice(0, 3), slice(3, 10)):
        s, d = weighted.eval_batch(model, classification_batch(x[sl], y[sl]), ctx())
        tot, den = tot + float(s), den + float(d)
    assert tot / den == pytest.approx(F.cross_entropy(logits, y, weight=torch.tensor(w)).item(), rel=1e-6)

    # multilabel: per-label weights on the BCE terms
    yt = (torch.rand(10, 3, generator=g) > 0.5).float()
    ml = ClassificationMethod(CLASSES, True, ["a", "b", "c"], 3, class_weights=w)
    loss_ml, _ = ml.train_loss(model, classification_batch(x, yt), ctx())
    per = F.binary_cross_entropy_with_logits(logits, yt, reduction="none") * torch.tensor(w)
    assert loss_ml.item() == pytest.approx(per.mean().item(), rel=1e-6)


def test_log_epoch_numbering_and_our_readers_agree(tmp_path):
    """val.log epochs are 1-based like train.log's (docs/compatibility.md: the
    predecessor's val.log counted from 0, its finetuning train.log from 1): val.log epoch e scores the
    epoch whose train.log rows say e, and the study readers' epoch numbers (convergence epoch, training
    curve per epoch) are val.log epoch values."""
    from utility.study.report import _series, _train_loss
    from utility.study.results import convergence_epoch

    train, val = data()
    t = make_trainer(make_model(), TinyMethod(), tmp_path / "run", epochs=3)
    t.fit(*loaders(train, val))
    t.close()
    vrows, trows = read_log(tmp_path / "run" / "val.log"), read_log(tmp_path / "run" / "train.log")
    assert [int(r["epoch"]) for r in vrows] == [1, 2, 3]
    assert sorted({int(r["epoch"]) for r in trows}) == [1, 2, 3]
    for r in vrows:  # avg_epoch_train_loss of val.log row e = mean of train.log's epoch-e losses
        e = int(r["epoch"])
        mean = np.mean([float(x["loss"]) for x in trows if int(x["epoch"]) == e])
        assert float(r["avg_epoch_train_loss"]) == pytest.approx(mean, rel=1e-6)
    curve = _train_loss(tmp_path / "run" / "train.log")
    assert curve == pytest.approx([float(r["avg_epoch_train_loss"]) for r in vrows], rel=1e-6)
    conv = convergence_epoch(_series(tmp_path / "run" / "val.log", "accuracy"))
    assert conv in [int(r["epoch"]) for r in vrows]
