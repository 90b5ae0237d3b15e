"""Restarting a transit daemon loses no traffic: the demo ring, a 100 packet/s UDP probe
n1 -> n3 across n2 (the transit node), and n2's daemon restarted in the middle of it.

A SIGKILL leaves n2's routes in its kernel, so n2 keeps forwarding while no daemon runs; the new
daemon finds them and keeps them until the overlay has converged.  A SIGTERM with keep-routes
(``--keep-routes``, ``up(keep_routes=True)``) does the same at a clean exit.  Either way the
probe loses nothing, and n2 ends with the routes it had.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(240), pytest.mark.needs("veth")]

PROBE_S = 6.0
RESTART_AT_S = 2.0


def lab(**kw):
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.demo(), name, **kw)
        assert ops.wait_converged(st, timeout=15) is not None, "ring did not converge"
        yield st
    finally:
        report = netns.down(name)
        assert not report["problems"], report


@pytest.fixture(scope="module")
def ring():
    yield from lab()


@pytest.fixture(scope="module")
def keep_ring():
    yield from lab(keep_routes=True)


def node(st, name):
    return next(n for n in st["nodes"] if n["name"] == name)


def all_routes(st):
    return {n["name"]: ops.kernel_routes(n["netns"]) for n in st["nodes"]}


def log_events(st, name, event):
    """The node's daemon log records (JSON lines, appended across restarts) named ``event``."""
    out = []
    with open(node(st, name)["log"]) as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == event:
                out.append(rec)
    return out


def hold_over(st, name):
    """The node's daemon says its restart hold is over (it swept what it did not want)."""
    argv, env = netns.exec_argv(st["name"], name, [sys.executable, "-m", "spines_kr", "show",
                                                   "status", "--json"])
    env["PYTHONPATH"] = netns.child_env()["PYTHONPATH"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True).stdout
    return json.loads(out or "{}").get("restart_hold") is False


def restart_under_probe(st, kill: bool) -> tuple[dict, float]:
    """Run the probe n1 -> n3 and restart n2 after RESTART_AT_S; (probe result, restart time)."""
    assert ops.path(st, "n1", "n3") == ["n1", "n2", "n3"]
    with ops.Probe(st, "n1", "n3", duration=PROBE_S) as probe:
        time.sleep(RESTART_AT_S)  # pacing of the scenario, not a wait for a condition
        t0 = time.monotonic()
        st.update(netns.restart(st["name"], "n2", kill=kill))
        took = time.monotonic() - t0
        res = probe.result()
    return res, took


def check_no_loss(res: dict, took: float) -> None:
    detail = f"probe {res}, restart took {took:.2f} s"
    assert res["sent"] == round(100 * PROBE_S) and res["send_errors"] == 0, detail
    assert res["lost"] == 0, detail
    assert res["first_seq"] == 0 and res["last_seq"] == res["sent"] - 1, detail
    assert res["received"] == res["sent"] and res["duplicates"] == 0, detail


def check_same_routes(st, before: dict) -> None:
    assert ops.wait(lambda: all_routes(st) == before, 10) is not None, (all_routes(st), before)
    assert ops.wait(lambda: hold_over(st, "n2"), 10) is not None
    assert all_routes(st) == before
    assert ops.path(st, "n1", "n3") == ["n1", "n2", "n3"]


def test_sigkill_of_the_transit_daemon_loses_no_probe(ring):
    before = all_routes(ring)
    old = node(ring, "n2")["pid"]
    holds = len(log_events(ring, "n2", "routes.restart_hold"))
    res, took = restart_under_probe(ring, kill=True)
    assert node(ring, "n2")["pid"] != old and node(ring, "n2")["alive"]
    check_no_loss(res, took)
    check_same_routes(ring, before)
    # the new daemon found the routes of the killed one and held them
    hold = log_events(ring, "n2", "routes.restart_hold")
    assert len(hold) == holds + 1 and hold[-1]["stale"] == len(before["n2"])


def test_sigterm_with_keep_routes_loses_no_probe(keep_ring):
    before = all_routes(keep_ring)
    state = json.loads((Path(keep_ring["state_dir"]) / "state.json").read_text())
    assert keep_ring["keep_routes"] and "--keep-routes" in node(state, "n2")["argv"]
    res, took = restart_under_probe(keep_ring, kill=False)
    check_no_loss(res, took)
    check_same_routes(keep_ring, before)
    # a clean exit that kept its routes, which the new daemon held until converged
    assert log_events(keep_ring, "n2", "routes.kept")[-1]["routes"] == len(before["n2"])
    assert log_events(keep_ring, "n2", "routes.restart_hold")[-1]["stale"] == len(before["n2"])
