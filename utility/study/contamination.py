"""Does a pretraining source's data contain a finetuning task's evaluation data?

An encoder pretrained on a task's test images (or on other images of its test patients) has seen
what it is scored on; comparisons with other sources are then not fair. For every source the study
pretrains (``config``) and every task: the source's images (``dataset_base_dir``) against the task's
test and val splits (as the task's first repeat draws them), by

- the same file (real path),
- the same content (size, then a BLAKE2 hash of the files whose sizes meet),
- the same subject id (the task's ``subject.regex`` searched in the pretraining paths; column, DICOM
  and reader rules cannot be applied to foreign files and are skipped).

Test overlap: ``contaminated`` (the study is refused unless ``allow_contamination: true``); val only:
``val overlap`` (flagged: best-checkpoint selection and the kNN monitor see pretraining images). Encoder
files given as sources: ``unknown`` (their data are not known). Written to ``contamination.csv`` in the
study folder; status, summary.csv and the report show it.
"""
from __future__ import annotations

import csv
import html
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from utility.config.loader import validate
from utility.config.schemas import FTE_DEPRECATED, FTEConfig
from utility.config.tasks import load_task
from utility.data.compact import PathArray
from utility.data.index import Split, index_task
from utility.data.index_cache import IndexCache, cached_listing
from utility.data.leakage import file_digest
from utility.data.subjects import VOLUME_SLICE
from utility.errors import UserError
from utility.paths import DEFAULT_DATA_ROOT, resolve_user_path
from utility.study.plan import Plan

FIELDS = ["source", "task", "status", "test_files", "test_subjects", "val_files", "val_subjects", "note"]


@dataclass
class Finding:
    source: str
    task: str
    status: str          # contaminated, val overlap, clean, unknown
    test_files: int = 0  # test files in the source's data (same path or same content)
    test_subjects: int = 0
    val_files: int = 0
    val_subjects: int = 0
    note: str = ""


def _real(paths: PathArray) -> np.ndarray:
    root = os.path.realpath(paths.root) if paths.root not in ("", ".") else ""
    rels = [VOLUME_SLICE.sub("", r) for r in paths.rel_strings()]
    return np.unique(np.asarray([os.path.join(root, r) if root else os.path.realpath(r) for r in rels], dtype=str))


def _digests(files: np.ndarray, sizes: dict[str, int], wanted: set[int]) -> set[str]:
    out = set()
    for f in files.tolist():
        if sizes.get(f, -1) in wanted:
            try:
                out.add(file_digest(f))
            except OSError:
                continue
    return out


def _sizes(files: np.ndarray) -> dict[str, int]:
    out = {}
    for f in files.tolist():
        try:
            out[f] = os.stat(f).st_size
        except OSError:
            out[f] = -1
    return out


def overlap(pre_files: np.ndarray, split: Split, regex: Optional[str]) -> tuple[int, int]:
    """(files of ``split`` among ``pre_files`` by path or content, subjects of ``split`` found in them)."""
    files = _real(split.paths)
    same = set(np.intersect1d(files, pre_files).tolist())
    rest = np.setdiff1d(files, pre_files)
    s_rest, s_pre = _sizes(rest), _sizes(pre_files)
    common = set(s_rest.values()) & set(s_pre.values()) - {-1}
    if common:
        pre_hashes = _digests(pre_files, s_pre, common)
        same |= {f for f in rest.tolist() if s_rest[f] in common and file_digest(f) in pre_hashes}
    subjects = 0
    if regex is not None:
        rx = re.compile(regex if re.compile(regex).groups else f"({regex})")
        found = {m.group(1) for m in map(rx.search, pre_files.tolist()) if m}
        subjects = len(set(np.unique(split.subject_ids()).tolist()) & found)
    return len(same), subjects


