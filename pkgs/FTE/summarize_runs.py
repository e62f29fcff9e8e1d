"""Test results of many finetuning runs side by side.

    python pkgs/FTE/summarize_runs.py logs_and_checkpoints/finetuning/E1 [more dirs] [--best] [--csv out.csv]
"""
import argparse
import sys
from pathlib import Path

try:
    from utility.metrics.summary import summarize
except ModuleNotFoundError as _missing:  # not the project's environment: say which one, not a traceback
    if (_missing.name or "").startswith("utility."):
        raise
    sys.exit(f"{sys.argv[0]}: Python module {_missing.name!r} not found: run it with the project's environment "
             "(`make venv`, then .venv/bin/python), or `pip install -e .` in yours")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="run directories or folders holding runs")
    ap.add_argument("--best", action="store_true", help="use test_best.log (best checkpoint) instead of test.log")
    ap.add_argument("--columns", nargs="*", help="metric columns to show")
    ap.add_argument("--csv", type=Path, help="also write the table as CSV")
    args = ap.parse_args()
    print(summarize(args.paths, args.columns, "best" if args.best else "last", args.csv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
