"""Cost of one link from its measurements, for each Spines metric.

Data model: ``LinkMeasure(rtt_ms, loss)`` (smoothed round-trip time in milliseconds, loss rate
0..1) -> integer cost >= 1.  Route cost is the sum of link costs along the path.

Implemented: ``distance`` (1 per link, Spines' hop count).  The measured metrics (latency,
loss, explat, problem) are defined in ../shared/design.md and arrive with the metrics issue;
``METRICS`` lists what the daemon accepts today.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkMeasure:
    rtt_ms: float | None = None
    loss: float = 0.0


def distance(_: LinkMeasure) -> int:
    return 1


METRICS = {"distance": distance}
ALL_METRICS = ("distance", "latency", "loss", "explat", "problem")


def link_cost(metric: str, measure: LinkMeasure) -> int:
    return METRICS[metric](measure)
