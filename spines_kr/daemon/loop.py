"""The daemon's event loop: one ``selectors`` wait on file descriptors and the earliest deadline.

Data model:
    Loop            readers/writers by fd, a heap of timers (when, seq, Timer), a queue of
                    callbacks to run soon, a self-pipe that wakes the wait (signals and
                    the worker thread write to it), and an error counter per callback site.
    Timer           one scheduled callback; ``cancel()`` marks it (removed lazily from the heap).
    Deadline        a part's single re-armable deadline (``set(when)``): a part owns one and
                    the loop sleeps until the earliest of all; re-setting the same time costs
                    nothing, so a part may set it after every event.
    Worker          one thread for blocking work (kernel route syncs, tc/nft for setlink):
                    ``loop.run_in_worker(fn, *args, done=callback)`` runs ``fn`` there and
                    ``done(result, error)`` back on the loop.  Jobs run one at a time, in order.

Entry points: ``Loop(clock)``, ``add_reader``/``remove_reader``, ``add_writer``/
``remove_writer``, ``call_soon``, ``call_soon_threadsafe``, ``call_at``/``call_later``,
``add_signal_handler``, ``run_in_worker``, ``run(until)``, ``stop()``, ``time()``.

Why not asyncio: importing it costs about 10 MB of a small router's memory (it pulls in ssl),
and the daemon needs none of its machinery: babeld's shape (every object knows when it must
run next; one wait until the earliest) is all there is.  The callbacks are plain functions.

Errors: a callback that raises is counted (``errors[site]``, site = the callback's qualified
name) and handed to ``on_error(site, exc)`` (the daemon logs it, rate-limited); the loop goes
on.  A part whose deadline callback raises keeps its deadline only if it set one again: the
engine's timer is re-armed in a ``finally`` for that reason (daemon.main).

Signals: ``signal.set_wakeup_fd`` makes a signal wake the wait at once; the handler only
queues the callback (babeld: "signal handlers only set flags").
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import os
import selectors
import signal
import threading
import time
from collections.abc import Callable

INF = float("inf")


class Timer:
    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable, args: tuple) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Deadline:
    """One re-armable deadline owned by a part: ``set(when)`` (inf or None: none)."""

    __slots__ = ("loop", "callback", "timer")

    def __init__(self, loop: Loop, callback: Callable[[], None]) -> None:
        self.loop, self.callback, self.timer = loop, callback, None

    @property
    def when(self) -> float:
        return INF if self.timer is None else self.timer.when

    def set(self, when: float | None) -> None:
        when = INF if when is None else when
        timer = self.timer
        if timer is not None:
            if timer.when == when and not timer.cancelled:
                return
            timer.cancel()
            self.timer = None
        if when != INF:
            self.timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.callback()

    def cancel(self) -> None:
        self.set(None)


class Worker:
    """One thread running blocking jobs in order; results go back to the loop."""

    def __init__(self, loop: Loop, name: str = "kernel") -> None:
        self.loop = loop
        self._jobs: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._name = name
        self._closed = False
        self.busy_since: float | None = None  # time.monotonic() when the running job started

    def submit(self, fn: Callable, args: tuple, done: Callable | None) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("worker closed")
            self._jobs.append((fn, args, done))
            self._cv.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if not self._jobs:
                    return
                fn, args, done = self._jobs.popleft()
                self.busy_since = time.monotonic()
            result = error = None
            try:
                result = fn(*args)
            except BaseException as e:  # noqa: BLE001 - delivered to the loop, never lost
                error = e
            finally:
                self.busy_since = None
            if done is not None:
                self.loop.call_soon_threadsafe(done, result, error)

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued jobs (up to ``timeout``) and stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)


class Loop:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.time = clock
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._ready: collections.deque = collections.deque()
        self._threadsafe: collections.deque = collections.deque()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._rfd, selectors.EVENT_READ, (self._drain_wakeup, None))
        self._signals: dict[int, Callable] = {}
        self._old_wakeup_fd: int | None = None
        self._stopped = False
        self.worker = Worker(self)
        self.errors: collections.Counter[str] = collections.Counter()
        self.on_error: Callable[[str, BaseException], None] | None = None
        self.wakeups = 0

    # -- file descriptors --

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._update(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        self._update(fd, selectors.EVENT_READ, None)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._update(fd, selectors.EVENT_WRITE, callback)

    def remove_writer(self, fd: int) -> None:
        self._update(fd, selectors.EVENT_WRITE, None)

    def _update(self, fd: int, event: int, callback) -> None:
        try:
            key = self._sel.get_key(fd)
        except (KeyError, ValueError):
            key = None
        reader, writer = key.data if key else (None, None)
        if event == selectors.EVENT_READ:
            reader = callback
        else:
            writer = callback
        mask = (selectors.EVENT_READ if reader else 0) | (selectors.EVENT_WRITE if writer else 0)
        if key is None:
            if mask:
                self._sel.register(fd, mask, (reader, writer))
        elif mask:
            self._sel.modify(fd, mask, (reader, writer))
        else:
            self._sel.unregister(fd)

    # -- callbacks and timers --

    def call_soon(self, callback: Callable, *args) -> None:
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable, *args) -> None:
        self._threadsafe.append((callback, args))
        try:
            os.write(self._wfd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake already

    def call_at(self, when: float, callback: Callable, *args) -> Timer:
        timer = Timer(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, callback: Callable, *args) -> Timer:
        return self.call_at(self.time() + delay, callback, *args)

    def run_in_worker(self, fn: Callable, *args, done: Callable | None = None) -> None:
        """Run ``fn(*args)`` in the worker thread; ``done(result, error)`` back on the loop."""
        self.worker.submit(fn, args, done)

    # -- signals --

    def add_signal_handler(self, signum: int, callback: Callable[[], None]) -> None:
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        self._signals[signum] = callback
        signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        callback = self._signals.get(signum)
        if callback is not None:
            self._ready.append((callback, ()))

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        while self._threadsafe:
            self._ready.append(self._threadsafe.popleft())

    # -- running --

    def stop(self) -> None:
        self._stopped = True
        try:
            os.write(self._wfd, b"\0")
        except BlockingIOError:
            pass

    def _call(self, callback: Callable, args: tuple) -> None:
        try:
            callback(*args)
        except Exception as e:  # noqa: BLE001 - one input or timer must not stop the loop
            site = getattr(callback, "__qualname__", repr(callback))
            self.errors[site] += 1
            if self.on_error is not None:
                try:
                    self.on_error(site, e)
                except Exception:  # noqa: BLE001 - the error report itself failed
                    pass
            else:
                raise

    def run_once(self, max_wait: float = INF) -> None:
        """Wait for the first fd or deadline (at most ``max_wait``), run what is due."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        if self._ready:  # (the worker's results come with a byte on the pipe: wait for it)
            timeout = 0.0
        else:
            timeout = max_wait
            if timers:
                timeout = min(timeout, max(0.0, timers[0][0] - self.time()))
        try:
            events = self._sel.select(None if timeout == INF else timeout)
        except InterruptedError:
            events = []
        self.wakeups += 1
        for key, mask in events:
            reader, writer = key.data
            if mask & selectors.EVENT_READ and reader is not None:
                self._call(reader, ())
            if mask & selectors.EVENT_WRITE and writer is not None:
                self._call(writer, ())
        now = self.time()
        # Only timers armed before this point run now: one a callback arms for "now" or
        # earlier waits for the next turn, so a part whose deadline does not move cannot keep
        # the loop from its file descriptors (it spins, visibly, instead of hanging).
        first_new = next(self._seq)
        while timers and (timers[0][0] <= now or timers[0][2].cancelled):
            if timers[0][1] > first_new and not timers[0][2].cancelled:
                break
            _, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.cancelled = True  # spent: cancel() on it is a no-op now
                self._call(timer.callback, timer.args)
        ready = self._ready
        for _ in range(len(ready)):  # only what was queued before: call_soon chains wait a turn
            callback, args = ready.popleft()
            self._call(callback, args)

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Run until ``stop()`` (or ``until()`` is true)."""
        self._stopped = False
        while not self._stopped and not (until is not None and until()):
            self.run_once()

    def run_for(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Run at most ``seconds`` (also after a ``stop()``: the daemon's exit runs its last
        kernel work this way); True when ``until()`` became true."""
        self._stopped = False
        end = self.time() + seconds
        while True:
            if until is not None and until():
                return True
            left = end - self.time()
            if left <= 0 or self._stopped:
                return until is not None and until()
            self.run_once(left)

    def close(self) -> None:
        self.worker.close()
        for signum in self._signals:
            signal.signal(signum, signal.SIG_DFL)
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
        self._sel.close()
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise
