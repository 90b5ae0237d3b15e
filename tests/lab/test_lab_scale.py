"""Larger labs with real daemons: a ring with chords (``topology.ring``, degree 4) comes up, every
node's table converges (read over netlink, ``ops.unconverged``), and ``down`` leaves nothing: no
namespace, no process, no state.

The 30-node lab runs in the default suite (about 10 s on 2 cores).  The 100-node lab, three
times in a row, is opt-in (``pytest -m scale tests/lab``: minutes); its daemons get slower
timers (hello 200 ms, dead after 1 s, through ``up(daemon_config=)``), since 100 daemons at the
default 60/250 ms saturate a 2-core machine and then declare live links dead (see
``bench/lab_scale.py`` for the figures of both).
"""

from __future__ import annotations

import secrets

import pytest

from spines_kr.lab import build, netns, ops, topology

pytestmark = [pytest.mark.needs("veth"), pytest.mark.timeout(900)]


def assert_nothing_left(lab: str, st: dict) -> None:
    assert not [ns for ns in build.netns_names() if ns.startswith(f"{lab}-")]
    assert not (netns.STATE_ROOT / lab).exists()
    for n in st["nodes"]:
        info = netns._proc(n["pid"])
        assert info is None or info[1] == "Z" or info[0] != n.get("start_time"), n


def bring_up(lab: str, n: int, converge_s: float, **kw) -> dict:
    st = netns.up(topology.ring(n), lab, **kw)
    assert len(st["nodes"]) == n and all(x["alive"] for x in st["nodes"])
    assert st["phase"] == "up" and all(x["ready_s"] is not None for x in st["nodes"])
    assert ops.wait(lambda: not ops.unconverged(st), converge_s, interval=0.1) is not None, \
        f"not converged after {converge_s} s: {ops.unconverged(st)}"
    return st


def test_a_30_node_lab_converges_and_down_leaves_nothing():
    lab = f"sktest{secrets.token_hex(3)}"
    st = None
    try:
        st = bring_up(lab, 30, 60)
        # The netlink reading agrees with ip's on a node's whole table.
        far = st["nodes"][15]
        assert ops.all_routes(st)[far["name"]] == ops.kernel_routes(far["netns"])
        assert len(ops.kernel_routes(far["netns"])) == 29
    finally:
        report = netns.down(lab)
    assert not report["problems"], report
    assert sorted(report["stopped"] + report["killed"]) == sorted(f"n{i}" for i in range(1, 31))
    assert len(report["netns_deleted"]) == 30
    assert_nothing_left(lab, st)


@pytest.mark.scale
def test_a_100_node_lab_comes_up_three_times_in_three(tmp_path):
    conf = tmp_path / "timers.toml"
    conf.write_text("hello_interval_ms = 200\ndead_interval_ms = 1000\n")
    for run in range(3):
        lab = f"sktest{secrets.token_hex(3)}"
        st = None
        try:
            st = bring_up(lab, 100, 300, daemon_config=conf)
            print(f"run {run + 1}: up {st['timings']}, slowest daemon ready after "
                  f"{max(x['ready_s'] for x in st['nodes'])} s")
        finally:
            report = netns.down(lab)
        assert not report["problems"], report
        assert len(report["stopped"] + report["killed"]) == 100
        assert_nothing_left(lab, st)
