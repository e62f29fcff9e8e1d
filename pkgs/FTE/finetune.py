"""Finetune an encoder on a downstream task: ``python pkgs/FTE/finetune.py -c cfg.yaml [--key value ...]``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utility.entry import run_entry  # noqa: E402
from utility.runs.finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_entry(main))
