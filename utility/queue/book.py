"""What one queue instance knows of its jobs (the Active records), and the ways it reports on
them: messages, queue_state.jsonl records, status changes for the jobs file. Shared by the
parts the queue loop is composed of (runner, deps, recovery, watchdogs)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from utility.queue.base import Echo
from utility.queue.jobsfile import Line
from utility.queue.state import StateLog, StateWriteError
from utility.queue.writes import StatusWriter

Key = tuple[str, int]


@dataclass
class Active:
    """A job this queue instance owns: running, or waiting for a retry."""
    token: int
    key: Key
    line: Line
    attempt: int
    gpus: list[str]
    log_path: str = ""
    started: float = 0.0             # monotonic
    started_wall: float = 0.0
    running: bool = False
    retry_at: Optional[float] = None
    kill_reason: Optional[str] = None
    kill_at: Optional[float] = None  # when to escalate to SIGKILL
    stopping: bool = False           # the queue is shutting down: reopen on exit
    exclusive: bool = False
    after: list[int] = field(default_factory=list)   # tokens of the dependencies it was handed after
    no_retry: bool = False           # ends failed without retries (its dependency failed)
    adopted: bool = False            # started by an earlier queue instance (recover)
    interruptions: int = 0           # attempts stopped by a signal from outside (not counted)
    reopen: bool = False             # cancelled to be handed to the backend again (deps)

    @property
    def counted(self) -> int:
        """Attempts that count against `retries` (interrupted ones do not)."""
        return self.attempt - self.interruptions


class JobBook:
    def __init__(self, state: StateLog, writer: StatusWriter, echo: Echo):
        self.state, self.writer, self.echo = state, writer, echo
        self.active: dict[int, Active] = {}
        self.next_token = 1
        self.ended_here: dict[Key, str] = {}   # final statuses this queue wrote
        self.completed_count = 0
        self.failed_count = 0
        self.fatal: Optional[str] = None       # the log directory failed: start nothing more
        self.warned: set[str] = set()

    def add(self, key: Key, line: Line, attempt: int, gpus: list[str], **fields) -> Active:
        act = Active(self.next_token, key, line, attempt, gpus, **fields)
        self.next_token += 1
        self.active[act.token] = act
        return act

    # -- messages ---------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        self.echo.message(f"[queue] {msg}")

    def warn_once(self, msg: str) -> None:
        if msg not in self.warned:
            self.warned.add(msg)
            self.say(msg)

    # -- queue_state.jsonl ------------------------------------------------------------------
    def record(self, rec: dict) -> None:
        """Append to queue_state.jsonl; if that fails (a full disk), the queue starts nothing
        more, lets its running jobs end (their statuses still go into the jobs file) and then
        exits with the message."""
        try:
            self.state.append(rec)
        except StateWriteError as e:
            self.log_dir_failed(str(e))

    def log_dir_failed(self, msg: str) -> None:
        if self.fatal is None:
            self.fatal = msg
            self.say(f"{msg}; starting no more jobs (running ones are supervised to their end)")

    # -- the jobs file ----------------------------------------------------------------------
    def set_status(self, key: Key, new: str, expect=("running",)) -> None:
        """Write one status change now (together with anything queued)."""
        self.writer.queue(key, new, expect)
        self.writer.flush()

    def queue_status(self, key: Key, new: str, expect=("running",)) -> None:
        """A status change for the next flush, which comes in this loop iteration, together
        with the claims of the jobs that start next: one locked write instead of several."""
        self.writer.queue(key, new, expect)
