"""Test results of many finetuning runs side by side.

    python pkgs/FTE/summarize_runs.py logs_and_checkpoints/finetuning/E1 [more dirs] [--best] [--csv out.csv]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utility.metrics.summary import summarize  # noqa: E402


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
