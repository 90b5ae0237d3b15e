"""UDP probes that measure how long traffic stops when a link fails.

Packet: 16 bytes, ``!QQ`` = sequence number (from 0) and send time (CLOCK_REALTIME, ns).  The sender
paces packets on a fixed schedule (packet i leaves at start + i/rate, never catching up in bursts
after a stall); a failed send (no route during an outage) still uses up its sequence number, so
the receiver counts it as lost.

Receiver result (one JSON line from the command, a dict from ``recv``)::

    {"received": unique packets, "lost": gaps in first_seq..last_seq, "max_gap_ms",
     "first_seq", "last_seq", "duplicates"}

``max_gap_ms`` is the largest interval between consecutive receptions, including the interval from
the start of traffic (send time of packet 0, estimated from the first packets received and their
send times when packet 0 itself was lost) to the first reception.  Packets lost at the very end
are invisible to the receiver; compare ``last_seq`` with the sender's ``sent``.

Entry points: ``send(dst, port, rate, duration, src=None) -> dict``,
``recv(port, duration, bind="0.0.0.0") -> dict``, and ``python -m spines_kr.lab.probe send|recv``.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

PACKET = struct.Struct("!QQ")


def send(dst: str, port: int, rate: float = 100.0, duration: float = 1.0,
         src: str | None = None) -> dict:
    """Send ``rate`` probes per second for ``duration`` seconds; return
    ``{"sent", "send_errors", "first_seq", "last_seq"}`` (``sent`` counts attempts)."""
    interval, count, errors = 1.0 / rate, max(1, round(rate * duration)), 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if src:
            s.bind((src, 0))
        start = time.monotonic()
        for seq in range(count):
            delay = start + seq * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                s.sendto(PACKET.pack(seq, time.time_ns()), (dst, port))
            except OSError:
                errors += 1
    return {"sent": count, "send_errors": errors, "first_seq": 0, "last_seq": count - 1}


def recv(port: int, duration: float, bind: str = "0.0.0.0", ready=None) -> dict:
    """Count probes arriving on ``port`` for ``duration`` seconds (``ready()`` is called once the
    socket is bound, so a caller can start the sender without racing)."""
    seen: set[int] = set()
    dups, max_gap, last_rx = 0, None, None
    first_rx_ns = None
    lowest = highest = None  # (seq, send_ns) of the lowest / highest sequence number seen
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((bind, port))
        if ready:
            ready()
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data = s.recv(64)
            except TimeoutError:
                break
            now = time.monotonic()
            if len(data) != PACKET.size:
                continue
            seq, sent_ns = PACKET.unpack(data)
            if seq in seen:
                dups += 1
                continue
            seen.add(seq)
            if first_rx_ns is None:
                first_rx_ns = time.time_ns()
            if lowest is None or seq < lowest[0]:
                lowest = (seq, sent_ns)
            if highest is None or seq > highest[0]:
                highest = (seq, sent_ns)
            if last_rx is not None:
                max_gap = max(max_gap or 0.0, (now - last_rx) * 1000)
            last_rx = now
    if not seen:
        return {"received": 0, "lost": 0, "max_gap_ms": None, "first_seq": None,
                "last_seq": None, "duplicates": dups}
    # Start of traffic: send time of packet 0, extrapolated at the observed sending rate.
    start_ns = lowest[1] if lowest[0] == 0 else None
    if start_ns is None and highest[0] > lowest[0]:
        per_packet = (highest[1] - lowest[1]) / (highest[0] - lowest[0])
        start_ns = lowest[1] - lowest[0] * per_packet
    if start_ns is not None:
        max_gap = max(max_gap or 0.0, (first_rx_ns - start_ns) / 1e6)
    lo, hi = lowest[0], highest[0]
    return {"received": len(seen), "lost": hi - lo + 1 - len(seen),
            "max_gap_ms": None if max_gap is None else round(max_gap, 3),
            "first_seq": lo, "last_seq": hi, "duplicates": dups}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spines_kr.lab.probe",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("send", help="send numbered UDP probes")
    ps.add_argument("--dst", required=True)
    ps.add_argument("--port", type=int, required=True)
    ps.add_argument("--rate", type=float, default=100.0, help="packets per second (default 100)")
    ps.add_argument("--duration", type=float, required=True, help="seconds")
    ps.add_argument("--src", help="source address to bind")
    pr = sub.add_parser("recv", help="count probes, print one JSON line")
    pr.add_argument("--port", type=int, required=True)
    pr.add_argument("--duration", type=float, required=True, help="seconds")
    pr.add_argument("--bind", default="0.0.0.0")
    a = p.parse_args(argv)
    try:
        if a.cmd == "send":
            result = send(a.dst, a.port, a.rate, a.duration, a.src)
        else:
            # "ready" on stderr once bound, so a caller can start the sender without racing
            result = recv(a.port, a.duration, a.bind,
                          ready=lambda: print("ready", file=sys.stderr, flush=True))
    except OSError as e:
        print(f"probe: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
