"""Command line of QueueManager.py: run (default), status, --dry-run."""
from __future__ import annotations

import argparse
import errno
import os
import queue as _queue
import sys
import time
from pathlib import Path
from typing import Optional

from utility.queue import gpus as gpus_mod
from utility.queue import jobsfile, scheduler
from utility.queue.base import Echo
from utility.queue.deps import Graph, read_checked, waits_text
from utility.queue.local_backend import local_argv
from utility.queue.errors import QueueError
from utility.queue.state import StateLog
from utility.registry import Registry

REPO_ROOT = Path(__file__).absolute().parents[2]
DEFAULT_JOBS = str(REPO_ROOT / "Jobs.csv")
DEFAULT_LOG_DIR = str(REPO_ROOT / "logs_and_checkpoints" / "queue")
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
               errno.ELOOP, errno.ENAMETOOLONG}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="QueueManager.py",
        description="Run the jobs listed in a Jobs.csv file (see docs/QUEUE.md).",
        epilog="Exits when no open or running job of this queue is left (unless --watch). "
               "Exit status: 0 all ran jobs completed, 1 some failed or could not run, "
               "2 a mistake in the input, 128+N stopped by signal N.")
    p.add_argument("action", nargs="?", choices=("run", "status"), default="run",
                   help="run the queue (default) or print a status table")
    p.add_argument("--jobs", default=DEFAULT_JOBS, metavar="PATH",
                   help="jobs file (default: Jobs.csv next to QueueManager.py)")
    p.add_argument("--log-dir", default=DEFAULT_LOG_DIR, metavar="DIR",
                   help="job logs + queue_state.jsonl (default: logs_and_checkpoints/queue/)")
    p.add_argument("--gpus", metavar="SPEC",
                   help="GPUs to use: a count (8), ids (0,1,2,3; '3,' for GPU 3 alone) or none; "
                        "default: CUDA_VISIBLE_DEVICES, else nvidia-smi -L, else none")
    p.add_argument("--workdir", metavar="DIR",
                   help="directory the jobs run in (default: the directory of the jobs file)")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="local")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="exit when no open/running job is left (the default)")
    mode.add_argument("--watch", action="store_true",
                      help="keep running and wait for new open lines")
    p.add_argument("--dry-run", action="store_true", help="print what would run where, run nothing")
    p.add_argument("--max-parallel", type=int, metavar="N",
                   help="at most N jobs at once (default: limited by GPUs only)")
    p.add_argument("--kill-grace", type=float, default=30.0, metavar="S",
                   help="seconds between SIGTERM and SIGKILL when a watchdog stops a job")
    p.add_argument("--quiet", action="store_true", help="do not echo job output")
    s = p.add_argument_group("SLURM backend")
    s.add_argument("--partition", help="sbatch --partition for every job")
    s.add_argument("--time", dest="time_limit", metavar="LIMIT",
                   help="sbatch --time for jobs without a timeout option (e.g. 2-00:00:00)")
    s.add_argument("--sbatch-args", default="", metavar="ARGS",
                   help="extra sbatch arguments for every job, e.g. '--qos=high --mem=64G'")
    s.add_argument("--signal-before", type=int, default=120, metavar="S",
                   help="signal jobs S seconds before their time limit to checkpoint, then "
                        "requeue them (default 120; at most half the limit)")
    s.add_argument("--max-requeues", type=int, default=20, metavar="N",
                   help="a job requeues itself at its time limit at most N times (default 20)")
    s.add_argument("--poll", type=float, default=5.0, metavar="S",
                   help="seconds between squeue polls (default 5)")
    return p


# ---------------------------------------------------------------------------------------------
def _fmt_dur(sec: Optional[float]) -> str:
    if sec is None:
        return "-"
    sec = int(round(sec))
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def status_table(jobs: str, log_dir: str) -> str:
    lines = jobsfile.read_jobs(jobs)
    graph = Graph(lines, jobs)
    notes = [f"error: {m.splitlines()[0]}" for m in graph.errors()]   # shown, not fatal, here
    latest = StateLog(log_dir, jobs).latest()
    rows = [("line", "status", "tries", "duration", "where", "exit", "log", "command")]
    now = time.time()
    counts = {}
    for ln in lines:
        if ln.kind != "job":
            continue
        counts[ln.status] = counts.get(ln.status, 0) + 1
        rec = latest.get(ln.slot, {})
        start, end = rec.get("start_time"), rec.get("end_time")
        dur = None
        if start:
            dur = (end if (end and rec.get("ended")) else now) - start \
                if (ln.status == "running" or end) else None
        if rec.get("slurm_id"):
            where = f"slurm:{rec['slurm_id']}"
        elif rec.get("attempts"):
            g = rec.get("gpus") or []
            where = f"{rec.get('host', '?')}:" + (",".join(g) if g else "cpu")
        else:
            where = "-"
        ec = rec.get("exit_code")
        if ln.status == "failed" and rec.get("reason") and rec.get("reason") != f"exit code {ec}":
            notes.append(f"L{ln.lineno} failed: {rec['reason']}")
        elif ln.status == "open" and ln.options.after:
            notes.append(f"L{ln.lineno} {waits_text(graph, ln)}")
        cmd = ln.command if len(ln.command) <= 60 else ln.command[:57] + "..."
        rows.append((str(ln.lineno), ln.status, str(rec.get("attempts", 0)), _fmt_dur(dur),
                     where, "-" if ec is None else str(ec), rec.get("log", "-") or "-", cmd))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    summary = ", ".join(f"{counts[s]} {s}" for s in jobsfile.STATUSES if s in counts) or "no jobs"
    return "\n".join(out + notes + [f"{jobs}: {summary}"])


