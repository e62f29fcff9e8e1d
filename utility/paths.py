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
    return _resolve(path if path.is_absolute() or path.exists() or path.is_symlink() else REPO_ROOT / path)


def _resolve(path: Path) -> Path:
    """``path.resolve()``; a symlink loop is the user's to fix, named in one line."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # Python 3.11: RuntimeError('Symlink loop ...'); later: ELOOP
        from utility.errors import UserError

        raise UserError(f"{path} cannot be resolved ({exc}); a symlink loop? expected a file or folder") from None


def output_root(configured: str | None) -> Path:
    """Outputs are new folders: a relative output_root is under the cwd, never the repository by surprise."""
    root = _resolve(Path(configured).expanduser()) if configured else DEFAULT_OUTPUT_ROOT
    if root.exists() and not root.is_dir():
        from utility.errors import UserError

        raise UserError(f"output_root {root} is a file; expected a folder (new or existing) for the runs")
    return root
