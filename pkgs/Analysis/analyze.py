"""Analyse trained models: ``python pkgs/Analysis/analyze.py <command> [--run DIR | --weights F --task T
--model_name M] ...``. Commands: embed, knn, probe, curves, predict, gradcam, cka, layer-knn, l2,
importance, lr-find (``--help`` lists them, ``<command> --help`` their options)."""
import sys

try:
    from utility.entry import run_entry
    from utility.analysis.cli import main
except ModuleNotFoundError as _missing:  # not the project's environment: say which one, not a traceback
    if (_missing.name or "").startswith("utility."):
        raise
    sys.exit(f"{sys.argv[0]}: Python module {_missing.name!r} not found: run it with the project's environment "
             "(`make venv`, then .venv/bin/python), or `pip install -e .` in yours")

if __name__ == "__main__":
    sys.exit(run_entry(main))
