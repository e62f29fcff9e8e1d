"""``--help`` of the config-driven entry points lists every key of the schema (type, default, description,
grouped) and answers before torch is imported."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import HANG_GUARD_S, REPO
from utility.config.help import config_help, type_text
from utility.config.loader import load_config
from utility.config.schemas import FTEConfig, PretrainConfig


@pytest.mark.parametrize("schema", [FTEConfig, PretrainConfig])
def test_help_lists_every_key_once_with_its_default(schema):
    text = config_help(schema, "prog.py")
    keys = [line.split()[0][2:] for line in text.splitlines() if line.startswith("  --")]
    assert sorted(keys) == sorted(schema.model_fields) and len(keys) == len(set(keys))
    for key, field in schema.model_fields.items():
        line = next(x for x in text.splitlines() if x.startswith(f"  --{key} "))
        if field.description:
            assert line.endswith(f": {field.description}")
    assert "(RunBase):" in text and "(DataKeys):" in text and f"({schema.__name__}):" in text


def test_help_lines_say_type_bounds_and_default():
    text = config_help(FTEConfig, "pkgs/FTE/finetune.py")
    assert text.startswith("usage: pkgs/FTE/finetune.py -c CONFIG.yaml")
    assert "  --batch_size int >= 1 (default 32)\n" in text
    assert "  --amp auto|fp16|bf16|off (default auto): auto: fp16 with GradScaler" in text
    assert "  --output_root str or null (default null): " in text
    assert "  --name str (default required): " in text
    assert type_text(list[tuple[int, str]]) == "list[tuple[int, str]]"


def test_load_config_help_exits_0_with_the_keys(capsys):
    with pytest.raises(SystemExit) as exc:
        load_config(PretrainConfig, ["-c", "missing.yaml", "--help"], "pkgs/SimCLR/main.py")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--temperature float >= 0.001 (default 0.5)" in out and "--dataset_base_dir" in out


PROBE = r"""
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    print("EXIT", exc.code, "TORCH", "torch" in sys.modules)
"""


@pytest.mark.parametrize("script", ["pkgs/FTE/finetune.py", "pkgs/SSL/pretrain.py"])
def test_entry_help_answers_before_torch_is_imported(script, tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, str(REPO / script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith("EXIT 0 TORCH False"), proc.stdout[-500:]
    assert "  --epochs int >= 1 (default 10)" in proc.stdout


def test_print_config_shows_the_resolved_config_and_runs_nothing(tmp_path, capsys):
    import yaml

    from conftest import small_run_config, write_yaml
    from utility.config.loader import validate

    cfg = write_yaml(tmp_path / "run.yaml", small_run_config(name="p/q", task="tiny", epochs=3))
    with pytest.raises(SystemExit) as exc:
        load_config(FTEConfig, ["-c", str(cfg), "--lr", "0.5", "--print-config"], "finetune.py")
    assert exc.value.code == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["lr"] == 0.5 and shown["epochs"] == 3 and shown["head_dropout"] == 0.0  # override, file, default
    assert validate(FTEConfig, shown, "printed").model_dump() == FTEConfig(**shown).model_dump()
    assert not (tmp_path / "logs_and_checkpoints").exists()


def test_json_schema_per_config_kind(tmp_path):
    import json

    from utility.config.__main__ import main

    assert main(["schema", str(tmp_path)]) == 0
    for kind, model in (("finetune", FTEConfig), ("pretrain", PretrainConfig)):
        schema = json.loads((tmp_path / f"{kind}.schema.json").read_text())
        assert set(schema["properties"]) == set(model.model_fields) | {"base"}   # base: the include key
        assert schema["properties"]["batch_size"]["minimum"] == 1
    assert "properties" in json.loads((tmp_path / "task.schema.json").read_text())
    assert main(["nonsense"]) == 2
