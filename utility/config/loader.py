"""Run configuration: YAML file + ``--key value`` overrides, validated against a typed schema.

Values on the command line are parsed as YAML, so ``--frozen_encoder false`` is a boolean,
``--w_l "[1,5,5,5]"`` a list and ``--scheduler null`` None (the predecessor typed overrides by
their default value and got all three wrong).
"""
from __future__ import annotations

import difflib
import os
import reprlib
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from utility.config.help import PRINT_CONFIG, USAGE, exit_on_help
from utility.config.recipe import recipe_notice
from utility.config.yamlsafe import load_file, load_text
from utility.errors import UserError

M = TypeVar("M", bound=BaseModel)



def parse_argv(argv: list[str], prog: str) -> tuple[Path | None, dict[str, Any]]:
    """Split ``argv`` into the config file and a dict of overrides (values parsed as YAML)."""
    config_path: Path | None = None
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(USAGE.format(prog=prog))
            print("Any key of the config can be overridden; values are YAML (true, null, [1,2]).")
            raise SystemExit(0)
        if arg in ("-c", "--config"):
            if i + 1 >= len(argv):
                raise UserError(f"{arg} needs a file name. " + USAGE.format(prog=prog))
            config_path = Path(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            config_path = Path(arg.split("=", 1)[1])
            i += 1
            continue
        if not arg.startswith("--") or len(arg) < 3:
            raise UserError(f"unexpected argument {arg!r}. " + USAGE.format(prog=prog))
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise UserError(f"--{key} needs a value (use --{key} null for none).")
            raw = argv[i + 1]
            i += 2
        key = key.replace("-", "_")
        overrides[key] = parse_value(raw)
    return config_path, overrides


def parse_value(raw: str) -> Any:
    """A command-line value read as YAML; text YAML cannot read stays a string."""
    try:
        return load_text(raw, "a command-line value") if raw != "" else ""
    except UserError as exc:
        if "alias" in str(exc):
            raise
        return raw


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with a clear error for a missing or malformed file."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    data = load_file(path, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of key: value, not {type(data).__name__}")
    return data


BASE_KEY = "base"  # `base: other.yaml` in a run config: that file's keys, this file's on top


def read_run_config(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A run config's keys with its ``base:`` includes resolved (recursively, relative to the including
    file); the including file's keys win over its base's. Lets variants of one config share a file."""
    data = read_yaml(path)
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"config key 'base' in {path}: expected the name of another YAML file, got {base!r}")
    base_path = Path(os.path.expanduser(base))
    base_path = base_path if base_path.is_absolute() else path.parent / base_path
    chain = (*_chain, path)
    if any(base_path.resolve() == p.resolve() for p in chain):
        raise UserError("config 'base' includes form a cycle: " + " -> ".join(str(p) for p in (*chain, base_path)))
    if not base_path.is_file():
        raise UserError(f"config key 'base' in {path}: file not found: {base_path}")
    merged = read_run_config(base_path, chain)
    merged.update(data)
    return merged


# Common spellings of a key that string similarity cannot find (learning_rate -> annealing_time).
KEY_SYNONYMS: dict[str, str] = {
    "learning_rate": "lr", "wd": "weight_decay", "bs": "batch_size", "n_epochs": "epochs",
    "num_epochs": "epochs", "workers": "num_workers", "arch": "model_name", "model": "model_name",
}


# how similar (difflib ratio) a valid key must be to be offered as "did you mean": 0.5 offered
# annealing_time for learnin_rate and num_workers for nework
HINT_CUTOFF = 0.6


def closest_key(key: str, valid: list[str]) -> str | None:
    """A valid key close enough to ``key`` to be what was meant, else None (no hint beats a wrong one)."""
    synonym = KEY_SYNONYMS.get(key.lower())
    if synonym in valid:
        return synonym
    match = difflib.get_close_matches(key, valid, n=1, cutoff=HINT_CUTOFF)
    return match[0] if match else None


def _warn(line: str) -> None:
    """One stderr line, from rank 0 only (formerly also a Python warning: the same news twice)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


def _nul_keys(raw: dict[str, Any]) -> list[str]:
    """Keys whose value (or an item of it) holds a NUL character (no path or name can)."""
    def has_nul(v: Any) -> bool:
        if isinstance(v, str):
            return "\x00" in v
        if isinstance(v, (list, tuple)):
            return any(has_nul(x) for x in v)
        if isinstance(v, dict):
            return any(has_nul(x) for x in v.values())
        return False
    return [k for k, v in raw.items() if has_nul(v)]


def _short_repr(value: Any) -> str:
    """repr of a quoted value without building the whole text of a huge one."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = 80, 80, 8, 8, 3
    return r.repr(value)


def validate(schema: type[M], raw: dict[str, Any], source: str,
             deprecated: dict[str, str] | None = None, cli_keys: frozenset[str] = frozenset()) -> M:
    """Build ``schema`` from ``raw``; unknown keys, wrong types and ranges become UserErrors.

    ``deprecated`` maps keys that are accepted but do nothing to a one-line explanation;
    ``cli_keys`` are the keys given on the command line (messages say so instead of ``source``).
    """
    deprecated = deprecated or {}
    valid = list(schema.model_fields)

    def where(key: str) -> str:
        return "on the command line" if key in cli_keys else f"in {source}"

    data = {}
    for key, value in raw.items():
        if key in deprecated:
            _warn(f"warning: config key '{key}' has no effect: {deprecated[key]}")
            continue
        if key not in schema.model_fields:
            hint = closest_key(key, valid)
            msg = f"unknown config key '{key}' " + ("(--" + key + ") " if key in cli_keys else "") + where(key)
            raise UserError(msg + (f"; did you mean '{hint}'?" if hint else "."))
        data[key] = value
    for key in _nul_keys(data):
        raise UserError(f"config key '{key}' {where(key)} holds a NUL character; no name or path can")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            given = err.get("input")
            expected = err["msg"]
            if not key:  # a model-level check involving several keys: its message names them
                text = expected.removeprefix("Value error, ")
                lines.append(text if text.startswith("config key") else f"config: {text}")
            elif err["type"] == "missing":
                lines.append(f"config key '{key}' is required but missing from {source}")
            else:
                lines.append(f"config key '{key}': value {_short_repr(given)} is invalid: {expected}")
        raise UserError("\n".join(dict.fromkeys(lines))) from None


def load_config(schema: type[M], argv: list[str], prog: str,
                deprecated: dict[str, str] | None = None) -> tuple[M, Path | None]:
    """YAML file (with its ``base:`` includes) + overrides -> validated config object. Overrides win."""
    exit_on_help(argv, schema, prog)
    show = PRINT_CONFIG in argv
    path, overrides = parse_argv([a for a in argv if a != PRINT_CONFIG], prog)
    raw: dict[str, Any] = read_run_config(path) if path is not None else {}
    raw.update(overrides)
    source = str(path) if path else "the command line"
    cfg = validate(schema, raw, source, deprecated, frozenset(overrides))
    if show:  # the resolved config (file + overrides + defaults), nothing run
        sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        raise SystemExit(0)
    if hasattr(cfg, "recipe"):
        recipe_notice(raw, getattr(cfg, "recipe"))
    return cfg, path


def dump_config(cfg: BaseModel, path: Path) -> None:
    """Write the resolved config so the run can be repeated exactly."""
    data = cfg.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
