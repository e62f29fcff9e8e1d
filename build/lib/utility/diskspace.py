"""Running out of disk (or tmpfs) space: one clear message naming the device and what was needed,
instead of a writer's internal error (torch's ``inline_container.cc`` enforce failure) or a SIGBUS."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from utility.errors import UserError

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what torch's zip writer says when the underlying write fails (it hides the errno)
WRITER_FAILURES = ("file write failed", "inline_container", "PytorchStreamWriter failed")


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    dev = p.stat().st_dev
    while p != p.parent and p.parent.stat().st_dev == dev:
        p = p.parent
    return p


def is_no_space(exc: BaseException) -> bool:
    """An OSError ENOSPC/EDQUOT, or torch's writer failing (which on a full disk is all it says)."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in WRITER_FAILURES)


def free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(mount_point(path)).free
    except OSError:
        return -1


def no_space_error(path: Path, need_bytes: int, what: str, advice: str = "") -> UserError:
    """``no space left on <device> for <what>, need about N MB (M MB free); <advice>``."""
    free = free_bytes(path)
    shown = f", {free / 2**20:.0f} MB free" if free >= 0 else ""
    return UserError(f"no space left on {mount_point(path)} for {what}, need about "
                     f"{max(1, round(need_bytes / 2**20))} MB{shown}" + (f"; {advice}" if advice else ""))


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested dict/list (what torch.save writes, give or take)."""
    import torch  # here: entry points import this module before they need torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0
