"""Link emulation against the real kernel: tbf through rtnetlink, nftables drops, the reports.

Every test works in namespaces of its own (``sktest-<hex>``).  Packets are sent only between
10.0.0.1 (v0, in ``netns``) and 10.0.0.2 (the veth peer moved into a second namespace, so that
they cross the device whose egress is emulated instead of being delivered locally).

What the kernel offers decides what ``apply`` does: with netem, latency and loss (and then
everything asked) go into one netem qdisc; without it, bandwidth is tbf and loss an nftables
drop.  Tests that depend on it branch on the suite's probe (``tests.conftest.capabilities``, the
daemon's own) and skip, naming the feature, only for what the kernel lacks.
"""

from __future__ import annotations

import json
import re
import secrets
import select
import socket
import subprocess
import time

import pytest

from pyroute2.netlink.rtnl.tcmsg import tcmsg

from spines_kr.netlink import emulation
from spines_kr.netlink.emulation import (
    CLEARED,
    KERNEL_NETEM,
    KERNEL_NFT_DROP,
    KERNEL_TBF,
    OFF,
    apply,
    clear_all,
    probe,
)
from spines_kr.netlink.nsenter import socket_in_netns
from tests.conftest import capabilities, require
from tests.kernel.conftest import add_veth, ip

pytestmark = [pytest.mark.kernel, pytest.mark.needs("veth")]

INSTANCE = 8100  # the overlay's UDP port
HANDLE = "1fa4:"  # 8100 in hex: our root qdisc's handle
OTHER_PORT = 9000


def run_in(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=60)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} in {ns}: {proc.stderr.strip()}")
    return proc


def root_qdisc(ns: str, dev: str) -> dict:
    qdiscs = json.loads(run_in(ns, "tc", "-j", "qdisc", "show", "dev", dev).stdout or "[]")
    return next(q for q in qdiscs if q.get("root"))


def ruleset(ns: str) -> list[dict]:
    return json.loads(run_in(ns, "nft", "-j", "list", "ruleset").stdout)["nftables"]


def tables(ns: str) -> set[str]:
    if not capabilities().has("nftables"):
        return set()  # no nftables (kernel or nft program): no table can exist
    return {item["table"]["name"] for item in ruleset(ns) if "table" in item}


def emulate(veth, ns, instance=INSTANCE, **params):
    args = dict(bandwidth_kbps=None, latency_ms=None, loss_pct=None, burst_pct=None)
    args.update(params)
    return apply(veth.ifindex, veth.name, instance=instance, netns=ns, **args)


@pytest.fixture
def pair(netns, veth):
    """v0 (10.0.0.1) in ``netns``; its peer v1 (10.0.0.2) in a second namespace."""
    far = f"sktest-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", far], check=True)
    try:
        ip(netns, "link", "set", veth.peer, "netns", far)
        ip(far, "link", "set", "lo", "up")
        ip(far, "addr", "add", "10.0.0.2/24", "dev", veth.peer)
        ip(far, "link", "set", veth.peer, "up")
        yield far
    finally:
        subprocess.run(["ip", "netns", "del", far], check=False)


def receive(sock: socket.socket, count: int, timeout: float = 10.0) -> int:
    """Datagrams read from ``sock`` until ``count`` arrived or ``timeout`` passed."""
    got, deadline = 0, time.monotonic() + timeout
    while got < count and (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            sock.recv(2048)
            got += 1
    return got


def pending(sock: socket.socket) -> int:
    """Datagrams already queued on ``sock``, read without waiting."""
    got = 0
    while select.select([sock], [], [], 0)[0]:
        sock.recv(2048)
        got += 1
    return got


def ping_received(ns: str, count: int) -> int:
    out = run_in(ns, "ping", "-f", "-q", "-c", str(count), "-W", "1", "10.0.0.2", check=False)
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out.stdout)
    assert match, out.stdout + out.stderr
    assert int(match[1]) == count
    return int(match[2])


