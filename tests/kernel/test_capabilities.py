"""The capability probe against ground truth, in a throwaway namespace (``sktest-<hex>``).

For every feature the probe can be checked against, the test does what an operator would do
(``ip link add sk0 type KIND``, ``tc qdisc add dev lo root tbf``, ``ip rule show``...) in the
test's own namespace and compares.  It never asserts what the kernel has: the same test passes
on a kernel without multicast routing and on one with every feature, as long as the probe tells
the truth.  Probing must leave the namespace as it was.

The suite's probe of the root namespace (``tests.conftest.capabilities``) runs before the test's
namespace is made: a probe may load a module (a kind the kernel looks up is auto-loaded), and
loading ip_gre or ipip makes the kernel add fallback devices (gre0, tunl0...) to every
namespace, new ones included.  That is the module's doing, once per boot, not the probe's.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from spines_kr.netlink.capabilities import FEATURES, probe
from tests.conftest import capabilities

pytestmark = pytest.mark.kernel

# The minimal arguments each kind needs to be created (nothing else exists in the namespace).
KINDS = {
    "veth": ["peer", "name", "sk1"],
    "bridge": [],
    "vxlan": ["id", "42", "dstport", "4789", "local", "127.0.0.1"],
    "gre": ["remote", "10.0.0.2", "local", "10.0.0.1"],
    "ipip": ["remote", "10.0.0.2", "local", "10.0.0.1"],
    "vrf": ["table", "10"],
    "dummy": [],
}
TBF = ["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "50ms"]
NETEM = ["netem", "delay", "1ms"]


def run(ns: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60)


def snapshot(ns: str) -> tuple:
    """What a probe could change: devices, addresses, lo's qdisc, routes (IPv4 and IPv6)."""
    def out(*argv: str):
        proc = run(ns, *argv)
        assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
        return json.loads(proc.stdout or "[]")

    return (out("ip", "-j", "-d", "link", "show"), out("ip", "-j", "addr", "show"),
            out("tc", "-j", "qdisc", "show"), out("ip", "-j", "-4", "route", "show", "table", "all"),
            out("ip", "-j", "-6", "route", "show", "table", "all"))


@pytest.fixture
def ns(request):
    """The test's namespace, made after the suite's root-namespace probe (see the docstring)."""
    capabilities()
    return request.getfixturevalue("netns")


def probed(ns: str):
    """A fresh probe of ``ns``, which must leave it as it was."""
    before = snapshot(ns)
    caps = probe(ns, refresh=True)
    assert snapshot(ns) == before, "the probe changed the namespace"
    return caps


@pytest.mark.parametrize("kind", list(KINDS))
def test_link_kind_agrees_with_ip_link_add(ns, kind):
    caps = probed(ns)
    assert caps.present[kind] is not None, caps.detail[kind]
    made = run(ns, "ip", "link", "add", "sk0", "type", kind, *KINDS[kind])
    if made.returncode == 0:
        assert run(ns, "ip", "link", "del", "sk0").returncode == 0
    else:  # missing, and for no other reason (a wrong argument here would be a test bug)
        assert "Unknown device type" in made.stderr, made.stderr
    assert caps.present[kind] is (made.returncode == 0), (kind, made.stderr, caps.detail[kind])
    assert caps.has(kind) is (made.returncode == 0)
    if not caps.has(kind):
        assert caps.missing_reason(kind) == (
            f"kernel without {FEATURES[kind].title} ({FEATURES[kind].kconfig})")
    # a kernel feature, the same in every namespace: the suite's probe says the same
    assert capabilities().has(kind) is caps.has(kind)


def test_multicast_routing_agrees_with_the_kernel(ns):
    """``ip mroute show`` is no witness: without CONFIG_IP_MROUTE the kernel answers its dump
    (family RTNL_FAMILY_IPMR) with the dump of every family, which ip filters to nothing, and
    exits 0.  ipmr's own proc files exist exactly when it is there; ``ip mrule show`` works
    exactly when it has multiple tables (the rule dump of a family without rules fails)."""
    caps = probed(ns)
    vif_table = run(ns, "cat", "/proc/net/ip_mr_vif")
    assert caps.present["multicast_routing"] is (vif_table.returncode == 0), vif_table.stderr
    mrules = run(ns, "ip", "mrule", "show")
    assert caps.present["multicast_tables"] is (mrules.returncode == 0), mrules.stderr
    if not caps.has("multicast_routing"):
        assert not caps.has("multicast_tables")
        assert caps.missing_reason("multicast_routing") == (
            "kernel without IPv4 multicast routing (CONFIG_IP_MROUTE)")
    assert capabilities().has("multicast_routing") is caps.has("multicast_routing")


def test_policy_rules_agree_with_ip_rule_show(ns):
    caps = probed(ns)
    shown = run(ns, "ip", "rule", "show")
    assert caps.present["policy_rules"] is (shown.returncode == 0), shown.stderr
    if shown.returncode != 0:
        assert "Address family not supported" in shown.stderr, shown.stderr


@pytest.mark.parametrize("kind, qdisc", [("tbf", TBF), ("netem", NETEM)])
def test_qdisc_agrees_with_tc(ns, kind, qdisc):
    caps = probed(ns)
    added = run(ns, "tc", "qdisc", "add", "dev", "lo", "root", *qdisc)
    if added.returncode == 0:
        shown = json.loads(run(ns, "tc", "-j", "qdisc", "show", "dev", "lo").stdout)
        assert [q["kind"] for q in shown if q.get("root")] == [kind]
        assert run(ns, "tc", "qdisc", "del", "dev", "lo", "root").returncode == 0
    else:
        assert "Specified qdisc kind is unknown" in added.stderr, added.stderr
    assert caps.present[kind] is (added.returncode == 0), (added.stderr, caps.detail[kind])
    assert capabilities().has(kind) is caps.has(kind)


def test_every_feature_is_judged_as_root(ns):
    """As root nothing is "unknown": each feature is there or not, with a reason if not."""
    caps = probed(ns)
    assert set(caps.present) == set(FEATURES)
    assert {k: v for k, v in caps.present.items() if v is None} == {}
    for key in caps.missing():
        assert caps.missing_reason(key)
    assert probe(ns) == caps  # remembered per namespace
