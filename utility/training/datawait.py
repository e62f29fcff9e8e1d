"""How much of each training step waits for data, and the images/s, in every run.

The engine pulls batches through :meth:`DataWait.batches`, which times each ``next()`` of the
loader. Window figures are taken when the engine flushes its log rows: that flush waits for the
device anyway, so the wall time of a window is exact even though CUDA runs asynchronously (a single
step's host time is not). A run whose loader keeps the model waiting more than
:data:`NOTICE_SHARE` of the time is told so once, with the usual fixes.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

# train.log columns written after the predecessor's
WAIT_COLUMNS = ["data_wait", "images_per_s"]
NOTICE_SHARE = 0.10  # more waiting than this is flagged (once per run)
NOTICE_MIN_STEPS = 4  # steps counted (each epoch's first one excluded) before the share is judged


@dataclass
class WindowStats:
    """One flush window: share of wall time spent in the loader (0..1) and images per second
    (all processes together)."""

    data_wait: float
    images_per_s: float


def batch_images(batch: Any, fallback: int) -> int:
    """Images in one batch: the leading size of its image tensor (SSL views included as one)."""
    x = batch.get("image") if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], torch.Tensor):
        x = x[0]
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.ndim > 0 else fallback


class DataWait:
    """Loader wait and throughput of the training loop (one per Trainer)."""

    def __init__(self, world: int = 1, notice: bool = True, clock: Callable[[], float] = time.perf_counter) -> None:
        self.world = max(1, world)
        self.clock = clock
        self.notice_enabled = notice
        self.noticed = False
        self._win_start = clock()
        self._win_wait = 0.0
        self._win_images = 0
        # run totals over counted steps (each epoch's first batch excluded: worker start-up)
        self.total_wait = 0.0
        self.total_time = 0.0
        self.counted_steps = 0
        self._first_of_epoch = True
        self._step_start: Optional[float] = None
        self._step_wait = 0.0

    def batches(self, loader: Iterable[Any], fallback_batch: int = 1) -> Iterator[Any]:
        """The loader's batches, each ``next()`` timed; starts a new window (and epoch)."""
        self.start_window()
        self._first_of_epoch = True
        it = iter(loader)
        while True:
            t0 = self.clock()
            self._close_step(t0)
            try:
                batch = next(it)
            except StopIteration:
                self._step_start = None
                return
            t1 = self.clock()
            self._step_start, self._step_wait = t0, t1 - t0
            self._win_wait += t1 - t0
            self._win_images += batch_images(batch, fallback_batch)
            yield batch

    def _close_step(self, now: float) -> None:
        """Add the step that just ended (host time from its ``next()`` to the following one)."""
        if self._step_start is None:
            return
        if self._first_of_epoch:
            self._first_of_epoch = False
        else:
            self.total_wait += self._step_wait
            self.total_time += now - self._step_start
            self.counted_steps += 1
        self._step_start = None

    def start_window(self) -> None:
        self._win_start = self.clock()
        self._win_wait, self._win_images = 0.0, 0

    def window(self) -> WindowStats:
        """Figures since the last call (call it after the device has been waited for); starts the next."""
        dt = max(self.clock() - self._win_start, 1e-9)
        stats = WindowStats(min(max(self._win_wait / dt, 0.0), 1.0), self._win_images * self.world / dt)
        self.start_window()
        return stats

    @property
    def share(self) -> float:
        """Run-wide share of step time spent waiting for data (counted steps)."""
        return self.total_wait / self.total_time if self.total_time > 0 else 0.0

    def check_notice(self, at_epoch_end: bool = False) -> Optional[str]:
        """The loader-bound notice, printed once per run when the share is over the threshold."""
        if self.noticed or not self.notice_enabled:
            return None
        if self.counted_steps < NOTICE_MIN_STEPS and not (at_epoch_end and self.counted_steps):
            return None
        if self.share <= NOTICE_SHARE:
            return None
        self.noticed = True
        msg = (f"note: {100 * self.share:.0f} % of step time was spent waiting for data (loader-bound); "
               "usual fixes: more num_workers, opmode live_cache or pre_cache (images cached in memory), "
               "tf_device gpu (augmentation on the GPU instead of the loader workers)")
        print(msg, file=sys.stderr, flush=True)
        return msg
