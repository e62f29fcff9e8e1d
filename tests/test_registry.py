"""The one registry idiom (utility/registry.py) and the registries built on it: lookup, lazy import
only on use, the one-line error naming what is known."""
from __future__ import annotations

import pytest

from utility.errors import UserError
from utility.registry import Registry


def test_register_lookup_and_unknown():
    reg: Registry[int] = Registry("widget")
    reg.register("one", entry=1)

    @reg.register("f", "g", help="a function")
    def f() -> int:
        return 2

    assert reg["one"] == 1 and reg.find("g") is f and reg.names() == ["one", "f", "g"]
    assert dict(reg) == {"one": 1, "f": f, "g": f} and reg.help == {"f": "a function", "g": "a function"}
    assert reg.get("nope") is None and "nope" not in reg
    with pytest.raises(UserError, match=r"^unknown widget 'onee'; did you mean 'one'\? \(known: one, f, g\)$"):
        reg.find("onee")


def test_lazy_entry_imported_on_first_use_only():
    reg: Registry = Registry("thing", lambda name, known: f"no thing {name} among {known}")
    reg.lazy("dec", "json.decoder:JSONDecoder", help="decoder")
    assert "dec" in reg and reg.help["dec"] == "decoder"
    import json.decoder
    assert reg.find("dec") is json.decoder.JSONDecoder
    with pytest.raises(UserError, match=r"^no thing x among \['dec'\]$"):
        reg.find("x")


def test_project_registries_keep_their_messages():
    from utility.analysis.cli import COMMANDS, command
    from utility.methods.registry import pipeline_for
    from utility.methods.ssl_registry import METHODS, method_class
    from utility.queue.cli import BACKENDS
    from utility.tracking.registry import tracker_class, tracker_names
    assert list(METHODS) == ["simclr", "barlow_twins", "byol", "vicreg", "mocov2", "dino", "mae"]
    assert method_class("byol") is METHODS["byol"] and METHODS["byol"].name == "byol"
    with pytest.raises(UserError, match="unknown method 'Barlow-Twin'; did you mean 'barlow_twins'"):
        method_class("Barlow-Twin")
    assert type(pipeline_for("segmentation")).__name__ == "SegmentationPipeline"
    with pytest.raises(UserError, match=r"no pipeline for task type 'x' \(known: multiclass, multilabel, segmentation\)"):
        pipeline_for("x")
    assert tracker_names() == ["mlflow", "wandb"]
    with pytest.raises(UserError, match="unknown tracker 'neptune' in config key 'trackers'; known: mlflow, wandb"):
        tracker_class("neptune")
    assert sorted(BACKENDS) == ["local", "slurm"] and "lr-find" in COMMANDS.help
    assert command("l2").__module__ == "utility.analysis.cmd_model"
