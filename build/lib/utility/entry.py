"""How every entry point ends: user mistakes as one short message, bugs with crash.log."""
from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

from utility.diskspace import is_no_space
from utility.errors import Stopped, UserError


class CrashLog:
    """Holds where crash.log goes once the run directory is known."""

    path: Optional[Path] = None


def run_entry(main: Callable[[list[str]], int | None], argv: Optional[list[str]] = None) -> int:
    """Call ``main``; map UserError to exit 2 (message only) and other exceptions to exit 1 with
    the traceback written to crash.log (and shown on the terminal only in debug runs)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        _write_crash(f"error: {exc}\n")
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Stopped as exc:
        print(f"stopped by {signal.Signals(exc.signum).name}: {exc}; start the same command again to resume",
              file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; start the same command again to resume", file=sys.stderr)
        return 130
    except OSError as exc:
        if not is_no_space(exc):
            return _crashed(exc, argv)
        msg = f"no space left on the device holding {exc.filename or 'an output file'}; free space and start " \
              "the same command again to resume"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or an environment failure: keep the traceback
        return _crashed(exc, argv)


def _crashed(exc: BaseException, argv: list[str]) -> int:
    tb = traceback.format_exc()
    where = _write_crash(tb)
    if "--debug" in argv or where is None:
        print(tb, file=sys.stderr)
    print(f"crashed: {type(exc).__name__}: {exc}" + (f"\n(traceback in {where})" if where else ""),
          file=sys.stderr)
    return 1


def _write_crash(text: str) -> Optional[Path]:
    if CrashLog.path is None:
        return None
    try:
        CrashLog.path.parent.mkdir(parents=True, exist_ok=True)
        CrashLog.path.write_text(text)
        return CrashLog.path
    except OSError:  # e.g. the disk is full: leave no empty crash.log behind
        try:
            if CrashLog.path.exists() and CrashLog.path.stat().st_size == 0:
                CrashLog.path.unlink()
        except OSError:
            pass
        return None
