"""docs/pretraining.md's table of method settings states the defaults the methods use (so it cannot rot)."""
from __future__ import annotations

from pathlib import Path

from utility.methods.ssl_registry import METHODS

PAGE = Path(__file__).resolve().parent.parent / "docs" / "pretraining.md"


def _rows() -> dict[str, str]:
    rows = {}
    for line in PAGE.read_text().splitlines():
        if line.startswith("| `"):
            rows[line.split("`")[1]] = line
    return rows


def test_every_documented_method_setting_and_default_is_the_code_s():
    rows = _rows()
    assert {"simclr", "barlow_twins", "byol", "vicreg", "mocov2"} <= set(rows) & set(METHODS)
    for name, method in METHODS.items():
        if name == "simclr" or name not in rows:   # SimCLR's settings are top-level keys (configuration.md)
            continue
        for key, field in method.Settings.model_fields.items():
            assert f"`{key}` {field.default:g}" in rows[name], (name, key, field.default)
