"""results.csv: one row per planned run, from whatever its run directory holds (partial studies too).

Time to convergence (``convergence_epoch``): the validation metric m_e of epoch e is smoothed with a
trailing mean over up to 3 epochs, s_e = mean(m_{e-2..e}); with s_E the last value, the run has
converged at the first epoch e after which every s_e' (e' >= e) is within 0.5 % of s_E
(|s_e' - s_E| <= 0.005 * |s_E|, or <= 0.005 when s_E = 0). Empty when the metric is never finite.
A run whose only such epoch is its last (of several) was still changing when it ended: ``converged`` is
false for it (results.csv) and the report counts it as not converged instead of converged there.
"""
from __future__ import annotations

import csv
import hashlib
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from utility.paths import REPO_ROOT
from utility.study.jobs import JobInfo, job_table
from utility.study.plan import FinetuneRun, Plan, PretrainJob

CONVERGENCE_WINDOW = 3
CONVERGENCE_TOLERANCE = 0.005


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def convergence_epoch(values: list[float], window: int = CONVERGENCE_WINDOW,
                      tol: float = CONVERGENCE_TOLERANCE) -> Optional[int]:
    """The 1-based epoch from which the smoothed metric stays within ``tol`` of its final value."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    smooth = []
    for e in range(len(values)):
        w = [v for v in values[max(0, e - window + 1): e + 1] if not math.isnan(v)]
        smooth.append(sum(w) / len(w) if w else float("nan"))
    final = smooth[-1]
    bound = tol * abs(final) if final != 0 else tol
    epoch = len(values)
    for e in range(len(values) - 1, -1, -1):
        if math.isnan(smooth[e]) or abs(smooth[e] - final) > bound:
            break
        epoch = e + 1
    return epoch


def has_converged(values: list[float], epoch: Optional[int]) -> bool:
    """False when the convergence epoch is the last of several: the metric was still changing at the end."""
    return epoch is not None and (epoch < len(values) or len(values) == 1)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


@dataclass
class RunState:
    run: FinetuneRun
    run_dir: Path
    status: str               # completed, running, failed, interrupted (started, not running), missing
    crash_log: Optional[Path]
    reason: str = ""          # why it failed, when the queue knows (e.g. its pretraining failed)
    queue_log: Optional[str] = None


@dataclass
class PretrainState:
    job: PretrainJob
    run_dir: Path
    status: str
    crash_log: Optional[Path]
    reason: str = ""
    queue_log: Optional[str] = None

    @property
    def name(self) -> str:
        return self.job.name


def crash_message(path: Path) -> str:
    """The one-line reason a run stopped on (crash.log of a UserError: ``error: <reason>``), else ''."""
    try:
        first = path.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return ""
    return first[len("error: "):][:400] if first.startswith("error: ") else ""


def _status(done: bool, rd: Path, info: Optional[JobInfo]) -> tuple[str, Optional[Path], str, Optional[str]]:
    """(status, crash log, reason, queue log) from the run directory and the run's queue line."""
    crash = rd / "crash.log"
    crash_log = crash if crash.is_file() else None
    line = info.line.status if info else None
    log = info.log if info else None
    if done:
        return "completed", None, "", log
    if line == "running":
        return "running", crash_log, "", log
    if crash_log is not None or line == "failed":
        return "failed", crash_log, (info.reason if info and line == "failed" else ""), log
    if (rd / "train.log").is_file() or (rd / "checkpoint_last.pt").is_file():
        return "interrupted", None, "", log
    return "missing", None, "", log


def run_state(plan: Plan, run: FinetuneRun, table: Optional[dict[str, JobInfo]] = None) -> RunState:
    rd = plan.output_root / "finetuning" / run.run_subdir
    status, crash, reason, log = _status((rd / "test.log").is_file(), rd, (table or {}).get(run.job_id))
    if reason.startswith("dependency"):
        pre = next((j for j in plan.pretrain if j.job_id == run.after), None)
        reason = f"not started: its pretraining {pre.name if pre else run.after} failed"
    return RunState(run, rd, status, crash, reason, log)


def pretrain_states(plan: Plan, table: Optional[dict[str, JobInfo]] = None) -> list[PretrainState]:
    table = job_table(plan) if table is None else table
    out = []
    for j in plan.pretrain:
        rd = j.encoder.parent
        out.append(PretrainState(j, rd, *_status(j.encoder.is_file(), rd, table.get(j.job_id))))
    return out


def primary_metric(task: str) -> tuple[str, str]:
    from utility.config.tasks import load_task

    spec = load_task(task)
    return spec.primary_metric, spec.primary_mode


def result_row(plan: Plan, st: RunState, commit: str) -> dict[str, Any]:
    r = st.run
    row: dict[str, Any] = {"run": r.name, "source": r.source, "task": r.task, "mode": r.mode}
    for key in plan.spec.grid:
        row[key] = r.grid.get(key)
    row.update({"repeat": r.repeat, "seed": "" if r.seed is None else r.seed,
                "fold": "" if r.fold is None else r.fold, "status": st.status,
                "crash_log": str(st.crash_log) if st.crash_log else "", "reason": st.reason})
    last = read_rows(st.run_dir / "test.log")
    best = read_rows(st.run_dir / "test_best.log")
    for prefix, rows in (("last", last), ("best", best)):
        for k, v in (rows[0] if rows else {}).items():
            if k not in ("epoch", "model"):
                row[f"{prefix}_{k}"] = as_float(v)
    val = read_rows(st.run_dir / "val.log")
    metric, _ = primary_metric(r.task)
    cfg_metric = r.config.get("best_metric") or metric
    row["epochs"] = len(val)
    row["wall_time_s"] = round(sum(as_float(v.get("epoch_time_s")) for v in val if v.get("epoch_time_s")), 3)
    series = [as_float(v.get(cfg_metric)) for v in val]
    conv = convergence_epoch(series) if val else None
    row["convergence_epoch"] = "" if conv is None else conv
    row["convergence_metric"] = cfg_metric
    row["config_hash"] = hashlib.sha256((st.run_dir / "config.yaml").read_bytes()).hexdigest()[:12] \
        if (st.run_dir / "config.yaml").is_file() else ""
    row["git_commit"] = commit
    ci = {c.get("metric"): c for c in read_rows(st.run_dir / "test_ci.csv")}   # the run's subject bootstrap
    for m in plan.spec.metrics or [metric]:
        if m in ci:
            row[f"last_{m}_subjects_ci_low"] = as_float(ci[m].get("ci_low"))
            row[f"last_{m}_subjects_ci_high"] = as_float(ci[m].get("ci_high"))
    row["converged"] = has_converged(series, conv)
    sizes = {r.get("split"): r for r in read_rows(st.run_dir / "split_sizes.csv")}  # utility/runs/split_audit.py
    for split in ("train", "val", "test"):
        for what in ("samples", "subjects"):
            row[f"{split}_{what}"] = sizes.get(split, {}).get(what, "")
    return row


def collect(plan: Plan, table: Optional[dict[str, JobInfo]] = None) -> tuple[list[RunState], list[dict[str, Any]]]:
    commit = git_commit()
    table = job_table(plan) if table is None else table
    states = [run_state(plan, r, table) for r in plan.runs]
    return states, [result_row(plan, st, commit) for st in states]


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
