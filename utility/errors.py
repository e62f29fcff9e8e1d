"""User-facing errors: a mistake by the user ends with one short message and a non-zero exit."""
from __future__ import annotations

import signal

# the signals that stop a run after a checkpoint (training.stopsignal); DataLoader workers ignore them
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class UserError(Exception):
    """A problem the user can fix (bad key, missing folder, wrong checkpoint).

    Entry points print only the message (no traceback) and exit with code 2.
    """

    exit_code = 2

    def __init__(self, message: object = "") -> None:
        super().__init__(shorten(str(message)))


MAX_LINE = 1000  # characters of one message line (a 35 MB expanded value must not reach the terminal)
MAX_LINES = 12


def shorten(text: str) -> str:
    """Every user-facing message kept short whatever the value it quotes: the one place it is cut."""
    lines = text.splitlines() or [""]
    out = [ln if len(ln) <= MAX_LINE else f"{ln[:MAX_LINE - 60]} ...[{len(ln) - MAX_LINE + 60} characters cut]"
           for ln in lines[:MAX_LINES]]
    if len(lines) > MAX_LINES:
        out.append(f"... and {len(lines) - MAX_LINES} more lines")
    return "\n".join(out)


class SettingError(ValueError):
    """A builder (optimizer, scheduler) cannot serve a configured value; :func:`user_errors` reports it as a
    UserError. Other exceptions of a builder stay bugs with their traceback."""


def user_errors(fn, *args, **kwargs):
    """Call a builder; its SettingErrors (bad settings) become UserErrors naming the builder."""
    try:
        return fn(*args, **kwargs)
    except SettingError as exc:
        raise UserError(f"{getattr(fn, '__name__', 'setting')}: {exc}") from None


class Stopped(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; entry points exit 128+signal."""

    def __init__(self, signum: int, where: str) -> None:
        super().__init__(where)
        self.signum = signum
        self.exit_code = 128 + signum
