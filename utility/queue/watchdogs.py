"""Per-job limits the queue enforces itself: `timeout` and `no_output_timeout` (SIGTERM, then
SIGKILL after the kill grace), and the escalation of a stop that the job ignores."""
from __future__ import annotations

import signal
import time
from typing import Callable, Iterable, Optional

from utility.queue.book import Active


class Watchdogs:
    def __init__(self, backend, kill_grace: float, say: Callable[[str], None]):
        self.backend, self.kill_grace, self.say = backend, kill_grace, say

    def check(self, active: Iterable[Active]) -> Optional[float]:
        """Enforce the limits; return the nearest future deadline (monotonic) or None."""
        now = time.monotonic()
        deadlines = []
        for act in list(active):
            if not act.running:
                if act.retry_at is not None:
                    deadlines.append(act.retry_at)
                continue
            if act.kill_at is not None:
                if now >= act.kill_at:
                    self.backend.kill(act.token)
                    act.kill_at = now + 5.0
                deadlines.append(act.kill_at)
                continue
            if not act.stopping:
                deadlines += self._limits(act, now)
        return min(deadlines, default=None)

    def _limits(self, act: Active, now: float) -> list:
        o = act.line.options
        out = []
        if o.timeout is not None and not self.backend.enforces_timeout:
            if now - act.started >= o.timeout:
                self.stop(act, f"timeout after {o.timeout:g} s")
                return []
            out.append(act.started + o.timeout)
        if o.no_output_timeout is not None:
            last = max(self.backend.last_output(act.token), act.started)
            if now - last >= o.no_output_timeout:
                self.stop(act, f"no output for {o.no_output_timeout:g} s")
                return []
            out.append(last + o.no_output_timeout)
        return out

    def stop(self, act: Active, reason: str) -> None:
        """SIGTERM now (the job's end then counts as an attempt), SIGKILL after the grace."""
        self.say(f"L{act.line.lineno}: {reason}; stopping it")
        act.kill_reason = reason
        self.backend.signal(act.token, signal.SIGTERM)
        act.kill_at = time.monotonic() + self.kill_grace
