"""What bench/dataplane.py and bench/links.py share: the 4-node line a - b - c - d in a namespace
lab, client sessions on its daemons, a numbered message stream and a ping between sessions,
each daemon's CPU time.  Not a benchmark by itself.

Messages carry (sequence u32, send time in ns u64: CLOCK_MONOTONIC, one clock for every
namespace of the machine) and padding to their size.
"""

from __future__ import annotations

import os
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from spines_kr import client  # noqa: E402
from spines_kr.ctl import request  # noqa: E402
from spines_kr.lab import netns, ops, topology  # noqa: E402

HEAD = struct.Struct("!IQ")
TIMEOUT = 60.0


class Line:
    def __init__(self, tag: str) -> None:
        self.name = f"skbench{os.getpid()}{tag}"
        self.st = None

    def __enter__(self) -> Line:
        self.st = netns.up(topology.line("abcd"), self.name)
        if ops.wait_converged(self.st, 60) is None:
            raise SystemExit("bench: the line did not converge")
        return self

    def __exit__(self, *exc) -> None:
        netns.down(self.name)

    def node(self, n: str) -> dict:
        return next(x for x in self.st["nodes"] if x["name"] == n)

    def ipc(self, n: str) -> str:
        return os.path.join(self.st["state_dir"], f"{n}.ipc")

    def ctl(self, n: str, req: dict) -> dict:
        return request(self.node(n)["control_socket"], req, timeout=30)

    def cpu(self) -> dict[str, float]:
        """Seconds of CPU each daemon used so far."""
        out = {}
        for n in "abcd":
            t = psutil.Process(self.node(n)["pid"]).cpu_times()
            out[n] = t.user + t.system
        return out

    def flaps(self) -> int:
        return sum(l["flaps"] for n in "abcd"
                   for l in self.ctl(n, {"cmd": "show", "what": "neighbors"})["data"])

    def setlink(self, loss_pct: float, latency_ms: float) -> None:
        """Every hop, both ways, told to the receiving end (the daemons emulate on their own
        packets; the kernel's traffic gets the loss, and the latency too where netem exists)."""
        for x, y in (("a", "b"), ("b", "c"), ("c", "d")):
            for src, dst in ((x, y), (y, x)):
                r = self.ctl(dst, {"cmd": "setlink", "source": self.node(src)["logical_id"],
                                   "dest": self.node(dst)["logical_id"], "bandwidth_kbps": 0,
                                   "latency_ms": latency_ms, "loss_pct": loss_pct,
                                   "burst_pct": 0})
                if not r.get("ok"):
                    raise SystemExit(f"bench: setlink: {r}")


class Sink(threading.Thread):
    """Receives on a session of ``dst``: (sequence, one-way latency in s) per message."""

    def __init__(self, line: Line, dst: str, port: int, protocol: int) -> None:
        super().__init__(daemon=True)
        self.sock = client.socket(line.ipc(dst), protocol=protocol, timeout=TIMEOUT)
        self.sock.bind(port)
        self.got: list[tuple[int, float]] = []
        self.last = 0.0
        self.stop = False

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                batch = self.sock.recv_batch()
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic_ns()
            for m in batch:
                seq, sent = HEAD.unpack_from(m.payload)
                self.got.append((seq, (now - sent) / 1e9))
            self.last = time.monotonic()

    def wait_quiet(self, n: int, quiet_s: float = 1.5) -> None:
        """Until ``n`` arrived, or nothing came for ``quiet_s``."""
        start = time.monotonic()
        while len(self.got) < n and time.monotonic() - max(self.last, start) < quiet_s:
            time.sleep(0.02)

    def close(self) -> None:
        self.stop = True
        self.join(5)
        self.sock.close()


def blast(line: Line, src: str, dst: str, port: int, protocol: int, n: int, size: int,
          rate: float | None = None, batch: int = 50) -> float:
    """``n`` messages of ``size`` bytes from a session on ``src``; at ``rate`` messages/s, or
    as fast as the session takes them.  Returns the seconds the sending took."""
    pad = b"x" * (size - HEAD.size)
    to = (line.node(dst)["logical_id"], port)
    with client.socket(line.ipc(src), protocol=protocol, timeout=TIMEOUT) as s:
        t0 = time.monotonic()
        for i in range(0, n, batch):
            k = min(batch, n - i)
            now = time.monotonic_ns()
            s.send_batch([HEAD.pack(i + j, now) + pad for j in range(k)], to)
            if rate:
                ahead = t0 + (i + k) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        return time.monotonic() - t0


def ping(line: Line, src: str, dst: str, count: int = 200, protocol: int = 0) -> float:
    """Median round trip, in µs, of a small message between sessions on ``src`` and ``dst``."""
    echo = client.socket(line.ipc(dst), protocol=protocol, timeout=10)
    echo.bind(9500)
    stop = threading.Event()

    def serve():
        echo.settimeout(0.2)
        while not stop.is_set():
            try:
                data, (addr, port) = echo.recvfrom()
            except TimeoutError:
                continue
            except OSError:
                return
            echo.sendto(data, (addr, port))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    rtts = []
    with client.socket(line.ipc(src), protocol=protocol, timeout=2) as s:
        to = (line.node(dst)["logical_id"], 9500)
        for i in range(count):
            t0 = time.perf_counter_ns()
            s.sendto(struct.pack("!I", i), to)
            try:
                while struct.unpack("!I", s.recv()[:4])[0] != i:
                    pass
            except TimeoutError:
                continue
            rtts.append((time.perf_counter_ns() - t0) / 1000)
    stop.set()
    t.join(2)
    echo.close()
    return statistics.median(rtts) if rtts else float("nan")


def pct(values, q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]
