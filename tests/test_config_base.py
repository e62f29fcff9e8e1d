"""``base: other.yaml`` in run configs: includes relative to the including file, overrides, cycles."""
from __future__ import annotations

import pytest

from conftest import write_yaml
from utility.config.loader import load_config, read_run_config
from utility.config.schemas import FTE_DEPRECATED, FTEConfig, PRETRAIN_DEPRECATED, PretrainConfig
from utility.errors import UserError

PROG = "pkgs/FTE/finetune.py"


def test_base_keys_are_inherited_and_overridden_by_file_then_cli(tmp_path):
    write_yaml(tmp_path / "shared" / "common.yaml", {"name": "E1/a", "task": "digits", "lr": 0.5,
                                                      "batch_size": 8, "epochs": 3})
    # a relative base is read from the including file's folder, not the working directory
    child = write_yaml(tmp_path / "shared" / "variant.yaml", {"base": "common.yaml", "lr": 0.01, "epochs": 5})
    cfg, _ = load_config(FTEConfig, ["-c", str(child), "--epochs", "7"], PROG, FTE_DEPRECATED)
    assert (cfg.name, cfg.task, cfg.batch_size) == ("E1/a", "digits", 8)   # from the base
    assert cfg.lr == pytest.approx(0.01)                                       # the file beats its base
    assert cfg.epochs == 7                                                     # the command line beats both


def test_base_chain_is_resolved_recursively_relative_to_each_file(tmp_path):
    write_yaml(tmp_path / "a" / "root.yaml", {"name": "r", "task": "digits", "lr": 1.0, "epochs": 1})
    write_yaml(tmp_path / "a" / "b" / "mid.yaml", {"base": "../root.yaml", "lr": 2.0, "batch_size": 4})
    leaf = write_yaml(tmp_path / "leaf.yaml", {"base": "a/b/mid.yaml", "epochs": 9})
    assert read_run_config(leaf) == {"name": "r", "task": "digits", "lr": 2.0, "epochs": 9, "batch_size": 4}


def test_base_works_for_pretraining_configs(tmp_path):
    write_yaml(tmp_path / "p.yaml", {"name": "P/x", "dataset_base_dir": [str(tmp_path)], "epochs": 2})
    child = write_yaml(tmp_path / "q.yaml", {"base": "p.yaml", "batch_size": 16})
    cfg, _ = load_config(PretrainConfig, ["-c", str(child)], "pkgs/SSL/pretrain.py", PRETRAIN_DEPRECATED)
    assert (cfg.name, cfg.epochs, cfg.batch_size) == ("P/x", 2, 16)


def test_missing_base_names_both_files(tmp_path):
    child = write_yaml(tmp_path / "c.yaml", {"base": "nothere.yaml", "name": "x", "task": "digits"})
    with pytest.raises(UserError) as info:
        read_run_config(child)
    msg = str(info.value)
    assert "\n" not in msg and str(child) in msg and str(tmp_path / "nothere.yaml") in msg


def test_base_cycle_is_refused_naming_the_chain(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"base": "b.yaml", "lr": 1.0})
    write_yaml(tmp_path / "b.yaml", {"base": "sub/../a.yaml", "lr": 2.0})
    with pytest.raises(UserError) as info:
        read_run_config(tmp_path / "a.yaml")
    msg = str(info.value)
    assert "cycle" in msg and "\n" not in msg
    assert msg.index("a.yaml") < msg.index("b.yaml") and msg.count("a.yaml") == 2


def test_base_including_itself_is_a_cycle(tmp_path):
    write_yaml(tmp_path / "s.yaml", {"base": "s.yaml"})
    with pytest.raises(UserError, match="cycle"):
        read_run_config(tmp_path / "s.yaml")


@pytest.mark.parametrize("value", [3, ["a.yaml"], "", None])
def test_base_must_name_a_file(tmp_path, value):
    child = write_yaml(tmp_path / "c.yaml", {"base": value})
    with pytest.raises(UserError, match=r"config key 'base' in .*c\.yaml: expected the name"):
        read_run_config(child)


def test_config_without_base_is_unchanged(tmp_path):
    f = write_yaml(tmp_path / "c.yaml", {"name": "x", "task": "digits"})
    assert read_run_config(f) == {"name": "x", "task": "digits"}


def test_study_reads_base_includes_of_its_finetune_and_pretrain_configs(tmp_path):
    from conftest import small_run_config, task_dict
    from utility.study.plan import make_plan
    from utility.study.spec import load_study

    task = write_yaml(tmp_path / "tasks" / "tiny.yaml", task_dict())
    write_yaml(tmp_path / "cfg" / "ft_common.yaml", small_run_config(name="base", task=str(task), lr=0.5,
                                                                     data_root=str(tmp_path / "data")))
    ft = write_yaml(tmp_path / "cfg" / "ft.yaml", {"base": "ft_common.yaml", "lr": 0.25})
    write_yaml(tmp_path / "cfg" / "pre_common.yaml", {"name": "x", "dataset_base_dir": str(tmp_path / "data"),
                                                      "resnet": "resnet18", "batch_size": 4, "epochs": 1})
    pre = write_yaml(tmp_path / "cfg" / "pre.yaml", {"base": "pre_common.yaml", "batch_size": 8})
    study = write_yaml(tmp_path / "study.yaml", {
        "name": "S", "pretrain": {"Scratch": None, "SSL": {"config": str(pre)}},
        "finetune": {"config": str(ft), "overrides": {"epochs": 2}}, "tasks": [str(task)],
        "repeats": {"seeds": [42]}, "gpus_per_job": 0,
        "output_root": str(tmp_path / "out"), "config_dir": str(tmp_path / "cfgs")})
    plan = make_plan(load_study(study))
    (job,) = plan.pretrain
    assert job.config["batch_size"] == 8 and job.config["epochs"] == 1 and "base" not in job.config
    for run in plan.runs:
        assert run.config["lr"] == pytest.approx(0.25) and run.config["epochs"] == 2 and "base" not in run.config
        assert run.config["data_root"] == str(tmp_path / "data")
