"""Multi-process training (DDP) on CPU with the gloo backend, 2 processes.

1. Gradients: 2 ranks x N images through DistributedDataParallel and ClassificationMethod.train_loss
   equal 1 process x 2N images (tiny CNN without normalisation; resnet18 with BatchNorm replaced by
   GroupNorm; resnet18 with BatchNorm in eval mode). Train-mode BatchNorm normalises with per-rank
   batch statistics, so its gradients legitimately differ — checked as a negative control.
2. Evaluation: Trainer.evaluate over EpochSampler(shuffle=False) shards of an odd number of samples
   (unequal shards, unequal batch counts) gives exactly the single-process metrics and one
   prediction row per sample.
3. EpochSampler under world 2 (rank/world patched): train shards padded, eval shards exact, resume.
4. End to end with ``torchrun --standalone --nproc_per_node 2`` (finetune + SimCLR), user errors.
5. syncbn: build_model under an initialised gloo group converts BatchNorm to SyncBatchNorm.

Timeouts on the spawned workers are deadlock guards (generous: a loaded 2-core machine needs ~20 s
just to start two Python processes with torch). Worker processes use torch.multiprocessing with a file:// rendezvous in tmp_path and write their
results to files the parent compares. torchrun runs use ``--standalone`` (a free port each time)
so that concurrent test runs on one machine do not collide on port 29500.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset

from conftest import (HANG_GUARD_S, REPO, make_folder_dataset, small_run_config, spawn_workers, task_dict,
                      write_class_image, write_yaml)

WORLD = 2
CLASSES = ["a", "b", "c"]
TORCHRUN = Path(sys.executable).parent / "torchrun"
FINETUNE = REPO / "pkgs" / "FTE" / "finetune.py"
SIMCLR = REPO / "pkgs" / "SimCLR" / "main.py"


# ============================================================================ helpers

def spawn(fn, tmp_path: Path, *args) -> None:
    """Run ``fn(rank, init_file, *args)`` in WORLD processes; fail (not hang) on a deadlock."""
    spawn_workers(fn, tmp_path / f"pg_{fn.__name__}_{time.monotonic_ns()}", *args, nprocs=WORLD)


def init_group(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def ctx_cpu():
    from utility.training.engine import StepContext
    return StepContext(torch.device("cpu"), contextlib.nullcontext, True)


def batch_dict(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict:
    return {"image": x, "target": y, "index": index, "valid": torch.ones(len(y), dtype=torch.bool)}


def tiny_cnn(norm: str = "none"):
    """utility.models.encoders.Classifier around a small conv encoder (optionally with BatchNorm)."""
    from utility.models import Classifier
    torch.manual_seed(7)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    model = Classifier(nn.Sequential(*layers), 16, len(CLASSES))
    if norm == "bn":  # non-trivial running statistics, the same in every process
        g = torch.Generator().manual_seed(3)
        bn = layers[1]
        bn.running_mean.copy_(torch.rand(8, generator=g) * 0.2)
        bn.running_var.copy_(0.5 + torch.rand(8, generator=g))
    return model


def bn_to_groupnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(8, child.num_features))
        else:
            bn_to_groupnorm(child)
    return module


def make_variant(variant: str) -> nn.Module:
    """tiny_cnn: no normalisation; resnet18_groupnorm: build_encoder('resnet18') with every
    BatchNorm replaced by GroupNorm; tiny_cnn_bn_eval / _bn_train: BatchNorm in eval / train mode."""
    from utility.models import Classifier, build_encoder
    if variant.startswith("tiny_cnn"):
        model = tiny_cnn("bn" if "_bn_" in variant else "none").train()
        if variant == "tiny_cnn_bn_eval":
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return model
    torch.manual_seed(11)
    encoder, width = build_encoder("resnet18", 3)
    return bn_to_groupnorm(Classifier(encoder, width, len(CLASSES))).train()


# ============================================================================ 1. gradients

N_PER_RANK = 6
GRAD_VARIANTS = ["tiny_cnn", "resnet18_groupnorm", "tiny_cnn_bn_eval", "tiny_cnn_bn_train"]
GRAD_WEIGHTS = {"unweighted": None, "w_l": [1.0, 3.0, 0.5]}


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    n = N_PER_RANK * WORLD
    x = torch.rand(n, 3, 16, 16, generator=g)
    y = torch.tensor([0, 0, 2, 0, 2, 1, 1, 1, 2, 2, 0, 1])[:n]
    return x, y, torch.arange(n)


def grads_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def train_grads(variant: str, weights, x, y, idx, wrap=None) -> tuple[float, dict[str, torch.Tensor]]:
    from utility.methods.classification import ClassificationMethod
    model = make_variant(variant)
    method = ClassificationMethod(len(CLASSES), False, CLASSES, 3, augment=None, class_weights=weights)
    module = wrap(model) if wrap is not None else model
    loss, n = method.train_loss(module, batch_dict(x, y, idx), ctx_cpu())
    assert n == len(y)
    loss.backward()
    return float(loss.detach()), grads_of(model)


def _grad_worker(rank: int, init_file: str, out_dir: str) -> None:
    init_group(rank, init_file)
    try:
        x, y, idx = fixed_batch()
        mine = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        out = {}
        for variant in GRAD_VARIANTS:
            for wname, w in GRAD_WEIGHTS.items():
                if wname != "unweighted" and "_bn_" in variant:
                    continue
                out[(variant, wname)] = train_grads(variant, w, x[mine], y[mine], idx[mine],
                                                    wrap=nn.parallel.DistributedDataParallel)
        torch.save(out, Path(out_dir) / f"grads_rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def grad_results(tmp_path_factory):
    """Per-rank (loss, grads) of every variant and weighting, from one 2-process spawn."""
    d = tmp_path_factory.mktemp("ddp_grads")
    spawn(_grad_worker, d, str(d))
    return [torch.load(d / f"grads_rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_ddp_gradients_equal_single_process_on_full_batch(grad_results):
    ranks = grad_results
    x, y, idx = fixed_batch()
    for variant in GRAD_VARIANTS:
        for wname, w in GRAD_WEIGHTS.items():
            if (variant, wname) not in ranks[0]:
                continue
            ref_loss, ref = train_grads(variant, w, x, y, idx)
            r0, r1 = ranks[0][(variant, wname)][1], ranks[1][(variant, wname)][1]
            assert set(r0) == set(ref) == set(r1), variant
            # DDP leaves identical (averaged) gradients on every rank
            for k in ref:
                assert torch.equal(r0[k], r1[k]), (variant, wname, k)
            if variant == "tiny_cnn_bn_train":
                # negative control: train-mode BatchNorm normalises each rank's half with its own
                # batch statistics, so DDP != one process (use syncbn, or compare GroupNorm/eval BN)
                assert not all(torch.allclose(r0[k], ref[k], atol=1e-6) for k in ref)
                continue
            for k in ref:
                assert torch.allclose(r0[k], ref[k], atol=1e-6, rtol=1e-5), \
                    (variant, k, (r0[k] - ref[k]).abs().max().item())
            # the mean of the rank losses is the full-batch loss (equal per-rank counts)
            mean_loss = (ranks[0][(variant, wname)][0] + ranks[1][(variant, wname)][0]) / 2
            assert mean_loss == pytest.approx(ref_loss, rel=1e-6)


def test_weighted_loss_ddp_gradients_equal_single_process(grad_results):
    """With class weights (w_l) the weighted CE is normalised by the weight sum. Each rank
    normalises by its own weight sum, so the averaged gradient equals the full-batch one only
    if the per-rank weight sums agree; this batch has unequal sums on purpose."""
    x, y, _ = fixed_batch()
    w = torch.tensor(GRAD_WEIGHTS["w_l"])
    sums = [float(w[y[r * N_PER_RANK:(r + 1) * N_PER_RANK]].sum()) for r in range(WORLD)]
    assert sums[0] != sums[1]
    ranks = grad_results
    for variant in ("tiny_cnn", "resnet18_groupnorm"):
        _, ref = train_grads(variant, GRAD_WEIGHTS["w_l"], *fixed_batch())
        got = ranks[0][(variant, "w_l")][1]
        for k in ref:
            assert torch.allclose(got[k], ref[k], atol=1e-6, rtol=1e-5), \
                (variant, k, (got[k] - ref[k]).abs().max().item())


# ============================================================================ 2. evaluation

class ArrayDataset(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.rand(n, 3, 12, 12, generator=g)
        self.y = torch.tensor([i % 3 if i % 4 else (i + 1) % 3 for i in range(n)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "target": int(self.y[i]), "index": i, "valid": True}


N_EVAL = 11          # odd: shards of 6 and 5; padding would count one sample twice
EVAL_BATCH = 5       # per rank: rank 0 runs 2 batches (5 + 1), rank 1 one batch (5)
EVAL_WEIGHTS = [1.0, 2.0, 0.5]


def evaluate_once(run_dir: Path, n: int, batch: int, ddp: bool) -> dict[str, float]:
    from utility.methods.classification import ClassificationMethod
    from utility.training.engine import Amp, EpochSampler, Trainer, TrainerOptions
    run_dir.mkdir(parents=True, exist_ok=True)
    model = tiny_cnn("bn")
    module = nn.parallel.DistributedDataParallel(model) if ddp else None
    files = [Path(f"img_{i:02d}.png") for i in range(n)]
    method = ClassificationMethod(len(CLASSES), False, CLASSES, 3, class_weights=EVAL_WEIGHTS,
                                  paths={"test": files})
    trainer = Trainer(model, method, torch.optim.SGD(model.parameters(), lr=0.1), None,
                      Amp(torch.device("cpu")), run_dir, TrainerOptions(epochs=1, seed=0, verbose=False),
                      module)
    loader = DataLoader(ArrayDataset(n), batch_size=batch, sampler=EpochSampler(n, 0, shuffle=False))
    try:
        return trainer.evaluate(loader, "test_x", "test")
    finally:
        trainer.close()


def _eval_worker(rank: int, init_file: str, out_dir: str, n: int) -> None:
    init_group(rank, init_file)
    try:
        m = evaluate_once(Path(out_dir) / "ddp", n, EVAL_BATCH, ddp=True)
        torch.save(m, Path(out_dir) / f"metrics_rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as fh:
        r = csv.DictReader(fh)
        return list(r.fieldnames or []), list(r)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_distributed_evaluation_equals_single_process(tmp_path):
    spawn(_eval_worker, tmp_path, str(tmp_path), N_EVAL)
    single = evaluate_once(tmp_path / "single", N_EVAL, 2 * EVAL_BATCH, ddp=False)
    got = [torch.load(tmp_path / f"metrics_rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert {"accuracy", "avg_val_loss", "auc_macro"} <= set(single)
    assert any(k.startswith("auc_class_") for k in single)
    for r in range(WORLD):  # every rank gets the same, complete row (best-model decisions agree)
        assert list(got[r]) == list(single)
        bad = {k: (got[r][k], single[k]) for k in single if not same(got[r][k], single[k])}
        assert not bad, (r, bad)

    # weighted avg_val_loss by hand: sum_i w_yi * ce_i / sum_i w_yi over all 11 samples
    ds = ArrayDataset(N_EVAL)
    with torch.no_grad():
        logits = tiny_cnn("bn").eval()(ds.x)
    ce = nn.functional.cross_entropy(logits, ds.y, reduction="none")
    w = torch.tensor(EVAL_WEIGHTS)[ds.y]
    assert got[0]["avg_val_loss"] == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-5)
    assert got[0]["accuracy"] == pytest.approx(float((logits.argmax(1) == ds.y).double().mean()), abs=1e-12)

    # predictions written once (rank 0), every sample exactly once, same values as one process
    cols, rows = read_csv(tmp_path / "ddp" / "predictions_test_x.csv")
    _, ref_rows = read_csv(tmp_path / "single" / "predictions_test_x.csv")
    assert len(rows) == N_EVAL
    assert sorted(r["file"] for r in rows) == sorted(f"img_{i:02d}.png" for i in range(N_EVAL))
    by_file = {r["file"]: r for r in ref_rows}
    for r in rows:
        ref = by_file[r["file"]]
        assert r["target"] == ref["target"] and r["predicted"] == ref["predicted"]
        assert r["subject"] == ref["subject"] == r["file"]   # the method was given no subjects
        for c in (c for c in cols if c.startswith("prob_")):
            assert float(r[c]) == pytest.approx(float(ref[c]), abs=1e-6)
    assert (tmp_path / "ddp" / "confusion_matrices" / "test_x.csv").read_text() == \
        (tmp_path / "single" / "confusion_matrices" / "test_x.csv").read_text()


def test_distributed_evaluation_with_fewer_samples_than_ranks(tmp_path):
    """One sample, two ranks: rank 1's shard is empty (no batch at all). It must not deadlock
    (DDP's forward broadcasts BatchNorm buffers, a collective rank 1 never joins) and must
    count the sample once."""
    spawn(_eval_worker, tmp_path, str(tmp_path), 1)
    single = evaluate_once(tmp_path / "single", 1, 4, ddp=False)
    for r in range(WORLD):
        got = torch.load(tmp_path / f"metrics_rank{r}.pt", weights_only=False)
        bad = {k: (got[k], single[k]) for k in single if not same(got[k], single[k])}
        assert not bad, (r, bad)
    _, rows = read_csv(tmp_path / "ddp" / "predictions_test_x.csv")
    assert [r["file"] for r in rows] == ["img_00.png"]


# ============================================================================ 3. EpochSampler

def sampler_for(monkeypatch, rank: int, n: int, shuffle: bool, seed: int = 3):
    import utility.data.sampler as sampler
    monkeypatch.setattr(sampler, "rank", lambda: rank)
    monkeypatch.setattr(sampler, "world_size", lambda: WORLD)
    return sampler.EpochSampler(n, seed, shuffle=shuffle)


@pytest.mark.parametrize("n", [10, 11, 1])
def test_epoch_sampler_shards_under_world_2(monkeypatch, n):
    for epoch in (0, 1):
        # training: shuffled, padded to a multiple of the world size, equal lengths
        train = [sampler_for(monkeypatch, r, n, shuffle=True) for r in range(WORLD)]
        for s in train:
            s.set_epoch(epoch)
        shards = [list(s) for s in train]
        per = math.ceil(n / WORLD)
        assert [len(s) for s in train] == [per, per] and [len(s) for s in shards] == [per, per]
        union = shards[0] + shards[1]
        assert sorted(set(union)) == list(range(n))
        dup = len(union) - n            # only the padding repeats, at most world - 1 samples
        assert dup == (-n) % WORLD
        assert len(set(shards[0]) & set(shards[1])) <= dup
        assert all(len(set(s)) == len(s) for s in shards)
        # both ranks see one permutation of the same epoch (seeded by seed and epoch)
        full = train[0].order()
        assert full != list(range(n)) or n < 3
        # evaluation: no padding, disjoint, union is exactly every index once
        ev = [sampler_for(monkeypatch, r, n, shuffle=False) for r in range(WORLD)]
        eshards = [list(s) for s in ev]
        assert [len(s) for s in ev] == [len(s) for s in eshards] == [len(range(r, n, WORLD)) for r in range(WORLD)]
        assert not set(eshards[0]) & set(eshards[1])
        assert sorted(eshards[0] + eshards[1]) == list(range(n))
    # a new epoch reshuffles
    if n >= 10:
        a = sampler_for(monkeypatch, 0, n, True)
        a.set_epoch(0)
        b = sampler_for(monkeypatch, 0, n, True)
        b.set_epoch(1)
        assert list(a) != list(b)


def test_epoch_sampler_mid_epoch_start_per_rank(monkeypatch):
    """Resume: ``start`` counts samples of this rank's own share; each rank continues where it was."""
    n, batch, done_batches = 23, 4, 2
    for r in range(WORLD):
        s = sampler_for(monkeypatch, r, n, shuffle=True)
        s.set_epoch(4)
        whole = list(s)
        s.set_epoch(4, start=done_batches * batch)
        rest = list(s)
        assert rest == whole[done_batches * batch:]
        assert len(s) == len(whole) - done_batches * batch == len(rest)
    # the two ranks' remaining parts are still the two shards' tails (disjoint apart from padding)
    tails = []
    for r in range(WORLD):
        s = sampler_for(monkeypatch, r, n, shuffle=True)
        s.set_epoch(4, start=done_batches * batch)
        tails.append(list(s))
    assert len(tails[0]) == len(tails[1])


# ============================================================================ 4. end to end (torchrun)

needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not found next to python")


def cpu_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(script: Path, args, cwd: Path, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(WORLD), str(script), *map(str, args)]
    return subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=timeout, env=cpu_env())


