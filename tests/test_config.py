"""Config: YAML + typed ``--key value`` overrides, validation messages, predecessor configs."""
from __future__ import annotations

import warnings

import pytest
import yaml

from conftest import write_yaml
from utility.config.loader import dump_config, load_config, parse_argv, parse_value, validate
from utility.errors import UserError
from utility.config.schemas import FTE_DEPRECATED, FTEConfig

PROG = "pkgs/FTE/finetune.py"


def load(tmp_path, data, *overrides):
    cfg_file = write_yaml(tmp_path / "cfg.yaml", data)
    cfg, path = load_config(FTEConfig, ["-c", str(cfg_file), *overrides], PROG, FTE_DEPRECATED)
    return cfg


def error_of(tmp_path, data, *overrides) -> str:
    with pytest.raises(UserError) as info:
        load(tmp_path, data, *overrides)
    return str(info.value)


BASE = {"name": "E1/run", "task": "digits"}


# ----------------------------------------------------------------------------- typed overrides

def test_override_false_is_boolean_false(tmp_path):
    cfg = load(tmp_path, {**BASE, "frozen_encoder": True}, "--frozen_encoder", "false")
    assert cfg.frozen_encoder is False
    cfg = load(tmp_path, {**BASE, "frozen_encoder": True}, "--frozen_encoder", "False")
    assert cfg.frozen_encoder is False
    cfg = load(tmp_path, BASE, "--frozen_encoder", "true")
    assert cfg.frozen_encoder is True


def test_override_list_is_list_of_floats(tmp_path):
    cfg = load(tmp_path, BASE, "--w_l", "[1,5,5,5]")
    assert cfg.w_l == [1.0, 5.0, 5.0, 5.0]
    assert all(isinstance(v, float) for v in cfg.w_l)
    cfg = load(tmp_path, BASE, "--shape_desired", "[32, 48]")
    assert cfg.shape_desired == (32, 48)


def test_override_null_sets_none(tmp_path):
    cfg = load(tmp_path, {**BASE, "scheduler": "cosine"}, "--scheduler", "null")
    assert cfg.scheduler is None
    cfg = load(tmp_path, {**BASE, "model_path": "/x/enc.tar"}, "--model_path", "null")
    assert cfg.model_path is None
    # a null key in the file can be overridden with a value
    cfg = load(tmp_path, {**BASE, "noise_injection": None}, "--noise_injection", "[0.1, 0.5]")
    assert cfg.noise_injection == (0.1, 0.5)


def test_key_equals_value_form_and_dashes(tmp_path):
    cfg = load(tmp_path, BASE, "--lr=0.25", "--batch-size", "7", "--scheduler=null")
    assert cfg.lr == 0.25 and cfg.batch_size == 7 and cfg.scheduler is None


def test_override_beats_file(tmp_path):
    cfg = load(tmp_path, {**BASE, "lr": 0.5, "epochs": 3, "name": "from_file"},
               "--lr", "0.01", "--name", "from_cli")
    assert cfg.lr == 0.01
    assert cfg.epochs == 3
    assert cfg.name == "from_cli"


def test_override_value_that_is_not_yaml_stays_string():
    assert parse_value("E1/PT_SimCLR_I1k_FT_BraTS") == "E1/PT_SimCLR_I1k_FT_BraTS"
    assert parse_value("[1, 2") == "[1, 2"
    assert parse_value("1e-3") in ("1e-3", 1e-3)  # YAML 1.1 reads it as text; pydantic makes it a float
    assert parse_value("") == ""


def test_string_float_is_coerced(tmp_path):
    cfg = load(tmp_path, BASE, "--lr", "1e-3")
    assert cfg.lr == pytest.approx(1e-3)


def test_parse_argv_errors():
    with pytest.raises(UserError, match="needs a file name"):
        parse_argv(["-c"], PROG)
    with pytest.raises(UserError, match=r"--lr needs a value"):
        parse_argv(["--lr"], PROG)
    with pytest.raises(UserError, match="unexpected argument 'stray'"):
        parse_argv(["stray"], PROG)


