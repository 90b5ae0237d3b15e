"""The daemon's loop (daemon.loop): deadlines, errors that do not stop it, the worker thread."""

import os
import threading
import time

from spines_kr.daemon.loop import Deadline, Loop


def test_an_exception_in_a_callback_is_counted_and_the_loop_goes_on():
    loop = Loop()
    seen, errors = [], []
    loop.on_error = lambda site, exc: errors.append((site, type(exc).__name__))

    def boom():
        raise struct_error()

    def struct_error():
        import struct
        return struct.error("wedged")

    try:
        loop.call_soon(boom)
        loop.call_later(0.01, seen.append, "timer")
        r, w = os.pipe()
        os.write(w, b"x")
        loop.add_reader(r, lambda: (os.read(r, 1), seen.append("fd"), 1 / 0))
        assert loop.run_for(2.0, until=lambda: "timer" in seen and "fd" in seen)
        loop.remove_reader(r)
        os.close(r)
        os.close(w)
    finally:
        loop.close()
    assert loop.errors and sum(loop.errors.values()) == 2
    assert {e[1] for e in errors} == {"error", "ZeroDivisionError"}


def test_a_deadline_re_arms_cheaply_and_fires_once():
    loop = Loop()
    fired = []
    d = Deadline(loop, lambda: fired.append(loop.time()))
    try:
        t = loop.time() + 0.02
        for _ in range(100):
            d.set(t)  # the same time: no new timer
        assert len(loop._timers) == 1
        d.set(t + 0.01)
        d.set(None)
        d.set(t)
        assert loop.run_for(2.0, until=lambda: bool(fired))
        loop.run_for(0.05)
        assert len(fired) == 1 and fired[0] >= t
    finally:
        loop.close()


def test_a_deadline_that_never_moves_cannot_starve_the_file_descriptors():
    # A part whose deadline callback re-arms it for "now" without progress (a bug, as a data
    # link once had) must still leave the loop to its readers: a control request gets served.
    loop = Loop()
    spins, served = [0], []
    d = Deadline(loop, lambda: (spins.__setitem__(0, spins[0] + 1), d.set(loop.time() - 1)))
    r, w = os.pipe()
    try:
        d.set(loop.time())
        os.write(w, b"x")
        loop.add_reader(r, lambda: served.append(os.read(r, 1)))
        assert loop.run_for(2.0, until=lambda: bool(served))
        assert 1 <= spins[0] < 100  # served within a turn or two, not after a long spin
    finally:
        loop.remove_reader(r)
        os.close(r)
        os.close(w)
        loop.close()


def test_worker_results_come_back_on_the_loop_thread():
    loop = Loop()
    got = []
    try:
        loop.run_in_worker(lambda x: (time.sleep(0.05), x * 2)[1], 21,
                           done=lambda result, error: got.append(
                               (result, error, threading.current_thread() is threading.main_thread())))
        loop.run_in_worker(lambda: 1 / 0, done=lambda result, error: got.append((result, type(error))))
        assert loop.run_for(5.0, until=lambda: len(got) == 2)
    finally:
        loop.close()
    assert got[0] == (42, None, True)
    assert got[1] == (None, ZeroDivisionError)


def test_a_timer_keeps_firing_while_the_worker_blocks():
    """Blocking work (a slow nft, a big netlink batch) runs off the loop."""
    loop = Loop()
    ticks, done = [], []
    try:
        loop.run_in_worker(time.sleep, 0.3, done=lambda r, e: done.append(True))

        def tick():
            ticks.append(loop.time())
            if not done:
                loop.call_later(0.02, tick)
        tick()
        assert loop.run_for(5.0, until=lambda: bool(done))
    finally:
        loop.close()
    assert len(ticks) >= 5
