"""Turn a TaskSpec + data root into indexed samples per split (paths and encoded targets).

Order of operations, each step seeded: base splits (dirs / lists / CSV rows) -> carve-outs
(``from: train, fraction: 0.1``) -> k-fold re-split of train+val (``folds``) -> size variant
(seeded stratified fraction of the training set).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from utility.data.io import nifti_slices
from utility.data.splits import kfold_indices, stratified_fraction
import utility.data.body_part  # noqa: F401  (registers the body_part reader)
from utility.data.targets import (ReaderContext, get_target_reader, key_for, read_label_table,
                                  read_synsets)
from utility.errors import UserError
from utility.config.tasks import TaskSpec


@dataclass
class Split:
    """One split: file paths and encoded targets (class index, or multi-hot float vector)."""

    name: str
    paths: list[Path] = field(default_factory=list)
    targets: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int], name: str | None = None) -> "Split":
        return Split(name or self.name, [self.paths[i] for i in idx], [self.targets[i] for i in idx])

    def strata(self) -> list[str]:
        """Stratification key per sample: the class, or the label combination."""
        return [t if isinstance(t, (int, np.integer)) else "".join("1" if v else "0" for v in t)
                for t in self.targets]


@dataclass
class IndexedTask:
    task: TaskSpec
    data_dir: Path
    classes: list[str]
    splits: dict[str, Split]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def find_images(folder: Path, formats: Sequence[str], slice_axis: int | None = None) -> list[Path]:
    """All files under ``folder`` (recursive) whose extension is one of ``formats``, sorted; with
    ``slice_axis`` a NIfTI volume becomes one entry per slice (``file.nii.gz::<k>``)."""
    fmts = {f.lower() for f in formats}
    double = {f for f in fmts if f.count(".") > 1}  # .nii.gz
    out = []
    for p in folder.rglob("*"):
        name = p.name.lower()
        if p.is_file() and (p.suffix.lower() in fmts or any(name.endswith(d) for d in double)):
            out.append(p)
    return expand_volumes(sorted(out), slice_axis)


def expand_volumes(files: list[Path], slice_axis: int | None) -> list[Path]:
    if slice_axis is None:
        return files
    out: list[Path] = []
    for f in files:
        if f.name.lower().endswith((".nii", ".nii.gz")):
            try:
                out.extend(nifti_slices(f, slice_axis))
            except Exception as exc:  # unreadable header: keep the file, the loader reports it
                out.append(f)
                print(f"warning: cannot read NIfTI header of {f}: {exc}")
        else:
            out.append(f)
    return out


def index_task(task: TaskSpec, data_root: Path, seed: int, formats: Sequence[str] | None = None,
               folds: int | None = None, fold: int | None = None,
               train_fraction: float | None = None, slice_axis: int | None = None) -> IndexedTask:
    """Index every split of ``task``; raises UserError for missing folders, empty splits, bad labels."""
    data_dir = data_root / task.root
    if not data_dir.is_dir():
        raise UserError(f"task {task.name}: data folder not found: {data_dir} "
                        f"(data root {data_root}; set data_root to change it)")
    formats = list(formats or task.data_format)
    classes = _class_list(task, data_dir, formats)
    if task.type == "segmentation":
        import utility.data.mask_readers  # noqa: F401  (registers the mask readers)
    reader = get_target_reader(task.layout.reader, task.source_file)
    raw: dict[str, tuple[list[Path], list[Any]]] = {}
    for name, spec in task.splits.items():
        if spec.from_ is not None:
            continue
        ctx_dir, files = _split_files(task, data_dir, name, spec, formats, slice_axis)
        files = expand_volumes(files, slice_axis) if spec.dir is None else files
        if task.layout.image_channels:  # multi-file images: index the first channel's files only
            files = [f for f in files if f.name.endswith(task.layout.image_channels[0])]
        ctx = ReaderContext(task=task, data_dir=data_dir, split_dir=ctx_dir)
        targets = []
        for f in files:
            try:
                targets.append(reader(f, ctx))
            except LookupError as exc:
                raise UserError(f"task {task.name}, split {name}: {exc}") from None
        raw[name] = (files, targets)
    if classes is None:  # folders layout without a class list: sorted class folders of train
        classes = sorted({str(t) for t in raw.get("train", ([], []))[1]})
    splits = {name: _encode(task, name, files, targets, classes) for name, (files, targets) in raw.items()}
    # carve-outs, in dependency order
    pending = {n: s for n, s in task.splits.items() if s.from_ is not None}
    while pending:
        ready = [n for n, s in pending.items() if s.from_ in splits]
        if not ready:
            raise UserError(f"task {task.name}: splits {sorted(pending)} are carved from each other")
        for n in ready:
            spec = pending.pop(n)
            src = splits[spec.from_]
            take = stratified_fraction(src.strata(), spec.fraction, seed)
            keep = sorted(set(range(len(src))) - set(take))
            splits[n] = src.subset(take, n)
            splits[spec.from_] = src.subset(keep)
    if folds:
        pool = Split("pool", splits["train"].paths + splits["val"].paths,
                     splits["train"].targets + splits["val"].targets)
        tr, va = kfold_indices(pool.strata(), folds, fold or 0, seed)
        splits["train"], splits["val"] = pool.subset(tr, "train"), pool.subset(va, "val")
    frac = train_fraction if train_fraction is not None else task.train_fraction
    if frac is not None and frac < 1:
        splits["train"] = splits["train"].subset(stratified_fraction(splits["train"].strata(), frac, seed))
    for name, s in splits.items():
        if len(s) == 0:
            raise UserError(f"task {task.name}: split '{name}' is empty (no {', '.join(formats)} files; "
                            f"see {task.source_file})")
    return IndexedTask(task, data_dir, classes, splits)


def _class_list(task: TaskSpec, data_dir: Path, formats: Sequence[str]) -> list[str] | None:
    if task.layout.synset_file:
        wnids = read_synsets(data_dir / task.layout.synset_file)
        return wnids[:: task.layout.class_stride]
    if task.classes is not None:
        return list(task.classes)[:: task.layout.class_stride]
    return None


def _split_files(task: TaskSpec, data_dir: Path, name: str, spec, formats,
                 slice_axis: int | None = None) -> tuple[Path, list[Path]]:
    if spec.dir is not None:
        d = data_dir / spec.dir
        if not d.is_dir():
            raise UserError(f"task {task.name}: folder of split '{name}' not found: {d}")
        return d, find_images(d, formats, slice_axis)
    if spec.list is not None:
        lst = data_dir / spec.list
        if not lst.is_file():
            raise UserError(f"task {task.name}: list file of split '{name}' not found: {lst}")
        files = [data_dir / line.strip() for line in lst.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise UserError(f"task {task.name}: {len(missing)} file(s) listed in {lst} do not exist, "
                            f"e.g. {missing[0]}")
        return data_dir, files
    # csv_rows: every row of the labels file (optionally filtered by a split column)
    if task.layout.labels_file is None:
        raise UserError(f"task {task.name}: split '{name}' uses csv_rows but layout.labels_file is unset")
    lf = data_dir / task.layout.labels_file
    table = read_label_table(lf, task.layout.model_dump_json())
    keys = list(table)
    if spec.split_column is not None:
        keys = _rows_with(lf, task, spec.split_column, spec.split_value)
    files = [data_dir / k for k in keys]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise UserError(f"task {task.name}: {len(missing)} file(s) named in {lf} do not exist, "
                        f"e.g. {missing[0]}")
    return data_dir, files


def _rows_with(lf: Path, task: TaskSpec, column: str, value: str | None) -> list[str]:
    delim = "\t" if lf.suffix.lower() in (".tsv", ".tab") else (task.layout.delimiter or ",")
    with lf.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=delim))
    if rows and column not in rows[0]:
        raise UserError(f"labels file {lf} has no column '{column}'")
    pc = task.layout.path_column
    pcol = pc if isinstance(pc, str) else list(rows[0])[pc]
    return [key_for(Path(r[pcol]), task.layout) for r in rows if r[column] == value]


def _encode(task: TaskSpec, split: str, files: list[Path], targets: list[Any], classes: list[str]) -> Split:
    """Class names / indices -> index (multiclass) or multi-hot vector (multilabel).

    With a class subset (ImageNet-100, class_stride) samples of other classes are dropped; otherwise
    an unknown label is a user error naming the file.
    """
    lookup = {c: i for i, c in enumerate(classes)}
    subset = task.layout.class_stride > 1
    out = Split(split)
    for f, t in zip(files, targets):
        if task.type == "segmentation":  # mask path(s), read per sample by the dataset
            out.paths.append(f)
            out.targets.append(t)
        elif task.type == "multilabel":
            labels = t if isinstance(t, (list, tuple)) else [t]
            vec = np.zeros(len(classes), dtype=np.float32)
            for lab in labels:
                i = _index_of(lab, lookup, len(classes))
                if i is None:
                    raise UserError(f"{f}: label {lab!r} is not one of the task's {len(classes)} labels "
                                    f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})")
                vec[i] = 1.0
            out.paths.append(f)
            out.targets.append(vec)
        else:
            i = _index_of(t, lookup, len(classes))
            if i is None:
                if subset:
                    continue
                raise UserError(f"{f}: label {t!r} is outside the task's classes "
                                f"({len(classes)} classes: {', '.join(classes[:6])}"
                                f"{', ...' if len(classes) > 6 else ''})")
            out.paths.append(f)
            out.targets.append(i)
    return out


def _index_of(label: Any, lookup: dict[str, int], n: int) -> int | None:
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label) if 0 <= label < n else None
    s = str(label).strip()
    if s in lookup:
        return lookup[s]
    names_are_numbers = any(k.lstrip("-").isdigit() for k in lookup)
    if s.lstrip("-").isdigit() and not names_are_numbers:  # an index into the class list
        v = int(s)
        return v if 0 <= v < n else None
    return None