def test_command_line_only_config_without_file():
    cfg, path = load_config(FTEConfig, ["--name", "x", "--task", "digits"], PROG, FTE_DEPRECATED)
    assert path is None and cfg.name == "x" and cfg.task == "digits"


# ----------------------------------------------------------------------------- mistakes

@pytest.mark.parametrize("bad, good", [("epoch", "epochs"), ("batchsize", "batch_size"),
                                       ("weightdecay", "weight_decay"), ("frozen", "frozen_encoder")])
def test_unknown_key_names_it_and_closest_key(tmp_path, bad, good):
    msg = error_of(tmp_path, {**BASE, bad: 3})
    assert f"'{bad}'" in msg
    assert f"did you mean '{good}'" in msg
    assert "cfg.yaml" in msg  # where the key came from


def test_unknown_key_on_command_line(tmp_path):
    msg = error_of(tmp_path, BASE, "--epoch", "3")
    assert "'epoch'" in msg and "did you mean 'epochs'" in msg


def test_learning_rate_suggests_lr(tmp_path):
    msg = error_of(tmp_path, {**BASE, "learning_rate": 0.1})
    assert "'learning_rate'" in msg
    assert "did you mean 'lr'" in msg


def test_unknown_key_without_close_match_has_no_bogus_hint(tmp_path):
    msg = error_of(tmp_path, {**BASE, "zzzzqqq": 1})
    assert "'zzzzqqq'" in msg and "did you mean" not in msg


def test_wrong_type_names_key_value_and_expectation(tmp_path):
    msg = error_of(tmp_path, {**BASE, "lr": "abc"})
    assert "'lr'" in msg and "'abc'" in msg
    assert "number" in msg  # pydantic: "Input should be a valid number ..."


@pytest.mark.parametrize("key, value, expect", [
    ("batch_size", 0, "greater than or equal to 1"),
    ("decay_per_epoch", 2, "less than or equal to 1"),
    ("lr", -0.1, "greater than 0"),
    ("num_workers", -1, "greater than or equal to 0"),
])
def test_out_of_range_names_key_value_and_bound(tmp_path, key, value, expect):
    msg = error_of(tmp_path, {**BASE, key: value})
    assert f"'{key}'" in msg
    assert repr(value) in msg
    assert expect in msg


def test_literal_choice_lists_allowed_values(tmp_path):
    msg = error_of(tmp_path, {**BASE, "scheduling_interval": "batch"})
    assert "'scheduling_interval'" in msg and "'batch'" in msg
    assert "'epoch'" in msg and "'step'" in msg


def test_optimizer_name_is_case_insensitive_and_checked(tmp_path):
    assert load(tmp_path, {**BASE, "optimizer": "lars"}).optimizer == "LARS"
    msg = error_of(tmp_path, {**BASE, "optimizer": "RMSprop"})
    assert "'optimizer'" in msg and "'RMSprop'" in msg and "AdamW" in msg


def test_bad_device_is_rejected(tmp_path):
    msg = error_of(tmp_path, {**BASE, "device": "tpu"})
    assert "'device'" in msg and "'tpu'" in msg and "cuda" in msg
    assert load(tmp_path, {**BASE, "device": "GPU"}).device == "cuda"
    assert load(tmp_path, {**BASE, "device": "cuda:1"}).device == "cuda:1"


@pytest.mark.parametrize("missing", ["task", "name"])
def test_missing_required_key(tmp_path, missing):
    data = {k: v for k, v in BASE.items() if k != missing}
    msg = error_of(tmp_path, data)
    assert f"'{missing}'" in msg and "required" in msg and "cfg.yaml" in msg


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        load_config(FTEConfig, ["-c", str(tmp_path / "nope.yaml")], PROG, FTE_DEPRECATED)


def test_config_file_not_yaml_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(FTEConfig, ["-c", str(p)], PROG, FTE_DEPRECATED)
    p.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(FTEConfig, ["-c", str(p)], PROG, FTE_DEPRECATED)


