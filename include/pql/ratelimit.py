"""A client-side budget: at most N calls in any rolling window, waiting when it is spent.

Mixpanel allows 60 export queries an hour and 3 a second per project; a backfill that asks for
more gets 429s for the rest of the hour. Spending the budget evenly avoids that.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class Budget:
    """`acquire()` returns once a call fits in every (limit, window) pair, sleeping if needed."""

    def __init__(self, limits: list[tuple[int, float]], *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):  # fmt: skip
        self.limits = limits
        self.clock, self.sleep = clock, sleep
        self.calls: deque[float] = deque()
        self._lock = threading.Lock()  # threads of one task share the budget

    def acquire(self) -> float:
        """Wait for a free slot; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                wait = self._try(self.clock())
            if wait <= 0:
                return waited
            self.sleep(wait)
            waited += wait

    def _try(self, now: float) -> float:
        """Take a slot at `now` (returns 0) or say how long until one frees up."""
        longest = max(w for _, w in self.limits)
        while self.calls and now - self.calls[0] >= longest:
            self.calls.popleft()
        wait = 0.0
        for limit, window in self.limits:
            recent = [t for t in self.calls if now - t < window]
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + window - now)
        if wait <= 0:
            self.calls.append(now)
        return wait
