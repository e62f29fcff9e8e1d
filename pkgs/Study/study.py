"""A study: plan the runs of a research question, queue them, run them, report with statistics.

    python pkgs/Study/study.py -c config/studies/demo_digits.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utility.entry import run_entry  # noqa: E402
from utility.study.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_entry(main))
