"""docs/configuration.md is generated from the schemas; it must equal the generator's output."""
from __future__ import annotations

from pathlib import Path

from utility.config.__main__ import main
from utility.config.reference import reference
from utility.config.schemas import FTEConfig, PretrainConfig
from utility.config.tasks import LayoutSpec, TaskSpec

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_committed_reference_equals_generator_output():
    assert PAGE.read_text() == reference(), (
        "docs/configuration.md is stale: run `python -m utility.config reference > docs/configuration.md`")


def test_reference_lists_every_key_of_every_kind_with_default():
    text = reference()
    sections = text.split("\n## ")
    for title, schema in (("Finetuning runs", FTEConfig), ("Pretraining runs", PretrainConfig), ("Tasks", TaskSpec)):
        section = next(s for s in sections if s.startswith(title))
        for key, field in schema.model_fields.items():
            assert f"- `{field.alias or key}`: " in section, (title, key)
    assert "- `lr`: " in text and "- `from`: " in text          # an alias is shown as written in YAML
    for key in LayoutSpec.model_fields:
        assert f"- `{key}`: " in text
    assert "- `epochs`: int >= 1, default `10`" in text


def test_cli_prints_the_reference(capsys):
    assert main(["reference"]) == 0
    assert capsys.readouterr().out == reference()
