"""Footprint of one spines-kr daemon with N neighbors (the figures in openwrt/README.md).

A namespace lab (``spines-kr lab``; root) of a hub node and N spokes, one link each; once the
overlay has converged and settled, the hub's and one spoke's resident memory (VmRSS, VmHWM,
PSS and private memory from /proc/PID/smaps_rollup) and CPU time (utime + stime from
/proc/PID/stat) over an idle interval, and the packets per second on the hub's links.  The lab
is always taken down.  ``--openwrt-modules`` runs the daemons with every standard module that
the OpenWrt packages of openwrt/README.md do not provide made unimportable, which also checks
that list.  Prints one JSON line.

    sudo .venv/bin/python openwrt/footprint.py [--neighbors 10] [--seconds 30] [--openwrt-modules]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from spines_kr.lab import netns, ops, topology

# Modules of the python3-* split packages the README says are not needed, and netaddr.
NOT_ON_OPENWRT = (
    "_codecs_cn _codecs_hk _codecs_iso2022 _codecs_jp _codecs_kr _codecs_tw unicodedata "  # codecs
    "urllib email xml pyexpat lzma _lzma decimal _decimal dbm _dbm _gdbm curses _curses "
    "readline pydoc venv lib2to3 distutils cgi cgitb webbrowser netaddr").split()

# python -c RUNNER BLOCKED daemon ARGS...: spines_kr's __main__ with those modules unimportable.
RUNNER = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not installed (footprint.py --openwrt-modules)")
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[0]] + sys.argv[2:]
runpy.run_module("spines_kr", run_name="__main__", alter_sys=True)
"""


def openwrt_daemon(**spec) -> list[str]:
    argv = netns.daemon_argv(**spec)
    assert argv[1:3] == ["-m", "spines_kr"], argv
    return [argv[0], "-c", RUNNER, ",".join(NOT_ON_OPENWRT)] + argv[3:]


def memory(pid: int) -> dict:
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    roll = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            roll[parts[0].rstrip(":")] = int(parts[1])
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    return {"rss_mb": mb(int(status["VmRSS"].split()[0])),
            "hwm_mb": mb(int(status["VmHWM"].split()[0])),
            "pss_mb": mb(roll.get("Pss", 0)),
            "private_mb": mb(roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0))}


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def link_packets(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link"], capture_output=True, text=True,
                         check=True).stdout
    return sum(ln["stats64"]["rx"]["packets"] + ln["stats64"]["tx"]["packets"]
               for ln in json.loads(out) if ln["ifname"].startswith("to-"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--neighbors", type=int, default=10)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("--openwrt-modules", action="store_true")
    p.add_argument("--lab", default="spfp")
    args = p.parse_args()
    daemon = openwrt_daemon if args.openwrt_modules else netns.daemon_argv
    try:
        st = netns.up(topology.star(args.neighbors), args.lab, daemon=daemon)
        took = ops.wait_converged(st, timeout=30)
        if took is None:
            print("footprint: the overlay did not converge", file=sys.stderr)
            return 1
        time.sleep(args.settle)
        nodes = {n["name"]: n for n in netns.status(args.lab)["nodes"]}
        pids = {"hub": nodes["hub"]["pid"], "spoke": nodes["s1"]["pid"]}
        hz = os.sysconf("SC_CLK_TCK")
        c0 = {k: cpu_ticks(pid) for k, pid in pids.items()}
        p0, t0 = link_packets(f"{args.lab}-hub"), time.monotonic()
        time.sleep(args.seconds)
        dt = time.monotonic() - t0
        p1 = link_packets(f"{args.lab}-hub")
        out = {"neighbors": args.neighbors, "seconds": round(dt, 1),
               "openwrt_modules": args.openwrt_modules, "converged_s": round(took, 2),
               "hub_link_packets_per_s": round((p1 - p0) / dt)}
        for k, pid in pids.items():
            out[k] = {**memory(pid),
                      "cpu_pct": round(100 * (cpu_ticks(pid) - c0[k]) / hz / dt, 2)}
        print(json.dumps(out))
        return 0
    finally:
        netns.down(args.lab)


if __name__ == "__main__":
    sys.exit(main())