FT_CLASSES = ["bar_h", "bar_v"]
FT_EPOCHS = 2


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One 2-process finetuning run (17 train+val images, 17 test images: odd on purpose)."""
    root = tmp_path_factory.mktemp("ddp_e2e")
    data = root / "data"
    paths = make_folder_dataset(data / "tiny", FT_CLASSES, {"bar_h": 9, "bar_v": 8})
    task = write_yaml(root / "tasks" / "tiny.yaml", task_dict(root="tiny"))
    cfg = write_yaml(root / "cfg" / "run.yaml",
                     small_run_config(name="ddp/run", task=task, epochs=FT_EPOCHS, verbose=True))
    cwd = root / "cwd"
    cwd.mkdir()
    args = ["-c", cfg, "--num_workers", "0", "--data_root", data, "--output_root", root / "out"]
    t0 = time.monotonic()
    proc = torchrun(FINETUNE, args, cwd)
    return {"root": root, "paths": paths, "task": task, "cfg": cfg, "cwd": cwd, "args": args, "proc": proc,
            "rd": root / "out" / "finetuning" / "ddp" / "run", "seconds": time.monotonic() - t0}


@needs_torchrun
def test_torchrun_finetune_logs_once_and_metrics_match_predictions(ddp_run):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
    proc, rd = ddp_run["proc"], ddp_run["rd"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "parallel ddp x2" in proc.stdout
    assert proc.stdout.count("task tiny (") == 1  # the summary line comes from rank 0 only
    assert proc.stdout.count("names no subject rule") == 1  # said once, by rank 0
    import re
    n_train, n_val, n_test = (int(re.search(rf"\b{s} (\d+)[,;]", proc.stdout).group(1))
                              for s in ("train", "val", "test"))
    assert n_train + n_val == 17 and n_test == 17
    per_rank = math.ceil(n_train / WORLD)
    per_rank_batch = 8 // WORLD
    steps = per_rank // per_rank_batch + (1 if per_rank % per_rank_batch > 1 else 0)

    # train.log: one row per (global) step — not one per rank
    cols, rows = read_csv(rd / "train.log")
    assert cols[:3] == ["epoch", "step", "loss"]
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == \
        [(e, s) for e in range(1, FT_EPOCHS + 1) for s in range(1, steps + 1)]
    assert (rd / "train.log").read_text().count("epoch,step,loss") == 1
    vcols, vrows = read_csv(rd / "val.log")
    assert [int(r["epoch"]) for r in vrows] == list(range(1, FT_EPOCHS + 1))
    losses = [float(r["loss"]) for r in rows]
    for e, r in enumerate(vrows):  # avg over steps of the rank-averaged step losses
        assert float(r["avg_epoch_train_loss"]) == pytest.approx(np.mean(losses[e * steps:(e + 1) * steps]),
                                                                 rel=1e-5)

    # test.log against scikit-learn on the predictions; every test file exactly once
    _, trows = read_csv(rd / "test.log")
    assert len(trows) == 1
    test = {k: float(v) for k, v in trows[0].items() if k != "model"}
    pcols, prows = read_csv(rd / "predictions_test_last.csv")
    files = [Path(r["file"]).resolve() for r in prows]
    assert len(files) == len(set(files)) == n_test
    assert sorted(files) == sorted(p.resolve() for p in ddp_run["paths"]["test"])
    y = np.array([FT_CLASSES.index(r["target"]) for r in prows])
    assert all(Path(r["file"]).parent.name == r["target"] for r in prows)
    probs = np.array([[float(r[f"prob_{c}"]) for c in FT_CLASSES] for r in prows])
    pred = probs.argmax(1)
    assert test["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert test["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    aucs = [roc_auc_score(y == c, probs[:, c]) for c in range(len(FT_CLASSES))]
    for c, name in enumerate(FT_CLASSES):
        assert test[f"auc_class_{name}"] == pytest.approx(aucs[c], abs=1e-9)
    assert test["auc_macro"] == pytest.approx(np.mean(aucs), abs=1e-9)
    ce = -np.mean(np.log(probs[np.arange(len(y)), y]))
    assert test["avg_val_loss"] == pytest.approx(ce, rel=1e-3, abs=1e-5)
    assert (rd / "finetuned_model.tar").is_file() and not (rd / "crash.log").exists()
    assert not any(p.name.endswith(".tmp") for p in rd.iterdir())


@needs_torchrun
def test_torchrun_finetune_rerun_is_already_complete(ddp_run):
    assert ddp_run["proc"].returncode == 0, ddp_run["proc"].stderr[-3000:]
    rd = ddp_run["rd"]
    before = {p.name: p.read_bytes() for p in rd.iterdir() if p.is_file() and p.suffix == ".log"}
    proc = torchrun(FINETUNE, ddp_run["args"], ddp_run["cwd"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already complete" in proc.stdout
    after = {p.name: p.read_bytes() for p in rd.iterdir() if p.is_file() and p.suffix == ".log"}
    assert after == before


def test_parallel_ddp_without_torchrun_is_a_user_error(ddp_run, monkeypatch):
    """In-process through run_entry (as the script runs it): no torchrun variables, no process group."""
    from conftest import run_inproc
    from utility.runs.finetune import main

    args = ["-c", ddp_run["cfg"], "--parallel", "ddp", "--name", "ddp/no_torchrun", "--num_workers", "0",
            "--data_root", ddp_run["root"] / "data", "--output_root", ddp_run["root"] / "out"]
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    proc = run_inproc(main, args, ddp_run["cwd"])
    assert proc.returncode == 2, proc.stderr
    assert "torchrun" in proc.stderr and "Traceback" not in proc.stderr
    assert not (ddp_run["root"] / "out" / "finetuning" / "ddp" / "no_torchrun" / "train.log").exists()


@needs_torchrun
def test_torchrun_batch_size_not_divisible_is_a_user_error(ddp_run):
    """Each worker exits 2 with a message naming batch_size; torchrun itself then exits 1 and
    reports the workers' exit code 2 (torchrun never passes a worker's exit code through)."""
    args = [*ddp_run["args"], "--batch_size", "7", "--name", "ddp/odd_batch"]
    proc = torchrun(FINETUNE, args, ddp_run["cwd"])
    assert proc.returncode != 0
    worker_errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert worker_errors and all("batch_size 7" in ln and "2 processes" in ln for ln in worker_errors), \
        proc.stderr[-3000:]
    # torchrun's summary names the first failure it saw: a worker's exit 2, or on a busy machine the other
    # worker torn down (SIGABRT) after its peer left; the one-line errors above are what the user reads
    assert "exitcode  : 2" in proc.stderr or "SIGABRT" in proc.stderr, proc.stderr[-3000:]
    # torchrun prints its own ChildFailedError traceback; none comes from our code
    assert f'File "{REPO / "utility"}' not in proc.stderr and f'File "{REPO / "pkgs"}' not in proc.stderr
    assert not (ddp_run["root"] / "out" / "finetuning" / "ddp" / "odd_batch" / "train.log").exists()


@needs_torchrun
def test_torchrun_simclr_writes_encoder_once(tmp_path):
    data = tmp_path / "imgs"
    n_images = 20  # 10 per rank, 4 per rank per step: 3 steps (4, 4, 2)
    for i in range(n_images):
        write_class_image(data / f"img_{i:03d}.png", i % 3, size=24, seed=i)
    cfg = write_yaml(tmp_path / "simclr.yaml", {
        "name": "ddp/simclr", "dataset": "Custom_2D", "dataset_base_dir": str(data), "data_format": [".png"],
        "resnet": "resnet18", "image_size": 16, "shape_desired": [24, 24], "batch_size": 8, "epochs": 2,
        "num_workers": 0, "seed": 3, "optimizer": "Adam", "lr": 1e-3, "projection_dim": 16,
        "enc_save_frequency": 1, "device": "cpu", "verbose": True, "output_root": str(tmp_path / "out")})
    proc = torchrun(SIMCLR, ["-c", cfg], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rd = tmp_path / "out" / "pretraining" / "ddp" / "simclr"
    assert proc.stdout.count("encoder written to") == 1
    assert sorted(p.name for p in rd.glob("encoder_*.tar")) == \
        ["encoder_1.tar", "encoder_2.tar", "encoder_pretrained.tar"]
    sd = torch.load(rd / "encoder_pretrained.tar", map_location="cpu", weights_only=True)
    assert "conv1.weight" in sd and not any(k.startswith("module.") or k.startswith("fc.") for k in sd)
    cols, rows = read_csv(rd / "train.log")
    assert cols[:4] == ["epoch", "step", "loss", "datetime"]
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(e, s) for e in (1, 2) for s in (1, 2, 3)]
    assert all(math.isfinite(float(r["loss"])) for r in rows)


@needs_torchrun
def test_torchrun_segmentation_counts_every_test_pixel_once(tmp_path):
    """U-Net on 7 tiny phantoms (odd: padding would duplicate one): the test confusion matrix
    holds exactly 7 x 16 x 16 pixels, and test.log's per-class Dice/IoU follow from it."""
    import importlib.util
    import yaml
    spec = importlib.util.spec_from_file_location("prepare_demo_seg", REPO / "datasets" / "prepare_demo_seg.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    n_test, side = 7, 16
    demo.write_demo(tmp_path / "data" / "demo_seg", {"train": 12, "val": 5, "test": n_test}, 32, 0)
    task = yaml.safe_load((REPO / "config" / "tasks" / "demo_seg.yaml").read_text())
    task.update(augmentation="none")
    task_path = write_yaml(tmp_path / "tasks" / "seg.yaml", task)
    cfg = write_yaml(tmp_path / "seg.yaml", small_run_config(name="ddp/seg", task=task_path, epochs=1,
                                                             shape_desired=[side, side], w_l=[1, 1, 2]))
    proc = torchrun(FINETUNE, ["-c", cfg, "--num_workers", "0", "--data_root", tmp_path / "data",
                               "--output_root", tmp_path / "out"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rd = tmp_path / "out" / "finetuning" / "ddp" / "seg"
    _, rows = read_csv(rd / "train.log")
    steps = math.ceil(math.ceil(12 / WORLD) / (8 // WORLD))
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, s) for s in range(1, steps + 1)]
    _, vrows = read_csv(rd / "val.log")
    assert [int(r["epoch"]) for r in vrows] == [1]
    _, trows = read_csv(rd / "test.log")
    assert len(trows) == 1
    test = {k: float(v) for k, v in trows[0].items() if k != "model"}
    with (rd / "confusion_matrices" / "test_last.csv").open(newline="") as fh:
        cm_rows = list(csv.reader(fh))
    cm = np.array([[int(v) for v in r[1:]] for r in cm_rows[1:]], dtype=np.int64)
    assert cm.sum() == n_test * side * side
    tp = np.diag(cm).astype(float)
    for c in range(cm.shape[0]):
        fp, fn = cm[:, c].sum() - tp[c], cm[c].sum() - tp[c]
        denom = 2 * tp[c] + fp + fn
        if denom > 0:
            assert test[f"dice_avg_class_{c}"] == pytest.approx(2 * tp[c] / denom, abs=1e-9)
            assert test[f"iou_avg_class_{c}"] == pytest.approx(tp[c] / (tp[c] + fp + fn), abs=1e-9)
    # each image's counts gathered from both ranks once: they sum to the matrix; test_ci.csv from them
    pcols, prows = read_csv(rd / "predictions_test_last.csv")
    assert len(prows) == n_test and len({r["file"] for r in prows}) == n_test
    k = cm.shape[0]
    per = np.array([[int(r[f"px_true{t}_pred{q}"]) for t in range(k) for q in range(k)] for r in prows])
    np.testing.assert_array_equal(per.sum(0).reshape(k, k), cm)
    _, crows = read_csv(rd / "test_ci.csv")
    ci = {r["metric"]: r for r in crows}
    assert ci["dice_avg_class_1"]["samples"] == str(n_test)
    assert ci["dice_avg_class_1"]["value"] == trows[0]["dice_avg_class_1"]


# ============================================================================ 5. syncbn

def build_model(cfg, num_classes: int):
    """The network a finetuning run trains, with syncbn applied as the run session does."""
    from utility.models import build_network
    from utility.training import parallel

    model, notes = build_network(cfg.model_name, num_classes, cfg.in_channels or 3)
    return parallel.sync_batchnorm(model, cfg.syncbn, cfg.device), notes


def _syncbn_worker(rank: int, init_file: str, out_dir: str) -> None:
    from utility.training import parallel
    from utility.config.schemas import FTEConfig
    init_group(rank, init_file)
    try:
        out = {}
        cfg = FTEConfig.model_validate(small_run_config(task="tiny", syncbn=True))
        model, _ = build_model(cfg, 2)  # CPU processes: torch's SyncBatchNorm is CUDA-only -> kept
        out["cpu"] = {type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        model.train()(torch.rand(2, 3, 16, 16))  # and training still runs
        real = torch.cuda.is_available
        torch.cuda.is_available = lambda: True  # the CUDA branch: conversion only (no GPU here)
        try:
            conv = parallel.sync_batchnorm(build_model(cfg.model_copy(update={"syncbn": False}), 2)[0], True, "cuda")
            off = parallel.sync_batchnorm(build_model(cfg.model_copy(update={"syncbn": False}), 2)[0], False, "cuda")
        finally:
            torch.cuda.is_available = real
        out[True] = [type(m).__name__ for m in conv.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        out[False] = [type(m).__name__ for m in off.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        torch.save(out, Path(out_dir) / f"syncbn_rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_syncbn_converts_batchnorm_under_process_group(tmp_path):
    from utility.config.schemas import FTEConfig
    spawn(_syncbn_worker, tmp_path, str(tmp_path))
    for r in range(WORLD):
        out = torch.load(tmp_path / f"syncbn_rank{r}.pt", weights_only=False)
        assert out[True] and set(out[True]) == {"SyncBatchNorm"}
        assert out[False] and set(out[False]) == {"BatchNorm2d"}
        assert len(out[True]) == len(out[False])
        # CPU processes keep BatchNorm (torch's SyncBatchNorm trains on CUDA only) and do not crash
        assert out["cpu"] == {"BatchNorm2d"}
    # one process (no process group): syncbn has nothing to synchronise and keeps BatchNorm
    model, _ = build_model(FTEConfig.model_validate(small_run_config(task="tiny", syncbn=True)), 2)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
