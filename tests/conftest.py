"""Suite-wide: kernel features a test needs, probed once with the product's own probe.

``@pytest.mark.needs("multicast_routing", ...)`` skips a test whose kernel lacks a feature,
naming it exactly as the daemon does ("kernel without IPv4 multicast routing
(CONFIG_IP_MROUTE)"); the keys are those of ``spines_kr.netlink.capabilities.FEATURES``.  A
test never skips because a feature of *ours* is missing: only the kernel's (or the host's:
nft, wireguard-go) may be absent.  The run ends with the features that were missing and how
many tests skipped for each.
"""

from __future__ import annotations

import collections
import os

import pytest
from hypothesis import HealthCheck, settings

# Property tests never judge wall-clock speed: on a loaded 2-core machine input generation and
# examples are slower, which is no failure (the figures live in bench/).
settings.register_profile("spines-kr", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.load_profile("spines-kr")

_caps = None
_skipped_for: collections.Counter[str] = collections.Counter()


def capabilities():
    """The kernel's features as the daemon sees them (probed once per run)."""
    global _caps
    if _caps is None:
        from spines_kr.daemon.logging import setup
        from spines_kr.netlink import capabilities as capmod

        setup("warning")  # the suite's own process: library logs only when something is wrong
        _caps = capmod.probe()
    return _caps


def missing(*features: str) -> str | None:
    """The reason to skip when one of ``features`` is missing, else None."""
    from spines_kr.netlink.capabilities import FEATURES

    for f in features:
        if f not in FEATURES:
            raise ValueError(f"@pytest.mark.needs: unknown feature {f!r}")
    if os.geteuid() != 0:
        return None  # kernel and lab tests skip for want of root anyway
    caps = capabilities()
    for f in features:
        if not caps.has(f):
            return caps.missing_reason(f)
    return None


def require(*features: str) -> None:
    """Inside a test or fixture: skip (counted in the summary) when a feature is missing."""
    reason = missing(*features)
    if reason is not None:
        _skipped_for[reason] += 1
        pytest.skip(reason)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs(*features): kernel features the test needs (capabilities.FEATURES "
                   "keys); skipped naming the missing one")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs"):
        require(*mark.args)


def pytest_terminal_summary(terminalreporter):
    if os.geteuid() != 0:
        terminalreporter.write_line("kernel and lab tests skipped: not root (CAP_NET_ADMIN)")
        return
    caps = capabilities()
    lacking = caps.missing()
    terminalreporter.write_sep("-", "kernel features")
    terminalreporter.write_line(f"kernel {caps.kernel}: {caps.summary()}")
    if not _skipped_for:
        terminalreporter.write_line("no test skipped for a missing kernel feature"
                                    + (f" ({len(lacking)} missing)" if lacking else ""))
    for reason, n in sorted(_skipped_for.items()):
        terminalreporter.write_line(f"skipped {n} test{'s' if n != 1 else ''}: {reason}")
    # every other skip, named too: a skip is never silent
    features = set(_skipped_for)
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if reason not in features:
            terminalreporter.write_line(f"skipped {rep.nodeid}: {reason}")
