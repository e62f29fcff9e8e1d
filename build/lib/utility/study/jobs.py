"""The study's queue lines: written (appended, never rewritten), read back, reopened.

Every line carries ``id=<hash of the run name>``; finetuning lines of a pretrained source carry
``after=<id of its pretraining>``. Re-planning appends only the lines whose id is not in the file
yet, so a running or hand-edited jobs file keeps every byte it has. ``reopen`` sets a failed line
(or a completed one whose run output is gone) back to ``open`` through the queue's own
compare-and-swap writer, so it is safe while a queue runs on the same file.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from utility.queue.jobsfile import Line, parse_text
from utility.queue.safewrite import update_many
from utility.queue.state import StateLog
from utility.study.plan import Plan, portable

FINETUNE_ENTRY = "pkgs/FTE/finetune.py"
PRETRAIN_ENTRY = "pkgs/SimCLR/main.py"


@dataclass
class JobInfo:
    line: Line
    reason: str = ""          # why the queue ended it (failed lines)
    log: Optional[str] = None  # the queue's log of its last attempt


def job_lines(plan: Plan) -> list[str]:
    """Queue lines: pretraining first, each finetuning run waits for its source's pretraining."""
    gpus = plan.spec.gpus_per_job
    lines = []
    for j in plan.pretrain:
        entry = "pkgs/SSL/pretrain.py" if "method" in j.config else PRETRAIN_ENTRY
        lines.append(f"python {entry} -c {_q(j.config_path)},open,gpus={gpus};id={j.job_id}")
    for r in plan.runs:
        opts = f"gpus={gpus};id={r.job_id}" + (f";after={r.after}" if r.after else "")
        lines.append(f"python {FINETUNE_ENTRY} -c {_q(r.config_path)},open,{opts}")
    return lines


def _q(path: Path) -> str:
    """Paths inside the repository relative to it (readable lines), others absolute; shell-quoted."""
    return shlex.quote(portable(path))


_ID = re.compile(r"(?:^|[,;])id=([0-9a-f]+)")


def append_jobs(plan: Plan) -> int:
    """Add the lines whose job id is not in the jobs file yet (appends only: an edited or running
    file keeps every byte it has). Returns how many lines were added."""
    path = plan.jobs_file
    path.parent.mkdir(parents=True, exist_ok=True)
    have = set(_ID.findall(path.read_text())) if path.exists() else set()
    new = [ln for ln in job_lines(plan) if _ID.search(ln) and _ID.search(ln).group(1) not in have]  # type: ignore[union-attr]
    if not new:
        return 0
    text = ""
    if not path.exists() or path.stat().st_size == 0:
        text = f"## study {plan.spec.name}: written by pkgs/Study/study.py (new lines are appended on re-plans)\n"
    elif not path.read_bytes().endswith(b"\n"):
        text = "\n"
    text += "\n".join(new) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return len(new)


def job_table(plan: Plan) -> dict[str, JobInfo]:
    """job id -> its line in the jobs file and what the queue recorded about its last attempt."""
    path = plan.jobs_file
    if not path.is_file():
        return {}
    lines = parse_text(path.read_text(errors="replace"), str(path), strict=False)
    latest = StateLog(str(plan.queue_log_dir), str(path)).latest()
    out: dict[str, JobInfo] = {}
    for ln in lines:
        if ln.kind == "job" and ln.options.id:
            rec = latest.get(ln.key, {})
            out[ln.options.id] = JobInfo(ln, str(rec.get("reason") or ""), rec.get("log"))
    return out


def reopen(plan: Plan, ids: list[str]) -> list[int]:
    """Set these jobs back to open when they are failed or completed (compare-and-swap: a status
    the queue or the user changed meanwhile wins). Returns the line numbers reopened."""
    table = job_table(plan)
    keys = [table[i].line.key for i in ids if i in table and table[i].line.status in ("failed", "completed")]
    if not keys:
        return []
    results = update_many(str(plan.jobs_file), [(k, "open", ("failed", "completed")) for k in keys])
    return [ln.lineno for changed, ln in results if changed and ln is not None]
