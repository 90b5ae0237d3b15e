"""LAN hosts' multicast through the overlay's data plane, where the kernel has no multicast
routing (``-k 2``; on a kernel that has it, the daemons are made to see none with
SPINES_KR_WITHOUT): hosts that joined a group by IGMP receive a host's stream exactly once; a
non-member's LAN gets nothing; leaves end the membership.

Ring n1-n2, n2-n3, n3-n5, n5-n4, n4-n1; hosts h1 (sender) on n1, h3 on n3, h5 on n5, h4 on n4.
"""

from __future__ import annotations

import os

import pytest

from spines_kr.ctl import request
from spines_kr.lab import netns, ops, topology
from tests.lab.test_multicast import (M, PORT, RECEIVER, SENDER, TOPO, member, run_in,
                                      rx_multicast)

pytestmark = [pytest.mark.timeout(240), pytest.mark.needs("veth", "bridge")]
TIMEOUT = 10.0


def test_hosts_multicast_crosses_the_data_plane_once_per_member_lan(monkeypatch):
    monkeypatch.setenv("SPINES_KR_WITHOUT", "multicast_routing")
    name = f"sktest{os.urandom(3).hex()}"
    procs = []
    try:
        st = netns.up(topology.parse(TOPO), name)
        assert ops.wait_converged(st, 15) is not None
        n1 = member(st, "n1")["control_socket"]
        status = request(n1, {"cmd": "show", "what": "status"})["data"]
        assert status["kernel_use"]["multicast"] == "dataplane"
        recv = {h: run_in(st, h, RECEIVER, M, PORT, 6) for h in ("h3", "h5")}
        procs += recv.values()
        for p in recv.values():
            assert p.stdout.readline().strip() == "ready"

        def members():
            data = request(n1, {"cmd": "show", "what": "groups"})["data"]
            return next((g["members"] for g in data if g["group"] == M), [])
        assert ops.wait(lambda: len(members()) == 2, TIMEOUT) is not None, members()
        h4_before = rx_multicast(st, "h4")
        sender = run_in(st, "h1", SENDER, M, PORT, 200)
        procs.append(sender)
        sender.wait(timeout=30)
        got = {h: p.communicate(timeout=30)[0].split() for h, p in recv.items()}
        for h, seq in got.items():
            assert len(seq) == len(set(seq)), f"{h} got duplicates"
            assert len(seq) >= 190, f"{h} got {len(seq)} of 200"
        assert rx_multicast(st, "h4") - h4_before < 5  # nothing for a non-member's LAN
        # the hosts left: nobody is a member any more
        assert ops.wait(lambda: members() == [], TIMEOUT) is not None, members()
        data = request(n1, {"cmd": "show", "what": "status"})["data"]["data_plane"]
        assert data["host_multicast"]["host_packets_in"] >= 190
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        netns.down(name)