def test_windowed_normalizer_needs_window(tmp_path):
    msg = error_of(tmp_path, {**BASE, "normalizer": "windowed"})
    assert "window" in msg
    cfg = load(tmp_path, {**BASE, "normalizer": "windowed", "window": [-100, 300]})
    assert cfg.window == (-100.0, 300.0)


def test_fold_needs_folds(tmp_path):
    msg = error_of(tmp_path, {**BASE, "fold": 3, "folds": 3})
    assert "fold 3" in msg


def test_deprecated_w_m_accepted_with_one_line_warning(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load(tmp_path, {**BASE, "w_m": [1, 1, 1]})
    assert not hasattr(cfg, "w_m")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "w_m" in ln and not ln.startswith("recipe:")]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "no effect" in lines[0]
    # and one line saying which recipe trains it (docs/recipes.md)
    assert [ln for ln in err.splitlines() if ln.startswith("recipe: modern in force")]
    # not also a Python warning (the default filter printed it as a second stderr line)
    assert not any("w_m" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------- predecessor configs

PREDECESSOR_FTE = {
    "seed": 42,
    "num_workers": 8,
    "prefetch_factor": 2,
    "batch_size": 128,
    "epochs": 50,
    "device": "cuda",
    "verbose": True,
    "folds": None,
    "debug": False,
    "short_training": False,
    "test_nan_inf": True,
    "opmode": "live_cache",
    "data_format": ".png",
    "normalizer": "naive",
    "shape_desired": [224, 224],
    "tf_device": "gpu",
    "no_augs": False,
    "noise_injection": None,
    "frozen_encoder": False,
    "model_name": "resnet50",
    "syncbn": False,
    "model_path": None,
    "task": "CX8",
    "optimizer": "AdamW",
    "lr": 0.0005,
    "weight_decay": 1e-5,
    "scheduler": "decay",
    "decay_per_epoch": 0.95,
    "scheduling_interval": "epoch",
    "annealing_time": 10,
    "w_l": [1, 1, 1, 0.001, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "w_m": [1] * 15,
    "name": "E1/PT_SimCLR_I1k_FT_CX8",
    "log_losses": True,
}


def test_full_predecessor_fte_config_validates(tmp_path, capsys):
    cfg = load(tmp_path, PREDECESSOR_FTE)
    assert cfg.data_format == [".png"]
    assert cfg.shape_desired == (224, 224)
    assert cfg.folds is None and cfg.model_path is None and cfg.noise_injection is None
    assert cfg.annealing_time == 10.0
    assert cfg.w_l[3] == pytest.approx(0.001) and len(cfg.w_l) == 15
    assert cfg.name == "E1/PT_SimCLR_I1k_FT_CX8"
    assert cfg.optimizer == "AdamW" and cfg.scheduler == "decay" and cfg.device == "cuda"
    assert "w_m" in capsys.readouterr().err


@pytest.mark.parametrize("scheduler", ["decay", "cosine", "decaying_cosine", None, "None"])
def test_predecessor_scheduler_values(tmp_path, scheduler):
    cfg = load(tmp_path, {**BASE, "scheduler": scheduler})
    assert cfg.scheduler == (None if scheduler in (None, "None") else scheduler)


@pytest.mark.parametrize("opmode", ["disk", "pre_cache", "live_cache"])
def test_predecessor_opmodes(tmp_path, opmode):
    assert load(tmp_path, {**BASE, "opmode": opmode}).opmode == opmode


def test_dump_config_round_trips(tmp_path):
    cfg = load(tmp_path, PREDECESSOR_FTE, "--lr", "0.002", "--frozen_encoder", "true")
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    raw = yaml.safe_load(out.read_text())
    assert "w_m" not in raw  # deprecated keys are not written back
    again = validate(FTEConfig, raw, str(out))
    assert again == cfg
    assert again.model_dump() == cfg.model_dump()
    # and the resolved file is itself a valid config for the entry point
    cfg2, _ = load_config(FTEConfig, ["-c", str(out)], PROG, FTE_DEPRECATED)
    assert cfg2 == cfg
