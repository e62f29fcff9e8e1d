"""Where things live. Every path is resolved against the repository, never the cwd."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
CONFIG_DIR: Path = REPO_ROOT / "config"
TASKS_DIR: Path = CONFIG_DIR / "tasks"
DEFAULT_DATA_ROOT: Path = REPO_ROOT / "datasets"
DEFAULT_OUTPUT_ROOT: Path = REPO_ROOT / "logs_and_checkpoints"


def resolve_user_path(p: str | Path) -> Path:
    """An input the user names (data, weights, cache): the cwd first, then the repository root
    (where predecessor configs ran)."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (REPO_ROOT / path).resolve()


def output_root(configured: str | None) -> Path:
    """Outputs are new folders: a relative output_root is under the cwd, never the repository by surprise."""
    return Path(configured).expanduser().resolve() if configured else DEFAULT_OUTPUT_ROOT
