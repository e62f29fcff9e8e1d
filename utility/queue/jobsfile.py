"""Jobs.csv: parsing, per-job options, locking; status updates are in safewrite.py.

Line format (see docs/QUEUE.md):

    <command>,<status>,<options>

* ``#`` lines (after optional blanks) are comments / section headers; blank lines are kept.
* ``<command>`` is either unquoted, in which case the line is split at its LAST two commas
  (so the predecessor's ``python x.py -c a,b.yaml,open,`` lines keep working), or written
  CSV-style in double quotes, a doubled quote standing for one quote character:
  the command  echo "a,b" c  is written  "echo ""a,b"" c",open,
* ``<status>`` is open, running, completed or failed.
* ``<options>`` is empty or ``key=value;key=value`` (see OPTION_KEYS).

The queue only ever rewrites the status field of a line; every other byte of the file
(comments, blank lines, line endings, options, order) is kept exactly, and so is every byte
other programs write meanwhile (safewrite.py).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import stat
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterator, Optional

from utility.queue.errors import QueueError

STATUSES = ("open", "running", "completed", "failed")
MAX_LINE = 65536         # characters in one line (splitting a longer one takes seconds)

# key -> (description, parser); parsers raise ValueError with a short reason
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'90', '90s', '1.5m', '2h', '1d' -> seconds; also SLURM-ish 'H:MM:SS' / 'MM:SS'."""
    t = text.strip()
    if ":" in t:
        parts = t.split(":")
        if len(parts) > 3 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"bad duration {text!r}")
        secs = 0.0
        for p in parts:
            secs = secs * 60 + int(p)
        return secs
    m = _DURATION_RE.match(t)
    if not m:
        raise ValueError(f"bad duration {text!r} (use e.g. 90, 90s, 30m, 2h, 1d or H:MM:SS)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _parse_bool(text: str) -> bool:
    """Only an explicit 1/true/yes turns an option on (an empty value is a mistake)."""
    t = text.strip().lower()
    if t in ("1", "true", "yes"):
        return True
    if t in ("0", "false", "no"):
        return False
    raise ValueError(f"expected 1/true/yes or 0/false/no, got {text!r}")


def _parse_gpus(text: str):
    t = text.strip().lower()
    if t == "all":
        return "all"
    if t.isdigit():
        return int(t)
    raise ValueError(f"expected a number of GPUs or 'all', got {text!r}")


def _parse_count(text: str) -> int:
    t = text.strip()
    if not t.isdigit():
        raise ValueError(f"expected a non-negative integer, got {text!r}")
    return int(t)


def _parse_str(text: str) -> str:
    return text.strip()


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _parse_id(text: str) -> str:
    t = text.strip()
    if not _ID_RE.match(t):
        raise ValueError(f"expected an id of letters, digits, '_', '-', '.', got {text!r}")
    return t


def _parse_after(text: str) -> tuple[str, ...]:
    ids = tuple(_parse_id(x) for x in text.split("+"))
    if len(set(ids)) != len(ids):
        raise ValueError(f"an id is listed twice in {text.strip()!r}")
    return ids


OPTION_KEYS = {
    "gpus": _parse_gpus,               # 'all' (default: runs alone with every GPU) or N
    "retries": _parse_count,           # extra attempts after a failure (default 0)
    "backoff": parse_duration,         # first retry delay, doubled each retry (default 10 s)
    "timeout": parse_duration,         # wall-clock limit per attempt (SLURM: --time)
    "no_output_timeout": parse_duration,  # kill when the job prints nothing this long
    "shell": _parse_bool,              # run through /bin/sh -c (default: no shell)
    "partition": _parse_str,           # SLURM partition for this job
    "sbatch": _parse_str,              # extra sbatch arguments for this job
    "id": _parse_id,                   # names the job for after= of other jobs (deps.py)
    "after": _parse_after,             # start only when these jobs are completed: a+b+c
}
_ALIASES = {"idle_timeout": "no_output_timeout", "gpu": "gpus", "retry": "retries"}


@dataclass
class JobOptions:
    gpus: object = "all"
    retries: int = 0
    backoff: float = 10.0
    timeout: Optional[float] = None
    no_output_timeout: Optional[float] = None
    shell: bool = False
    partition: Optional[str] = None
    sbatch: Optional[str] = None
    id: Optional[str] = None
    after: tuple[str, ...] = ()

    @property
    def exclusive(self) -> bool:
        return self.gpus == "all"


def parse_options(text: str) -> JobOptions:
    """'gpus=2;retries=1' -> JobOptions; ValueError with a short reason on mistakes."""
    opts = JobOptions()
    seen = set()
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            hint = "; write shell=1" if item.lower() == "shell" else ""
            raise ValueError(f"option {item!r} is not of the form key=value{hint}")
        else:
            key, value = item.split("=", 1)
        key = key.strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in OPTION_KEYS:
            raise ValueError(f"unknown option {key!r} (known: {', '.join(sorted(OPTION_KEYS))})")
        if key in seen:
            raise ValueError(f"option {key!r} given twice")
        seen.add(key)
        setattr(opts, key, OPTION_KEYS[key](value))
    return opts


@dataclass
class Line:
    """One physical line of the file. kind: 'comment', 'blank' or 'job'."""
    lineno: int                 # 1-based
    raw: str                    # the line including its line ending
    kind: str
    command: str = ""           # job: the command text (unquoted)
    status: str = ""
    options_text: str = ""
    options: JobOptions = field(default_factory=JobOptions)
    status_span: tuple[int, int] = (0, 0)   # where the status token sits in raw
    occurrence: int = 0         # how many earlier job lines have the same command
    ident: int = -1             # which of the lines with this command (parsecache.py); -1: occurrence

    @property
    def key(self) -> tuple[str, int]:
        """The job's identity while the queue runs (it survives edits of the file)."""
        return (self.command, self.occurrence if self.ident < 0 else self.ident)

    @property
    def slot(self) -> tuple[str, int]:
        """(command, occurrence): how queue_state.jsonl names the job."""
        return (self.command, self.occurrence)

    def with_status(self, status: str) -> str:
        a, b = self.status_span
        return self.raw[:a] + status + self.raw[b:]


def _split_ending(raw: str) -> tuple[str, str]:
    body = raw.rstrip("\r\n")
    return body, raw[len(body):]


def _parse_quoted(body: str) -> Optional[tuple[str, int]]:
    """If body starts (after blanks) with a CSV-quoted field closed right before a comma,
    return (unquoted command, index of that comma); else None."""
    i = len(body) - len(body.lstrip())
    if i >= len(body) or body[i] != '"':
        return None
    out = []
    j = i + 1
    while j < len(body):
        c = body[j]
        if c == '"':
            if j + 1 < len(body) and body[j + 1] == '"':
                out.append('"')
                j += 2
                continue
            k = j + 1
            while k < len(body) and body[k] in " \t":
                k += 1
            if k < len(body) and body[k] == ",":
                return "".join(out), k
            return None
        out.append(c)
        j += 1
    return None


def parse_line(raw: str, lineno: int, path: str = "Jobs.csv") -> Line:
    body, _ = _split_ending(raw)
    stripped = body.strip()
    if not stripped:
        return Line(lineno, raw, "blank")
    if stripped.startswith("#"):
        return Line(lineno, raw, "comment")

    def fail(msg: str):
        shown = body if len(body) <= 200 else body[:200] + f"... ({len(body)} characters)"
        raise QueueError(f"{path}:{lineno}: {msg}\n    {shown}")

    if len(body) > MAX_LINE:
        fail(f"the line is {len(body)} characters long; at most {MAX_LINE} are allowed (a "
             "command that long cannot be started: the kernel limits one argument to 128 KiB)")

    quoted = _parse_quoted(body)
    if quoted is not None:
        command, comma = quoted
        rest_start = comma + 1
        rest = body[rest_start:]
        parts = rest.split(",", 1)
        status_raw = parts[0]
        options_text = parts[1] if len(parts) > 1 else ""
        status_start = rest_start
    else:
        if body.count(",") < 1:
            fail("expected '<command>,<status>,[options]' (no comma found)")
        pieces = body.rsplit(",", 2)
        if len(pieces) == 3:
            command, status_raw, options_text = pieces
            # 'cmd,open' written without the trailing comma but with a comma inside the command
            if status_raw.strip().lower() not in STATUSES and options_text.strip().lower() in STATUSES:
                command, status_raw, options_text = command + "," + status_raw, options_text, ""
        else:
            command, status_raw = pieces
            options_text = ""
        status_start = len(command) + 1
        command = command.strip()
    lead = len(status_raw) - len(status_raw.lstrip())
    status = status_raw.strip()
    span = (status_start + lead, status_start + lead + len(status))
    if status.lower() not in STATUSES:
        fail(f"unknown status {status!r} (expected one of: {', '.join(STATUSES)}); "
             "quote commands that contain commas: \"cmd,with,commas\",open,")
    if not command:
        fail("empty command")
    try:
        options = parse_options(options_text)
    except ValueError as e:
        fail(f"bad option field {options_text.strip()!r}: {e}")
    if not options.shell:
        try:
            shlex.split(command)
        except ValueError as e:
            fail(f"cannot split the command into arguments ({e}); fix the quoting or add shell=1")
    return Line(lineno, raw, "job", command=command, status=status.lower(),
                options_text=options_text.strip(), options=options, status_span=span)


def format_job_line(command: str, status: str = "open", options: str = "") -> str:
    """The line the queue would write for a new job (quoted when needed)."""
    needs_quotes = ("," in command or command.lstrip().startswith('"'))
    cmd = '"' + command.replace('"', '""') + '"' if needs_quotes else command
    return f"{cmd},{status},{options}"


def parse_text(text: str, path: str = "Jobs.csv", strict: bool = True,
               errors: Optional[list[str]] = None, first_lineno: int = 1,
               counts: Optional[dict[str, int]] = None) -> list[Line]:
    """All lines of a jobs file.  strict=False keeps a malformed line (e.g. one the user is
    half-way through editing) as kind 'invalid', byte for byte, instead of raising.
    (first_lineno, counts: continue numbering lines and occurrences of an earlier part.)"""
    lines = []
    counts = {} if counts is None else counts
    for i, raw in enumerate(text.splitlines(keepends=True), start=first_lineno):
        try:
            ln = parse_line(raw, i, path)
        except QueueError as e:
            if strict:
                raise
            if errors is not None:
                errors.append(str(e))
            ln = Line(i, raw, "invalid")
        if ln.kind == "job":
            ln.occurrence = counts.get(ln.command, 0)
            counts[ln.command] = ln.occurrence + 1
        lines.append(ln)
    return lines


# ---------------------------------------------------------------------------------------------
# file access


def lock_path(path: str) -> str:
    """.<name>.lock next to the jobs file (next to the target of a symlinked one, so queues
    started with the link and with the target share it)."""
    real = Path(os.path.realpath(path))       # (realpath: a symlink loop is no error here)
    return str(real.with_name(f".{real.name}.lock"))


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Exclusive flock on a side file next to the jobs file (shared by all queue instances)."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_text(path: str) -> tuple[str, os.stat_result]:
    """The file's text; QueueError (one line) for anything but a readable regular file. Opened
    non-blocking, so a FIFO or a device is refused instead of hanging the queue."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise QueueError(f"jobs file {path} does not exist (create it, or pass --jobs PATH)")
    except PermissionError:
        raise QueueError(f"jobs file {path} is not readable")
    except OSError as e:
        raise QueueError(f"jobs file {path}: {e.strerror}")
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise QueueError(f"jobs file {path} is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise QueueError(f"jobs file {path} is not a regular file (a FIFO, socket or device); "
                             "give the path of a text file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    except OSError as e:
        raise QueueError(f"jobs file {path}: {e.strerror}")
    finally:
        os.close(fd)
    return data.decode("utf-8", "surrogateescape"), st


def read_jobs(path: str, settle: float = 0.0) -> list[Line]:
    """Strict read. settle > 0: a file that is missing or fails to parse while it is being
    changed (an editor saving it) is read again for up to `settle` s before it counts."""
    end = time.monotonic() + settle
    while True:
        try:
            text, st = read_text(path)
            return parse_text(text, path)
        except QueueError:
            if time.monotonic() >= end:
                raise
            before = _sig(path)
            time.sleep(0.05)
            if before is not None and before == _sig(path):
                raise                            # not being changed: a real mistake


def _sig(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