def has_netem() -> bool:
    return capabilities().has("netem")


# --- capabilities ---------------------------------------------------------------------------


def tc_accepts(ns: str, dev: str, *qdisc: str) -> bool:
    """Whether tc can make ``qdisc`` the root of ``dev`` (removed again when it could)."""
    ok = run_in(ns, "tc", "qdisc", "add", "dev", dev, "root", *qdisc, check=False).returncode == 0
    if ok:
        run_in(ns, "tc", "qdisc", "del", "dev", dev, "root")
    return ok


def test_probe_agrees_with_tc_and_changes_nothing(netns, veth):
    run_in(netns, "tc", "qdisc", "add", "dev", "lo", "root", "handle", "7:", "pfifo")
    before = root_qdisc(netns, "lo")
    caps = probe(netns, refresh=True)
    assert root_qdisc(netns, "lo") == before  # the probe never grafts anything
    assert caps.detail == ""
    assert caps.nft == (subprocess.run(["which", "nft"], capture_output=True).returncode == 0)
    # tbf and netem: whatever tc finds, on a device of the test's own namespace; the suite's
    # probe (the daemon's) agrees.
    tc_tbf = tc_accepts(netns, veth.peer, "tbf", "rate", "1mbit", "burst", "32kbit", "latency",
                        "50ms")
    tc_netem = tc_accepts(netns, veth.peer, "netem", "delay", "1ms")
    assert (caps.tbf, caps.netem) == (tc_tbf, tc_netem)
    assert (capabilities().has("tbf"), has_netem()) == (tc_tbf, tc_netem)
    assert probe(netns) == caps  # remembered


def test_probe_of_missing_namespace_reports_instead_of_raising():
    caps = probe("sktest-does-not-exist", refresh=True)
    assert not caps.tbf and not caps.netem and "probe failed" in caps.detail


# --- bandwidth: tbf -------------------------------------------------------------------------


@pytest.mark.needs("tbf")
def test_bandwidth_installs_tbf_reapply_changes_it_clear_removes_it(netns, veth):
    default = root_qdisc(netns, veth.name)
    result = emulate(veth, netns, bandwidth_kbps=1000)
    assert result.outcome == {"bandwidth": KERNEL_TBF, "latency": OFF, "loss": OFF, "burst": OFF}
    assert result.daemon_covered == {"bandwidth"} and result.errors == ()
    assert result.summary == "v0: bandwidth 1000 kbit/s kernel:tbf"
    q = root_qdisc(netns, veth.name)
    assert (q["kind"], q["handle"], q["options"]["rate"]) == ("tbf", HANDLE, 125000)
    assert q["options"]["burst"] >= 2 * 1514  # never below a frame, or it never leaves

    result = emulate(veth, netns, bandwidth_kbps=2000)
    assert result.outcome["bandwidth"] == KERNEL_TBF
    q = root_qdisc(netns, veth.name)
    assert (q["kind"], q["handle"], q["options"]["rate"]) == ("tbf", HANDLE, 250000)
    assert len(json.loads(run_in(netns, "tc", "-j", "qdisc", "show", "dev", veth.name).stdout)) == 1

    result = emulate(veth, netns)
    assert result.outcome == dict.fromkeys(emulation.PARAMETERS, CLEARED)
    assert result.summary == "v0: emulation cleared"
    assert root_qdisc(netns, veth.name) == default
    assert emulate(veth, netns, bandwidth_kbps=0).outcome["bandwidth"] == CLEARED  # idempotent


