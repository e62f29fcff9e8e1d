"""The one training loop. Finetuning, segmentation and SimCLR differ only in the ``Method`` they
plug in (how a batch becomes a loss, what evaluation accumulates); AMP, gradient scaling, LR
scheduling, logging, checkpoints and resume live here once (when checkpoints are written and which
model is the best: the Checkpointing callback, training/checkpointing.py, that the trainer adds itself).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from utility.data.sampler import EpochSampler
from utility.training.callbacks import Callback, CallbackList
from utility.training.datawait import WAIT_COLUMNS, DataWait
from utility.training.checkpoint import RESUME_KEYS, atomic_save, load_checkpoint, rng_state, set_rng_state
from utility.training.checkpointing import Checkpointing
from utility.distributed import all_reduce_sum, barrier, is_main, rank, world_size
from utility.training.finite import check_losses
from utility.errors import Stopped
from utility.training.rundir import CsvLog, TensorBoard
from utility.training.stopsignal import StopOnSignal

TRAIN_COLUMNS = ["epoch", "step", "loss", "lr", "global_step"]
# train.log datetimes as the predecessor wrote them (str(datetime.now())): 2023-04-24 10:41:16.863240
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class Method(Protocol):
    """What a training method provides to the engine."""

    def train_loss(self, model: nn.Module, batch: Any, ctx: "StepContext") -> tuple[Optional[torch.Tensor], int]:
        """Loss of one batch (mean over its valid samples) and the number of samples it counted."""

    def eval_begin(self, split: str) -> None:
        """Reset accumulators before evaluating ``split`` (val/test)."""

    def eval_batch(self, model: nn.Module, batch: Any, ctx: "StepContext") -> tuple[torch.Tensor, Any]:
        """Summed loss (a 0-d tensor, not synchronised) and its denominator (sample count or weight
        sum, number or 0-d tensor); accumulates outputs. The split's loss is sum / sum of denominators."""

    def eval_end(self, avg_loss: float) -> dict[str, float]:
        """The metric row (ordered) of the evaluation pass."""

    def eval_artifacts(self, out_dir: Path, tag: str) -> None:
        """Write per-evaluation files (confusion matrix, predictions) named by ``tag``."""

    # optional: ``state_dict()``/``load_state_dict(d)``: method state outside the model (a MoCo queue) that
    # checkpoint_last.pt keeps for resume. What runs after every step (EMA targets) is a callback.


@dataclass
class StepContext:
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    training: bool = True


@dataclass
class Amp:
    """Mixed precision settings: fp16 (+ GradScaler) or bf16 on CUDA, float32 elsewhere."""

    device: torch.device
    mode: str = "auto"
    dtype: Optional[torch.dtype] = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.device.type != "cuda" or self.mode == "off":
            self.dtype = None
        elif self.mode == "bf16":
            self.dtype = torch.bfloat16
        else:  # auto, fp16
            self.dtype = torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)


@dataclass
class RunningEpoch:
    """The epoch being trained, as a mid-epoch checkpoint needs it: the step losses not yet in
    train.log and the loss sum so far (``base_*``: what the epoch had before a resumption)."""

    prog: "Progress"
    loss_sum: torch.Tensor
    base_sum: float
    base_n: int
    n_batches: int = 0
    pending: list[tuple[int, int, torch.Tensor, float]] = field(default_factory=list)


