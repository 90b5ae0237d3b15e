"""Route install benchmark: our netlink layer next to ``ip -batch`` and one ``ip`` per route.

In a fresh namespace (``skbench-<hex>``, a veth whose 10.0.0.0/24 makes the gateway 10.0.0.2
on-link; removed at exit), N /32 routes (default 10,000; 10.128.0.0 upwards, via 10.0.0.2 dev v0,
proto 81, metric 20, table main) are installed and then removed three ways, interleaved per run:

  * ours:        ``RouteTable.apply(routes, [])`` then ``apply([], routes)``, the Routes built
                 beforehand (the daemon holds them already);
  * ip -batch:   ``ip -n NS -batch FILE`` of ``route replace ...`` lines, then of ``route del ...``
                 lines (iproute2 sends one request and waits for its ack before the next);
  * subprocess:  one ``ip -n NS route replace ...`` process per route, then one ``route del``
                 each, as a daemon that shells out does.  N processes take minutes, so a sample
                 of SAMPLE routes (default 300) is timed and the rate extrapolated.

Each method is checked after its install and after its removal by a dump of our slot (a wrong
count exits 1).  A rate is routes written per second over install and removal together
(2 x routes / (install + removal time)); install and removal rates are printed too.  Then N
routes are installed once more and ``Reconciler.sync()`` of that same, unchanged set is timed
(dump + diff); its writes are counted by wrapping ``apply`` (there must be none), and the
datagrams it sends by wrapping the table's socket (one: the dump request).  Medians
of RUNS runs (default 3) are printed with the ratios, ending with one JSON line of the figures.

Usage (root): python bench/route_install.py [N] [RUNS] [SAMPLE]
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spines_kr import RTPROT_SPINES  # noqa: E402
from spines_kr.netlink.kernel import RouteTable  # noqa: E402
from spines_kr.netlink.reconcile import Reconciler  # noqa: E402
from spines_kr.routing.model import NextHop, Route, route_set  # noqa: E402

FIRST = ipaddress.IPv4Address("10.128.0.0")
GATEWAY, DEV, PRIORITY, TABLE = "10.0.0.2", "v0", 20, 254
CLOCK = time.perf_counter


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def make_netns() -> str:
    name = f"skbench-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", DEV, "type", "veth", "peer", "name", "v1")
        ip(name, "addr", "add", "10.0.0.1/24", "dev", DEV)
        ip(name, "link", "set", DEV, "up")
        ip(name, "link", "set", "v1", "up")
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], check=False)
        raise
    return name


def ifindex(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)[0]["ifindex"]


def dsts(n: int) -> list[str]:
    return [f"{FIRST + i}/32" for i in range(n)]


def replace_args(dst: str) -> list[str]:
    return ["route", "replace", dst, "via", GATEWAY, "dev", DEV, "proto", str(RTPROT_SPINES),
            "metric", str(PRIORITY), "table", str(TABLE)]


def del_args(dst: str) -> list[str]:
    return ["route", "del", dst, "proto", str(RTPROT_SPINES), "metric", str(PRIORITY), "table",
            str(TABLE)]


class Failed(Exception):
    pass


def check(table: RouteTable, want: int, what: str) -> None:
    got = len(table.dump())
    if got != want:
        raise Failed(f"{what}: {got} routes in our slot, expected {want}")


def run_ours(table: RouteTable, routes: list[Route]) -> tuple[float, float]:
    t0 = CLOCK()
    errors = table.apply(routes, [])
    t1 = CLOCK()
    if errors:
        raise Failed(f"ours: {len(errors)} install errors, e.g. {errors[0]}")
    check(table, len(routes), "ours, after install")
    t2 = CLOCK()
    errors = table.apply([], routes)
    t3 = CLOCK()
    if errors:
        raise Failed(f"ours: {len(errors)} removal errors, e.g. {errors[0]}")
    check(table, 0, "ours, after removal")
    return t1 - t0, t3 - t2


def run_batch(ns: str, table: RouteTable, install: str, remove: str, n: int) -> tuple[float, float]:
    times = []
    for path, want in ((install, n), (remove, 0)):
        t0 = CLOCK()
        proc = subprocess.run(["ip", "-n", ns, "-batch", path], capture_output=True, text=True)
        times.append(CLOCK() - t0)
        if proc.returncode:
            raise Failed(f"ip -batch {path}: {proc.stderr.strip()[:300]}")
        check(table, want, f"ip -batch {Path(path).name}")
    return times[0], times[1]


def run_subprocess(ns: str, table: RouteTable, sample: list[str]) -> tuple[float, float]:
    times = []
    for make, want in ((replace_args, len(sample)), (del_args, 0)):
        t0 = CLOCK()
        for dst in sample:
            subprocess.run(["ip", "-n", ns, *make(dst)], check=True, capture_output=True)
        times.append(CLOCK() - t0)
        check(table, want, f"subprocess {make.__name__}")
    return times[0], times[1]


class CountingSocket:
    """A RouteTable's socket, counting the datagrams sent through it."""

    def __init__(self, sock) -> None:
        self.sock, self.sends = sock, 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


