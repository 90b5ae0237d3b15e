"""Chaos soak with real daemons: a ring of 10 with 4 chords (``tests/lab/chaos.py``), random
silent link failures, carrier losses and SIGKILL + restarts; after each round's quiet period every
node's kernel table equals the oracle's (networkx on the live links, lowest-ID first hop), every
daemon is alive and no route of another protocol changed.

Bounded: ROUNDS rounds or BUDGET_S seconds, whichever comes first (at least MIN_ROUNDS); then
every failure is healed and everything checked once more.  The seed is printed (run with -s) and
is in every failure message; set SPINES_KR_CHAOS_SEED to replay one.  ``bench/chaos.py`` runs the
same for longer.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time

import pytest

from spines_kr.lab import netns, ops
from tests.lab import chaos

# silent failures are nftables drops
pytestmark = [pytest.mark.timeout(400), pytest.mark.needs("veth", "nftables")]

ROUNDS = 25
MIN_ROUNDS = 4
BUDGET_S = 120.0


@pytest.fixture
def lab():
    name = f"sktest{secrets.token_hex(3)}"
    try:
        st = netns.up(chaos.topology(), name)
        yield st
    finally:
        report = netns.down(name)
        assert not report["problems"], report


def test_chaos_rounds_end_with_every_table_equal_to_the_oracle(lab):
    seed = int(os.environ.get("SPINES_KR_CHAOS_SEED") or secrets.randbits(32))
    print(f"chaos seed {seed}")
    assert ops.wait(lambda: chaos.actual_routes(lab) == chaos.expected_routes(lab), 40) is not None, \
        chaos.route_diff(chaos.expected_routes(lab), chaos.actual_routes(lab))
    chaos.add_foreign_routes(lab)
    run = chaos.Chaos(lab, seed)
    start = time.monotonic()
    try:
        while len(run.records) < ROUNDS and (len(run.records) < MIN_ROUNDS
                                             or time.monotonic() - start < BUDGET_S):
            rec = run.round()
            print(f"round {rec['round']}: {'; '.join(rec['actions'])}: converged in "
                  f"{rec['converge_s']:.3f} s (failed: {rec['failed'] or 'none'})")
        final = run.heal_all()
    except chaos.ChaosFailure as e:
        logs = chaos.save_logs(run.st, tempfile.mkdtemp(prefix=f"{lab['name']}-logs-"))
        raise AssertionError(f"{e}\n(daemon logs copied to {logs})") from None
    n = len(run.records) - 1  # the final heal is not a round
    times = [r["converge_s"] for r in run.records[:-1]]
    print(f"chaos seed {seed}: {n} rounds in {time.monotonic() - start:.1f} s, every table equal "
          f"to the oracle's; converged in max {max(times):.3f} s, final heal "
          f"{final['converge_s']:.3f} s")
    assert n >= MIN_ROUNDS, f"only {n} rounds ran (seed {seed})"
