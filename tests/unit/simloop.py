"""The daemon's loop in simulated time: timers fire in order and the clock jumps to them; the
worker runs its jobs at once (their results come back through the loop, as for real).  No
file descriptors are waited on; parts that only use timers, ``call_soon`` and the worker run
unchanged (``daemon.kernelsync`` is tested this way)."""

from __future__ import annotations

import heapq

from spines_kr.daemon.loop import Loop


class SimClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class InlineWorker:
    """Runs each job when submitted; ``done`` goes through the loop like the real worker's."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.busy_since = None
        self.jobs = 0

    def submit(self, fn, args, done) -> None:
        self.jobs += 1
        result = error = None
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - delivered to done, as the real worker does
            error = e
        if done is not None:
            self.loop.call_soon(done, result, error)

    def close(self, timeout: float = 0) -> None:
        pass


class SimLoop(Loop):
    def __init__(self, now: float = 100.0) -> None:
        self.clock = SimClock(now)
        super().__init__(self.clock)
        self.worker = InlineWorker(self)

    def run_once(self, max_wait: float = float("inf")) -> None:
        """Run what is ready; else jump the clock to the next timer (at most ``max_wait``)."""
        if not self._ready:
            timers = self._timers
            while timers and timers[0][2].cancelled:
                heapq.heappop(timers)
            if timers:
                self.clock.now = max(self.clock.now,
                                     min(timers[0][0], self.clock.now + max_wait))
            elif max_wait != float("inf"):
                self.clock.now += max_wait
        while self._threadsafe:
            self._ready.append(self._threadsafe.popleft())
        super().run_once(0.0)

    def advance(self, seconds: float) -> None:
        """Run everything due in the next ``seconds`` of simulated time."""
        end = self.clock.now + seconds
        while True:
            timers = self._timers
            while timers and timers[0][2].cancelled:
                heapq.heappop(timers)
            if self._ready:
                self.run_once(0.0)
                continue
            if not timers or timers[0][0] > end:
                break
            self.run_once(end - self.clock.now)
        self.clock.now = end
