"""Where things live. Every path is resolved against the repository, never the cwd."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
CONFIG_DIR: Path = REPO_ROOT / "config"
TASKS_DIR: Path = CONFIG_DIR / "tasks"
DEFAULT_DATA_ROOT: Path = REPO_ROOT / "datasets"
DEFAULT_OUTPUT_ROOT: Path = REPO_ROOT / "logs_and_checkpoints"


def resolve_path(p: str | Path | None, base: Path) -> Path | None:
    """Absolute paths stay; relative ones are taken relative to ``base``; ``~`` is expanded."""
    if p is None:
        return None
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path)
