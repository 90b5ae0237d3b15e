"""Best-effort data plane benchmark: client messages through real daemons in the line a-b-c-d.

For 1,000-byte best-effort messages (UDP_LINKS) from a session on a to a session on b (1 hop)
and on d (3 hops), with the lab's kernel levels (0 and 1: a's daemon sends to d's logical ID
and b, c forward in the kernel):
  * unlimited sender: messages/s and Mbit/s delivered, and the loss at that rate;
  * the highest of a few paced rates (90, 75, 60, 45 % of the unlimited one) with no loss;
  * round trip of a small message between sessions (a ping), 1 and 3 hops;
  * daemon CPU per message at the sender (a), the transit daemons (b, c) and the receiver (d);
  * the same unlimited sender over reliable links (link protocol 1: every daemon on the way
    takes part), 1 and 3 hops, and the link flaps it caused (none: hellos go first);
side by side in the same run with the limit: plain UDP (a Python sender and receiver, the same
kind of program as the client) between a's and d's namespaces through the same kernel routes.
For scale, Spines 5.7 with its C clients on this kind of machine (issue 12): 43,700 msg/s
(350 Mbit/s) over 1 hop, 20,600 msg/s (165 Mbit/s) lossless over 3 hops, sp_ping 244 µs / 320
µs, daemon CPU per message 11-13 µs at the ingress daemon and 9-12 µs at each forwarding one;
its reliable links 36,800 msg/s (295 Mbit/s) over 1 hop and 12,500 msg/s (100 Mbit/s) over 3
hops, collapsing above about 120 Mbit/s there.

Medians of RUNS runs (default 3); ends with one JSON line.  Everything lives in network
namespaces ``skbench<pid>d-*``, removed at the end, also on failure.

Usage (root): python bench/dataplane.py [RUNS]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _line import Line, Sink, blast, ping  # noqa: E402

from spines_kr.lab import netns  # noqa: E402

SIZE = 1000
N = 30_000
SPINES = {"msgs_per_s_1hop": 43_700, "msgs_per_s_3hop": 20_600, "rtt_us_1hop": 244,
          "rtt_us_3hop": 320, "transit_cpu_us_per_msg": 10.5,
          "reliable_msgs_per_s_1hop": 36_800, "reliable_msgs_per_s_3hop": 12_500}

UDP_RX = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], 9600)); s.settimeout(1.5)
n, first, last = 0, None, None
print("ready", flush=True)
while True:
    try:
        s.recv(2048)
    except socket.timeout:
        break
    last = time.monotonic(); first = first or last; n += 1
print(n, (last - first) if n > 1 else 0.0, flush=True)
"""
UDP_TX = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
data, to, n = b"x" * 1000, (sys.argv[1], 9600), int(sys.argv[2])
for _ in range(n):
    try:
        s.sendto(data, to)
    except (BlockingIOError, PermissionError):
        pass
