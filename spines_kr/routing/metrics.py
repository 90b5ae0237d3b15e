"""Cost of one link from its measurements, for each Spines metric, and when to re-advertise it.

Data model: ``LinkMeasure(rtt_ms, loss)`` (smoothed round-trip time in milliseconds, loss rate
0..1) -> integer cost >= 1.  Route cost is the sum of link costs along the path.  All nodes of
an overlay use one metric (hellos carry it; a mismatch refuses the adjacency).

Formulas (Spines 5.x, in ../shared/design.md; d = RTT/2 is the one-way delay, p the loss rate):
    distance  1 per link
    latency   max(d, 1) + 4, capped at 300
    loss      -ln(1 - p) * 10,000 + 1, capped at 30,000
    explat    (1-p)·d + (p - 2p² + p³)(3d + 10) + (2p² - p³)·600, clamped to 2..600
    problem   |cost| = explat; the link is *problematic* while loss > 2 %, or one-way latency
              > 1.25 x its base and at least base + 5 ms; it is normal again only below 0.5 %
              loss and 1.15 x base (and base + 3 ms).  The base latency is the lowest one-way
              delay measured on the link since it came up.

Re-advertising (``CostTracker``): a measured cost is flooded again only when it moves by at
least 10 % (``SIGNIFICANT``) from what was last advertised, so a noisy link does not flood the
overlay.  For ``problem``, a worsening (higher cost, or becoming problematic) is reported at
once, an improvement no sooner than 30 s (``PROBLEM_HOLD_S``) after the last report.

Problem sign on the wire and in routing: an LSA cost is an unsigned 32-bit field; a
problematic link's cost carries ``PROBLEM_FLAG`` (bit 31), Spines' negative sign.  Routing
uses ``graph_cost``: the magnitude plus ``PROBLEM_PENALTY`` (1,000, above the explat cap of
600), so a path with fewer problematic links always wins and a problematic link still carries
traffic when it is the only way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALL_METRICS = ("distance", "latency", "loss", "explat", "problem")
MEASURED = frozenset({"latency", "loss", "explat", "problem"})

SIGNIFICANT = 0.10
PROBLEM_FLAG = 0x8000_0000
PROBLEM_PENALTY = 1000
PROBLEM_HOLD_S = 30.0
LATENCY_CAP = 300
LOSS_CAP = 30_000
EXPLAT_CAP = 600


@dataclass(frozen=True, slots=True)
class LinkMeasure:
    rtt_ms: float | None = None
    loss: float = 0.0

    @property
    def one_way_ms(self) -> float:
        return (self.rtt_ms or 0.0) / 2


def distance(_: LinkMeasure) -> int:
    return 1


def latency(m: LinkMeasure) -> int:
    return min(LATENCY_CAP, round(max(m.one_way_ms, 1.0) + 4))


def loss(m: LinkMeasure) -> int:
    if m.loss >= 1.0:
        return LOSS_CAP
    return min(LOSS_CAP, round(-math.log(1.0 - max(m.loss, 0.0)) * 10_000) + 1)


def explat(m: LinkMeasure) -> int:
    d, p = m.one_way_ms, min(max(m.loss, 0.0), 1.0)
    v = (1 - p) * d + (p - 2 * p * p + p ** 3) * (3 * d + 10) + (2 * p * p - p ** 3) * EXPLAT_CAP
    return min(EXPLAT_CAP, max(2, round(v)))


METRICS = {"distance": distance, "latency": latency, "loss": loss, "explat": explat,
           "problem": explat}


def link_cost(metric: str, measure: LinkMeasure) -> int:
    """The cost a link with this measure has now (before hysteresis; no problem flag)."""
    return METRICS[metric](measure)


def graph_cost(advertised: int) -> int:
    """The cost routing uses for an advertised cost (a problematic link is penalised)."""
    if advertised & PROBLEM_FLAG:
        return (advertised & ~PROBLEM_FLAG) + PROBLEM_PENALTY
    return advertised


class CostTracker:
    """The advertised cost of one link under one metric, with Spines' hysteresis.

    ``update(measure, now)`` returns True when the advertised cost changed (re-originate).
    """

    def __init__(self, metric: str):
        self.metric = metric
        self.advertised: int | None = None
        self.problematic = False
        self.base_ms: float | None = None
        self.reported_at = -math.inf

    def update(self, m: LinkMeasure, now: float) -> bool:
        if self.metric == "distance":
            new = 1
        elif m.rtt_ms is None and self.metric != "loss":
            return False  # nothing measured yet; the first RTT sample comes with link-up
        elif self.metric == "problem":
            return self._update_problem(m, now)
        else:
            new = link_cost(self.metric, m)
        old = self.advertised
        if old is not None and abs(new - old) < max(1, SIGNIFICANT * old):
            return False
        self.advertised = new
        self.reported_at = now
        return old != new

    def _update_problem(self, m: LinkMeasure, now: float) -> bool:
        d = max(m.one_way_ms, 0.0)
        self.base_ms = d if self.base_ms is None else min(self.base_ms, d)
        base = self.base_ms
        if self.problematic:
            problematic = not (m.loss < 0.005 and d < max(1.15 * base, base + 3))
        else:
            problematic = m.loss > 0.02 or (d > 1.25 * base and d >= base + 5)
        magnitude = link_cost("problem", m)
        new = magnitude | (PROBLEM_FLAG if problematic else 0)
        old = self.advertised
        if old is None:
            self._report(new, problematic, now)
            return True
        old_mag = old & ~PROBLEM_FLAG
        worse = (problematic and not self.problematic) or magnitude >= old_mag * (1 + SIGNIFICANT)
        better = (self.problematic and not problematic) or magnitude <= old_mag * (1 - SIGNIFICANT)
        if worse or (better and now - self.reported_at >= PROBLEM_HOLD_S):
            if new != old:
                self._report(new, problematic, now)
                return True
        return False

    def _report(self, cost: int, problematic: bool, now: float) -> None:
        self.advertised = cost
        self.problematic = problematic
        self.reported_at = now
