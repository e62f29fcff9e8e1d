"""Which waiting jobs start now, and on which GPUs (one machine).

Rule (strict file order + safe backfill):
* jobs are considered in file order;
* a job with gpus=all (the default, the predecessor's behaviour) is exclusive: it starts only
  when nothing else of this queue runs, gets every GPU, and nothing starts beside it; while it
  waits, it holds back everything after it;
* a job asking for N GPUs starts when N GPUs are free; when it cannot start, it reserves all
  free GPUs for itself (it needs more than are free), so later GPU jobs cannot overtake it -
  with no runtime estimates any backfill onto GPUs could delay it.  Later jobs with gpus=0
  can still start (they never delay a GPU job);
* --max-parallel caps the number of jobs running at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence


@dataclass(eq=False)
class Candidate:
    ref: Any                 # whatever the caller uses to identify the job
    need: int                # GPUs (ignored when exclusive)
    exclusive: bool
    after: tuple["Candidate", ...] = ()   # simulate(): starts once these have ended
    ready_wave: int = 0      # simulate(): not before this wave (waits for a running job)


def runnable(c: Candidate, total: int) -> bool:
    return c.exclusive or c.need <= total


def select(candidates: Sequence[Candidate], free: Sequence[str], total: Sequence[str],
           n_running: int, exclusive_running: bool,
           max_parallel: Optional[int] = None) -> list[tuple[Candidate, list[str]]]:
    if exclusive_running:
        return []
    free = list(free)
    started: list[tuple[Candidate, list[str]]] = []
    running = n_running
    blocked = False             # a GPU job is waiting: GPUs are reserved for it
    for c in candidates:
        if max_parallel and running >= max_parallel:
            break
        if not runnable(c, len(total)):
            continue            # the caller reports these; they never block others
        if c.exclusive:
            if not blocked and running == 0:
                started.append((c, list(total)))
            break
        if c.need == 0:
            started.append((c, []))
            running += 1
            continue
        if not blocked and c.need <= len(free):
            started.append((c, free[:c.need]))
            free = free[c.need:]
            running += 1
        else:
            blocked = True
    return started


def simulate(candidates: Sequence[Candidate], total: Sequence[str],
             max_parallel: Optional[int] = None) -> list[tuple[int, Candidate, list[str]]]:
    """Start order for --dry-run, pretending every job takes the same time:
    [(wave, candidate, gpus)]; unrunnable candidates, and those waiting for them (after), are
    left out. A candidate starts once every candidate it is after has ended."""
    pending = [c for c in candidates if runnable(c, len(total))]
    running: list[tuple[int, Candidate, list[str]]] = []   # (end wave, cand, gpus)
    ended: set = set()
    plan = []
    wave = 0
    while pending:
        busy = {g for _, _, gs in running for g in gs}
        free = [g for g in total if g not in busy]
        excl = any(c.exclusive for _, c, _ in running)
        ready = [p for p in pending if p.ready_wave <= wave and all(id(a) in ended for a in p.after)]
        chosen = select(ready, free, total, len(running), excl, max_parallel)
        for c, gpus in chosen:
            plan.append((wave, c, gpus))
            running.append((wave + 1, c, gpus))
            pending = [p for p in pending if p is not c]
        later = [p.ready_wave for p in pending if p.ready_wave > wave]
        if not running and not later:
            break           # the rest waits for jobs that never run
        wave = min([end for end, _, _ in running] + later)
        ended.update(id(c) for end, c, _ in running if end <= wave)
        running = [r for r in running if r[0] > wave]
    return plan
