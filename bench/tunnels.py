"""Virtual links as kernel tunnels: overlay vs hand-built throughput, and silent failover of an
underlay path.

Two labs of the same underlay, side by side in one run (four overlay nodes, four routers;
tests/lab/test_tunnels.py's topology, with hosts h1..h4 behind n1..n4)::

    h1 n1 - r1 ----- r2 - n2 h2      overlay lab: the daemons make n1-n2 (WireGuard: the kernel
            |        |                 module, else wireguard-go), n1-n3, n2-n4 (WireGuard) and
    h3 n3 - r3 ----- r4 - n4 h4        n3-n4 (VXLAN), and route over them
                                     hand-built lab: the same namespaces, no overlay link; the
                                       n1-n2 WireGuard tunnel made by hand (wireguard-go or
                                       ``ip link add type wireguard``, then ``wg set``), the
                                       n3-n4 VXLAN with ``ip link add type vxlan``, the same MTUs
                                       and addressing, and static routes to the hosts' LANs

Throughput: iperf3 (TCP, ``DURATION`` s) h1 -> h2 over WireGuard and h3 -> h4 over VXLAN, in
both labs, alternated ``ROUNDS`` times; medians, and overlay / hand-built.  The overlay's
packets are forwarded by the same kernel code over the same device kinds, so the ratio should
be 1 within noise (on a 2-core VM wireguard-go's own CPU use is the limit).
Failover: a 1000 packet/s UDP probe stream h1 -> h2 while the underlay link r1-r2 fails
silently (nftables drop, interfaces up): the longest gap (``max_gap_ms``) until the overlay
rerouted through n3 and n4; median of ``ROUNDS``.

Prints the medians and ends with one JSON line of the figures.
Usage (root; iperf3 and wireguard-go or the module installed): python bench/tunnels.py [ROUNDS]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spines_kr.lab import netns, ops, topology  # noqa: E402

DURATION = 3
BASE = (
    "".join(f'[[node]]\nname = "n{i}"\n' for i in range(1, 5))
    + "".join(f'[[router]]\nname = "r{i}"\n' for i in range(1, 5))
    + "".join(f'[[underlay]]\na = "{a}"\nb = "{b}"\n' for a, b in [
        ("n1", "r1"), ("n2", "r2"), ("n3", "r3"), ("n4", "r4"),
        ("r1", "r2"), ("r1", "r3"), ("r2", "r4"), ("r3", "r4")])
    + "".join(f'[[host]]\nname = "h{i}"\nattach = "n{i}"\n' for i in range(1, 5)))
TUNNELS = "".join(f'[[link]]\na = "{a}"\nb = "{b}"\ntunnel = "{k}"\n' for a, b, k in [
    ("n1", "n2", "wireguard"), ("n1", "n3", "wireguard"), ("n2", "n4", "wireguard"),
    ("n3", "n4", "vxlan")])


def sh(*argv: str, **kw) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def member(st: dict, name: str) -> dict:
    return next(m for m in st["nodes"] + st["hosts"] if m["name"] == name)


def endpoint(st: dict, name: str) -> str:
    u = next(u for u in st["underlay"] if name in (u["a"], u["b"]))
    return (u["a_address"] if u["a"] == name else u["b_address"]).split("/")[0]


def module() -> bool:
    from spines_kr.netlink import capabilities

    return capabilities.probe().has("wireguard_module")


def hand_build(st: dict, procs: list) -> None:
    """The n1-n2 WireGuard and n3-n4 VXLAN tunnels and static routes, made by hand."""
    lid = {n["name"]: n["logical_id"] for n in st["nodes"]}
    lan = {h["attach"]: h["prefix"] for h in st["hosts"]}
    ns = {n["name"]: n["netns"] for n in st["nodes"]}
    tag = os.urandom(2).hex()
    keys, names, ports = {}, {"n1": f"skbwg{tag}a", "n2": f"skbwg{tag}b"}, {}
    for n in ("n1", "n2"):
        keys[n] = sh("wg", "genkey").strip()
        if module():
            sh("ip", "-n", ns[n], "link", "add", names[n], "type", "wireguard")
        else:
            env = {**os.environ, "WG_PROCESS_FOREGROUND": "1"}
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns[n], "wireguard-go", "-f",
                                           names[n]], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            ops.wait(lambda n=n: os.path.exists(f"/var/run/wireguard/{names[n]}.sock"), 5)
        key_file = Path(st["state_dir"]) / f"hand-{n}.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(keys[n] + "\n")
        sh("ip", "netns", "exec", ns[n], "wg", "set", names[n], "private-key", str(key_file),
           "listen-port", "0")
        ports[n] = sh("ip", "netns", "exec", ns[n], "wg", "show", names[n], "listen-port").strip()
    for n, peer in (("n1", "n2"), ("n2", "n1")):
        pub = sh("wg", "pubkey", input=keys[peer] + "\n").strip()
        sh("ip", "netns", "exec", ns[n], "wg", "set", names[n], "peer", pub, "endpoint",
           f"{endpoint(st, peer)}:{ports[peer]}", "allowed-ips", "0.0.0.0/0")
    vx = f"skbvx{tag}"
    sh("ip", "-n", ns["n3"], "link", "add", vx, "type", "vxlan", "id", "77", "remote",
       endpoint(st, "n4"), "dstport", "4789", "nolearning")
    sh("ip", "-n", ns["n4"], "link", "add", vx, "type", "vxlan", "id", "77", "remote",
       endpoint(st, "n3"), "dstport", "4789", "nolearning")
    for n, peer, dev, mtu in (("n1", "n2", names["n1"], 1440), ("n2", "n1", names["n2"], 1440),
                              ("n3", "n4", vx, 1450), ("n4", "n3", vx, 1450)):
        sh("ip", "-n", ns[n], "addr", "add", lid[n], "peer", lid[peer], "dev", dev)
        sh("ip", "-n", ns[n], "link", "set", dev, "up", "mtu", str(mtu))
        sh("ip", "-n", ns[n], "route", "add", lan[peer], "via", lid[peer], "dev", dev)


def iperf(st: dict, src: str, dst: str) -> float:
    """Mbit/s received by ``dst``'s iperf3 server from ``src`` (TCP, DURATION s)."""
    server = subprocess.Popen(["ip", "netns", "exec", member(st, dst)["netns"], "iperf3", "-s",
                               "-1", "-p", "5201"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        out = None
        for _ in range(50):  # the server listens within a moment
            r = subprocess.run(["ip", "netns", "exec", member(st, src)["netns"], "iperf3", "-c",
                                member(st, dst)["address"], "-p", "5201", "-t", str(DURATION),
                                "-J"], capture_output=True, text=True, timeout=DURATION + 30)
            if r.returncode == 0:
                data = json.loads(r.stdout)
                if "sum_received" in data.get("end", {}):
                    out = data
                    break
                if server.poll() is not None:  # the one-off server served a failed try
                    server = subprocess.Popen(
                        ["ip", "netns", "exec", member(st, dst)["netns"], "iperf3", "-s", "-1",
                         "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.1)
        if out is None:
            raise RuntimeError(f"iperf3 {src} -> {dst} failed: {r.stdout[-300:]} {r.stderr}")
        return out["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.kill()
        server.wait()


def failover(st: dict) -> float:
    with ops.Probe(st, "h1", "h2", duration=3.0, rate=1000) as probe:
        ops.wait(lambda: False, 0.7)  # the stream runs before the failure
        ops.silent_failure(st, "r1", "r2")
        res = probe.result()
    ops.silent_failure(st, "r1", "r2", on=False)
    if ops.wait(lambda: ops.path(st, "n1", "n2") == ["n1", "n2"], 30) is None:
        raise RuntimeError("the overlay did not come back to the n1-n2 tunnel")
    return res["max_gap_ms"]


def all_up(st: dict) -> bool:
    from spines_kr.ctl import request

    views = [request(n["control_socket"], {"cmd": "show", "what": "tunnels"})["data"]["tunnels"]
             for n in st["nodes"]]
    return sum(len(v) for v in views) == 8 and all(t["state"] == "up" for v in views for t in v)


def main() -> int:
    if os.geteuid() != 0:
        print("bench/tunnels.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    for program in ("iperf3", "wg"):
        if shutil.which(program) is None:
            print(f"bench/tunnels.py: needs {program} (Debian: "
                  f"{'iperf3' if program == 'iperf3' else 'wireguard-tools'})", file=sys.stderr)
            return 2
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    tag = f"{os.getpid() % 10000}"
    overlay_lab, hand_lab = f"skbench{tag}o", f"skbench{tag}h"
    procs: list = []
    figures: dict[str, list[float]] = {k: [] for k in (
        "wireguard_overlay_mbps", "wireguard_hand_mbps", "vxlan_overlay_mbps", "vxlan_hand_mbps",
        "silent_failover_ms")}
    try:
        ov = netns.up(topology.parse(BASE + TUNNELS), overlay_lab)
        hb = netns.up(topology.parse(BASE), hand_lab)
        hand_build(hb, procs)
        if ops.wait(lambda: ops.converged(ov) and all_up(ov), 60) is None:
            raise RuntimeError("the overlay did not converge")
        for lab, src, dst in ((ov, "h1", "h2"), (hb, "h1", "h2"), (ov, "h3", "h4"),
                              (hb, "h3", "h4")):
            res = ops.ping(lab, src, dst, count=2)
            if res.returncode != 0:
                raise RuntimeError(f"{lab['name']}: {src} cannot reach {dst}: {res.stdout}")
        for i in range(rounds):
            wo, wh = iperf(ov, "h1", "h2"), iperf(hb, "h1", "h2")
            vo, vh = iperf(ov, "h3", "h4"), iperf(hb, "h3", "h4")
            gap = failover(ov)
            for k, v in zip(figures, (wo, wh, vo, vh, gap)):
                figures[k].append(v)
            print(f"round {i + 1}: WireGuard overlay {wo:.0f} Mbit/s, hand-built {wh:.0f}; "
                  f"VXLAN overlay {vo:.0f}, hand-built {vh:.0f}; silent failover of r1-r2 "
                  f"{gap:.0f} ms", flush=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        netns.down(overlay_lab)
        netns.down(hand_lab)
        for f in Path("/var/run/wireguard").glob("skbwg*.sock"):
            f.unlink(missing_ok=True)
    med = {k: round(statistics.median(v), 1) for k, v in figures.items()}
    med["wireguard_ratio"] = round(med["wireguard_overlay_mbps"] / med["wireguard_hand_mbps"], 3)
    med["vxlan_ratio"] = round(med["vxlan_overlay_mbps"] / med["vxlan_hand_mbps"], 3)
    backend = "kernel module" if module() else "wireguard-go"
    print(f"median of {rounds}: WireGuard ({backend}) overlay {med['wireguard_overlay_mbps']} vs "
          f"hand-built {med['wireguard_hand_mbps']} Mbit/s (x{med['wireguard_ratio']}); VXLAN "
          f"overlay {med['vxlan_overlay_mbps']} vs hand-built {med['vxlan_hand_mbps']} Mbit/s "
          f"(x{med['vxlan_ratio']}); silent failover of an underlay path "
          f"{med['silent_failover_ms']} ms")
    print(json.dumps({"rounds": rounds, "wireguard_backend": backend, **med}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
