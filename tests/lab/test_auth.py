"""An authenticated control plane under attack, in a real lab: forged, unauthenticated,
truncated, oversized, wrong-version and replayed packets change no kernel route anywhere and
are counted by reason in ``show status``.  All traffic stays inside the lab's namespaces."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from spines_kr.daemon.control import request
from spines_kr.lab import netns, ops, topology

pytestmark = [pytest.mark.timeout(240), pytest.mark.needs("veth")]

# Runs inside n1's namespace: capture one packet n1's daemon sends to n2, then send attacks to
# n2 from n1's link address, and finally replay the captured packet.
ATTACK = textwrap.dedent(r"""
    import socket, struct, sys, time
    sys.path.insert(0, sys.argv[5])
    from spines_kr.wire import packets as w
    from spines_kr.wire.auth import WINDOW, KeyRing
    ifname, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    # outgoing packets reach only ETH_P_ALL taps (dev_queue_xmit_nit), not per-protocol ones
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
    cap.bind((ifname, 0))
    cap.settimeout(5)

    def next_daemon_packet(deadline):
        # The UDP payload of the next IPv4 packet n1's daemon sends out of ifname (to n2's
        # daemon: a veth has one peer), authenticated; exit when none comes before deadline.
        # The daemon's socket is bound to the overlay port: our attacks (from another source
        # port) are not taken for its packets.
        while time.monotonic() < deadline:
            pkt, addr = cap.recvfrom(65535)
            if addr[1] != 0x0800:
                continue
            ihl = (pkt[0] & 15) * 4
            if (addr[2] == socket.PACKET_OUTGOING and pkt[9] == 17
                    and struct.unpack_from("!HH", pkt, ihl) == (port, port)):
                return pkt[ihl + 8:]
        sys.exit("no packet of n1's daemon captured")

    captured = next_daemon_packet(time.monotonic() + 10)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    fake = int.from_bytes(socket.inet_aton("10.100.0.99"), "big")
    lsa = w.LSA.make(fake, 1 << 60, [(int.from_bytes(socket.inet_aton(sys.argv[6]), "big"), 1)],
                     [(int.from_bytes(socket.inet_aton("10.66.0.0"), "big"), 16, 0)])
    forged = w.encode(w.LinkStateUpdate((lsa,)), instance=port, sender=fake)
    wrong_key = KeyRing({1: b"x" * 32}, 1, boot=time.time_ns() // 1000).seal(forged)
    attacks = {
        "wrong_key": wrong_key,
        "no_trailer": forged,
        "truncated": captured[:10],
        "oversized": captured + b"\0" * 60000,
        "wrong_version": captured[:2] + b"\x07" + captured[3:],
    }
    for name, data in attacks.items():
        for _ in range(3):
            s.sendto(data, (dst, port))
    # Replay the captured packet once it is old: n1's daemon has sent n2 WINDOW packets since,
    # each with a higher counter, so its counter is below n2's replay window (not merely seen).
    deadline = time.monotonic() + 30
    for _ in range(WINDOW):
        next_daemon_packet(deadline)
    for _ in range(3):
        s.sendto(captured, (dst, port))
    print("sent", flush=True)
""")


def test_forged_and_replayed_packets_change_nothing_and_are_counted():
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.demo(), name)
        assert ops.wait_converged(st, 15) is not None
        before = {n["name"]: ops.kernel_routes(n["netns"]) for n in st["nodes"]}
        n1, n2 = st["nodes"][0], st["nodes"][1]
        link = next(l for l in st["links"] if {l["a"], l["b"]} == {"n1", "n2"})
        a_is_n1 = link["a"] == "n1"
        ifname = link["a_ifname"] if a_is_n1 else link["b_ifname"]
        src = (link["a_address"] if a_is_n1 else link["b_address"]).split("/")[0]
        dst = (link["b_address"] if a_is_n1 else link["a_address"]).split("/")[0]
        repo = netns.child_env()["PYTHONPATH"].split(os.pathsep)[0]
        out = subprocess.run(["ip", "netns", "exec", n1["netns"], sys.executable, "-c", ATTACK,
                              ifname, src, dst, str(st["port"]), repo, n2["logical_id"]],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "sent", out.stderr
        counters = lambda: request(n2["control_socket"], {"cmd": "show", "what": "status"})["data"]["counters"]
        # oversized: the trailer is all that follows the body, so its length gives it away
        want = {"dropped.auth_mac", "dropped.auth_missing", "dropped.short", "dropped.auth_malformed",
                "dropped.version", "dropped.auth_replay"}
        got = {}
        def seen():
            got.update(counters())
            return want <= {k for k, v in got.items() if v >= 3}
        assert ops.wait(seen, 10) is not None, {k: v for k, v in got.items() if k.startswith("dropped")}
        # nothing reached any kernel: no route to the forged prefix, no route changed
        after = {n["name"]: ops.kernel_routes(n["netns"]) for n in st["nodes"]}
        assert after == before
        assert all("10.66.0.0/16" not in r for r in after.values())
        status = request(n2["control_socket"], {"cmd": "show", "what": "status"})["data"]
        assert status["auth"].startswith("hmac-sha256")
    finally:
        netns.down(name)


def test_a_node_with_the_wrong_key_or_none_forms_no_adjacency(tmp_path):
    name = f"sktest{os.urandom(3).hex()}"
    procs = []
    try:
        st = netns.up(topology.demo(), name)
        assert ops.wait_converged(st, 15) is not None
        n1 = st["nodes"][0]
        os.kill(n1["pid"], 15)
        assert ops.wait(lambda: not netns.status(name)["nodes"][0]["alive"], 10) is not None
        with open(os.path.join(st["state_dir"], "state.json")) as f:
            import json
            argv = next(n for n in json.load(f)["nodes"] if n["name"] == "n1")["argv"]
        other = tmp_path / "other.toml"
        subprocess.run([sys.executable, "-m", "spines_kr", "keygen", str(other)], check=True,
                       env=netns.child_env(), capture_output=True)
        ctl = str(tmp_path / "ctl")
        key_at = argv.index("--key-file") + 1
        for variant in (argv[:key_at] + [str(other)] + argv[key_at + 1:],  # wrong key
                        argv[:key_at - 1] + argv[key_at + 1:] + ["--auth", "none"]):  # no key
            variant = [ctl if a == n1["control_socket"] else a for a in variant]
            p = subprocess.Popen(["ip", "netns", "exec", n1["netns"], *variant], env=netns.child_env())
            procs.append(p)
            status = lambda: request(ctl, {"cmd": "show", "what": "status"})["data"]
            assert ops.wait(lambda: os.path.exists(ctl) and status()["counters"].get(
                "dropped.auth_mac", 0) + status()["counters"].get("dropped.auth_unexpected", 0) > 5,
                10) is not None
            assert status()["neighbors_up"] == 0 and status()["nodes"] == 1
            # and n1's neighbors never took its word: no route anywhere goes to n1
            assert ops.wait(lambda: all(n1["logical_id"] + "/32" not in ops.kernel_routes(n["netns"])
                                        for n in st["nodes"][1:]), 10) is not None
            p.terminate()
            p.wait(timeout=10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        netns.down(name)


def test_an_unprivileged_user_may_read_but_not_change(tmp_path):
    import shutil
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed")
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.demo(), name)
        n1 = st["nodes"][0]
        os.chmod(n1["control_socket"], 0o666)  # as if the user were in the control group
        os.chmod(st["state_dir"], 0o755)
        env = dict(netns.child_env(), SPINES_KR_SOCKET=n1["control_socket"])
        as_nobody = ["ip", "netns", "exec", n1["netns"], "setpriv", "--reuid=65534",
                     "--regid=65534", "--clear-groups", sys.executable, "-m", "spines_kr"]
        read = subprocess.run(as_nobody + ["show", "status"], env=env, capture_output=True, text=True)
        assert read.returncode == 0, read.stderr
        for cmd in (["join", "240.9.9.9"], ["setlink", "0", "50", "0", "0", n1["logical_id"], "10.200.0.2"]):
            out = subprocess.run(as_nobody + cmd, env=env, capture_output=True, text=True)
            assert out.returncode == 1 and "permission denied" in out.stderr, out
        groups = request(n1["control_socket"], {"cmd": "show", "what": "groups"})["data"]
        assert not any(g["group"] == "240.9.9.9" for g in groups)
    finally:
        netns.down(name)
