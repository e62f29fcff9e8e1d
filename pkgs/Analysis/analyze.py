"""Analyse trained models: ``python pkgs/Analysis/analyze.py <command> [--run DIR | --weights F --task T
--model_name M] ...``. Commands: embed, knn, probe, curves, predict, gradcam, cka, layer-knn, l2,
importance, lr-find (``--help`` lists them, ``<command> --help`` their options)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utility.entry import run_entry  # noqa: E402
from utility.analysis.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_entry(main))
