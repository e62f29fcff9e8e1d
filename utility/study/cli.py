"""``pkgs/Study/study.py``: plan a study, queue it, run it through the job queue, report on it.

    study.py -c study.yaml [--plan-only] [--max-parallel N] [--gpus SPEC] [--backend local|slurm]
    study.py report -c study.yaml     # rebuild results.csv, summary.csv, report.html from what exists
    study.py status -c study.yaml     # runs completed / running / failed / interrupted / missing

Running the study again adds only the jobs it lacks, reopens the jobs that failed (or whose
output is gone), lets the queue skip what is completed, and runs interrupted runs on from
their checkpoints.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from utility.errors import UserError
from utility.paths import REPO_ROOT
from utility.study import contamination
from utility.study.jobs import append_jobs, job_table, reopen
from utility.study.plan import Plan, make_plan, write_configs
from utility.study.results import collect, pretrain_states, primary_metric, write_results
from utility.study.spec import load_study


CPU_PARALLEL = 2   # CPU-only studies (gpus_per_job: 0) run this many jobs at once unless --max-parallel


def metrics_of(plan: Plan) -> dict[str, list[str]]:
    return {t: list(plan.spec.metrics) if plan.spec.metrics else [primary_metric(t)[0]] for t in plan.spec.tasks}


def report(plan: Plan, quiet: bool = False) -> Path:
    from utility.study.multiplicity import adjust_summary
    from utility.study.report import write_report
    from utility.study.stats import summarize, write_summary
    from utility.study.subject_stats import add_subject_statistics

    table = job_table(plan)
    states, rows = collect(plan, table)
    pre = pretrain_states(plan, table)
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    write_results(plan.study_dir / "results.csv", rows)
    mets = metrics_of(plan)
    summary = summarize(rows, mets, list(plan.spec.pretrain), list(plan.spec.grid))
    add_subject_statistics(summary, states, list(plan.spec.pretrain), list(plan.spec.grid))
    adjust_summary(summary, list(plan.spec.grid))
    found = contamination.findings_of(plan)
    for row in summary:
        row["contamination"] = contamination.label_of(found, row["source"], row["task"])
    write_summary(plan.study_dir / "summary.csv", summary)
    write_report(plan.study_dir / "report.html", plan, states, summary, mets, pre)
    if not quiet:
        print(summary_text(plan, summary))
        missing = [st for st in pre if st.status != "completed"] + [st for st in states if st.status != "completed"]
        if missing:
            print(f"{len(missing)} of {len(states) + len(pre)} runs not completed:")
            print("\n".join(f"  {_name(st)}: {st.status}{_why(st)}" for st in missing[:8])
                  + ("\n  ..." if len(missing) > 8 else ""))
        print(f"results: {plan.study_dir / 'results.csv'}\nsummary: {plan.study_dir / 'summary.csv'}\n"
              f"report:  {plan.study_dir / 'report.html'}")
    return plan.study_dir / "report.html"


def summary_text(plan: Plan, summary: list[dict[str, Any]]) -> str:
    """The summary as aligned lines: per task/mode/grid point and metric, each source's mean ± 95 % CI
    and, for the others, the change against the reference source with its p-value."""
    ref = plan.spec.reference
    width = max((len(r["source"]) for r in summary), default=0)
    lines, last = [], None
    for row in summary:
        grid = "".join(f" {k}={row.get(k)}" for k in plan.spec.grid)
        head = f"{row['task']} ({row['mode']}{grid}) {row['metric']}"
        if head != last:
            lines.append(f"{head}, test set, mean ± 95 % CI over repeats:")
            last = head
        half = row["ci95_high"] - row["mean"]
        text = f"  {row['source']:<{width}}  {row['mean']:.3f}" + ("" if math.isnan(half) else f" ± {half:.3f}")
        text += f"  (n={row['n']})"
        low = row.get("subjects_ci95_low", math.nan)
        if not math.isnan(low):
            text += f"  [{low:.3f}, {row['subjects_ci95_high']:.3f}] over {row['n_subjects']} subjects"
        p = row.get(f"p_vs_{ref}")
        if row["source"] != ref and isinstance(p, float) and not math.isnan(p):
            text += f"  {row[f'pct_change_vs_{ref}']:+.1f} % vs {ref}, p = {p:.2g} ({row[f'test_vs_{ref}']}" \
                    f"; Holm {row.get(f'p_holm_vs_{ref}', math.nan):.2g})"
        lines.append(text)
    return "\n".join(lines) if lines else "no completed runs yet"


def _name(st: Any) -> str:
    return st.run.name if hasattr(st, "run") else f"pretraining {st.name}"


def _why(st: Any) -> str:
    """' (crash log ...)' / ' (not started: its pretraining ... failed)' / ' (queue log ...)'."""
    if st.status == "interrupted":
        return " (resumes from its checkpoint when the study runs again)"
    if st.status != "failed":
        return ""
    if st.crash_log:
        return f" (crash log {st.crash_log})"
    if st.reason:
        return f" ({st.reason}" + (f"; queue log {st.queue_log})" if st.queue_log else ")")
    return f" (queue log {st.queue_log})" if st.queue_log else ""


def status(plan: Plan) -> str:
    table = job_table(plan)
    states, _ = collect(plan, table)
    pre = pretrain_states(plan, table)
    counts: dict[str, int] = {}
    for st in states:
        counts[st.status] = counts.get(st.status, 0) + 1
    kinds = ["completed", "running", "failed", "missing"] + (["interrupted"] if counts.get("interrupted") else [])
    out = f"study {plan.spec.name}: {len(states)} finetuning runs: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in kinds)
    out += "".join(f"\npretraining {st.job.label} ({st.name}): {st.status}{_why(st)}" for st in pre)
    out += "".join(f"\n{st.status}: {st.run.name}{_why(st)}" for st in states if st.status in ("failed", "interrupted"))
    out += "".join(f"\n{contamination.describe(f)}" for f in contamination.findings_of(plan)
                   if f.status in ("contaminated", "val overlap"))
    return out


def reopen_unfinished(plan: Plan) -> list[int]:
    """Lines of runs that failed, or whose output is gone although the queue says completed."""
    table = job_table(plan)
    states, _ = collect(plan, table)
    todo = [(st.job.job_id, st.status) for st in pretrain_states(plan, table)]
    todo += [(st.run.job_id, st.status) for st in states]
    return reopen(plan, [i for i, status in todo if status != "completed"])


def run_queue(plan: Plan, args: argparse.Namespace) -> int:
    cmd = [sys.executable, str(REPO_ROOT / "QueueManager.py"), "--jobs", str(plan.jobs_file),
           "--workdir", str(REPO_ROOT), "--log-dir", str(plan.queue_log_dir)]
    parallel = args.max_parallel or (CPU_PARALLEL if plan.spec.gpus_per_job == 0 else None)
    if parallel:
        cmd += ["--max-parallel", str(parallel)]
    if args.gpus:
        cmd += ["--gpus", args.gpus]
    if args.backend:
        cmd += ["--backend", args.backend]
    if not args.echo:
        cmd += ["--quiet"]
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # the queue got the same Ctrl-C: it stops its jobs (they save checkpoints) and exits;
            # killing it now would orphan them, so wait (a second Ctrl-C reaches it too)
            continue


def check_gpus(plan: Plan, args: argparse.Namespace) -> None:
    """Jobs that need GPUs on a machine without any would all wait forever: stop before queueing."""
    if plan.spec.gpus_per_job == 0 or args.backend == "slurm":
        return
    from utility.queue.gpus import resolve

    ids, source = resolve(args.gpus)
    if not ids:
        raise UserError(f"study {plan.spec.name}: gpus_per_job is {plan.spec.gpus_per_job} (the default is 1) but "
                        f"no GPU is available here ({source}); set gpus_per_job: 0 in {args.config} to run on CPU")


def main(argv: list[str]) -> int:
    from utility.config.help import key_lines
    from utility.study.spec import FinetuneBase, PretrainSource, Repeats, StudySpec

    keys = [*key_lines(StudySpec, ""), *key_lines(PretrainSource, "pretrain.<source>."),
            *key_lines(FinetuneBase, "finetune."), *key_lines(Repeats, "repeats.")]
    ap = argparse.ArgumentParser(prog="pkgs/Study/study.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(["keys of the study YAML (config/studies/*.yaml):", *keys]))
    ap.add_argument("command", nargs="?", choices=["run", "report", "status"], default="run")
    ap.add_argument("-c", "--config", type=Path, required=True, help="the study YAML")
    ap.add_argument("--plan-only", action="store_true", help="write configs and jobs, run nothing")
    ap.add_argument("--max-parallel", type=int, help="at most N jobs at once (queue option)")
    ap.add_argument("--gpus", help="GPUs for the queue (a count, ids, or none)")
    ap.add_argument("--backend", choices=["local", "slurm"])
    ap.add_argument("--echo", action="store_true", help="echo every job's output (default: the queue's "
                    "start and end lines; each job's output is in its log)")
    ap.add_argument("--jobs", type=Path, help="append the study's jobs to this file for a queue that runs it "
                    "(e.g. Jobs.csv under 'QueueManager.py --watch'); implies --plan-only. Default: "
                    "logs_and_checkpoints/studies/<name>/Jobs.csv, run here")
    args = ap.parse_args(argv)
    plan = make_plan(load_study(args.config))
    if args.jobs:
        if not args.jobs.parent.resolve().is_dir():  # refused before any config is written
            raise UserError(f"--jobs {args.jobs}: folder {args.jobs.parent.resolve()} does not exist; "
                            "expected a jobs file in an existing folder")
        if args.jobs.exists() and not args.jobs.is_file():
            raise UserError(f"--jobs {args.jobs} is not a regular file; expected a jobs file (Jobs.csv)")
        plan.jobs_path = args.jobs.resolve()
    if args.command == "status":
        print(status(plan))
        return 0
    if args.command == "report":
        report(plan)
        return 0
    if not (args.plan_only or args.jobs):
        check_gpus(plan, args)
    contamination.refuse_or_flag(plan, plan.spec.allow_contamination)
    new_cfg = write_configs(plan)
    new_jobs = append_jobs(plan)
    print(f"study {plan.spec.name}: {len(plan.pretrain)} pretraining + {len(plan.runs)} finetuning runs; "
          f"{new_cfg} new configs in {plan.config_dir}, {new_jobs} new jobs in {plan.jobs_file}")
    if args.plan_only or args.jobs:
        return 0
    again = reopen_unfinished(plan)
    if again:
        print(f"reopened {len(again)} job(s) that failed or lost their output: lines {', '.join(map(str, again))}")
    rc = run_queue(plan, args)
    if rc >= 128:
        print(f"study {plan.spec.name} stopped (signal {rc - 128}); the same command resumes it")
        return rc
    report(plan)
    if rc not in (0, 1):
        raise UserError(f"the job queue stopped with exit status {rc}; see {plan.study_dir / 'queue'}")
    return rc