class Progress:
    """tqdm bar with ETA on a terminal; plain periodic lines when output is a file or a pipe."""

    def __init__(self, total: int, desc: str, enabled: bool, plain: bool = True) -> None:
        self.enabled = enabled and is_main()
        self.total, self.desc, self.n = total, desc, 0
        self.t0 = time.time()
        self.tty = sys.stderr.isatty()
        self.bar = None
        if self.enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
        self.next_print = max(1, total // 10)
        self.plain = plain
        self.last = self.t0

    def update(self, n: int, **info: Any) -> None:
        if not self.enabled:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if info:
                self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in info.items()},
                                     refresh=False)
        elif self.plain and (self.n == self.total or (self.n >= self.next_print and time.time() - self.last >= 5)):
            self.last = time.time()
            rate = self.n / max(time.time() - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else 0
            extra = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
            print(f"{self.desc}  {self.n}/{self.total}  {extra}  {rate:.1f} it/s  ETA {eta:.0f}s", flush=True)
            self.next_print = self.n + max(1, self.total // 10)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class TrainerOptions:
    epochs: int
    seed: int
    scheduler_interval: str = "epoch"
    short_training: bool = False
    verbose: bool = True
    debug: bool = False
    log_losses: bool = True
    log_every: int = 20
    checkpoint_every_steps: Optional[int] = None
    best_metric: Optional[str] = None
    best_mode: str = "max"
    config: dict[str, Any] = field(default_factory=dict)
    train_columns: list[str] = field(default_factory=lambda: list(TRAIN_COLUMNS))


class Trainer:
    """Runs ``epochs`` of train + validation with checkpoints, then evaluations on demand."""

    def __init__(self, model: nn.Module, method: Method, optimizer: torch.optim.Optimizer,
                 scheduler: Optional[torch.optim.lr_scheduler.LRScheduler], amp: Amp,
                 run_dir: Path, opts: TrainerOptions, train_module: Optional[nn.Module] = None,
                 callbacks: Iterable[Callback] = ()) -> None:
        self.model = model                          # the plain network (saved, evaluated)
        self.train_module = train_module or model   # what runs forward (DataParallel/DDP wrapper)
        self.method, self.optimizer, self.scheduler, self.amp = method, optimizer, scheduler, amp
        self.scaler = amp.scaler()
        self.run_dir, self.opts = run_dir, opts
        self.ctx = StepContext(amp.device, amp.autocast)
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.finished = False
        self.epoch_loss = [0.0, 0]  # running (sum, batches) of the current epoch, kept across resume
        self.epoch_lr = 0.0  # the LR the current epoch's last step used (val.log's lr)
        # monitors, snapshots, trackers, final test (training/callbacks.py); checkpoints last
        self.callbacks = CallbackList([*callbacks, Checkpointing(opts.checkpoint_every_steps, opts.best_metric,
                                                                 opts.best_mode)])
        columns = opts.train_columns + [c for c in WAIT_COLUMNS if c not in opts.train_columns]
        self.train_log = CsvLog(run_dir / "train.log", columns, opts.log_losses, self.callbacks.on_row)
        self.data_wait = DataWait(world_size(), notice=is_main())  # loader wait + images/s per log row
        self.val_log: Optional[CsvLog] = None
        self.tb = TensorBoard(run_dir / "tensorboard")
        self.stop: Optional[StopOnSignal] = None  # set while fit runs: SIGTERM/SIGINT -> save and stop
        self.total_steps = 0  # optimizer steps planned over all epochs (set by fit; EMA schedules)
        self.running: Optional[RunningEpoch] = None  # set while an epoch trains
        self.saved_step = -1  # global_step of the last checkpoint_last.pt

    # ------------------------------------------------------------------ checkpoints
    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoint_last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "checkpoint_best.pt"

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step, "best_value": self.best_value, "best_epoch": self.best_epoch,
            "finished": self.finished, "rng": rng_state(), "config": self.opts.config,
            "epoch_loss": list(self.epoch_loss),
            **({"method": self.method.state_dict()} if hasattr(self.method, "state_dict") else {}),
        }

    def save(self) -> None:
        self.saved_step = self.global_step
        if is_main():
            atomic_save(self.state(), self.last_path)
        barrier()

    def save_checkpoint(self) -> None:
        """checkpoint_last.pt now (every rank calls it). Mid-epoch, the step losses not yet written
        go to train.log first and the running epoch loss into the checkpoint: resume continues both."""
        run = self.running
        if run is not None:
            self._flush(run.pending, run.prog)
            self.epoch_loss = [run.base_sum + self._rank_mean(run.loss_sum), run.base_n + run.n_batches]
        self.save()

    def resume(self) -> bool:
        """Continue from checkpoint_last.pt if there is one; drop log rows written after it."""
        if not self.last_path.exists():
            return False
        ck = load_checkpoint(self.last_path, RESUME_KEYS)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck.get("scheduler") is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.batch_in_epoch = ck["epoch"], ck["batch_in_epoch"]
        self.global_step = ck["global_step"]
        self.best_value, self.best_epoch = ck["best_value"], ck["best_epoch"]
        self.finished = ck.get("finished", False)
        self.epoch_loss = list(ck.get("epoch_loss", [0.0, 0]))
        if "method" in ck and hasattr(self.method, "load_state_dict"):
            self.method.load_state_dict(ck["method"])
        set_rng_state(ck["rng"])
        e, b = self.epoch + 1, self.batch_in_epoch  # log rows are 1-based
        self.train_log.keep_rows(lambda r: int(r["epoch"]) < e or (int(r["epoch"]) == e and int(r["step"]) <= b))
        # a train.log of an older version keeps its columns (no data-wait columns appended to it)
        self.train_log.columns = self._header(self.train_log.path) or self.train_log.columns
        if (self.run_dir / "val.log").exists():
            CsvLog(self.run_dir / "val.log", self._val_header()).keep_rows(lambda r: int(r["epoch"]) <= self.epoch)
        return True

    def _val_header(self) -> list[str]:
        return self._header(self.run_dir / "val.log") or []

    @staticmethod
    def _header(path: Path) -> Optional[list[str]]:
        import csv as _csv

        if not path.exists():
            return None
        with path.open(newline="") as fh:
            return next(_csv.reader(fh), None)

    # ------------------------------------------------------------------ loop
    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def fit(self, train_loader: DataLoader, val_loader: Optional[DataLoader]) -> None:
        """Train until ``epochs``; a SIGTERM/SIGINT saves a checkpoint after the current step and
        raises :class:`Stopped` (resume continues from there)."""
        if self.stop is not None:  # the session's handler, which also covers the final test
            self._fit(train_loader, val_loader)
            return
        with StopOnSignal() as self.stop:
            try:
                self._fit(train_loader, val_loader)
            finally:
                self.stop = None

    def _stop_signal(self, sync_point: bool = True) -> int:
        """The signal that asked to stop (0: none). Under DDP every rank must stop at the same step,
        so the flag is agreed on (a collective) at flush points only, which all ranks reach together."""
        local = self.stop.requested if self.stop is not None else 0
        if world_size() == 1:
            return local
        if not sync_point:
            return 0
        flag = all_reduce_sum(torch.tensor(float(local), device=self.amp.device))
        return local or (int(signal.SIGTERM) if float(flag) > 0 else 0)

    def _stopped(self, signum: int) -> Stopped:
        where = f"checkpoint saved at epoch {self.epoch + 1} step {self.batch_in_epoch}" if self.batch_in_epoch \
            else f"checkpoint saved after epoch {self.epoch}"
        return Stopped(signum, where)

    def _fit(self, train_loader: DataLoader, val_loader: Optional[DataLoader]) -> None:
        sampler = train_loader.sampler if isinstance(train_loader.sampler, EpochSampler) else None
        batch_size = train_loader.batch_size or 1
        self.total_steps = self.opts.epochs * (1 if self.opts.short_training else len(train_loader))
        while self.epoch < self.opts.epochs:
            if hasattr(train_loader, "set_epoch"):  # order, worker and augmentation seeds (CacheAwareLoader)
                train_loader.set_epoch(self.epoch, self.batch_in_epoch * batch_size)
            elif sampler is not None:
                sampler.set_epoch(self.epoch, self.batch_in_epoch * batch_size)
            elif hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(self.epoch)
            t0 = time.time()
            self.epoch_lr = self._lr()
            train_loss = self._train_epoch(train_loader)
            if self.scheduler is not None and self.opts.scheduler_interval == "epoch":
                self.scheduler.step()
            row: dict[str, Any] = {"epoch": self.epoch + 1, "avg_epoch_train_loss": train_loss}
            if val_loader is not None:
                metrics = self.evaluate(val_loader, f"val_epoch_{self.epoch + 1}", "val")
                row.update(metrics)
                self.callbacks.on_validation_end(self, metrics)  # checkpoint_best.pt (Checkpointing)
            row["lr"] = self.epoch_lr  # the LR of the epoch's last step, not the next epoch's
            row["epoch_time_s"] = round(time.time() - t0, 3)
            self._write_val(row)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.epoch_loss = [0.0, 0]
            self.callbacks.on_epoch_end(self)  # then checkpoint_last.pt (Checkpointing, last)
            if self.opts.verbose and is_main():
                shown = {k: v for k, v in list(row.items())[:6]}
                print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in shown.items()), flush=True)
            signum = self._stop_signal()
            if signum and self.epoch < self.opts.epochs:
                raise self._stopped(signum)

    def _write_val(self, row: dict[str, Any]) -> None:
        if self.val_log is None:
            self.val_log = CsvLog(self.run_dir / "val.log", list(row), self.opts.log_losses, self.callbacks.on_row)
            if self.val_log.path.exists() and self.val_log.path.stat().st_size:
                self.val_log.columns = self._val_header()
        self.val_log.write(row)
        self.tb.scalars({k: v for k, v in row.items() if k != "epoch"}, self.epoch + 1, "epoch")
        self.tb.flush()

    def _train_epoch(self, loader: DataLoader) -> float:
        self.train_module.train()
        total = 1 if self.opts.short_training else len(loader) + self.batch_in_epoch
        prog = Progress(total, f"epoch {self.epoch + 1}/{self.opts.epochs}", self.opts.verbose)
        prog.update(self.batch_in_epoch)
        run = self.running = RunningEpoch(prog, torch.zeros((), device=self.amp.device, dtype=torch.float64),
                                          *self.epoch_loss)
        pending, loss_sum = run.pending, run.loss_sum
        every = 1 if self.opts.debug else self.opts.log_every
        for batch in self.data_wait.batches(loader, loader.batch_size or 1):
            with self.ctx.autocast():
                loss, n = self.method.train_loss(self.train_module, batch, self.ctx)
            if loss is None:  # every sample of the batch was invalid
                self.batch_in_epoch += 1
                continue
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            lr = self.epoch_lr = self._lr()
            if self.scheduler is not None and self.opts.scheduler_interval == "step":
                self.scheduler.step()
            self.batch_in_epoch += 1
            self.global_step += 1
            run.n_batches += 1
            detached = loss.detach()
            loss_sum += detached
            pending.append((self.batch_in_epoch, self.global_step, detached, lr))
            flushed = len(pending) >= every
            if flushed:
                self._flush(pending, prog)
            self.callbacks.on_step_end(self)  # EMA targets; every N steps a checkpoint (Checkpointing, last)
            signum = self._stop_signal(sync_point=flushed)
            if signum:
                if self.saved_step != self.global_step:  # not saved at this step already
                    self.save_checkpoint()
                prog.close()
                raise self._stopped(signum)
            if self.opts.short_training:
                break
        self._flush(pending, prog)
        prog.close()
        self.running = None
        self.data_wait.check_notice(at_epoch_end=True)
        return (run.base_sum + self._rank_mean(loss_sum)) / max(run.base_n + run.n_batches, 1)

    @staticmethod
    def _rank_mean(loss_sum: torch.Tensor) -> float:
        """This epoch's summed step losses averaged over the ranks (as train.log's rows are)."""
        return float(all_reduce_sum(loss_sum.clone())) / world_size()

    def _flush(self, pending: list, prog: Progress) -> None:
        """Write buffered step losses (one device sync per flush, not per step)."""
        if not pending:
            return
        stacked = torch.stack([p[2] for p in pending]).float()
        values = (all_reduce_sum(stacked) / world_size()).tolist()
        wait = self.data_wait.window()  # after the sync above: the window's wall time is exact
        stamp = datetime.now().strftime(DATETIME_FORMAT)
        for (step, gstep, _, lr), v in zip(pending, values):
            self.train_log.write({"epoch": self.epoch + 1, "step": step, "loss": v, "lr": lr,
                                  "global_step": gstep, "datetime": stamp, "data_wait": round(wait.data_wait, 4),
                                  "images_per_s": round(wait.images_per_s, 2)})
        check_losses(values, [p[1] for p in pending], self.epoch + 1)  # after the rows: train.log shows it
        self.tb.scalars({"loss": values[-1], "lr": pending[-1][3], "data_wait": wait.data_wait,
                         "images_per_s": wait.images_per_s}, pending[-1][1], "train")
        if self.opts.debug:
            print(f"epoch {self.epoch + 1} step {pending[-1][0]} loss {values[-1]:.6f}", flush=True)
        prog.update(len(pending), loss=values[-1], wait=f"{100 * wait.data_wait:.0f}%",
                    img_s=round(wait.images_per_s, 1))
        self.data_wait.check_notice()
        pending.clear()

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, tag: str, desc: str) -> dict[str, float]:
        self.train_module.eval()
        self.method.eval_begin(desc)
        loss_sum = torch.zeros((), device=self.amp.device, dtype=torch.float64)
        denom = torch.zeros((), device=self.amp.device, dtype=torch.float64)
        if not isinstance(getattr(loader, "sampler", None), EpochSampler) and world_size() > 1:
            raise RuntimeError("distributed evaluation needs an EpochSampler (each sample once)")
        module = self.train_module
        if isinstance(module, nn.parallel.DistributedDataParallel):
            # DDP's forward may broadcast buffers (a collective); eval shards differ in batch count
            # (a rank may have none), so sync the buffers once here and run the plain module.
            for buf in module.module.buffers():
                torch.distributed.broadcast(buf, 0)
            module = module.module
        prog = Progress(1 if self.opts.short_training else len(loader), desc, self.opts.verbose, plain=False)
        for batch in loader:
            with self.ctx.autocast():
                s, n = self.method.eval_batch(module, batch, self.ctx)
            loss_sum += s
            denom += n
            prog.update(1)
            if self.opts.short_training:
                break
        prog.close()
        all_reduce_sum(loss_sum)
        all_reduce_sum(denom)
        d = float(denom)
        metrics = self.method.eval_end(float(loss_sum) / d if d > 0 else float("nan"))
        if is_main():
            self.method.eval_artifacts(self.run_dir, tag)
        return metrics

    def load_weights(self, which: str) -> Optional[int]:
        """Put the 'last' (current) or 'best' weights into the model; returns the best epoch."""
        if which == "best":
            if not self.best_path.exists():
                return None
            ck = load_checkpoint(self.best_path, ("model", "epoch"))
            self.model.load_state_dict(ck["model"])
            return int(ck["epoch"])
        return self.epoch

    def close(self) -> None:
        self.train_log.close()
        if self.val_log is not None:
            self.val_log.close()
        self.tb.close()


__all__ = ["Trainer", "TrainerOptions", "Amp", "EpochSampler", "Method", "StepContext", "rank", "world_size"]
