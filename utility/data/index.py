"""Turn a TaskSpec + data root into indexed samples per split (paths and encoded targets).

Order of operations, each step seeded: base splits (dirs / lists / CSV rows) -> carve-outs
(``from: train, fraction: 0.1``) -> k-fold re-split of train+val (``folds``) -> size variant
(seeded stratified fraction of the training set).

The base splits are what the persistent index cache (utility/data/index_cache.py) keeps: listing
and targets; the seeded steps after it are cheap and run every time. A split holds its paths and
targets as compact numpy columns (utility/data/compact.py), not one Python object per sample.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

import utility.data.body_part  # noqa: F401  (registers the body_part reader)
from utility.config.tasks import TaskSpec
from utility.data.batch_targets import Labels, batch_reader_of, factorize
from utility.data.compact import MaskTargets, PathArray, as_targets, concat, join_root, take
from utility.data.encode import encode_multiclass, encode_multilabel
from utility.data.index_cache import IndexCache
from utility.data.labeltable import posix, read_table, rows_with
from utility.data.listing import Stamp, expand_volumes, find_images, stamp
from utility.data.splits import grouped_fraction, grouped_kfold
from utility.data.subjects import IdColumn, concat_ids, read_ids, relative_paths, volume_subjects
from utility.data.targets import _READERS, ReaderContext, get_target_reader, read_synsets
from utility.errors import UserError

__all__ = ["Split", "IndexedTask", "index_task", "find_images", "expand_volumes"]


class Split:
    """One split: file paths (a :class:`PathArray`), targets (int64 class indices, a uint8
    multi-hot matrix, or :class:`MaskTargets`; built from lists too) and, when the task names them,
    subjects and sessions (:class:`IdColumn`; None: each sample is its own subject). ``home``: the
    task folder, that subject ids without a rule (the path) are relative to."""

    def __init__(self, name: str, paths: Any = (), targets: Any = (), subjects: Optional[IdColumn] = None,
                 sessions: Optional[IdColumn] = None, home: str = "") -> None:
        self.name = name
        self.paths: PathArray = PathArray.from_paths(paths)
        self.targets: Any = as_targets(targets)
        self.subjects, self.sessions, self.home = subjects, sessions, home
        if len(self.targets) != len(self.paths):
            raise ValueError(f"split {name}: {len(self.paths)} paths but {len(self.targets)} targets")
        for col in (subjects, sessions):
            if col is not None and len(col) != len(self.paths):
                raise ValueError(f"split {name}: {len(self.paths)} paths but {len(col)} subject/session ids")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"Split({self.name!r}, {len(self)} samples)"

    def subset(self, idx: Sequence[int], name: str | None = None) -> "Split":
        return Split(name or self.name, take(self.paths, idx), take(self.targets, idx),
                     None if self.subjects is None else self.subjects.take(idx),
                     None if self.sessions is None else self.sessions.take(idx), self.home)

    def relative_paths(self) -> list[str]:
        """Each path relative to the task folder (``home``)."""
        return relative_paths(self.paths, self.home)

    def subject_ids(self) -> np.ndarray:
        """One subject id (str) per sample; without a subject rule the path relative to the task folder."""
        if self.subjects is not None:
            return self.subjects.ids()
        return np.asarray(self.relative_paths(), dtype=str) if len(self) else np.zeros(0, dtype=str)

    def group_codes(self) -> np.ndarray:
        """An integer per sample, equal for the samples of one subject (what grouped splits use)."""
        return self.subjects.codes.astype(np.int64) if self.subjects is not None else np.arange(len(self))

    def unique_subjects(self) -> np.ndarray:
        """The distinct subject ids, sorted (from the codes in use: no per-sample strings)."""
        if self.subjects is not None:
            return self.subjects.vocab[np.unique(self.subjects.codes)]
        return np.unique(self.subject_ids())

    def subject_count(self) -> int:
        return int(len(np.unique(self.subjects.codes))) if self.subjects is not None else len(self)

    def strata(self) -> np.ndarray:
        """Stratification key per sample: the class, or the label combination ('0101...')."""
        t = self.targets
        if isinstance(t, MaskTargets):
            return np.asarray(["1" * int(c) for c in t.counts()], dtype=object)
        if t.ndim == 1:
            return t
        width = t.shape[1]
        chars = np.ascontiguousarray((t != 0).astype(np.uint8) + ord("0"))
        return chars.view(f"S{width}").reshape(-1).astype(f"U{width}")

    @property
    def nbytes(self) -> int:
        extra = sum(c.nbytes for c in (self.subjects, self.sessions) if c is not None)
        return self.paths.nbytes + int(self.targets.nbytes) + extra


def join_splits(parts: Sequence[Split], name: str) -> Split:
    """The samples of ``parts`` one after the other, subjects included (k-fold's pool)."""
    lens = [len(p) for p in parts]
    subjects = [p.subjects for p in parts]
    if any(s is None for s in subjects) and any(s is not None for s in subjects):  # e.g. NIfTI slices in one only
        subjects = [IdColumn.from_strings(p.subject_ids()) if s is None else s for p, s in zip(parts, subjects)]
    sessions = [p.sessions for p in parts]
    sessions = sessions if all(s is not None for s in sessions) else [None] * len(parts)
    return Split(name, concat([p.paths for p in parts]), concat([p.targets for p in parts]),
                 concat_ids(subjects, lens), concat_ids(sessions, lens), parts[0].home)


@dataclass
class IndexedTask:
    task: TaskSpec
    data_dir: Path
    classes: list[str]
    splits: dict[str, Split]
    how: str = ""  # how the base index was obtained (built / from cache), for the start-up line
    subjects: str = ""  # where subjects come from (or that there is no rule), for the start-up output

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def index_task(task: TaskSpec, data_root: Path, seed: int, formats: Sequence[str] | None = None,
               folds: int | None = None, fold: int | None = None,
               train_fraction: float | None = None, slice_axis: int | None = None,
               cache: Optional[IndexCache] = None) -> IndexedTask:
    """Index every split of ``task``; raises UserError for missing folders, empty splits, bad labels."""
    data_dir = data_root / task.root
    if not data_dir.is_dir():
        raise UserError(f"task {task.name}: data folder not found: {data_dir} "
                        f"(data root {data_root}; set data_root to change it)")
    formats = list(formats or task.data_format)
    if task.type == "segmentation":
        import utility.data.mask_readers  # noqa: F401  (registers the mask readers)
    classes, splits, how = _base(task, data_dir, formats, slice_axis, cache)
    # carve-outs, in dependency order
    pending = {n: s for n, s in task.splits.items() if s.from_ is not None}
    while pending:
        ready = [n for n, s in pending.items() if s.from_ in splits]
        if not ready:
            raise UserError(f"task {task.name}: splits {sorted(pending)} are carved from each other")
        for n in ready:
            spec = pending.pop(n)
            src = splits[spec.from_]
            take_idx = grouped_fraction(src.strata(), src.group_codes(), spec.fraction, seed)
            keep = np.ones(len(src), bool)
            keep[take_idx] = False
            splits[n] = src.subset(take_idx, n)
            splits[spec.from_] = src.subset(np.flatnonzero(keep))
    if folds:
        pool = join_splits([splits["train"], splits["val"]], "pool")
        tr, va = grouped_kfold(pool.strata(), pool.group_codes(), folds, fold or 0, seed)
        splits["train"], splits["val"] = pool.subset(tr, "train"), pool.subset(va, "val")
    frac = train_fraction if train_fraction is not None else task.train_fraction
    if frac is not None and frac < 1:
        tr = splits["train"]
        splits["train"] = tr.subset(grouped_fraction(tr.strata(), tr.group_codes(), frac, seed))
    for name, s in splits.items():
        if len(s) == 0:
            raise UserError(f"task {task.name}: split '{name}' is empty (no {', '.join(formats)} files; "
                            f"see {task.source_file})")
    return IndexedTask(task, data_dir, classes, splits, how, _subject_note(task))


# ----------------------------------------------------------------------------- base splits (cached)

def _cacheable(reader_name: str) -> bool:
    """Built-in readers depend only on paths and the files the index stamps; a user's reader may
    read anything, so its targets are not cached."""
    fn = _READERS.get(reader_name)
    return fn is not None and fn.__module__ in ("utility.data.targets", "utility.data.mask_readers")


def _subject_note(task: TaskSpec) -> str:
    if task.subject is None:
        return "subjects: none defined (each sample its own subject; add subject: to the task to group)"
    r = task.subject
    how = next(f"{k} {getattr(r, k)!r}" for k in ("column", "regex", "dicom", "reader") if getattr(r, k) is not None)
    return f"subjects by {how}"


def _base(task: TaskSpec, data_dir: Path, formats: list[str], slice_axis: Optional[int],
          cache: Optional[IndexCache]) -> tuple[list[str], dict[str, Split], str]:
    subject_ok = task.subject is None or (task.subject.builtin and (task.subject.session is None
                                                                    or task.subject.session.builtin))
    if cache is None or not _cacheable(task.layout.reader) or not subject_ok:
        classes, splits, _ = _build_base(task, data_dir, formats, slice_axis)
        why = "" if cache is None else (f" (not cached: reader '{task.layout.reader}' is not built in)"
                                        if subject_ok else " (not cached: the subject rule reads files)")
        return classes, splits, "built" + why
    key = {"data_dir": str(data_dir.resolve()), "formats": formats, "slice_axis": slice_axis,
           "task": task.model_dump(mode="json", include={"type", "root", "data_format", "classes", "layout",
                                                         "splits", "subject"}, by_alias=True)}

    def build():
        classes, splits, stamps = _build_base(task, data_dir, formats, slice_axis)
        arrays, info = _pack(splits)
        info["classes"] = classes
        return arrays, info, stamps

    arrays, info = cache.get_or_build("task", key, build)
    return info["classes"], _unpack(arrays, info, str(data_dir)), cache.last


def _pack(splits: dict[str, Split]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {"splits": {}}
    for name, s in splits.items():
        arrays[f"{name}.blob"], arrays[f"{name}.offsets"] = s.paths.blob, s.paths.offsets
        entry = {"root": s.paths.root, "masks": isinstance(s.targets, MaskTargets)}
        if isinstance(s.targets, MaskTargets):
            arrays[f"{name}.mblob"], arrays[f"{name}.moffsets"] = s.targets.flat.blob, s.targets.flat.offsets
            arrays[f"{name}.mgroups"] = s.targets.groups
            entry["mroot"] = s.targets.flat.root
        else:
            arrays[f"{name}.targets"] = s.targets
        for tag, col in (("subj", s.subjects), ("sess", s.sessions)):
            if col is not None:
                arrays[f"{name}.{tag}codes"], arrays[f"{name}.{tag}vocab"] = col.codes, col.vocab
        info["splits"][name] = entry
    return arrays, info


def _unpack(arrays: dict[str, np.ndarray], info: dict[str, Any], home: str) -> dict[str, Split]:
    out = {}
    for name, e in info["splits"].items():
        paths = PathArray(e["root"], arrays[f"{name}.blob"], arrays[f"{name}.offsets"])
        if e["masks"]:
            targets: Any = MaskTargets(PathArray(e["mroot"], arrays[f"{name}.mblob"], arrays[f"{name}.moffsets"]),
                                       arrays[f"{name}.mgroups"])
        else:
            targets = arrays[f"{name}.targets"]
        ids = [IdColumn(arrays[f"{name}.{t}codes"], arrays[f"{name}.{t}vocab"]) if f"{name}.{t}codes" in arrays
               else None for t in ("subj", "sess")]
        out[name] = Split(name, paths, targets, ids[0], ids[1], home)
    return out


def _build_base(task: TaskSpec, data_dir: Path, formats: list[str], slice_axis: Optional[int]
                ) -> tuple[list[str], dict[str, Split], list[Stamp]]:
    stamps: list[Stamp] = []
    for f in (task.layout.labels_file, task.layout.synset_file, task.layout.solution_file):
        if f is not None:
            stamps.append(stamp(str(data_dir / f)))
    classes = _class_list(task, data_dir)
    reader = get_target_reader(task.layout.reader, task.source_file)
    batch = batch_reader_of(task.layout.reader)
    raw: dict[str, tuple[PathArray, Any]] = {}
    split_dirs: dict[str, Path] = {}
    for name, spec in task.splits.items():
        if spec.from_ is not None:
            continue
        ctx_dir, files = _split_files(task, data_dir, name, spec, slice_axis, formats, stamps)
        if spec.dir is None:
            files = expand_volumes(files, slice_axis, stamps)
        if task.layout.image_channels:  # multi-file images: index the first channel's files only
            first = task.layout.image_channels[0]
            files = take(files, [i for i, r in enumerate(files.rel_strings()) if r.endswith(first)])
        ctx = ReaderContext(task=task, data_dir=data_dir, split_dir=ctx_dir)
        split_dirs[name] = ctx_dir
        try:
            labels = batch(files, ctx) if batch is not None and task.type != "segmentation" else None
            if labels is None:
                labels = [reader(f, ctx) for f in files]
        except LookupError as exc:
            raise UserError(f"task {task.name}, split {name}: {exc}") from None
        raw[name] = (files, labels)
    if classes is None:  # folders layout without a class list: sorted class folders of train
        lab = raw.get("train", (None, []))[1]
        values = lab.values if isinstance(lab, Labels) else lab
        classes = sorted({str(t) for t in values})
    splits = {name: _with_subjects(task, data_dir, split_dirs[name], _encode(task, name, files, labels, classes))
              for name, (files, labels) in raw.items()}
    return classes, splits, stamps


def _with_subjects(task: TaskSpec, data_dir: Path, split_dir: Path, split: Split) -> Split:
    """``split`` with its subjects (and sessions) by the task's rule; without a rule NIfTI slices of
    one volume are one subject and every other sample its own (nothing stored)."""
    rule = task.subject
    if rule is None:
        subjects, sessions = volume_subjects(relative_paths(split.paths, str(data_dir))), None
    else:
        what = f"split {split.name}"
        subjects = read_ids(rule, task, data_dir, split_dir, split.paths, what)
        sessions = None if rule.session is None else read_ids(rule.session, task, data_dir, split_dir,
                                                               split.paths, what + " (session)")
    return Split(split.name, split.paths, split.targets, subjects, sessions, str(data_dir))


def _class_list(task: TaskSpec, data_dir: Path) -> list[str] | None:
    if task.layout.synset_file:
        wnids = read_synsets(data_dir / task.layout.synset_file)
        return wnids[:: task.layout.class_stride]
    if task.classes is not None:
        return list(task.classes)[:: task.layout.class_stride]
    return None


def _under_data_dir(data_dir: Path, names: Sequence[str]) -> list[str]:
    """``str(data_dir / name)`` of each name."""
    root = str(data_dir)
    out = []
    for s in posix(names):
        out.append(s if s.startswith("/") else (root if s == "." else join_root(root, s)))
    return out


def _existing(task: TaskSpec, files: list[str], source: Path, how: str, stamps: list[Stamp]) -> PathArray:
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise UserError(f"task {task.name}: {len(missing)} file(s) {how} in {source} do not exist, "
                        f"e.g. {missing[0]}")
    stamps.append(stamp(str(source)))
    stamps.extend(stamp(d) for d in sorted({f.rpartition("/")[0] or "." for f in files}))
    return PathArray.from_strings(files)


def _split_files(task: TaskSpec, data_dir: Path, name: str, spec, slice_axis: Optional[int],
                 formats: Sequence[str], stamps: list[Stamp]) -> tuple[Path, PathArray]:
    if spec.dir is not None:
        d = data_dir / spec.dir
        if not d.is_dir():
            raise UserError(f"task {task.name}: folder of split '{name}' not found: {d}")
        return d, find_images(d, formats, slice_axis, stamps)
    if spec.list is not None:
        lst = data_dir / spec.list
        if not lst.is_file():
            raise UserError(f"task {task.name}: list file of split '{name}' not found: {lst}")
        lines = [line.strip() for line in lst.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        return data_dir, _existing(task, _under_data_dir(data_dir, lines), lst, "listed", stamps)
    # csv_rows: every row of the labels file (optionally filtered by a split column)
    if task.layout.labels_file is None:
        raise UserError(f"task {task.name}: split '{name}' uses csv_rows but layout.labels_file is unset")
    lf = data_dir / task.layout.labels_file
    table = read_table(lf, task.layout.model_dump_json())
    if spec.split_column is not None:
        keys = rows_with(lf, task.layout, spec.split_column, spec.split_value)
    else:
        keys = table.keys.tolist()
    files = _under_data_dir(data_dir, keys)
    table.check_unique(keys, files)
    return data_dir, _existing(task, files, lf, "named", stamps)


def _encode(task: TaskSpec, split: str, files: PathArray, labels: Any, classes: list[str]) -> Split:
    """Per-file reader results or :class:`Labels` -> a Split with encoded targets."""
    if task.type == "segmentation":  # mask path(s), read per sample by the dataset
        return Split(split, files, MaskTargets.from_tuples(labels))
    lab = labels if isinstance(labels, Labels) else factorize(labels)
    if task.type == "multilabel":
        return Split(split, files, encode_multilabel(files, lab, classes))
    files, targets = encode_multiclass(files, lab, classes, task.layout.class_stride > 1)
    return Split(split, files, targets)
