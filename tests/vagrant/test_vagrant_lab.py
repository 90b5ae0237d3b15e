"""The Vagrant lab booted for real (issue 15): opt-in, minutes long, root only.

    SPINES_KR_VAGRANT=1 .venv/bin/python -m pytest -q tests/vagrant     (or scripts/run vagrant)

builds (or reuses) the cached box, boots vagrant/ring3.toml as lab ``pytest-ring3`` inside its
namespace, runs ``spines-kr vagrant check`` (units active, routes on every VM, a ping across, a
restart on a transit VM, systemd-analyze security, the journal's JSON events), removes the lab,
and compares the machine's own links, routes, rules and nftables ruleset with what they were
before.  Without SPINES_KR_VAGRANT=1 it is skipped: booting VMs is too slow for the default
suite, not a missing feature.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spines_kr.vagrantlab import lab, safety

REPO = Path(__file__).resolve().parents[2]
LAB = "pytest-ring3"

pytestmark = [
    pytest.mark.vagrant,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.environ.get("SPINES_KR_VAGRANT") != "1",
                       reason="opt-in: boots VMs for minutes; set SPINES_KR_VAGRANT=1 "
                              "(or run scripts/run vagrant)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespace, libvirtd)"),
]


@pytest.fixture(scope="module")
def ring3():
    before = safety.snapshot()
    if LAB in lab.labs():
        lab.down(LAB)
    try:
        figures = lab.up(str(REPO / "vagrant" / "ring3.toml"), name=LAB)
        yield figures
    finally:
        lab.down(LAB)
        changed = safety.diff(before, safety.snapshot())
        assert not changed, "the machine's own network changed:\n" + "\n".join(changed)
        assert LAB not in lab.labs()


def test_ring3_boots_converges_and_passes_the_checks(ring3):
    assert ring3["vms"] == 3 and ring3["root_network_unchanged"]
    res = lab.check(LAB)
    failed = {k: v for k, v in res.items() if isinstance(v, dict) and not v.get("ok", True)}
    assert not failed, failed
    assert res["ping"]["received"] == res["ping"]["sent"] > 0
    assert all(not m for m in res["routes"]["missing"].values())