def check(plan: Plan) -> list[Finding]:
    """One finding per (pretraining source, task)."""
    cache = IndexCache(plan.output_root / "index_cache")
    out: list[Finding] = []
    for label, src in plan.spec.pretrain.items():
        if src is None:
            continue
        job = next((j for j in plan.pretrain if j.label == label), None)
        if job is None:
            out += [Finding(label, t, "unknown", note="an encoder file: its data are not known") for t in plan.spec.tasks]
            continue
        formats = job.config.get("data_format") or [".png", ".jpg", ".jpeg", ".npy"]
        formats = [formats] if isinstance(formats, str) else list(formats)
        dirs = job.config.get("dataset_base_dir") or []
        dirs = [dirs] if isinstance(dirs, str) else list(dirs)
        folders = [resolve_user_path(d) for d in dirs]
        if not all(f.is_dir() for f in folders):
            out += [Finding(label, t, "unknown", note="pretraining folder not found") for t in plan.spec.tasks]
            continue
        pre = np.unique(np.concatenate([_real(cached_listing(f, formats, job.config.get("slice_axis"), cache))
                                        for f in folders]))
        for task in plan.spec.tasks:
            out.append(_one(plan, label, task, pre, cache))
    return out


def _one(plan: Plan, label: str, task_name: str, pre: np.ndarray, cache: IndexCache) -> Finding:
    run = next(r for r in plan.runs if r.task == task_name)
    cfg = validate(FTEConfig, dict(run.config), "the study's finetune config", FTE_DEPRECATED)
    root = resolve_user_path(cfg.data_root) if cfg.data_root else DEFAULT_DATA_ROOT
    task = load_task(task_name)
    try:
        idx = index_task(task, root, cfg.seed, cfg.data_format, cfg.folds, cfg.fold, cfg.train_fraction,
                         cfg.slice_axis, cache)
    except UserError as exc:
        return Finding(label, task_name, "unknown", note=f"task data not indexed: {exc}")
    regex = task.subject.regex if task.subject is not None else None
    tf, ts = overlap(pre, idx.splits["test"], regex)
    vf, vs = overlap(pre, idx.splits["val"], regex)
    status = "contaminated" if tf or ts else ("val overlap" if vf or vs else "clean")
    return Finding(label, task_name, status, tf, ts, vf, vs)


def describe(f: Finding) -> str:
    if f.status in ("contaminated", "val overlap"):
        subjects = (f", {f.test_subjects} test and {f.val_subjects} val subjects" if f.test_subjects or f.val_subjects
                    else "")
        return (f"{f.source} on {f.task}: {f.status} (its pretraining data hold {f.test_files} test and "
                f"{f.val_files} val files of the task{subjects})")
    return f"{f.source} on {f.task}: {f.status}" + (f" ({f.note})" if f.note else "")


def write(path: Path, findings: list[Finding]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(asdict(f) for f in findings)


def read(path: Path) -> list[Finding]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [Finding(r["source"], r["task"], r["status"], *(int(r[k] or 0) for k in FIELDS[3:7]), r["note"])
                for r in csv.DictReader(fh)]


def refuse_or_flag(plan: Plan, allowed: bool) -> list[Finding]:
    """Check, write contamination.csv, print what is flagged; refuse a contaminated source unless allowed."""
    findings = check(plan)
    bad = [f for f in findings if f.status == "contaminated"]
    if bad and not allowed:
        raise UserError(f"study {plan.spec.name}: {describe(bad[0])}"
                        + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                        + "; set allow_contamination: true in the study to run it anyway (nothing was queued)")
    write(plan.study_dir / "contamination.csv", findings)
    for f in findings:
        if f.status in ("contaminated", "val overlap"):
            print(f"note: {describe(f)}")
    return findings


def findings_of(plan: Plan) -> list[Finding]:
    """contamination.csv of the study, checked anew when it is missing (a study planned before)."""
    path = plan.study_dir / "contamination.csv"
    if not path.is_file():
        write(path, check(plan))
    return read(path)


def label_of(findings: list[Finding], source: str, task: str) -> str:
    return next((f.status for f in findings if f.source == source and f.task == task), "")


def html_section(findings: list[Finding]) -> str:
    flagged = [f for f in findings if f.status in ("contaminated", "val overlap", "unknown")]
    if not findings:
        return ""
    if not flagged:
        return "<h2>Data overlap</h2><p>No pretraining source holds the tasks' test or val data.</p>"
    items = "".join(f"<li><b>{html.escape(f.status)}</b>: {html.escape(describe(f))}</li>" for f in flagged)
    return ("<h2>Data overlap</h2><p class=note>contaminated: the source pretrained on the task's test files or "
            "test subjects (its test numbers are not comparable); val overlap: on val data (model selection "
            f"and kNN monitors are biased).</p><ul>{items}</ul>")
