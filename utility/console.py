"""Console scripts of the installed package (pyproject.toml ``[project.scripts]``).

Each runs the same ``main`` as its ``python pkgs/...`` script; the import happens inside the function so
that one command never loads the others' libraries (the queue never imports torch).
"""
from __future__ import annotations

import sys

def _help_first(schema_name: str, prog: str) -> None:
    """``--help``: the config keys, without importing torch (utility/config/help.py)."""
    from utility.config import schemas
    from utility.config.help import exit_on_help
    exit_on_help(sys.argv[1:], getattr(schemas, schema_name), prog)


def finetune() -> int:
    """``tli-finetune`` = ``python pkgs/FTE/finetune.py``."""
    _help_first("FTEConfig", "tli-finetune")
    from utility.entry import run_entry
    from utility.runs.finetune import main
    return run_entry(main)


def pretrain() -> int:
    """``tli-pretrain`` = ``python pkgs/SSL/pretrain.py`` (any SSL method by name)."""
    _help_first("PretrainConfig", "tli-pretrain")
    from utility.entry import run_entry
    from utility.runs.pretrain import main
    return run_entry(lambda argv: main(argv, "tli-pretrain"))


def simclr() -> int:
    """``tli-simclr`` = ``python pkgs/SimCLR/main.py`` (the predecessor's SimCLR command)."""
    _help_first("PretrainConfig", "tli-simclr")
    from utility.entry import run_entry
    from utility.runs.pretrain import main
    return run_entry(lambda argv: main(argv, "tli-simclr"))


def knn_eval() -> int:
    """``tli-knn-eval`` = ``python pkgs/SSL/knn_eval.py``."""
    from utility.entry import run_entry
    from utility.runs.knn_eval import main
    return run_entry(main)


def queue() -> int:
    """``tli-queue`` = ``python QueueManager.py``."""
    from utility.queue.cli import main
    return main(sys.argv[1:])


def study() -> int:
    """``tli-study`` = ``python pkgs/Study/study.py``."""
    from utility.entry import run_entry
    from utility.study.cli import main
    return run_entry(main)


def analyze() -> int:
    """``tli-analyze`` = ``python pkgs/Analysis/analyze.py``."""
    from utility.entry import run_entry
    from utility.analysis.cli import main
    return run_entry(main)
