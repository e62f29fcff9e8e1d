"""The task registry: task presets are YAML files in config/tasks/ (see utility/config/tasks.py).

``python pkgs/FTE/finetuning_tasks.py`` lists them; ``... NAME`` shows one resolved (size variants too).
"""
import sys

try:
    from utility.config.tasks import available_tasks, load_task  # noqa: F401
except ModuleNotFoundError as _missing:  # not the project's environment: say which one, not a traceback
    if (_missing.name or "").startswith("utility."):
        raise
    sys.exit(f"{sys.argv[0]}: Python module {_missing.name!r} not found: run it with the project's environment "
             "(`make venv`, then .venv/bin/python), or `pip install -e .` in yours")


def _main(argv: list[str]) -> int:
    import yaml

    if not argv:
        for name in available_tasks():
            t = load_task(name)
            print(f"{name:16s} {t.type:10s} {t.description}")
        print("\nEvery task also has size variants: NAME-M (50%), -S (10%), -XS (1%), -XXS (0.1%) of train.")
        return 0
    print(yaml.safe_dump(load_task(argv[0]).model_dump(mode="json", by_alias=True), sort_keys=False))
    return 0


if __name__ == "__main__":
    from utility.entry import run_entry

    sys.exit(run_entry(_main))