@pytest.mark.needs("tbf")
@pytest.mark.parametrize("theirs", [["handle", "5:", "pfifo"],
                                    ["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "50ms"]])
def test_root_qdisc_of_someone_else_is_left_alone(netns, veth, theirs):
    run_in(netns, "tc", "qdisc", "add", "dev", veth.name, "root", *theirs)
    before = root_qdisc(netns, veth.name)
    result = emulate(veth, netns, bandwidth_kbps=1000)
    assert result.outcome["bandwidth"] == (
        f"daemon-only (root qdisc {before['kind']} {before['handle']} on v0 is not ours; "
        "left alone)")
    assert result.daemon_covered == frozenset()
    assert root_qdisc(netns, veth.name) == before
    assert emulate(veth, netns).outcome["bandwidth"] == CLEARED
    assert clear_all(INSTANCE, netns) == []
    assert root_qdisc(netns, veth.name) == before


@pytest.mark.needs("tbf")
def test_kernel_refusal_is_reported_not_raised(netns):
    gone = emulation.apply(4242, "nosuch0", bandwidth_kbps=1000, latency_ms=None, loss_pct=None,
                           burst_pct=None, instance=INSTANCE, netns=netns)
    assert gone.outcome["bandwidth"].startswith("daemon-only (kernel refused tbf: ")
    assert gone.errors and "tbf on nosuch0" in gone.errors[0]
    assert emulation.apply(4242, "nosuch0", bandwidth_kbps=None, latency_ms=None, loss_pct=None,
                           burst_pct=None, instance=INSTANCE, netns=netns).errors == ()


def test_out_of_range_parameters_raise(netns, veth):
    for bad in (dict(loss_pct=101), dict(loss_pct=-1), dict(burst_pct=150),
                dict(latency_ms=-5), dict(bandwidth_kbps=-1), dict(bandwidth_kbps=40_000_000)):
        with pytest.raises(ValueError):
            emulate(veth, netns, **bad)
    with pytest.raises(ValueError):
        emulate(veth, netns, instance=0, loss_pct=1)


# --- loss: nftables drop --------------------------------------------------------------------


def test_loss_drops_kernel_traffic_but_not_the_overlay_port(netns, pair, veth):
    result = emulate(veth, netns, loss_pct=100)
    if has_netem():  # netem carries loss then, for every packet on the device
        assert result.outcome["loss"] == KERNEL_NETEM and "loss" in result.daemon_covered
        return
    require("nftables")
    assert result.outcome["loss"] == KERNEL_NFT_DROP
    assert "loss" not in result.daemon_covered  # the daemon still emulates loss on its packets
    chains = [i["chain"] for i in ruleset(netns) if "chain" in i]
    assert [(c["table"], c["name"], c["hook"]) for c in chains] == [
        (f"spines_kr_{INSTANCE}", "loss_v0", "postrouting")]

    far_sockets = {}
    for port in (INSTANCE, OTHER_PORT):
        s = socket_in_netns(pair, socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("10.0.0.2", port))
        far_sockets[port] = s
    from_overlay = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    from_overlay.bind(("10.0.0.1", INSTANCE))
    plain = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(50):
            # Kernel traffic: dropped.  A local sender learns it (an nft drop at postrouting is
            # EPERM to the socket, kernel 6.18); forwarded packets just vanish.
            with pytest.raises(PermissionError):
                plain.sendto(b"x", ("10.0.0.2", OTHER_PORT))
        for _ in range(50):
            from_overlay.sendto(b"s", ("10.0.0.2", OTHER_PORT))  # from the overlay port: passes
            plain.sendto(b"d", ("10.0.0.2", INSTANCE))  # to the overlay port: passes
        assert receive(far_sockets[INSTANCE], 50) == 50
        # Same device, same queue, each sent before the last "d": what was not dropped is here.
        assert pending(far_sockets[OTHER_PORT]) == 50  # only those from port INSTANCE
    finally:
        for s in (*far_sockets.values(), from_overlay, plain):
            s.close()
    assert ping_received(netns, 20) == 0


def test_loss_drops_about_that_fraction_and_clear_removes_the_rules(netns, pair, veth):
    result = emulate(veth, netns, loss_pct=20, burst_pct=30)
    if has_netem():
        assert set(result.outcome.values()) == {OFF, KERNEL_NETEM}
        return
    require("nftables")
    assert result.outcome == {"bandwidth": OFF, "latency": OFF, "loss": KERNEL_NFT_DROP,
                              "burst": "daemon-only (burst not applied to kernel traffic)"}
    rules = [i["rule"] for i in ruleset(netns) if "rule" in i]
    numgen = [r for r in rules if any("numgen" in json.dumps(e) for e in r["expr"])]
    assert len(rules) == 3 and len(numgen) == 1 and "2000" in json.dumps(numgen[0]["expr"])

    lost = 500 - ping_received(netns, 500)
    assert 0.08 * 500 < lost < 0.35 * 500, lost  # binomial(500, 0.2): 100 +- 9

    again = emulate(veth, netns, loss_pct=5)  # replaces, does not add
    assert again.outcome["loss"] == KERNEL_NFT_DROP
    rules = [i["rule"] for i in ruleset(netns) if "rule" in i]
    assert len(rules) == 3 and "500" in json.dumps(rules[-1]["expr"])

    assert emulate(veth, netns).outcome["loss"] == CLEARED
    assert f"spines_kr_{INSTANCE}" not in tables(netns)
    assert ping_received(netns, 20) == 20


@pytest.mark.parametrize("name,chain", [("to-n2.x", "loss_to-n2.x"), ("w+1", "lossx_772b31")])
def test_loss_on_any_interface_name(netns, name, chain):
    dev = add_veth(netns, name, "p0", "10.0.3.1/24")
    result = emulate(dev, netns, loss_pct=1)
    if has_netem():
        assert result.outcome["loss"] == KERNEL_NETEM, result.outcome
        return
    require("nftables")
    assert result.outcome["loss"] == KERNEL_NFT_DROP, result.outcome
    assert [i["chain"]["name"] for i in ruleset(netns) if "chain" in i] == [chain]
    assert emulate(dev, netns).outcome["loss"] == CLEARED
    assert tables(netns) == set()


def test_nft_missing_is_reported(netns, veth, monkeypatch):
    netem = has_netem()
    if not netem:
        require("tbf")
    probe(netns)  # capabilities of the kernel, before nft "disappears"
    monkeypatch.setenv("PATH", "/nonexistent")
    result = emulate(veth, netns, loss_pct=10, bandwidth_kbps=500)
    if netem:  # netem carries the loss: no nft needed
        assert result.outcome["loss"] == result.outcome["bandwidth"] == KERNEL_NETEM
    else:
        assert result.outcome["loss"] == "daemon-only (nft missing)"
        assert result.outcome["bandwidth"] == KERNEL_TBF
    assert result.errors == ()
    assert emulate(veth, netns).outcome["loss"] == CLEARED


# --- latency and everything at once ---------------------------------------------------------


def test_latency_reports_what_this_kernel_can_do(netns, veth):
    default = root_qdisc(netns, veth.name)
    result = emulate(veth, netns, latency_ms=40)
    if has_netem():
        assert result.outcome["latency"] == KERNEL_NETEM and "latency" in result.daemon_covered
        assert root_qdisc(netns, veth.name)["kind"] == "netem"
    else:
        assert result.outcome["latency"] == "daemon-only (no netem in this kernel)"
        assert result.daemon_covered == frozenset() and result.errors == ()
        assert root_qdisc(netns, veth.name) == default
        assert result.summary == "v0: latency 40 ms daemon-only (no netem in this kernel)"


@pytest.mark.needs("tbf")
def test_all_four_parameters(netns, veth):
    if not has_netem():
        require("nftables")
    result = emulate(veth, netns, bandwidth_kbps=3000, latency_ms=25, loss_pct=2.5, burst_pct=40)
    q = root_qdisc(netns, veth.name)
    if has_netem():
        assert set(result.outcome.values()) == {KERNEL_NETEM}
        assert result.daemon_covered == set(emulation.PARAMETERS)
        assert (q["kind"], q["handle"]) == ("netem", HANDLE)
    else:
        assert result.outcome == {
            "bandwidth": KERNEL_TBF, "latency": "daemon-only (no netem in this kernel)",
            "loss": KERNEL_NFT_DROP, "burst": "daemon-only (burst not applied to kernel traffic)"}
        assert result.daemon_covered == {"bandwidth"}
        assert (q["kind"], q["handle"], q["options"]["rate"]) == ("tbf", HANDLE, 375000)
        assert f"spines_kr_{INSTANCE}" in tables(netns)
        assert result.summary == (
            "v0: bandwidth 3000 kbit/s kernel:tbf; latency 25 ms daemon-only (no netem in this "
            "kernel); loss 2.5 % kernel:nft-drop; burst 40 % daemon-only (burst not applied to "
            "kernel traffic)")
    # Dropping loss keeps the rest and removes the drop rule.
    result = emulate(veth, netns, bandwidth_kbps=3000)
    assert result.outcome["loss"] == OFF and result.outcome["bandwidth"] == KERNEL_TBF
    assert f"spines_kr_{INSTANCE}" not in tables(netns)
    assert root_qdisc(netns, veth.name)["kind"] == "tbf"


def test_netem_request_encodes_all_four(netns):
    """The netem request the daemon sends, decoded again (on any kernel: one without netem
    never sees it)."""
    want = emulation._Want("netem", emulation.PARAMETERS, 375000, 25.5, 2.5, 40)
    msg = tcmsg()
    msg["attrs"] = [("TCA_KIND", "netem"), ("TCA_OPTIONS", want.options(1500))]
    msg.encode()
    decoded = tcmsg(bytes(msg.data))
    decoded.decode()
    options = decoded.get_attr("TCA_OPTIONS")
    assert options["delay"] == 25_500_000 // 64  # psched ticks of 64 ns (PSCHED_SHIFT 6)
    assert options["loss"] == int(0.025 * (2**32 - 1))
    assert options.get_attr("TCA_NETEM_CORR")["loss_corr"] == int(0.40 * (2**32 - 1))
    assert options.get_attr("TCA_NETEM_RATE")["rate"] == 375000


# --- clear_all ------------------------------------------------------------------------------


@pytest.mark.needs("tbf")
def test_clear_all_removes_ours_and_only_ours(netns, veth):
    netem = has_netem()
    if not netem:
        require("nftables")
    second = add_veth(netns, "v2", "v3", "10.0.1.1/24")
    third = add_veth(netns, "v4", "v5", "10.0.2.1/24")
    emulate(veth, netns, bandwidth_kbps=1000, loss_pct=1)
    emulate(second, netns, loss_pct=3)
    emulate(third, netns, instance=8200, bandwidth_kbps=700, loss_pct=1)  # another overlay
    if netem:  # one netem per device carries bandwidth and loss; no nftables at all
        kind, ours, theirs = "netem", [veth, second], []
        assert tables(netns) == set()
    else:  # tbf where bandwidth was asked, the loss in each overlay's nftables table
        kind, ours, theirs = "tbf", [veth], ["nft table inet spines_kr_8200"]
        assert tables(netns) == {"spines_kr_8100", "spines_kr_8200"}

    removed = clear_all(INSTANCE, netns)
    assert removed == [f"{kind} on ifindex {d.ifindex}" for d in ours] + (
        [] if netem else ["nft table inet spines_kr_8100"])
    assert root_qdisc(netns, veth.name)["kind"] == "noqueue"
    assert root_qdisc(netns, second.name)["kind"] == "noqueue"
    assert tables(netns) == ({"spines_kr_8200"} if theirs else set())
    assert (root_qdisc(netns, "v4")["kind"], root_qdisc(netns, "v4")["handle"]) == (kind, "2008:")

    assert clear_all(INSTANCE, netns) == []
    assert clear_all(8200, netns) == [f"{kind} on ifindex {third.ifindex}", *theirs]
    assert tables(netns) == set()
    assert root_qdisc(netns, "v4")["kind"] == "noqueue"
