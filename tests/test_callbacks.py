"""The trainer's one callback list, in-process: the order of a run's events, checkpoints as a callback
(best only when the metric improves, every N steps with the step losses flushed first), the final test
and the product's weights as ``on_train_end`` callbacks."""
from __future__ import annotations

import math
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from test_engine import BATCH, N_TRAIN, TinyMethod, data, loaders, make_model, make_trainer, read_log
from utility.errors import Stopped, UserError
from utility.runs.callbacks import FinetunedWeights, PretrainedEncoder, TestEvaluation
from utility.training.callbacks import Callback
from utility.training.checkpoint import load_checkpoint
from utility.training.checkpointing import Checkpointing
from utility.training.session import finish_or_stop

STEPS = N_TRAIN // BATCH  # optimizer steps per epoch


class Recorder(Callback):
    """Records each event, and at epoch end which epoch checkpoint_last.pt holds (None: none yet)."""

    def __init__(self, events: list) -> None:
        self.events = events

    def on_step_end(self, trainer) -> None:
        self.events.append(("step", trainer.global_step))

    def on_validation_end(self, trainer, metrics) -> None:
        self.events.append(("validation", trainer.epoch + 1, sorted(metrics)))

    def on_epoch_end(self, trainer) -> None:
        last = load_checkpoint(trainer.last_path, ("epoch",))["epoch"] if trainer.last_path.exists() else None
        self.events.append(("epoch", trainer.epoch, last))

    def on_train_end(self, trainer) -> None:
        self.events.append(("train_end", trainer.finished))


def record_saves(trainer, events: list) -> None:
    """Each checkpoint_last.pt write as an event (the file is still written)."""
    save = trainer.save

    def recorded() -> None:
        events.append(("save", trainer.epoch, trainer.batch_in_epoch, trainer.global_step, list(trainer.epoch_loss),
                       len(read_log(trainer.run_dir / "train.log"))))
        save()

    trainer.save = recorded


class ScriptedMetric(TinyMethod):
    """TinyMethod whose validation 'score' follows a script, one value per evaluation."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = list(scores)

    def eval_end(self, avg_loss):
        return {**super().eval_end(avg_loss), "score": self.scores.pop(0)}


def test_event_order_of_a_two_epoch_run(tmp_path):
    """steps, validation, the other callbacks' epoch_end, then the epoch's checkpoint (after them: the
    file still holds the previous epoch when they run); train_end before the run is marked finished."""
    events: list = []
    train, val = data()
    trainer = make_trainer(make_model(), TinyMethod(), tmp_path / "run", epochs=2, callbacks=[Recorder(events)])
    record_saves(trainer, events)
    trainer.fit(*loaders(train, val))
    finish_or_stop(trainer)
    trainer.close()
    names = [e[0] for e in events]
    one_epoch = ["step"] * STEPS + ["validation", "epoch", "save"]
    assert names == one_epoch * 2 + ["train_end", "save"]
    assert [e[1:] for e in events if e[0] == "epoch"] == [(1, None), (2, 1)]
    assert ("train_end", False) in events and trainer.finished
    ck = load_checkpoint(trainer.last_path, ("finished", "epoch"))
    assert ck["finished"] is True and ck["epoch"] == 2
    assert ("validation", 1, ["accuracy", "avg_val_loss"]) in events


def test_a_callback_that_stops_the_run_at_epoch_end_comes_before_the_checkpoint(tmp_path):
    """A collapse guard raising in epoch_end leaves no checkpoint of that epoch."""

    class Guard(Callback):
        def on_epoch_end(self, trainer) -> None:
            if trainer.epoch == 2:
                raise RuntimeError("collapsed")

    train, val = data()
    trainer = make_trainer(make_model(), TinyMethod(), tmp_path / "run", epochs=3, callbacks=[Guard()])
    with pytest.raises(RuntimeError, match="collapsed"):
        trainer.fit(*loaders(train, val))
    trainer.close()
    assert load_checkpoint(trainer.last_path, ("epoch",))["epoch"] == 1


@pytest.mark.parametrize("mode, scores, best_epochs", [
    ("max", [0.5, 0.3, 0.7, 0.7], [1, 1, 3, 3]),            # ties and drops keep the earlier best
    ("min", [0.5, 0.3, 0.7, 0.2], [1, 2, 2, 4]),
    ("max", [math.nan, 0.4, math.nan, 0.1], [None, 2, 2, 2]),  # NaN never becomes the best
])
def test_best_checkpoint_is_written_only_when_the_metric_improves(tmp_path, mode, scores, best_epochs):
    seen: list = []

    class Snapshot(Callback):  # the best file and the weights as each epoch ends
        def on_epoch_end(self, trainer) -> None:
            state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            best = load_checkpoint(trainer.best_path, ("model", "epoch", "value")) \
                if trainer.best_path.exists() else None
            seen.append((state, best))

    train, val = data()
    trainer = make_trainer(make_model(), ScriptedMetric(scores), tmp_path / "run", epochs=len(scores),
                           best_metric="score", best_mode=mode, callbacks=[Snapshot()])
    trainer.fit(*loaders(train, val))
    trainer.close()
    for epoch, ((_, best), want) in enumerate(zip(seen, best_epochs), start=1):
        if want is None:
            assert best is None
            continue
        assert best["epoch"] == want and best["value"] == scores[want - 1]
        weights_then = seen[want - 1][0]
        assert all(torch.equal(best["model"][k], weights_then[k]) for k in weights_then)
    final = [e for e in best_epochs if e is not None][-1]
    assert (trainer.best_epoch, trainer.best_value) == (final, scores[final - 1])
    assert load_checkpoint(trainer.last_path, ("best_epoch",))["best_epoch"] == final


def test_an_unknown_best_metric_is_refused_after_the_first_validation(tmp_path):
    train, val = data()
    trainer = make_trainer(make_model(), TinyMethod(), tmp_path / "run", best_metric="auc")
    with pytest.raises(KeyError, match="best_metric 'auc' is not a validation metric"):
        trainer.fit(*loaders(train, val))
    trainer.close()
    assert not trainer.best_path.exists() and not trainer.last_path.exists()


def test_checkpoint_every_n_steps_flushes_the_step_losses_first(tmp_path):
    """every 3 steps (and after each epoch): train.log holds every step up to the checkpoint, whose
    running epoch loss is the sum of those rows' losses."""
    events: list = []
    train, val = data()
    trainer = make_trainer(make_model(), TinyMethod(), tmp_path / "run", epochs=2, checkpoint_every_steps=3)
    record_saves(trainer, events)
    trainer.fit(*loaders(train, val))
    trainer.close()
    rows = read_log(tmp_path / "run" / "train.log")
    # (epoch, batch_in_epoch, global_step) at each save: steps 3, 6, 9 and both epoch ends (5, 10)
    assert [e[1:4] for e in events] == [(0, 3, 3), (1, 0, 5), (1, 1, 6), (1, 4, 9), (2, 0, 10)]
    for _, epoch, in_epoch, step, epoch_loss, n_rows in events:
        assert n_rows == step  # every step's row written before the checkpoint (log_every is 20)
        if in_epoch:  # mid-epoch: the running sum of this epoch's logged losses
            mine = [float(r["loss"]) for r in rows if int(r["epoch"]) == epoch + 1][:in_epoch]
            assert epoch_loss[1] == in_epoch and epoch_loss[0] == pytest.approx(sum(mine), rel=1e-6)
        else:
            assert epoch_loss == [0.0, 0]