class CountingKernel:
    """The RouteTable seen by the reconciler, counting the write requests it is handed."""

    def __init__(self, table: RouteTable) -> None:
        self.table, self.writes = table, 0

    def dump(self):
        return self.table.dump()

    def apply(self, replace, delete):
        self.writes += len(replace) + len(delete)
        return self.table.apply(replace, delete)


def rate(n: int, install: float, remove: float) -> float:
    return 2 * n / (install + remove)


def main() -> int:
    if os.geteuid() != 0:
        print("bench/route_install.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    sample_n = min(n, int(sys.argv[3]) if len(sys.argv) > 3 else 300)
    ns = make_netns()
    try:
        with tempfile.TemporaryDirectory(prefix="skbench-") as tmp, \
                RouteTable(table=TABLE, priority=PRIORITY, netns=ns) as table:
            oif = ifindex(ns, DEV)
            names = dsts(n)
            routes = [Route(d, (NextHop(GATEWAY, oif),)) for d in names]
            install, remove = os.path.join(tmp, "install"), os.path.join(tmp, "remove")
            Path(install).write_text("".join(" ".join(replace_args(d)) + "\n" for d in names))
            Path(remove).write_text("".join(" ".join(del_args(d)) + "\n" for d in names))
            sample = names[:: max(1, n // sample_n)][:sample_n]

            run_ours(table, routes[:1000])  # warm-up: templates, page cache, the fib trie
            run_batch(ns, table, install, remove, n)
            figures: dict[str, list[tuple[float, float]]] = {"ours": [], "batch": [], "sub": []}
            for i in range(runs):
                figures["ours"].append(run_ours(table, routes))
                figures["batch"].append(run_batch(ns, table, install, remove, n))
                figures["sub"].append(run_subprocess(ns, table, sample))
                o, b, s = figures["ours"][-1], figures["batch"][-1], figures["sub"][-1]
                print(f"run {i + 1}: ours {rate(n, *o):,.0f} routes/s, ip -batch "
                      f"{rate(n, *b):,.0f}, subprocess {rate(sample_n, *s):,.0f}", flush=True)

            def median(key: str, count: int) -> tuple[float, float, float]:
                ins = statistics.median(count / t for t, _ in figures[key])
                rem = statistics.median(count / t for _, t in figures[key])
                both = statistics.median(rate(count, *t) for t in figures[key])
                return ins, rem, both

            ours, batch, sub = median("ours", n), median("batch", n), median("sub", sample_n)

            assert not table.apply(routes, [])
            desired = route_set(routes)
            counting = CountingKernel(table)
            rec = Reconciler(counting)
            sync_ms, dump_ms, sends = [], [], []
            real_socket = table._sock
            for _ in range(runs):
                table._sock = counter = CountingSocket(real_socket)
                t0 = CLOCK()
                res = rec.sync(desired)
                sync_ms.append((CLOCK() - t0) * 1e3)
                table._sock = real_socket
                sends.append(counter.sends)
                if res.unchanged != n or res.errors:
                    raise Failed(f"unchanged sync: {res}")
                t0 = CLOCK()
                table.dump()
                dump_ms.append((CLOCK() - t0) * 1e3)
            if counting.writes:
                raise Failed(f"unchanged sync wrote {counting.writes} routes")
            assert not table.apply([], routes)
            check(table, 0, "after the sync runs")
    except Failed as e:
        print(f"bench/route_install.py: {e}", file=sys.stderr)
        return 1
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

    print(f"[{n} /32 routes via one on-link gateway, install + removal, median of {runs} runs]")
    for label, (ins, rem, both) in (("ours", ours), ("ip -batch", batch),
                                    ("ip subprocess", sub)):
        print(f"{label:>14}: {both:>10,.0f} routes/s   (install {ins:,.0f}/s, "
              f"removal {rem:,.0f}/s)")
    print(f"subprocess rate extrapolated from a sample of {sample_n} routes (one `ip -n NS route "
          f"replace` then one `ip -n NS route del` process per route)")
    print(f"ratios: ours / ip -batch {ours[2] / batch[2]:.2f} (target 2), ours / subprocess "
          f"{ours[2] / sub[2]:.0f} (target 100)")
    print(f"unchanged sync of {n} routes: {statistics.median(sync_ms):.1f} ms (dump alone "
          f"{statistics.median(dump_ms):.1f} ms), {counting.writes} writes, "
          f"{max(sends)} netlink datagram(s) sent per sync (the dump request)")
    print(json.dumps({
        "routes": n, "runs": runs, "subprocess_sample": sample_n,
        "ours_routes_per_s": round(ours[2]), "ip_batch_routes_per_s": round(batch[2]),
        "subprocess_routes_per_s": round(sub[2], 1),
        "ours_install_per_s": round(ours[0]), "ours_remove_per_s": round(ours[1]),
        "ip_batch_install_per_s": round(batch[0]), "ip_batch_remove_per_s": round(batch[1]),
        "ours_over_ip_batch": round(ours[2] / batch[2], 2),
        "ours_over_subprocess": round(ours[2] / sub[2], 1),
        "unchanged_sync_ms": round(statistics.median(sync_ms), 2),
        "unchanged_sync_writes": counting.writes,
        "unchanged_sync_datagrams": max(sends),
        "dump_ms": round(statistics.median(dump_ms), 2),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
