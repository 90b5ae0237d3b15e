"""Link protocols under loss: best effort, soft real time and reliable links against end-to-end
TCP, in the line a-b-c-d with real daemons.

Every hop gets LOSS % loss (0, 1 and 5) and 10 ms of latency, both ways, told to the receiving
ends (setlink: the daemons emulate loss and latency on their own packets; the kernel's traffic
gets the loss by an nftables drop, and the latency too only where the kernel has netem -- this
one may not: then TCP and the kernel-carried best-effort messages see the loss but not the
latency, which flatters them; the header line says which).

Per loss and protocol, 1,000-byte messages from a session on a to a session on d:
  * paced at RATE messages/s (default 1,000): the delivered fraction, the fraction delivered
    within the deadline (path latency 30 ms + 100 ms), the 99th-percentile one-way latency;
  * goodput in Mbit/s: best effort and real time at the paced rate (what arrived), reliable
    links and TCP from an unlimited sender (what the protocol sustains).
TCP runs between a's and d's namespaces through the overlay's kernel routes (what a user would
otherwise do).  At 0 % loss the unlimited reliable sender must take no link down (hellos go
first): the number of link flaps during the run is printed.  Medians of RUNS runs (default 3);
one JSON line at the end.  Namespaces ``skbench<pid>l-*``, removed at the end, also on failure.

Usage (root): python bench/links.py [RUNS] [RATE]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _line import Line, Sink, blast, pct  # noqa: E402

from spines_kr.lab import netns  # noqa: E402
from spines_kr.netlink.capabilities import probe  # noqa: E402

SIZE = 1000
N_PACED = 3000
N_UNLIMITED = 20_000
HOP_MS = 10.0
DEADLINE_S = 3 * HOP_MS / 1000 + 0.100
PROTOCOLS = {"best_effort": 0, "realtime": 2, "reliable": 1}

TCP_RX = r"""
import json, socket, struct, sys, time
H = struct.Struct("!IQ")
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 9700)); srv.listen(1); print("ready", flush=True)
c, _ = srv.accept(); c.settimeout(30)
size, buf, lat, t0, n = int(sys.argv[2]), b"", [], None, 0
while True:
    d = c.recv(1 << 20)
    if not d:
        break
    t0 = t0 or time.monotonic()
    buf += d
    now = time.monotonic_ns()
    while len(buf) >= size:
        seq, sent = H.unpack_from(buf); buf = buf[size:]; lat.append((now - sent) / 1e9); n += 1
print(json.dumps({"n": n, "span": time.monotonic() - t0, "lat": lat}), flush=True)
"""
TCP_TX = r"""
import socket, struct, sys, time
H = struct.Struct("!IQ")
to, n, size, rate = (sys.argv[1], 9700), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection(to, timeout=30)
pad, t0 = b"x" * (size - H.size), time.monotonic()
for i in range(n):
    s.sendall(H.pack(i, time.monotonic_ns()) + pad)
    if rate:
        ahead = t0 + (i + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
s.close()
"""


def sessions(line: Line, proto: int, n: int, rate: float | None) -> dict:
    port = 9410 + proto
    sink = Sink(line, "d", port, proto)
    sink.start()
    t0 = time.monotonic()
    try:
        sent_s = blast(line, "a", "d", port, proto, n, SIZE, rate=rate)
        sink.wait_quiet(n, quiet_s=2.0)
    finally:
        sink.close()
    lat = [x[1] for x in sink.got]
    span = max(sent_s, sink.last - t0, 1e-9)
    return {"delivered": len(sink.got) / n,
            "in_deadline": sum(1 for x in lat if x <= DEADLINE_S) / n,
            "p99_ms": 1000 * pct(lat, 0.99), "mbit_s": len(sink.got) * SIZE * 8 / span / 1e6}


def tcp(line: Line, n: int, rate: float | None) -> dict:
    d_id, env = line.node("d")["logical_id"], netns.child_env()
    rx = subprocess.Popen(["ip", "netns", "exec", line.node("d")["netns"], sys.executable, "-c",
                           TCP_RX, d_id, str(SIZE)], stdout=subprocess.PIPE, text=True, env=env)
    rx.stdout.readline()
    subprocess.run(["ip", "netns", "exec", line.node("a")["netns"], sys.executable, "-c", TCP_TX,
                    d_id, str(n), str(SIZE), str(rate or 0)], check=True, env=env, timeout=300)
    out = json.loads(rx.stdout.readline())
    rx.wait(10)
    lat = out["lat"]
    return {"delivered": out["n"] / n, "in_deadline": sum(1 for x in lat if x <= DEADLINE_S) / n,
            "p99_ms": 1000 * pct(lat, 0.99),
            "mbit_s": out["n"] * SIZE * 8 / max(out["span"], 1e-9) / 1e6}


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 1000.0
    netem = probe().has("netem")
    print(f"line a-b-c-d, {HOP_MS:g} ms and LOSS % per hop both ways, {SIZE}-byte messages, "
          f"paced at {rate:g}/s; deadline {DEADLINE_S * 1000:.0f} ms; kernel "
          + ("has netem: the kernel's traffic gets the latency too" if netem else
             "lacks netem: TCP and kernel-carried best effort get the loss, not the latency"))
    results: dict[str, list[dict]] = {}
    flaps = []
    with Line("l") as line:
        for run in range(runs):
            for loss in (0.0, 1.0, 5.0):
                line.setlink(loss, HOP_MS)
                time.sleep(0.5)  # (the neighbors' RTT estimate takes the new latency in)
                for name, proto in PROTOCOLS.items():
                    r = sessions(line, proto, N_PACED, rate)
                    if proto == 1:
                        before = line.flaps() if loss == 0 else 0
                        r["mbit_s"] = sessions(line, proto, N_UNLIMITED, None)["mbit_s"]
                        if loss == 0:
                            flaps.append(line.flaps() - before)
                    results.setdefault(f"{name}_{loss:g}", []).append(r)
                r = tcp(line, N_PACED, rate)
                r["mbit_s"] = tcp(line, N_UNLIMITED, None)["mbit_s"]
                results.setdefault(f"tcp_{loss:g}", []).append(r)
                print(f"run {run + 1} loss {loss:g} %: " + ", ".join(
                    f"{k.rsplit('_', 1)[0]} {v[-1]['delivered']:.3f}/{v[-1]['mbit_s']:.1f}"
                    for k, v in results.items() if k.endswith(f"_{loss:g}")), flush=True)
    print(f"\nmedians of {runs} runs: delivered, in deadline, p99 one-way ms, goodput Mbit/s")
    med = {}
    for key, rs in results.items():
        m = {f: round(statistics.median(r[f] for r in rs), 4) for f in rs[0]}
        med[key] = m
        print(f"  {key:18} {m['delivered']:>7.2%} {m['in_deadline']:>7.2%} {m['p99_ms']:>9.1f} "
              f"{m['mbit_s']:>9.1f}")
    print(f"  link flaps during the unlimited reliable sends (0 % loss): {flaps}")
    print(json.dumps({"bench": "links", "runs": runs, "rate": rate, "netem": netem,
                      "flaps_unlimited_reliable": flaps, **med}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
