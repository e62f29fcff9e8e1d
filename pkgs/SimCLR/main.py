"""SimCLR pretraining: ``python pkgs/SimCLR/main.py -c cfg.yaml [--key value ...]``."""
import sys

try:
    from utility.config.help import exit_on_help
    from utility.config.schemas import PretrainConfig

    if __name__ == "__main__":
        exit_on_help(sys.argv[1:], PretrainConfig, "pkgs/SimCLR/main.py")  # the keys, before torch is imported
    from utility.entry import run_entry
    from utility.runs.pretrain import main
except ModuleNotFoundError as _missing:  # not the project's environment: say which one, not a traceback
    if (_missing.name or "").startswith("utility."):
        raise
    sys.exit(f"{sys.argv[0]}: Python module {_missing.name!r} not found: run it with the project's environment "
             "(`make venv`, then .venv/bin/python), or `pip install -e .` in yours")

if __name__ == "__main__":
    sys.exit(run_entry(main))
