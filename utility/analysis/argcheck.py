"""Ranges of analysis options checked before any work: a value that makes no sense (``--k 0``,
``--temperature 0``, ``--bins 0``, ``--C 0``) is refused with one line, never turned into NaN
numbers or a traceback halfway through."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from utility.errors import UserError

MIN_TEMPERATURE = 0.02  # votes are exp(cosine / T) in float32: past 1/T = 88 they overflow to inf


def _each(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


# option -> (test, what is expected)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "k": (lambda v: v >= 1, "whole numbers >= 1"),
    "temperature": (lambda v: math.isfinite(v) and v >= MIN_TEMPERATURE, f"a number >= {MIN_TEMPERATURE}"),
    "C": (lambda v: math.isfinite(v) and v > 0, "positive finite numbers"),
    "bins": (lambda v: v >= 1, "a whole number >= 1"),
    "images": (lambda v: v >= 1, "a whole number >= 1"),
    "steps": (lambda v: v >= 2, "a whole number >= 2"),
    "start_lr": (lambda v: math.isfinite(v) and v > 0, "a positive finite number"),
    "end_lr": (lambda v: math.isfinite(v) and v > 0, "a positive finite number"),
    "recall": (lambda v: 0 < v <= 1, "numbers in (0, 1]"),
    "batch_size": (lambda v: v >= 1, "a whole number >= 1"),
    "num_workers": (lambda v: v >= 0, "a whole number >= 0"),
    "seed": (lambda v: 0 <= v <= 2**32 - 1, "a whole number in 0 .. 4294967295"),
}


def check_ranges(args: Any) -> None:
    """Refuse the first option outside its range (UserError naming the option and the range)."""
    for name, (ok, expected) in RULES.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        bad = [v for v in _each(value) if not ok(v)]
        if bad:
            raise UserError(f"--{name} {bad[0]} is out of range: expected {expected}")
    for name in ("out", "cache_dir"):
        value = getattr(args, name, None)
        if value and Path(value).exists() and not Path(value).is_dir():
            raise UserError(f"--{name} {value} is a file; expected a folder (new or existing)")
    start, end = getattr(args, "start_lr", None), getattr(args, "end_lr", None)
    if start is not None and end is not None and end <= start:
        raise UserError(f"--end_lr {end} must be larger than --start_lr {start}")
