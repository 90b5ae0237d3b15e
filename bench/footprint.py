"""Footprint of an idle daemon, beside its floor, in one run (issue 11's targets).

Memory: the resident set (VmRSS) of a daemon with kernel routing and 1 or 10 neighbors, beside
a bare interpreter (``python -c``, the same venv) and the floor program below.
Start: from spawning ``spines-kr daemon`` (kernel routing, authentication, no neighbor) in a
throwaway namespace to its READY=1 on a NOTIFY_SOCKET we listen on (systemd's protocol);
median of RUNS starts.
Idle CPU: a namespace lab of a hub and N spokes (N = 1 and 10, one link each; the daemons'
default timers), once with spines-kr and once with the floor in the same topology; after the
overlay converged and settled, CPU time (utime + stime of /proc/PID/stat) of the hub and one
spoke over SECONDS.  The floor: a minimal ``selectors`` loop that does what an idle daemon must
do on this machine and nothing more -- a wakeup per jittered hello round (51-60 ms), one
100-byte UDP datagram to each neighbor, every pending datagram read -- so the difference is
what spines-kr itself costs.  On this kind of VM a wakeup alone costs 50-100 µs of CPU.

Targets (issue 11): RSS <= 22 MB, start to READY <= 0.3 s, hub (10 neighbors) <= 1.0 % of a
core, node with one neighbor <= 0.25 %.  Prints the figures side by side, then one JSON line.

    sudo .venv/bin/python bench/footprint.py [--seconds 30] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spines_kr.lab import netns, ops, topology  # noqa: E402

TARGETS = {"rss_mb": 22.0, "ready_s": 0.3, "hub10_cpu_pct": 1.0, "node1_cpu_pct": 0.25}

# The floor: what a daemon's idle loop must do, in the least code (argv as the daemon's).
FLOOR = r"""
import os, random, selectors, socket, sys, time
args = sys.argv[1:]
def opts(flag): return [args[i + 1] for i, a in enumerate(args) if a == flag]
port = int(opts("-p")[0]); peers = opts("-a")
ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); ctl.bind(opts("--control-socket")[0])
ctl.listen(16); ctl.setblocking(False)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", port))
udp.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(ctl, selectors.EVENT_READ)
payload = b"\0" * 100
nxt = time.monotonic()
while True:
    for key, _ in sel.select(max(0.0, nxt - time.monotonic())):
        try:
            ctl.accept()[0].close()
        except BlockingIOError:
            pass
    now = time.monotonic()
    if now >= nxt:
        while True:
            try:
                udp.recv(2048)
            except BlockingIOError:
                break
        for p in peers:
            udp.sendto(payload, (p, port))
        nxt = now + 0.06 * random.uniform(0.85, 1.0)
"""


def floor_argv(**spec) -> list[str]:
    return [sys.executable, "-c", FLOOR, *netns.daemon_argv(**spec)[4:]]


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def idle(n: int, seconds: float, settle: float, floor: bool) -> dict:
    name = f"skbench{secrets.token_hex(3)}"
    try:
        st = netns.up(topology.star(n), name, daemon=floor_argv if floor else netns.daemon_argv)
        if not floor and ops.wait_converged(st, timeout=60) is None:
            raise RuntimeError("the overlay did not converge")
        time.sleep(settle)
        nodes = {x["name"]: x["pid"] for x in netns.status(name)["nodes"]}
        pids = {"hub": nodes["hub"], "spoke": nodes["s1"]}
        hz = os.sysconf("SC_CLK_TCK")
        c0 = {k: cpu_ticks(p) for k, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        dt = time.monotonic() - t0
        out = {k: round(100 * (cpu_ticks(p) - c0[k]) / hz / dt, 3) for k, p in pids.items()}
        out["rss_mb"] = rss_mb(pids["hub"])
        return out
    finally:
        netns.down(name)


def bare_rss() -> float:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(1.0)
        return rss_mb(p.pid)
    finally:
        p.kill()
        p.wait()


def ready_time(runs: int) -> list[float]:
    ns = f"skbench{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    times = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.100.0.1/32", "dev", "lo"], check=True)
        with tempfile.TemporaryDirectory(prefix="skbench") as tmp:
            key = Path(tmp) / "key.toml"
            subprocess.run([sys.executable, "-m", "spines_kr", "keygen", str(key)], check=True,
                           capture_output=True)
            for i in range(runs):
                notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                path = f"{tmp}/notify{i}"
                notify.bind(path)
                notify.settimeout(10)
                argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "spines_kr", "daemon",
                        "-l", "10.100.0.1", "-k", "0", "--key-file", str(key),
                        "--control-socket", f"{tmp}/ctl{i}", "-lf", f"{tmp}/log{i}"]
                t0 = time.monotonic()
                p = subprocess.Popen(argv, env={**os.environ, "NOTIFY_SOCKET": path})
                try:
                    while True:
                        msg = notify.recv(4096)
                        if b"READY=1" in msg:
                            times.append(time.monotonic() - t0)
                            break
                finally:
                    p.terminate()
                    p.wait(10)
                    notify.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("footprint: needs root (network namespaces)", file=sys.stderr)
        return 2
    bare = bare_rss()
    ready = ready_time(args.runs)
    res = {}
    for n in (1, 10):
        for kind in ("floor", "spines-kr"):
            res[(n, kind)] = idle(n, args.seconds, args.settle, kind == "floor")
    fig = {
        "rss_mb": {"bare_interpreter": bare, "floor": res[(10, "floor")]["rss_mb"],
                   "daemon_1_neighbor": res[(1, "spines-kr")]["rss_mb"],
                   "daemon_10_neighbors": res[(10, "spines-kr")]["rss_mb"]},
        "ready_s": {"median": round(statistics.median(ready), 3),
                    "min": round(min(ready), 3), "max": round(max(ready), 3)},
        "cpu_pct": {f"{k}_{n}": {"hub": v["hub"], "spoke": v["spoke"]}
                    for (n, k), v in res.items()},
        "targets": TARGETS, "seconds": args.seconds,
    }
    r = fig["rss_mb"]
    print(f"RSS: bare interpreter {r['bare_interpreter']} MB, floor {r['floor']} MB, "
          f"spines-kr {r['daemon_1_neighbor']} MB (1 neighbor), {r['daemon_10_neighbors']} MB "
          f"(10); target {TARGETS['rss_mb']} MB")
    print(f"start to READY: median {fig['ready_s']['median']} s over {len(ready)} starts "
          f"(target {TARGETS['ready_s']} s)")
    for n, target in ((1, TARGETS["node1_cpu_pct"]), (10, TARGETS["hub10_cpu_pct"])):
        f, d = res[(n, "floor")], res[(n, "spines-kr")]
        print(f"idle CPU, hub with {n:2d} neighbor(s): floor {f['hub']:.3f} %, spines-kr "
              f"{d['hub']:.3f} % (target {target} %); a spoke: floor {f['spoke']:.3f} %, "
              f"spines-kr {d['spoke']:.3f} %")
    print(json.dumps({"bench": "footprint", **fig}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
