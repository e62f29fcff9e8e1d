"""The batch script the SLURM backend submits, and what it leaves behind for the queue.

Preemption-safe runs: jobs are submitted with ``--signal=B:USR1@<lead>`` and ``--requeue``.
Before the time limit SLURM sends USR1 to this script only; the script passes SIGTERM on to
the job, which (the training entry points do) saves a checkpoint and exits 143. Then:

* a job without a ``timeout`` option (its limit is the cluster's ``--time``) is requeued with
  ``scontrol requeue``: the same SLURM job id goes back to PENDING and runs the command again,
  which resumes from the checkpoint; ``afterok`` dependants keep waiting for the real end. At
  most ``max_requeues`` times (``SLURM_RESTART_COUNT``), so nothing loops forever;
* a job with a ``timeout`` option has reached its own per-attempt limit: it ends, and the
  ``.rc`` file says so (``143 timeout``), so the queue counts the attempt.

SIGTERM to the script (``scancel``, preemption) is not passed on: SLURM signals every process
of the job itself, and a second SIGTERM would make training stop without its checkpoint.
The script writes the command's exit code to ``<log>.rc`` (not when it requeues itself).
"""
from __future__ import annotations

import re
import shlex
from typing import Optional

INTERRUPTED = (130, 143)        # 128 + SIGINT / SIGTERM: the job stopped itself
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def limit_seconds(text: Optional[str]) -> Optional[int]:
    """sbatch --time in seconds ('90' minutes, 'MM:SS', 'H:MM:SS', 'D-H', 'D-H:MM',
    'D-H:MM:SS'); None when absent, unlimited or not understood."""
    m = _SLURM_TIME.match((text or "").strip())
    if not m:
        return None
    d, a, b, c = m.groups()
    if d is not None:               # D-H[:MM[:SS]]
        secs = int(d) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif b is None:                 # minutes
        secs = int(a) * 60
    elif c is None:                 # MM:SS
        secs = int(a) * 60 + int(b)
    else:                           # H:MM:SS
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    return secs


def signal_lead(limit: Optional[int], wanted: int) -> int:
    """Seconds before the limit to signal: `wanted`, but at most half the limit."""
    return max(1, min(wanted, limit // 2)) if limit else wanted


def batch_script(argv: list[str], command: str, cwd: str, log_path: str, attempt: int,
                 own_timeout: bool, max_requeues: int) -> str:
    rc_file = shlex.quote(log_path + ".rc")
    on_limit = (f'echo "$rc timeout" > {rc_file}; exit "$rc"' if own_timeout else
                f'if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {max_requeues} ] && '
                f'scontrol requeue "$SLURM_JOB_ID"; then sleep 600; exit "$rc"; fi')
    return "\n".join([
        "#!/bin/bash",
        f"# written by QueueManager.py for: {command}",
        "export PYTHONUNBUFFERED=1",
        f"export QUEUE_JOB_LOG={shlex.quote(log_path)}",
        f"export QUEUE_JOB_ATTEMPT={attempt}",
        f"cd {shlex.quote(cwd)} || exit 1",
        f"rm -f {rc_file}",
        'limit="" child=""',
        "# USR1: the time limit is near: the job saves a checkpoint and stops (SIGTERM)",
        """trap 'limit=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' USR1""",
        "trap ':' TERM   # scancel/preemption signal the job directly; wait for it",
        shlex.join(argv) + " &",
        "child=$!",
        '[ -n "$limit" ] && kill -TERM "$child" 2>/dev/null',
        "# a trap interrupts wait (status > 128) while the job runs on: wait again",
        'while wait "$child"; rc=$?; [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null; do :; done',
        "# the job may have ended while a trap ran: its own status, if bash still holds it",
        'wait "$child" 2>/dev/null; r=$?; [ "$r" != 127 ] && rc=$r',
        f'if [ -n "$limit" ] && {{ [ "$rc" = {INTERRUPTED[0]} ] || [ "$rc" = {INTERRUPTED[1]} ]; }}; then',
        f"    {on_limit}",
        "fi",
        f"echo $rc > {rc_file}",
        'exit "$rc"',
        "",
    ])


def read_rc(log_path: str) -> tuple[Optional[int], bool]:
    """(exit code from `<log>.rc` or None, whether the job stopped at its own timeout)."""
    try:
        with open(log_path + ".rc") as f:
            words = f.read().split()
        return int(words[0]), words[1:2] == ["timeout"]
    except (OSError, ValueError, IndexError):
        return None, False
