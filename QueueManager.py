#!/usr/bin/env python3
"""Run the jobs in Jobs.csv one after another / side by side on the GPUs of this machine, or
hand them to SLURM.  `python QueueManager.py --help`; the format is in docs/QUEUE.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from utility.queue.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
