#!/usr/bin/env python3
"""Run the jobs in Jobs.csv one after another / side by side on the GPUs of this machine, or
hand them to SLURM.  `python QueueManager.py --help`; the format is in docs/QUEUE.md."""
import sys

try:
    from utility.queue.cli import main
except ModuleNotFoundError as _missing:  # not the project's environment: say which one, not a traceback
    if (_missing.name or "").startswith("utility."):
        raise
    sys.exit(f"{sys.argv[0]}: Python module {_missing.name!r} not found: run it with the project's environment "
             "(`make venv`, then .venv/bin/python), or `pip install -e .` in yours")

if __name__ == "__main__":
    sys.exit(main())
