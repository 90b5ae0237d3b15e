"""Failover benchmark on the 5-node ring (n1-n2, n2-n3, n3-n5, n5-n4, n4-n1), real daemons.

Per run: the time from ``lab up`` until every node has a kernel route to every other
(converge_s); the longest gap in a 100 packet/s UDP probe stream n1 -> n3 (two hops, via n2)
when link n1-n2 fails silently (nftables drop, interface up: silent_gap_ms) and when it loses
carrier (``ip link set down``: carrier_gap_ms).  Also measured once per run: hellos sent per
second per link direction and one idle daemon's CPU share.  Prints the medians of RUNS runs
(default 3) and ends with one JSON line of the figures.  converge_after_ready_s is the part
of converge_s after the last daemon opened its control socket (the rest is building the lab
and starting Python).

Usage (root): python bench/failover.py [RUNS]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spines_kr.lab import netns, ops, topology  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(st, name):
    n = next(n for n in st["nodes"] if n["name"] == name)
    from spines_kr.daemon.control import request
    return request(n["control_socket"], {"cmd": "show", "what": "status"})["data"]


def outage(st, fail, heal) -> float:
    with ops.Probe(st, "n1", "n3", duration=3.0) as probe:
        ops.wait(lambda: False, 0.7)  # the stream runs before the failure
        fail()
        res = probe.result()
    heal()
    back = ops.wait(lambda: ops.path(st, "n1", "n3") == ["n1", "n2", "n3"], 15)
    if back is None or ops.wait_converged(st, 15) is None:
        raise RuntimeError("ring did not heal")
    return res["max_gap_ms"]


def one_run(i: int) -> dict:
    lab = f"skbench{os.getpid() % 10000}r{i}"
    t0 = time.monotonic()
    try:
        st = netns.up(topology.demo(), lab)
        ready = time.monotonic()
        if ops.wait_converged(st, 30, interval=0.005) is None:
            raise RuntimeError("ring did not converge")
        converge = time.monotonic() - t0
        after_ready = time.monotonic() - ready
        # idle figures over 5 s of a converged overlay: n1 has two links
        pid = next(n["pid"] for n in st["nodes"] if n["name"] == "n1")
        c0, s0, w0 = cpu_seconds(pid), status(st, "n1"), time.monotonic()
        ops.wait(lambda: False, 5.0)
        c1, s1, w1 = cpu_seconds(pid), status(st, "n1"), time.monotonic()
        idle_cpu = 100 * (c1 - c0) / (w1 - w0)
        sent = s1["counters"].get("packets_out", 0) - s0["counters"].get("packets_out", 0)
        hellos = sent / (w1 - w0) / max(1, s1["neighbors_up"])
        silent = outage(st, lambda: ops.silent_failure(st, "n1", "n2"),
                        lambda: ops.silent_failure(st, "n1", "n2", on=False))
        carrier = outage(st, lambda: ops.carrier(st, "n1", "n2", up=False),
                         lambda: ops.carrier(st, "n1", "n2", up=True))
        return {"converge_s": converge, "converge_after_ready_s": after_ready, "silent_gap_ms": silent, "carrier_gap_ms": carrier,
                "hellos_per_s_per_link": hellos, "idle_cpu_pct": idle_cpu}
    finally:
        netns.down(lab)


def main() -> int:
    if os.geteuid() != 0:
        print("bench/failover.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    results = []
    for i in range(runs):
        r = one_run(i)
        results.append(r)
        print(f"run {i + 1}: converge {r['converge_s']:.3f} s ({r['converge_after_ready_s']:.3f} s "
              f"after the last daemon was ready), silent failure gap "
              f"{r['silent_gap_ms']:.0f} ms, carrier loss gap {r['carrier_gap_ms']:.0f} ms, "
              f"{r['hellos_per_s_per_link']:.1f} packets/s per link, idle CPU "
              f"{r['idle_cpu_pct']:.2f} %", flush=True)
    med = {k: round(statistics.median(r[k] for r in results), 3) for k in results[0]}
    print(f"median of {runs}: converge {med['converge_s']} s (Spines 5.7: 1.15 s), silent gap "
          f"{med['silent_gap_ms']} ms (Spines: 1040 ms), carrier gap {med['carrier_gap_ms']} ms "
          f"(Spines: 1020 ms)")
    print(json.dumps({"runs": runs, **med}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
