"""The predecessor's E1/E2/E3 as study files: planned configs equal the predecessor's own configs
(tests/fixtures/predecessor_configs/, ten of them restated as facts) key by key after validation."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from utility.config.loader import validate
from utility.config.schemas import FTE_DEPRECATED, FTEConfig
from utility.study.plan import make_plan
from utility.study.spec import load_study

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "predecessor_configs"
# the predecessor's hand edits (docs/recipes.md): run -> (key, study value, predecessor value)
EXCEPTIONS = {"E1/PT_SimCLR_RF_FT_LiTS_f1": ("seed", 1, 11),
              "E3/PT_Scratch_FT_BraTS_noise25e3": ("noise_injection", [0.0025, 1.0], [0.025, 1.0])}


def resolved(raw: dict) -> tuple[dict, str | None]:
    """Validated values; model_path by its last three parts (pretraining/<run>/<file>), recipe aside."""
    with contextlib.redirect_stderr(io.StringIO()):
        cfg = validate(FTEConfig, raw, "cfg", FTE_DEPRECATED).model_dump(mode="json")
    path = cfg.pop("model_path")
    cfg.pop("recipe")
    return cfg, "/".join(Path(path).parts[-3:]) if path else None


@pytest.fixture(scope="module")
def plans():
    return {e: make_plan(load_study(REPO / "config" / "studies" / f"predecessor_{e}.yaml")) for e in ("e1", "e2", "e3")}


def test_run_counts_and_recipe(plans):
    assert {e: len(p.runs) for e, p in plans.items()} == {"e1": 80, "e2": 272, "e3": 476}
    assert all(r.config["recipe"] == "predecessor" for p in plans.values() for r in p.runs)
    assert plans["e1"].config_dir == REPO / "pkgs" / "FTE" / "config" / "E1"  # where the predecessor kept them


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("E*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_planned_config_equals_the_predecessors(plans, fixture):
    theirs = yaml.safe_load(fixture.read_text())
    runs = {r.name: r for r in plans[fixture.parent.name.lower()].runs}
    assert theirs["name"] in runs  # same run name, so its notebooks find the logs
    ours, our_model = resolved(runs[theirs["name"]].config)
    want, their_model = resolved(theirs)
    assert our_model == their_model
    diff = {k: (ours.get(k), want.get(k)) for k in set(ours) | set(want) if ours.get(k) != want.get(k)}
    if theirs["name"] in EXCEPTIONS:
        key, study_value, their_value = EXCEPTIONS[theirs["name"]]
        assert diff == {key: (study_value, their_value)}
    else:
        assert diff == {}


def _study(tmp_path, **changes) -> Path:
    data = yaml.safe_load((REPO / "config" / "studies" / "predecessor_e1.yaml").read_text())
    data.update(changes)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_task_settings_and_run_sources_are_checked(tmp_path):
    from utility.errors import UserError

    with pytest.raises(UserError, match="task_settings.LiTS-M': not one of the study's tasks"):
        make_plan(load_study(_study(tmp_path, task_settings={"LiTS-M": {"label": "LiTSM"}})))
    with pytest.raises(UserError, match="did you mean 'task_settings.CX8.label'"):
        load_study(_study(tmp_path, task_settings={"CX8": {"lable": "X"}}))
    with pytest.raises(UserError, match="give one of 'config'"):
        load_study(_study(tmp_path, pretrain={"A": {"run": "x", "encoder": "y.tar"}}))


PREDECESSOR_COPY = REPO.parent / "shared" / "predecessor" / "FTE_config"  # a copy of its configs, where one exists


@pytest.mark.skipif(not PREDECESSOR_COPY.is_dir(), reason="no copy of the predecessor's configs beside the checkout")
def test_all_828_planned_configs_equal_the_predecessors_but_the_listed_exceptions(plans):
    """Every E1-E3 config of the predecessor (where a copy of them lies beside the checkout)."""
    seen, differing = 0, {}
    for e, plan in plans.items():
        theirs = {}
        for f in (PREDECESSOR_COPY / e.upper()).glob("*.yaml"):
            d = yaml.safe_load(f.read_text())
            theirs[d["name"]] = d
        assert sorted(theirs) == sorted(r.name for r in plan.runs)
        for r in plan.runs:
            (ours, our_model), (want, their_model) = resolved(r.config), resolved(theirs[r.name])
            diff = {k: (ours.get(k), want.get(k)) for k in set(ours) | set(want) if ours.get(k) != want.get(k)}
            assert our_model == their_model
            if diff:
                differing[r.name] = diff
            seen += 1
    assert seen == 828
    assert differing == {name: {key: (a, b)} for name, (key, a, b) in EXCEPTIONS.items()}