"""


def stream(line: Line, dst: str, rate: float | None, n: int = N, protocol: int = 0) -> dict:
    sink = Sink(line, dst, 9400, protocol)
    sink.start()
    cpu0 = line.cpu()
    t0 = time.monotonic()
    try:
        sent_s = blast(line, "a", dst, 9400, protocol, n, SIZE, rate=rate)
        sink.wait_quiet(n)
    finally:
        sink.close()
    cpu1 = line.cpu()
    got = len(sink.got)
    span = max(sent_s, sink.last - t0, 1e-9)  # first message sent to last one received
    lat = [x[1] for x in sink.got]
    return {"sent_per_s": n / sent_s, "delivered": got, "loss": 1 - got / n,
            "msgs_per_s": got / span, "latency_ms_p50": 1000 * statistics.median(lat) if lat else None,
            "cpu_us": {k: 1e6 * (cpu1[k] - cpu0[k]) / max(1, got) for k in cpu0}}


def kernel_udp(line: Line) -> float:
    """Messages/s plain UDP from a's namespace to d's logical ID, through the kernel routes."""
    d_id = line.node("d")["logical_id"]
    env = netns.child_env()
    rx = subprocess.Popen(["ip", "netns", "exec", line.node("d")["netns"], sys.executable, "-c",
                           UDP_RX, d_id], stdout=subprocess.PIPE, text=True, env=env)
    rx.stdout.readline()
    subprocess.run(["ip", "netns", "exec", line.node("a")["netns"], sys.executable, "-c", UDP_TX,
                    d_id, str(N * 3)], check=True, env=env)
    n, span = rx.stdout.readline().split()
    rx.wait(10)
    return int(n) / float(span) if float(span) > 0 else 0.0


def lossless_rate(line: Line, dst: str, unlimited: float) -> float | None:
    for share in (0.9, 0.75, 0.6, 0.45):
        r = stream(line, dst, unlimited * share, n=N // 2)
        if r["delivered"] == N // 2:
            return unlimited * share
    return None


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows = {k: [] for k in ("msgs_per_s_1hop", "loss_1hop", "msgs_per_s_3hop", "loss_3hop",
                            "lossless_msgs_per_s_3hop", "rtt_us_1hop", "rtt_us_3hop",
                            "sender_cpu_us_per_msg", "transit_cpu_us_per_msg",
                            "receiver_cpu_us_per_msg", "kernel_udp_msgs_per_s",
                            "reliable_msgs_per_s_1hop", "reliable_loss_1hop",
                            "reliable_msgs_per_s_3hop", "reliable_loss_3hop", "reliable_flaps")}
    with Line("d") as line:
        for run in range(runs):
            one = stream(line, "b", None)
            three = stream(line, "d", None)
            rows["msgs_per_s_1hop"].append(one["msgs_per_s"])
            rows["loss_1hop"].append(one["loss"])
            rows["msgs_per_s_3hop"].append(three["msgs_per_s"])
            rows["loss_3hop"].append(three["loss"])
            rows["lossless_msgs_per_s_3hop"].append(
                lossless_rate(line, "d", three["sent_per_s"]) or 0.0)
            rows["sender_cpu_us_per_msg"].append(three["cpu_us"]["a"])
            rows["transit_cpu_us_per_msg"].append((three["cpu_us"]["b"] + three["cpu_us"]["c"]) / 2)
            rows["receiver_cpu_us_per_msg"].append(three["cpu_us"]["d"])
            rows["rtt_us_1hop"].append(ping(line, "a", "b"))
            rows["rtt_us_3hop"].append(ping(line, "a", "d"))
            rows["kernel_udp_msgs_per_s"].append(kernel_udp(line))
            flaps = line.flaps()
            for dst, hops in (("b", "1hop"), ("d", "3hop")):
                r = stream(line, dst, None, n=2 * N, protocol=1)
                rows[f"reliable_msgs_per_s_{hops}"].append(r["msgs_per_s"])
                rows[f"reliable_loss_{hops}"].append(r["loss"])
            rows["reliable_flaps"].append(line.flaps() - flaps)
            print(f"run {run + 1}: 1 hop {one['msgs_per_s']:.0f}/s (loss {one['loss']:.1%}), "
                  f"3 hops {three['msgs_per_s']:.0f}/s (loss {three['loss']:.1%}, lossless "
                  f"{rows['lossless_msgs_per_s_3hop'][-1]:.0f}/s), rtt {rows['rtt_us_1hop'][-1]:.0f}"
                  f"/{rows['rtt_us_3hop'][-1]:.0f} µs, cpu µs/msg a {three['cpu_us']['a']:.1f} "
                  f"b {three['cpu_us']['b']:.1f} c {three['cpu_us']['c']:.1f} d "
                  f"{three['cpu_us']['d']:.1f}, plain UDP {rows['kernel_udp_msgs_per_s'][-1]:.0f}/s, "
                  f"reliable {rows['reliable_msgs_per_s_1hop'][-1]:.0f}/"
                  f"{rows['reliable_msgs_per_s_3hop'][-1]:.0f}/s (flaps {rows['reliable_flaps'][-1]})",
                  flush=True)
    med = {k: round(statistics.median(v), 4 if k.startswith("loss_") else 1) for k, v in rows.items()}
    print(f"\nmedians of {runs} runs, 1,000-byte messages (Spines 5.7, C clients, for scale):")
    for k, v in med.items():
        ref = SPINES.get(k)
        print(f"  {k:28} {v:>10}" + (f"   (Spines {ref})" if ref else ""))
    print(f"  {'mbit_per_s_1hop':28} {med['msgs_per_s_1hop'] * SIZE * 8 / 1e6:>10.1f}")
    print(f"  {'mbit_per_s_3hop':28} {med['msgs_per_s_3hop'] * SIZE * 8 / 1e6:>10.1f}")
    for hops in ("1hop", "3hop"):
        print(f"  {'reliable_mbit_per_s_' + hops:28} "
              f"{med['reliable_msgs_per_s_' + hops] * SIZE * 8 / 1e6:>10.1f}")
    print(json.dumps({"bench": "dataplane", "runs": runs, "size": SIZE, **med}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
