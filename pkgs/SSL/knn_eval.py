"""Weighted kNN accuracy of a saved encoder: ``python pkgs/SSL/knn_eval.py -e encoder.tar [--task digits]``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utility.entry import run_entry  # noqa: E402
from utility.runs.knn_eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_entry(main))
