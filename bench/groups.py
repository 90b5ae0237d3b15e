"""Anycast failover benchmark on the 5-node ring of tests/lab/test_groups.py, real daemons.

Ring n1-n2, n2-n3, n3-n5, n5-n4, n4-n1; anycast group 240.1.1.1 joined by n2 (one hop from n1)
and n3 (two hops).  Per round, following n1's kernel routes hop by hop to the node that holds
the group address on its loopback (what a packet from n1 to the group reaches):
  * leave_s:  n2 leaves the group (``spines-kr leave``) -> the route ends at n3;
  * rejoin_s: n2 joins again -> the route ends at n2 again;
  * kill_s:   n2's daemon is SIGKILLed (its neighbors see silence, no goodbye) -> the route
              ends at n3; n2 is then restarted and the route waited back (not measured).
These are the figures tests/lab/test_groups.py asserted as "< 1.5 s" until the suite stopped
asserting wall-clock speed; the limit is printed beside the medians.  poll_ms is the median cost
of one look at the routes (the resolution of the figures).

Prints one line per round, the medians of ROUNDS rounds (default 5) in one lab, and ends with
one JSON line of the figures.  Everything lives in network namespaces ``skbench<pid>g``, removed
at the end, also on failure.

Usage (root): python bench/groups.py [ROUNDS]
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spines_kr.daemon.control import request  # noqa: E402
from spines_kr.lab import netns, ops, topology  # noqa: E402

G = "240.1.1.1"
OLD_LIMIT_S = 1.5  # what tests/lab/test_groups.py asserted for leave and kill
TIMEOUT = 30.0
TOPO = """
[[node]]
name = "n1"
[[node]]
name = "n2"
groups = ["240.1.1.1"]
[[node]]
name = "n3"
groups = ["240.1.1.1"]
[[node]]
name = "n4"
[[node]]
name = "n5"
[[link]]
a = "n1"
b = "n2"
[[link]]
a = "n2"
b = "n3"
[[link]]
a = "n3"
b = "n5"
[[link]]
a = "n5"
b = "n4"
[[link]]
a = "n4"
b = "n1"
"""


def node(st: dict, name: str) -> dict:
    return next(n for n in st["nodes"] if n["name"] == name)


def answered_by(st: dict, src: str = "n1", group: str = G) -> str | None:
    """The node where n1's packets to ``group`` end, following the kernel routes hop by hop."""
    owner = {}
    for ln in st["links"]:
        owner[ln["a_address"].split("/")[0]] = ln["a"]
        owner[ln["b_address"].split("/")[0]] = ln["b"]
    here = src
    for _ in range(len(st["nodes"]) + 1):
        hops = ops.kernel_routes(node(st, here)["netns"]).get(group + "/32")
        if not hops:
            lo = subprocess.run(["ip", "-n", node(st, here)["netns"], "-4", "-o", "addr", "show",
                                 "dev", "lo"], capture_output=True, text=True).stdout
            return here if f" {group}/32 " in lo else None
        here = owner.get(hops[0])
    return None


def timed(action, cond) -> float:
    """Seconds from ``action()`` until ``cond()`` holds (polled as fast as it can be read)."""
    t0 = time.monotonic()
    action()
    if ops.wait(cond, TIMEOUT, interval=0.002) is None:
        raise RuntimeError(f"no convergence within {TIMEOUT} s")
    return time.monotonic() - t0


def ctl(st: dict, name: str, cmd: str) -> None:
    reply = request(node(st, name)["control_socket"], {"cmd": cmd, "group": G})
    if not reply.get("ok"):
        raise RuntimeError(f"{cmd} at {name}: {reply}")


def one_round(st: dict) -> dict:
    if ops.wait(lambda: answered_by(st) == "n2", TIMEOUT) is None:
        raise RuntimeError("the group does not end at n2")
    t0 = time.monotonic()
    answered_by(st)
    poll = time.monotonic() - t0
    leave = timed(lambda: ctl(st, "n2", "leave"), lambda: answered_by(st) == "n3")
    rejoin = timed(lambda: ctl(st, "n2", "join"), lambda: answered_by(st) == "n2")
    kill = timed(lambda: os.kill(node(st, "n2")["pid"], signal.SIGKILL),
                 lambda: answered_by(st) == "n3")
    st.update(netns.restart(st["name"], "n2"))
    if ops.wait_converged(st, TIMEOUT) is None or \
            ops.wait(lambda: answered_by(st) == "n2", TIMEOUT) is None:
        raise RuntimeError("n2 did not come back")
    return {"leave_s": leave, "rejoin_s": rejoin, "kill_s": kill, "poll_ms": 1000 * poll}


def ratio(seconds: float) -> str:
    return f"{100 * seconds / OLD_LIMIT_S:.0f} %"


def main() -> int:
    if os.geteuid() != 0:
        print("bench/groups.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    lab = f"skbench{os.getpid() % 10000}g"
    results = []
    try:
        st = netns.up(topology.parse(TOPO), lab)
        if ops.wait_converged(st, TIMEOUT) is None:
            raise RuntimeError("ring did not converge")
        for i in range(rounds):
            r = one_round(st)
            results.append(r)
            print(f"round {i + 1}: leave {r['leave_s']:.3f} s, rejoin {r['rejoin_s']:.3f} s, "
                  f"kill {r['kill_s']:.3f} s (one look at the routes: {r['poll_ms']:.0f} ms)",
                  flush=True)
    finally:
        netns.down(lab)
    med = {k: round(statistics.median(r[k] for r in results), 3) for k in results[0]}
    print(f"median of {rounds}: leave {med['leave_s']} s, kill {med['kill_s']} s (the old test "
          f"limit for both: {OLD_LIMIT_S} s; leave {ratio(med['leave_s'])}, kill "
          f"{ratio(med['kill_s'])} of it), rejoin {med['rejoin_s']} s; "
          f"resolution about {med['poll_ms']} ms")
    print(json.dumps({"rounds": rounds, **med, "old_limit_s": OLD_LIMIT_S}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