def test_a_stop_at_a_checkpoint_step_saves_once(tmp_path):
    events: list = []

    class StopAt(Callback):
        def on_step_end(self, trainer) -> None:
            if trainer.global_step == 3:
                trainer.stop.requested = int(signal.SIGTERM)

    train, val = data()
    trainer = make_trainer(make_model(), TinyMethod(), tmp_path / "run", epochs=2, checkpoint_every_steps=3,
                           callbacks=[StopAt()])
    record_saves(trainer, events)
    trainer.stop = SimpleNamespace(requested=0)  # the session's handler
    with pytest.raises(Stopped) as err:
        trainer.fit(*loaders(train, val))
    trainer.close()
    assert err.value.exit_code == 143
    assert [e[1:4] for e in events] == [(0, 3, 3)]


def reference_accuracy(model, val) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(val.x).argmax(1) == val.y).float().mean())


def test_test_evaluation_results_are_the_last_models_and_the_best_is_logged(tmp_path):
    train, val = data()
    scores = [0.9, 0.1, 0.2]  # the best model is epoch 1's
    model = make_model()
    run = tmp_path / "run"
    testing = TestEvaluation(loaders(train, val)[1], run, "score")
    weights = FinetunedWeights(model, run / "finetuned_model.tar")
    trainer = make_trainer(model, ScriptedMetric(scores + [0.0, 0.0]), run, epochs=3, best_metric="score",
                           callbacks=[weights, testing])
    trainer.fit(*loaders(train, val))
    last_state = {k: v.clone() for k, v in model.state_dict().items()}
    finish_or_stop(trainer)
    trainer.close()
    assert testing.results["accuracy"] == pytest.approx(reference_accuracy(model, val))
    last, best = read_log(run / "test.log")[0], read_log(run / "test_best.log")[0]
    assert (last["model"], int(last["epoch"]), best["model"], int(best["epoch"])) == ("last", 3, "best", 1)
    assert float(last["accuracy"]) == pytest.approx(testing.results["accuracy"])
    best_model = make_model()
    best_model.load_state_dict(load_checkpoint(run / "checkpoint_best.pt", ("model",))["model"])
    assert float(best["accuracy"]) == pytest.approx(reference_accuracy(best_model, val))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in last_state.items())  # last weights back
    saved = torch.load(run / "finetuned_model.tar", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in last_state.items())
    assert load_checkpoint(trainer.last_path, ("finished",))["finished"] is True


def test_no_pretrained_encoder_without_a_step(tmp_path):
    product = PretrainedEncoder(make_model(), tmp_path / "encoder_pretrained.tar", "SimCLR", 2, 3)
    with pytest.raises(UserError, match="no SimCLR step was taken in 3 epoch"):
        product.on_train_end(SimpleNamespace(global_step=0))
    assert not (tmp_path / "encoder_pretrained.tar").exists()


def test_is_better_of_checkpointing():
    up, down = Checkpointing(None, "m", "max"), Checkpointing(None, "m", "min")
    assert up.is_better(0.1, None) and up.is_better(0.1, math.nan) and not up.is_better(math.nan, None)
    assert up.is_better(0.2, 0.1) and not up.is_better(0.1, 0.1) and not up.is_better(0.0, 0.1)
    assert down.is_better(0.0, 0.1) and not down.is_better(0.1, 0.1) and not down.is_better(0.2, 0.1)
