"""Resume checkpoints: plain dicts of tensors and primitives, written atomically, read with
``weights_only=True`` (no arbitrary unpickling)."""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from utility.diskspace import is_no_space, no_space_error, tensor_bytes
from utility.errors import UserError

# what resume needs from checkpoint_last.pt (checked before any work, not halfway through resuming)
RESUME_KEYS = ("model", "optimizer", "scaler", "epoch", "batch_in_epoch", "global_step", "rng")


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file and rename, so a kill mid-write never leaves a broken checkpoint. A
    full disk leaves no temporary file and the previous ``path`` untouched, and says what it needed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        if is_no_space(exc):
            kept = f"the previous {path.name} is intact; " if path.exists() else ""
            raise no_space_error(path.parent, tensor_bytes(obj), f"saving {path.name}",
                                 f"{kept}free space and start the same command again to resume") from None
        raise
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached": float(np_state[4]), "keys": torch.from_numpy(np_state[1].astype(np.int64))},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint of ours; a damaged (truncated, overwritten) file is a UserError saying which file
    it is and how to go on, never torch's reader error."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in required if not isinstance(ck, dict) or k not in ck]
        if missing:
            raise ValueError(f"no '{missing[0]}' entry")
        bad = [k for k in ("epoch", "batch_in_epoch", "global_step") if k in required
               and (not isinstance(ck[k], int) or isinstance(ck[k], bool) or ck[k] < 0)]
        if bad:
            raise ValueError(f"'{bad[0]}' is {ck[bad[0]]!r}, expected a whole number >= 0")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # zip/pickle errors of every kind
        raise UserError(damaged_message(path, exc)) from None
    return ck


def damaged_message(path: Path, exc: BaseException) -> str:
    reason = short_reason(exc)
    best = path.with_name("checkpoint_best.pt")
    hint = (f"; or start a new run from its best model with model_path: {best}"
            if best.exists() and best != path else "")
    return (f"{path} is damaged or not a checkpoint of this tool ({type(exc).__name__}: {reason}); "
            f"to start over, delete it (or the run directory {path.parent}, or use another name){hint}")


def short_reason(exc: BaseException) -> str:
    """The first sentence of a reader's error, at most 100 characters."""
    text = (str(exc).splitlines() or [""])[0].split(". ")[0]
    return text[:100] or type(exc).__name__


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def restoring(path: Path) -> Iterator[None]:
    """Restoring a checkpoint's parts into this run: a file from another architecture, optimizer or
    with a malformed RNG state is one line naming the file, not a traceback from load_state_dict."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UserError(f"{path} does not fit this run (another model, optimizer or a damaged entry; "
                        f"{type(exc).__name__}: {short_reason(exc)}); to start over, delete it or use "
                        "another run name") from None
