"""Builders and configured values: a cosine_total warmup as long as the run is shortened with one notice;
``user_errors`` turns only setting mistakes (SettingError) into user errors, a bug keeps its traceback."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from utility.errors import SettingError, UserError, user_errors
from utility.training.schedulers import build_scheduler, fitted_warmup, lr_at


def test_warmup_longer_than_the_run_is_shortened_once(capsys):
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0)
    sched = build_scheduler(opt, "cosine_total", interval="step", steps_per_epoch=4, epochs=1, warmup_epochs=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warmup_epochs 2" in err[0] and "warms up for 0.5 epoch(s) instead" in err[0]
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5])  # 2 warmup steps, then cosine over the 2 left


def test_a_warmup_that_fits_is_kept_silently(capsys):
    assert fitted_warmup("cosine_total", interval="step", steps_per_epoch=4, epochs=2, warmup_epochs=1) == 1
    assert fitted_warmup("cosine_total", interval="epoch", steps_per_epoch=4, epochs=1, warmup_epochs=3) == 0.0
    assert fitted_warmup("cosine", interval="epoch", steps_per_epoch=4, epochs=1, warmup_epochs=3) == 3
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0)
    build_scheduler(opt, "cosine_total", interval="step", steps_per_epoch=4, epochs=2, warmup_epochs=1)
    assert capsys.readouterr().err == ""


def test_user_errors_reports_setting_errors_and_keeps_bugs():
    def builder_with_a_bad_setting():
        raise SettingError("Unknown scheduler 'cosinus'")

    def builder_with_a_bug():
        raise ValueError("math domain error")

    with pytest.raises(UserError, match="builder_with_a_bad_setting: Unknown scheduler 'cosinus'"):
        user_errors(builder_with_a_bad_setting)
    with pytest.raises(ValueError, match="math domain error"):
        user_errors(builder_with_a_bug)
    with pytest.raises(UserError, match="Unknown scheduler"):
        user_errors(build_scheduler, torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0), "cosinus",
                    interval="step", steps_per_epoch=1, epochs=1)
