"""``spines-kr lab demo``: the embedded 5-node ring, end to end, on one machine.

Up, wait for convergence, show n1's kernel routes and the path to a far node, fail the first
link of that path silently (nftables drop, interface up) while a 100 packet/s probe runs and
report the outage, heal it, see the path return, tear down (always, also on Ctrl-C).
"""

from __future__ import annotations

import subprocess
import time

from spines_kr.lab import netns, ops, topology


def say(msg: str = "") -> None:
    print(msg, flush=True)


def run(lab: str = "spdemo", port: int | None = None) -> int:
    topo = topology.demo()
    say(f"== spines-kr lab demo: {len(topo.nodes)} nodes in a ring, lab '{lab}'")
    say("   " + ", ".join(f"{l.a}-{l.b}" for l in topo.links))
    t0 = time.monotonic()
    try:
        st = netns.up(topo, lab, port=port)
        t_up = time.monotonic() - t0
        took = ops.wait_converged(st, timeout=15)
        if took is None:
            say("!! the overlay did not converge within 15 s; daemon logs are in " + st["state_dir"])
            return 1
        say(f"== daemons running after {t_up:.2f} s; every node has a route to every other "
            f"{took:.2f} s later")
        n1 = st["nodes"][0]
        say(f"\n$ ip -n {n1['netns']} route show proto spines")
        say(subprocess.run(["ip", "-n", n1["netns"], "route", "show", "proto", "spines"],
                           capture_output=True, text=True).stdout.rstrip())
        src, far = "n1", "n3"
        route = ops.path(st, src, far)
        say(f"\n== path {src} -> {far}: {' -> '.join(route)}")
        victim = route[1]
        say(f"\n== failing link {src}-{victim} silently (nftables drop, interface stays up) "
            f"under a 100 packet/s probe {src} -> {far}")
        with ops.Probe(st, src, far, duration=3.0) as probe:
            time.sleep(0.8)  # demo pacing: let the stream run before the failure
            ops.silent_failure(st, src, victim)
            res = probe.result()
        say(f"   traffic interrupted for {res['max_gap_ms']:.0f} ms "
            f"({res['lost']} of {res['sent']} probes lost)")
        say(f"   new path: {' -> '.join(ops.path(st, src, far))}")
        ops.silent_failure(st, src, victim, on=False)
        back = ops.wait(lambda: ops.path(st, src, far) == route, timeout=10)
        say(f"\n== healed: path back to {' -> '.join(ops.path(st, src, far))}"
            + (f" after {back:.2f} s" if back is not None else " (not yet!)"))
        return 0 if back is not None else 1
    except netns.LabError as e:
        say(f"!! {e}")
        return 1
    finally:
        netns.down(lab)
        say(f"\n== lab '{lab}' torn down")
