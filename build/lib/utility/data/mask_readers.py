"""Where an image's segmentation mask is: the ``seg_masks`` (regex rules) and ``seg_csv`` (a table)
target readers. Indexing stores these mask paths as each image's target; utility/data/segdata.py
reads them. Kept apart from the dataset so the index needs no dataset code."""
from __future__ import annotations

import re
from pathlib import Path

from utility.data.targets import ReaderContext, csv_row, register_target_reader
from utility.errors import UserError


@register_target_reader("seg_masks")
def mask_paths_by_rule(path: Path, ctx: ReaderContext) -> tuple[str, ...]:
    """Mask path(s) of an image from the layout's [regex, replacement] rules."""
    rules = ctx.task.layout.masks
    if not rules:
        raise UserError(f"task {ctx.task.name}: reader 'seg_masks' needs layout.masks: [[regex, replacement], ...]")
    out = []
    for pattern, repl in rules:
        s = path.as_posix()
        new, n = re.subn(pattern, repl, s, count=1)
        if n == 0:
            raise LookupError(f"{path}: layout.masks pattern {pattern!r} does not match this image path")
        out.append(new)
    return tuple(out)


@register_target_reader("seg_csv")
def mask_paths_from_csv(path: Path, ctx: ReaderContext) -> tuple[str, ...]:
    """Mask path(s) from a CSV of image,mask pairs (paths relative to the task root)."""
    sep = ctx.task.layout.label_separator
    return tuple(str(ctx.data_dir / m.strip()) for m in csv_row(path, ctx).split(sep) if m.strip())
