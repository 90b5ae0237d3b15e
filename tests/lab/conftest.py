"""Lab tests: real namespaces, veth links and (stand-in) daemons.  They need root (CAP_NET_ADMIN)
and skip without it.  Every lab is named ``sktest<hex>`` and always torn down by its fixture.

Tests marked ``scale`` (large labs, minutes each) are opt-in: they run only when the ``-m``
expression names them (``pytest -m scale tests/lab``), and are skipped otherwise."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

import pytest

from spines_kr.lab import netns

HERE = Path(__file__).resolve().parent
CAP_NET_ADMIN = 12

# A stand-in for the daemon: takes the daemon's arguments, writes them as JSON to its -lf file,
# listens on its --control-socket and waits to be signalled.  Misbehaviour on demand, for every
# stand-in or (the *_FOR variants: a comma-separated list of logical IDs, -l) for some:
# STANDIN_EXIT(_FOR): fails at once instead; STANDIN_NO_SOCKET(_FOR): never listens;
# STANDIN_DELAY: seconds to wait before listening.
STANDIN = r"""
import json, os, signal, socket, sys, time
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
def me(var):
    return bool(os.environ.get(var)) or opt("-l") in os.environ.get(var + "_FOR", "").split(",")
if me("STANDIN_EXIT"):
    print("stand-in: boom", flush=True)
    sys.exit(3)
with open(opt("-lf"), "w") as fh:
    json.dump(args, fh)
time.sleep(float(os.environ.get("STANDIN_DELAY") or 0))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if not me("STANDIN_NO_SOCKET"):
    s.bind(opt("--control-socket"))
    s.listen(16)
    while True:
        s.accept()[0].close()
while True:
    signal.pause()
"""


def standin_argv(**spec) -> list[str]:
    """``netns.daemon_argv`` with the program replaced by the stand-in (same arguments)."""
    return [sys.executable, "-c", STANDIN, *netns.daemon_argv(**spec)[3:]]


def _has_net_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return False


def pytest_collection_modifyitems(config, items):
    ok = _has_net_admin() and os.geteuid() == 0 and shutil.which("ip")
    scale_asked = "scale" in (config.getoption("markexpr", "") or "")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.lab)
            if not ok:
                item.add_marker(pytest.mark.skip(reason="needs root (CAP_NET_ADMIN)"))
            elif item.get_closest_marker("scale") and not scale_asked:
                item.add_marker(pytest.mark.skip(reason="a large lab: opt-in, run with -m scale"))


@pytest.fixture
def lab_name():
    """A fresh lab name; the lab is torn down afterwards whatever the test did."""
    name = f"sktest{secrets.token_hex(3)}"
    yield name
    netns.down(name)
