"""``debug: true`` turns on autograd anomaly detection for the run's training only: on while it trains,
off again after (a benchmark or a test worker runs several runs in one process; a debug run used to leave it
on for every later run there)."""
from __future__ import annotations

import pytest
import torch

from conftest import run_inproc


@pytest.mark.e2e
@pytest.mark.parametrize("debug", ["true", "false"])
def test_anomaly_detection_only_while_a_debug_run_trains(tiny_setup, monkeypatch, debug):
    from utility.runs.finetune import main
    from utility.training.engine import Trainer

    seen: list[bool] = []
    fit = Trainer.fit

    def spying_fit(self, *a, **k):
        seen.append(torch.is_anomaly_enabled())
        return fit(self, *a, **k)

    monkeypatch.setattr(Trainer, "fit", spying_fit)
    assert not torch.is_anomaly_enabled()
    proc = run_inproc(main, ["-c", tiny_setup["config"], "--data_root", tiny_setup["data_root"], "--output_root",
                             tiny_setup["out_root"], "--debug", debug], tiny_setup["cwd"])
    assert proc.returncode == 0, proc.stderr
    assert seen == [debug == "true"]
    assert not torch.is_anomaly_enabled()
