"""Reliable flooding on one link (daemon/flooding.py): its deadline always means work.

The engine's loop sleeps until ``LinkFlood.due()`` and then calls ``run``; a due time that
``run`` does not serve would wake it at the same instant forever (a busy loop in the daemon, a
hang in the simulator).  So after ``run(now)`` the link's next due time is always later than
``now``, whatever mix of queued updates, acknowledgements, retransmissions, pacing and token
budget it holds.
"""

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from spines_kr.daemon.flooding import FloodParams, Flooding, LinkFlood
from spines_kr.wire import packets as wire

ops = st.lists(st.tuples(st.sampled_from(["queue", "ack", "acked", "run", "wait"]),
                         st.integers(1, 6), st.floats(0, 0.5)), max_size=60)


@given(ops, st.floats(5, 400), st.floats(0.001, 0.3), st.floats(0.01, 0.5))
def test_run_serves_everything_due(steps, budget_pps, pace, retransmit):
    params = FloodParams(budget_pps=budget_pps, pace=pace, retransmit=retransmit)
    fl, f = LinkFlood(), Flooding(params, Counter())
    now, seqs = 0.0, Counter()
    for op, origin, dt in steps:
        if op == "queue":
            seqs[origin] += 1
            f.queue(fl, wire.LSA.make(origin, seqs[origin], [], [], []), now)
        elif op == "ack":
            f.acknowledge(fl, wire.LSA.make(origin, 1, [], [], []), now)
        elif op == "acked":
            f.acked(fl, origin, seqs[origin])
        elif op == "wait":
            now += dt
        else:
            now = max(now, fl.due()) if fl.due() != float("inf") else now
            f.run(fl, now, 0, 99)
            assert fl.due() > now


def test_a_retransmission_waits_for_pacing_and_then_goes():
    fl, f = LinkFlood(), Flooding(FloodParams(pace=0.05, retransmit=0.08), Counter())
    f.queue(fl, wire.LSA.make(1, 1, [], [], []), 0.0)
    assert len(f.run(fl, 0.0, 0, 99)) == 1
    f.queue(fl, wire.LSA.make(2, 1, [], [], []), 0.0)  # waits for pacing (0.05)
    assert f.run(fl, 0.01, 0, 99) == [] and fl.due() == 0.05
    # LSA 2 goes at 0.05; LSA 1 is due again at 0.08 but paced to 0.1, and goes then
    assert len(f.run(fl, 0.05, 0, 99)) == 1
    assert fl.due() == 0.1
    out = f.run(fl, 0.1, 0, 99)
    assert len(out) == 1 and fl.unacked[1].tries == 1
