"""``python -m utility.config schema [DIR]``: a JSON Schema per config kind (finetune.schema.json,
pretrain.schema.json, task.schema.json) so that editors complete and check the YAML files
(e.g. ``# yaml-language-server: $schema=<DIR>/finetune.schema.json`` on a config's first line).
``python -m utility.config reference``: the configuration reference page (docs/configuration.md) on stdout."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from utility.config.schemas import FTEConfig, PretrainConfig
from utility.config.tasks import TaskSpec

BASE_HELP = "another YAML file whose keys this file's keys override (relative to this file)"
KINDS = {"finetune": FTEConfig, "pretrain": PretrainConfig, "task": TaskSpec}


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, model in KINDS.items():
        path = out_dir / f"{kind}.schema.json"
        schema = model.model_json_schema(by_alias=True)
        schema["title"] = f"{kind} config ({model.__name__})"
        if kind != "task":  # run configs may include another file (utility/config/loader.py)
            schema["properties"]["base"] = {"type": "string", "description": BASE_HELP}
        path.write_text(json.dumps(schema, indent=1) + "\n")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if argv == ["reference"]:
        from utility.config.reference import reference

        sys.stdout.write(reference())
        return 0
    if not argv or argv[0] != "schema" or len(argv) > 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in write_schemas(Path(argv[1] if len(argv) > 1 else ".")):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
