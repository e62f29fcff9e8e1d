"""One run's life, the same for every entry point: set up processes and device, decide what an
existing run directory means (fresh, resume, done, or refused), keep crash.log there, seed, wrap
the model for DP/DDP, then resume -> fit -> train_end callbacks (product, final test) -> mark finished
-> close.

Finetuning and pretraining (utility/runs/) build their data, model and method and hand them here;
they keep only what differs.
"""
from __future__ import annotations

from contextlib import nullcontext

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from pydantic import BaseModel
from torch import nn

from utility.config.loader import dump_config
from utility.config.yamlsafe import load_file
from utility.entry import CrashLog
from utility.errors import Stopped, UserError
from utility.training import parallel, speed
from utility.training.callbacks import Callback
from utility.training.checkpoint import RESUME_KEYS, load_checkpoint, restoring, seed_everything
from utility.distributed import is_main, main_decides
from utility.training.engine import Amp, Method, Trainer, TrainerOptions
from utility.training.environment import ENV_FILE, record_environment
from utility.training.runlock import LOCK_NAME, RunLock
from utility.training.stopsignal import StopOnSignal

# Keys that may change between a run and its resumption without making it a different run.
RESUME_FREE_KEYS = frozenset({"epochs", "num_workers", "prefetch_factor", "verbose", "device", "debug",
                              "log_losses", "checkpoint_every_steps", "output_root", "data_root", "opmode",
                              "trackers", "tracker_project", *speed.SPEED_KEYS})
# files of ours an attempt that ended before its first checkpoint may have left
STALE_FILES = ("train.log", "val.log", "crash.log", ENV_FILE)
# written once the data are indexed, before config.yaml (utility/runs/split_audit.py)
AUDIT_FILES = ("splits.csv.gz", "split_sizes.csv", "leakage.txt", "monitor_overlap.txt")


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory; an output_root that is a file, read-only or not creatable is one
    line naming it (before anything else is done)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = exc.filename or run_dir
        raise UserError(f"cannot create the run directory {run_dir} ({where}: {exc.strerror}); "
                        "check output_root") from None


def lock_and_decide(run_dir: Path, new: dict[str, Any], epochs: int, free_keys: Iterable[str]) -> tuple[str, Optional[RunLock]]:
    """Refuse a directory that is not ours, then lock it, then decide what it means (the decision
    may delete stale logs, so it is made only while holding the lock)."""
    check_run_dir(run_dir, new, free_keys)
    make_run_dir(run_dir)
    lock = RunLock(run_dir).acquire()
    try:
        state = decide_run_state(run_dir, new, epochs, free_keys)
    except BaseException:
        lock.release()
        raise
    if state != "done":  # a finished run looked at again stays untouched, run.lock included
        lock.claim()
    return state, lock


def check_run_dir(run_dir: Path, new: dict[str, Any], free_keys: Iterable[str]) -> None:
    """A directory holding another run (a different config) or something that is not ours is
    refused, never overwritten."""
    free = set(free_keys)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        try:
            old = load_file(cfg_path, f"run config {cfg_path}")  # alias bombs refused, binary files too
        except UserError:
            old = None
        if not isinstance(old, dict) or "name" not in old:
            raise UserError(f"run directory {run_dir} holds a config.yaml that is not a run config of ours; "
                            "choose another name or move it away (nothing was overwritten)")
        diffs = [k for k in new if k not in free and k in old and old.get(k) != new[k]]
        if diffs:
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diffs[:4])
            raise UserError(f"run directory {run_dir} holds a run with a different config ({shown}); "
                            "choose another name to start a new run (nothing was overwritten)")
    elif run_dir.is_dir() and any(p.name not in ("crash.log", LOCK_NAME, *AUDIT_FILES) for p in run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} is not empty and holds no run config of ours; "
                        "choose another name or move it away (nothing was overwritten)")


def decide_run_state(run_dir: Path, new: dict[str, Any], epochs: int, free_keys: Iterable[str]) -> str:
    """'fresh', 'resume' or 'done' (after :func:`check_run_dir`)."""
    check_run_dir(run_dir, new, free_keys)
    ck_path = run_dir / "checkpoint_last.pt"
    if not ck_path.exists():
        for stale in STALE_FILES:
            (run_dir / stale).unlink(missing_ok=True)
        return "fresh"
    ck = load_checkpoint(ck_path, RESUME_KEYS)
    if ck.get("finished") and ck.get("epoch", 0) >= epochs:
        return "done"
    check_epochs_left(run_dir, ck, epochs)
    return "resume"


def check_epochs_left(run_dir: Path, ck: dict[str, Any], epochs: int) -> None:
    """An interrupted run resumed with fewer ``epochs`` than it has (partly) trained would end as a
    shorter run whose logs and weights hold more: refused, with what it has trained."""
    done, steps = int(ck.get("epoch", 0)), int(ck.get("batch_in_epoch", 0))
    started = done + (1 if steps else 0)
    if epochs < started:
        where = f"in epoch {done + 1} ({done} epoch(s) and {steps} step(s) trained)" if steps \
            else f"after epoch {done}"
        raise UserError(f"run directory {run_dir} was interrupted {where}; epochs {epochs} is fewer, so it "
                        f"would end as a shorter run holding more training: resume it with epochs >= {started} "
                        "or choose another name (nothing was changed)")


