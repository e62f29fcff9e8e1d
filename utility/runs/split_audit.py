"""Before a supervised run trains: its splits' sizes in samples and subjects (start-up output,
``split_sizes.csv``), the membership (``splits.csv.gz``), and the leakage checks of
utility/data/leakage.py (a subject in two splits refuses the run unless ``allow_subject_overlap``;
identical files across splits are reported). Findings go to ``leakage.txt`` in the run directory."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from utility.config.schemas import FTEConfig
from utility.data.index import IndexedTask
from utility.data.leakage import (duplicate_files, overlap_message, sizes_text, split_sizes, subject_overlap,
                                  want_duplicates, write_membership)
from utility.errors import UserError
from utility.runs.startup import Startup
from utility.runs.supervised_data import check_trainable
from utility.distributed import is_main

AUDIT_KEYS = frozenset({"allow_subject_overlap", "check_duplicates"})  # may change when a run resumes
_SAID: set[str] = set()  # tasks whose "no subject rule" note was printed (once per process)


def audit_splits(cfg: FTEConfig, indexed: IndexedTask, run_dir: Path, startup: Startup) -> list[str]:
    """Check and record the splits; returns the findings (also in leakage.txt). Raises UserError for
    subjects shared between splits unless the config allows them; a split training cannot use, always."""
    check_trainable(indexed.task, indexed)
    t = time.perf_counter()
    splits = indexed.splits
    findings: list[str] = []
    count, examples = subject_overlap(splits)
    if count:
        msg = overlap_message(count, examples)
        if not cfg.allow_subject_overlap:
            raise UserError(f"task {indexed.task.name}: {msg}; fix the split folders/lists or set "
                            "allow_subject_overlap: true to run anyway (nothing was trained)")
        findings.append(f"warning: {msg} (allow_subject_overlap: true)")
    if want_duplicates(cfg.check_duplicates, splits):
        dups = duplicate_files(splits)
        if dups:
            findings.append(f"note: {len(dups)} group(s) of identical image files (content hash) lie in more "
                            f"than one split, e.g. {' = '.join(dups[0])}")
            findings += [f"  identical: {' = '.join(g)}" for g in dups]
    sizes = split_sizes(splits)
    if not is_main():
        return findings
    for line in findings[:2]:
        print(line, file=sys.stderr)
    if indexed.task.subject is None and indexed.task.name not in _SAID:
        _SAID.add(indexed.task.name)
        print(f"note: task {indexed.task.name} names no subject rule: each sample is its own subject "
              "(docs/subjects.md)")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_membership(run_dir / "splits.csv.gz", splits)
    with (run_dir / "split_sizes.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "samples", "subjects"])
        w.writerows([k, n, m] for k, (n, m) in sizes.items())
    leak = run_dir / "leakage.txt"
    if findings:
        leak.write_text("\n".join(findings) + "\n")
    else:
        leak.unlink(missing_ok=True)
    startup.add("splits", time.perf_counter() - t, f"{sizes_text(sizes)}; {indexed.subjects}")
    return findings
