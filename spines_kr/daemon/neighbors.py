"""One virtual link to one neighbor: hello exchange, liveness, RTT and loss.  No I/O, no clock.

Data model: a ``Link`` is keyed by (local ifindex, neighbor link address).  Its state is

    DOWN   nothing heard from the neighbor within the dead interval (or the interface is down)
    INIT   hellos heard, but fewer than ``up_after`` answered in a row
    UP     two-way and stable: carries routes and flooding

A hello is *answered* when the neighbor's hello echoes one of ours (``echo_us``): that proves
both directions work and gives an RTT sample on our own clock (RTT = now - echo - hold).
Liveness is judged from any packet of the neighbor; a hello of a neighbor that no longer hears
us brings the link down at once (a one-way failure), an interface that goes down or loses
carrier does so immediately (the daemon learns it from netlink), and silence longer than
``dead`` does so at the next tick.

Measurements: ``srtt_ms`` is an EWMA (1/8) of RTT samples; ``loss`` is the fraction of the
neighbor's last 64 hello sequence numbers that did not arrive.

Default timers (config): 60 ms hellos (jittered down to 51 ms: about 18 per second), dead after 250 ms, up after 3 answered hellos.  Spines
uses 100 ms hellos and 10 missed (about 1 s).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from spines_kr.daemon.emulation import LinkEmulation
from spines_kr.daemon.flooding import LinkFlood
from spines_kr.routing.metrics import CostTracker, LinkMeasure

LOSS_WINDOW = 64


class State(enum.IntEnum):
    DOWN = 0
    INIT = 1
    UP = 2


@dataclass(eq=False)
class Link:
    ifindex: int
    ifname: str
    local_addr: str
    peer_addr: str
    configured: bool = True

    state: State = State.DOWN
    peer_id: int | None = None
    since: float = 0.0  # time of the last state change
    # our hellos (all links' go out together in the engine's hello round)
    tx_seq: int = 0
    hello_asap: bool = False  # answer before the next round: the neighbor waits to hear us
    # the neighbor's hellos
    last_rx: float = 0.0
    peer_tx_us: int = 0  # tx_us of the neighbor's last hello, echoed back
    peer_rx_at: float = 0.0
    last_echo_us: int = 0
    answered: int = 0
    peer_up: bool = False  # the neighbor's last hello said the link is up at its end
    updates_in: int = 0  # link-state updates received since the link came up
    srtt_ms: float | None = None
    rx_highest: int = -1
    rx_first: int = 0  # first sequence number heard: nothing before it counts as lost
    rx_bits: int = 0  # bit i set: hello rx_highest - i arrived
    # flooding on this link (daemon.flooding), and the engine's deadline for the link
    flood: LinkFlood = field(default_factory=LinkFlood)
    deadline: float = float("inf")
    flaps: int = 0
    cost: CostTracker | None = None  # the advertised cost while UP
    emulation: LinkEmulation | None = None  # setlink at this end: what we send (kept across
    rx_emulation: LinkEmulation | None = None  # down/up), and what we receive from the peer
    tokens: float = -1.0  # packet-rate token bucket (-1: full)
    tokens_at: float = 0.0

    @property
    def key(self) -> tuple[int, str]:
        return (self.ifindex, self.peer_addr)

    @property
    def up(self) -> bool:
        return self.state is State.UP

    @property
    def heard(self) -> bool:
        return self.state is not State.DOWN

    @property
    def loss(self) -> float:
        if self.rx_highest < 0:
            return 0.0
        expected = min(LOSS_WINDOW, self.rx_highest - self.rx_first + 1)
        got = bin(self.rx_bits & ((1 << expected) - 1)).count("1")
        return 1.0 - got / expected

    def admit(self, now: float, rate: float) -> bool:
        """Token bucket: ``rate`` packets per second, bursts of one second's worth."""
        if self.tokens < 0:
            self.tokens, self.tokens_at = rate, now
        self.tokens = min(rate, self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def measure(self) -> LinkMeasure:
        return LinkMeasure(self.srtt_ms, self.loss)

    def record_rx_seq(self, seq: int) -> None:
        if self.rx_highest < 0 or seq > self.rx_highest + LOSS_WINDOW or seq < self.rx_highest - 1000:
            # first hello, a long gap, or the neighbor restarted its counter
            self.rx_highest, self.rx_first, self.rx_bits = seq, seq, 1
        elif seq > self.rx_highest:
            self.rx_bits = ((self.rx_bits << (seq - self.rx_highest)) | 1) & ((1 << LOSS_WINDOW) - 1)
            self.rx_highest = seq
        elif self.rx_highest - seq < LOSS_WINDOW and seq >= self.rx_first:
            self.rx_bits |= 1 << (self.rx_highest - seq)

    def rtt_sample(self, rtt_ms: float) -> None:
        rtt_ms = max(rtt_ms, 0.0)
        self.srtt_ms = rtt_ms if self.srtt_ms is None else self.srtt_ms + (rtt_ms - self.srtt_ms) / 8

    def reset(self, now: float) -> None:
        """Back to DOWN: forget liveness and the flooding queue, keep identity and counters."""
        self.state = State.DOWN
        self.since = now
        self.answered = 0
        self.peer_up = False
        self.updates_in = 0
        self.peer_tx_us = 0
        self.last_echo_us = 0
        self.cost = None
        self.flood.reset()

    def to_json(self, now: float) -> dict:
        return {
            "ifindex": self.ifindex, "ifname": self.ifname, "local_address": self.local_addr,
            "neighbor_address": self.peer_addr, "configured": self.configured,
            "state": self.state.name.lower(),
            "neighbor_id": None if self.peer_id is None else _ip(self.peer_id),
            "since_s": round(now - self.since, 3),
            "rtt_ms": None if self.srtt_ms is None else round(self.srtt_ms, 3),
            "loss": round(self.loss, 4), "flaps": self.flaps,
            "unacked_lsas": len(self.flood.unacked),
            "cost": None if self.cost is None else self.cost.advertised & 0x7FFFFFFF,
            "problematic": bool(self.cost and self.cost.problematic),
            "emulation": None if self.emulation is None else self.emulation.to_json(),
            "rx_emulation": None if self.rx_emulation is None else self.rx_emulation.to_json(),
        }


def _ip(n: int) -> str:
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))