def finish_or_stop(trainer: Trainer) -> None:
    """After the last step: a stop asked for meanwhile (during the last validation or checkpoint)
    ends the run interrupted, with the ``on_train_end`` callbacks (the product's weights, the final
    test) left for the resumption; a stop asked for during them lets them complete. Either way a run
    that reports success has its test results."""
    signum = trainer._stop_signal()  # every rank reaches this point together (DDP: a collective)
    if signum:
        raise Stopped(signum, f"training complete (checkpoint saved after epoch {trainer.epoch}); the final "
                              "test / weights are written when it is started again")
    if trainer.stop is not None:
        trainer.stop.then = "finishing the run first (final test / weights), then it is complete"
    trainer.callbacks.on_train_end(trainer)  # every rank (the final test's collectives)
    trainer.finished = True
    trainer.save_checkpoint()


class RunSession:
    """Opened by :meth:`open`; ``state`` says whether there is anything to do ('done' = no)."""

    def __init__(self, cfg: BaseModel, run_dir: Path, mode: str, device: torch.device, state: str,
                 lock: Optional[RunLock] = None) -> None:
        self.cfg, self.run_dir, self.mode, self.device, self.state = cfg, run_dir, mode, device, state
        self.lock = lock  # rank 0 holds the run directory until the process ends
        self.speed = speed.SpeedPlan()  # GPU speed features (set by place; all off on CPU)

    @classmethod
    def open(cls, cfg: Any, run_dir: Path, parallel_mode: Optional[str] = None,
             free_keys: Iterable[str] = RESUME_FREE_KEYS) -> "RunSession":
        mode, device = parallel.setup(parallel_mode or cfg.parallel, cfg.device)
        lock_holder: list[RunLock] = []

        def decide() -> str:  # rank 0 only; the lock object stays in this process
            state, lock = lock_and_decide(run_dir, cfg.model_dump(mode="json"), cfg.epochs, free_keys)
            lock_holder.append(lock)
            return state

        state = main_decides(decide)
        session = cls(cfg, run_dir, mode, device, state, lock_holder[0] if lock_holder else None)
        if state == "done" and session.lock is not None:
            session.lock.release()
        if state != "done":
            run_dir.mkdir(parents=True, exist_ok=True)
            CrashLog.path = run_dir / "crash.log"
            seed_everything(cfg.seed)
        return session

    @property
    def done(self) -> bool:
        return self.state == "done"

    def place(self, model: nn.Module, syncbn: bool = False, gpus: Optional[int] = None) -> nn.Module:
        """Move ``model`` to the device (SyncBatchNorm first if asked) and return the module the
        engine runs forward through (DataParallel/DDP wrapper, or the model itself)."""
        model = parallel.sync_batchnorm(model, syncbn, self.cfg.device)  # type: ignore[attr-defined]
        model.to(self.device)
        self.speed = speed.plan_speed(self.cfg, self.device, model, self.mode)
        speed.report(self.speed)
        speed.apply_to_model(model, self.speed)
        # compiled inside the DDP wrapper, so the engine still sees DDP (evaluation unwraps it)
        return parallel.wrap(speed.compile_module(model, self.speed), self.mode, self.device, gpus)

    def trainer(self, model: nn.Module, method: Method, optimizer: torch.optim.Optimizer, scheduler: Any,
                opts: TrainerOptions, train_module: nn.Module, callbacks: Iterable[Callback] = ()) -> Trainer:
        return Trainer(model, method, optimizer, scheduler, Amp(self.device, self.cfg.amp),  # type: ignore[attr-defined]
                       self.run_dir, opts, train_module, callbacks)

    def run(self, trainer: Trainer, train_loader: Any, val_loader: Any) -> None:
        """Write config.yaml, resume if there is a checkpoint, train, call ``on_train_end`` (the
        product's weights, the final test: callbacks), then mark the run finished. The logs are
        closed whatever happens."""
        if is_main():
            dump_config(self.cfg, self.run_dir / "config.yaml")
            record_environment(self.run_dir, self.device, self.state)  # threads, CPU, versions
        with restoring(trainer.last_path):  # another model/optimizer, damaged RNG: one line naming the file
            resumed = self.state == "resume" and trainer.resume()
        if resumed:
            print(f"resuming {self.run_dir} at epoch {trainer.epoch + 1} step {trainer.batch_in_epoch}")
        trainer.callbacks.on_run_start(trainer, self.state == "resume")
        # debug: autograd anomaly detection for this run's training only (restored after, so a process that
        # runs several runs - a benchmark, the tests - does not keep it)
        anomaly = torch.autograd.set_detect_anomaly(True) if getattr(self.cfg, "debug", False) else nullcontext()
        try:
            with anomaly, StopOnSignal() as trainer.stop:  # one handler from the first step until marked finished
                trainer.fit(train_loader, val_loader)
                finish_or_stop(trainer)
        finally:
            trainer.stop = None
            trainer.close()
            trainer.callbacks.on_run_end(trainer, trainer.finished)
        if self.lock is not None:
            self.lock.release()
