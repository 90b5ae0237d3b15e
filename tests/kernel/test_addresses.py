"""Group addresses on lo, against the real kernel in a private namespace."""

import subprocess

from spines_kr.netlink.addresses import LoopbackAddresses


def lo_addrs(ns):
    out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "lo"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines()}


def test_sync_adds_ours_and_sweeps_only_ours(netns):
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.9.9.9/32", "dev", "lo"], check=True)
    a = LoopbackAddresses(netns=netns)
    try:
        assert a.sync({"240.1.1.1", "240.2.2.2"}) == (["240.1.1.1", "240.2.2.2"], [])
        assert {"240.1.1.1/32", "240.2.2.2/32", "10.9.9.9/32"} <= lo_addrs(netns)
        fresh = LoopbackAddresses(netns=netns)  # a restarted daemon finds them by protocol
        assert fresh.dump() == {"240.1.1.1", "240.2.2.2"}
        assert fresh.sync({"240.2.2.2"}) == ([], ["240.1.1.1"])
        fresh.sync(set())
        fresh.close()
        assert "10.9.9.9/32" in lo_addrs(netns) and "240.2.2.2/32" not in lo_addrs(netns)
    finally:
        a.close()
