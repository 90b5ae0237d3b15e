"""Lab at scale: ``lab up`` of N nodes with real daemons, a ring with chords of average degree 4
(``topology.ring(N)``: node i also linked to node i + round(sqrt(N))).  The lab part of the scale
figures (``bench/scale.py`` has the simulated cold start).

Per size and run:
    up_s           ``netns.up`` until it returns (every daemon's control socket accepts), with
                   its parts build_s (namespaces, links, addresses) and start_s (the daemons,
                   ``window`` starting at once), and ready_max_s: the slowest daemon's time from
                   its own spawn to ready (each has its own deadline, ``netns.READY_TIMEOUT``);
                   up_cpu_s: a daemon's CPU time when ``up`` returns (median: its start, and
                   the flooding, SPF and route changes of the nodes that came up after it)
    converge_s     from ``up`` returning until every node's kernel table holds a route to every
                   other node (``ops.unconverged``: one netlink route dump per namespace, no
                   process each; check_cpu_ms is the CPU one such check of the whole lab costs,
                   here, without the kernel's share);
                   null when not within --converge-timeout (unconverged_nodes then says how many
                   nodes still lacked routes)
    idle_cpu_pct   the whole lab's CPU over --idle seconds once converged (or after the timeout),
                   in % of one core (the machine has ``os.cpu_count()``), and per daemon
    rss_mb         median resident memory of a daemon (VmRSS) at the end of that interval
    neighbor_downs neighbor.down events in all daemons' logs over the run (links declared dead
                   and brought up again: on a saturated machine missed hellos kill links)
    down_s         ``netns.down`` (daemons stopped, then the namespaces deleted)
Prints each run, then the medians per size (over the runs that converged for converge_s), and
ends with one JSON line: {"runs", "window", "timers", "cpus", "n<N>_<figure>": median, ...,
"n<N>_up_ok": runs that came up, "n<N>_converged": runs that converged}.

Sizes whose daemons would not fit in memory (60 MB each) are skipped with a note.  Lab names are
``skbench<pid>s<N>r<i>``; each lab is taken down in a ``finally``, also on Ctrl-C.
``--timers HELLO_MS,DEAD_MS`` gives every daemon a configuration file with those timers
(``lab up --daemon-config``); the default is the daemon's own (hello 60 ms, dead 250 ms).

Usage (root): python bench/lab_scale.py [--sizes 50,100] [--runs 3] [--converge-timeout 120]
                                        [--idle 10] [--timers HELLO_MS,DEAD_MS] [--window W]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spines_kr.lab import netns, ops, topology  # noqa: E402

RSS_BUDGET_MB = 60  # per daemon, to decide whether a size fits in memory


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def neighbor_downs(state_dir: str) -> int:
    n = 0
    for log in Path(state_dir).glob("*.log"):
        try:
            n += log.read_text(errors="replace").count("neighbor.down")
        except OSError:
            pass
    return n


def one_run(size: int, i: int, args, config: str | None) -> dict:
    lab = f"skbench{os.getpid() % 10000}s{size}r{i}"
    out: dict = {"up_ok": False, "converged": False}
    t0 = time.monotonic()
    try:
        st = netns.up(topology.ring(size), lab, window=args.window, daemon_config=config)
        up = time.monotonic() - t0
        out.update(up_ok=True, up_s=up, build_s=st["timings"]["build_s"],
                   start_s=st["timings"]["start_s"],
                   ready_max_s=max(n["ready_s"] for n in st["nodes"]),
                   up_cpu_s=statistics.median(cpu_seconds(n["pid"]) for n in st["nodes"]))
        t1 = time.monotonic()
        left = ops.unconverged(st)
        while left and time.monotonic() - t1 < args.converge_timeout:
            time.sleep(0.05)
            left = ops.unconverged(st)
        if not left:
            out.update(converged=True, converge_s=time.monotonic() - t1)
        out["unconverged_nodes"] = len(left)
        c0 = time.process_time()
        for _ in range(5):
            ops.unconverged(st)
        out["check_cpu_ms"] = (time.process_time() - c0) / 5 * 1000
        pids = [n["pid"] for n in st["nodes"]]
        cpu0, w0 = sum(cpu_seconds(p) for p in pids), time.monotonic()
        time.sleep(args.idle)
        cpu1, w1 = sum(cpu_seconds(p) for p in pids), time.monotonic()
        out["idle_cpu_pct"] = 100 * (cpu1 - cpu0) / (w1 - w0)
        out["idle_cpu_pct_per_daemon"] = out["idle_cpu_pct"] / size
        out["rss_mb"] = statistics.median(r for r in map(rss_mb, pids) if r is not None)
        out["alive"] = sum(n["alive"] for n in netns.status(lab)["nodes"])
        out["neighbor_downs"] = neighbor_downs(st["state_dir"])
    except netns.LabError as e:
        out["error"] = str(e).splitlines()[0]
        print(f"  n={size} run {i + 1}: {e}", flush=True)  # with the daemon's last lines
    finally:
        t2 = time.monotonic()
        report = netns.down(lab)
        out["down_s"] = time.monotonic() - t2
        if report["problems"]:
            print(f"  lab down {lab}: problems: {report['problems']}", file=sys.stderr)
        out["down_killed"] = len(report["killed"])
    return out


def describe(size: int, i: int, r: dict) -> str:
    if not r["up_ok"]:
        return f"n={size} run {i + 1}: lab up FAILED: {r.get('error')} (down {r['down_s']:.1f} s)"
    conv = (f"converged {r['converge_s']:.2f} s after up" if r["converged"] else
            f"NOT converged after {r.get('converge_timeout', '?')} s "
            f"({r['unconverged_nodes']} nodes incomplete)")
    return (f"n={size} run {i + 1}: up {r['up_s']:.1f} s (build {r['build_s']:.2f} s, daemons "
            f"{r['start_s']:.1f} s, slowest ready {r['ready_max_s']:.2f} s, a daemon's CPU "
            f"{r['up_cpu_s']:.2f} s), {conv}; check "
            f"{r['check_cpu_ms']:.1f} ms CPU; idle CPU {r['idle_cpu_pct']:.0f} % of a core "
            f"({r['idle_cpu_pct_per_daemon']:.2f} % per daemon), RSS {r['rss_mb']:.1f} MB, "
            f"{r['alive']}/{size} alive, {r['neighbor_downs']} neighbor downs; down "
            f"{r['down_s']:.1f} s ({r['down_killed']} killed)")


FIGURES = ("up_s", "build_s", "start_s", "ready_max_s", "up_cpu_s", "converge_s", "check_cpu_ms",
           "idle_cpu_pct", "idle_cpu_pct_per_daemon", "rss_mb", "neighbor_downs", "down_s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50,100", help="comma-separated node counts")
    ap.add_argument("--runs", type=int, default=3, help="runs per size (medians)")
    ap.add_argument("--converge-timeout", type=float, default=120.0)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    ap.add_argument("--timers", metavar="HELLO_MS,DEAD_MS",
                    help="daemon timers through a configuration file (default: the daemon's)")
    ap.add_argument("--window", type=int, default=netns.START_WINDOW,
                    help=f"daemons starting at once (default {netns.START_WINDOW})")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/lab_scale.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    tmp = tempfile.TemporaryDirectory(prefix="skbench-lab-scale-")
    config = None
    if args.timers:
        hello, dead = (int(x) for x in args.timers.split(","))
        config = str(Path(tmp.name) / "daemon.toml")
        Path(config).write_text(f"hello_interval_ms = {hello}\ndead_interval_ms = {dead}\n")
    out = {"runs": args.runs, "window": args.window, "timers": args.timers or "default",
           "cpus": os.cpu_count()}
    try:
        for size in sizes:
            need = size * RSS_BUDGET_MB
            if mem_available_mb() < need:
                print(f"n={size}: skipped, {mem_available_mb():.0f} MB available, "
                      f"{need} MB needed ({RSS_BUDGET_MB} MB a daemon)", flush=True)
                out[f"n{size}_skipped"] = "memory"
                continue
            results = []
            for i in range(args.runs):
                r = one_run(size, i, args, config)
                r["converge_timeout"] = args.converge_timeout
                results.append(r)
                print(describe(size, i, r), flush=True)
                time.sleep(2)  # the kernel frees the last lab's namespaces in the background
            ok = [r for r in results if r["up_ok"]]
            out[f"n{size}_up_ok"] = len(ok)
            out[f"n{size}_converged"] = sum(r["converged"] for r in results)
            med = {}
            for k in FIGURES:
                vals = [r[k] for r in ok if r.get(k) is not None]
                if vals:
                    med[k] = round(statistics.median(vals), 3)
            med["down_s"] = round(statistics.median(r["down_s"] for r in results), 3)
            out.update({f"n{size}_{k}": v for k, v in med.items()})
            print(f"n={size}: median of {len(ok)}/{len(results)} runs that came up "
                  f"({out[f'n{size}_converged']} converged): "
                  + ", ".join(f"{k} {v}" for k, v in med.items()), flush=True)
    finally:
        tmp.cleanup()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