def _slurm_backend(args, total: list[str], events, echo, check: bool):
    from utility.queue.slurm_backend import SlurmBackend
    return SlurmBackend(events, echo, args.partition, args.time_limit, args.sbatch_args,
                        args.poll, all_gpus=len(total) if args.gpus is not None else None,
                        check=check, signal_before=args.signal_before,
                        max_requeues=args.max_requeues)


def _local_backend(args, total: list[str], events, echo, check: bool):
    from utility.queue.local_backend import LocalBackend
    return LocalBackend(events, echo)


BACKENDS: Registry = Registry("backend")  # --backend name -> factory(args, total, events, echo, check)
BACKENDS.register("local", entry=_local_backend)
BACKENDS.register("slurm", entry=_slurm_backend)


def make_backend(args, total: list[str], events=None, echo=None, check: bool = True):
    """The backend of --backend; check=False only plans (no sbatch needed for --dry-run)."""
    return BACKENDS.find(args.backend)(args, total, events, echo, check)


def dry_run(args, total: list[str], source: str) -> str:
    backend = make_backend(args, total, check=False)
    lines = read_checked(args.jobs)
    graph = Graph(lines, args.jobs)
    out = [f"jobs file: {args.jobs}", f"GPUs: {','.join(total) or 'none'} ({source})",
           f"backend: {args.backend}", f"working directory of jobs: {args.workdir}"]
    cands, by_key = [], {}
    doomed = graph.doomed() if graph.used else {}
    for ln in lines:
        if ln.kind != "job":
            continue
        if ln.status != "open" or ln.key in doomed:
            why = f"; would be marked failed: {doomed[ln.key]}" if ln.key in doomed else ""
            out.append(f"  skip L{ln.lineno} ({ln.status}{why}): {ln.command}")
            continue
        need, excl = backend.need_of(ln.options, len(total))
        by_key[ln.key] = c = scheduler.Candidate(ln, need, excl)
        deps = graph.deps(ln) if graph.used else []
        c.after = tuple(by_key[d.key] for d in deps if d.key in by_key)
        c.ready_wave = 1 if any(d.status == "running" for d in deps) else 0
        cands.append(c)
    out.append(f"{len(cands)} open job(s); start order if every job took the same time:")
    if backend.name == "slurm":
        for c in cands:
            ln = c.ref
            extra = f" --gres=gpu:{c.need}" if c.need else ""
            if c.after:
                extra += " --dependency=afterok:" + ":".join(f"<job of L{a.ref.lineno}>" for a in c.after)
            out.append(f"  submit L{ln.lineno} (sbatch{extra}): {ln.command}")
        return "\n".join(out)
    plan = scheduler.simulate(cands, total, args.max_parallel)
    planned = {id(c) for _, c, _ in plan}
    for wave, c, g in plan:
        ln = c.ref
        argv = local_argv(ln.command, ln.options.shell)
        where = f"GPUs {','.join(g)}" if g else "no GPU"
        excl = ", alone" if c.exclusive else ""
        if ln.options.after:
            excl += ", after " + "+".join(f"L{d.lineno}" for d in graph.deps(ln))
        out.append(f"  wave {wave}: L{ln.lineno} on {where}{excl} "
                   f"(CUDA_VISIBLE_DEVICES={','.join(g)!s}): {argv}")
    for c in cands:
        if id(c) in planned:
            continue
        if backend.can_ever_run(c.need, c.exclusive, len(total)):
            out.append(f"  never: L{c.ref.lineno} {waits_text(graph, c.ref)}, which cannot run")
        else:
            out.append(f"  never: L{c.ref.lineno} needs {c.need} GPUs, only {len(total)} exist")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.jobs = os.path.abspath(args.jobs)
    args.log_dir = os.path.abspath(args.log_dir)
    args.workdir = os.path.abspath(args.workdir or Path(args.jobs).parent)
    try:
        if args.max_parallel is not None and args.max_parallel < 1:
            raise QueueError("--max-parallel must be at least 1")
        if args.signal_before < 1 or args.max_requeues < 0:
            raise QueueError("--signal-before must be at least 1 and --max-requeues at least 0")
        if not Path(args.workdir).is_dir():
            raise QueueError(f"--workdir {args.workdir} is not a directory")
        if args.action == "status":
            print(status_table(args.jobs, args.log_dir))
            return 0
        total, source = gpus_mod.resolve(args.gpus)
        if args.dry_run:
            print(dry_run(args, total, source))
            return 0
        # fail early on a malformed file, before anything starts
        read_checked(args.jobs, settle=1.0)
        from utility.queue.runner import Runner
        events = _queue.SimpleQueue()
        echo = Echo(enabled=not args.quiet)
        backend = make_backend(args, total, events, echo)
        echo.message(f"[queue] {args.jobs}: backend {args.backend}, GPUs "
                     f"{','.join(total) or 'none'} ({source}), logs in {args.log_dir}")
        runner = Runner(args.jobs, args.log_dir, backend, total, echo, watch=args.watch,
                        max_parallel=args.max_parallel, kill_grace=args.kill_grace,
                        workdir=args.workdir)
        return runner.run()
    except QueueError as e:
        print(f"QueueManager.py: error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"QueueManager.py: error: {e.filename}: permission denied", file=sys.stderr)
        return 2
    except OSError as e:                 # the environment (a full disk, a file in the way)
        if e.errno not in USER_ERRNOS:
            raise
        print(f"QueueManager.py: error: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
