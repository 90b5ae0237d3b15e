"""Kernel tests run in a network namespace of their own (``sktest-<hex>``), deleted afterwards.

Nothing here touches the root namespace: every ``ip`` command is ``ip -n <ns>``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass

import pytest


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN)")


def ip(ns: str, *args: str) -> str:
    """Run ``ip -n ns args``; raise with ip's message if it fails."""
    proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"ip -n {ns} {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def ip_json(ns: str, *args: str):
    return json.loads(ip(ns, "-j", *args) or "[]")


@pytest.fixture
def netns():
    name = f"sktest-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@dataclass(frozen=True)
class Veth:
    name: str
    ifindex: int
    peer: str
    peer_ifindex: int


def ifindex(ns: str, dev: str) -> int:
    return ip_json(ns, "link", "show", "dev", dev)[0]["ifindex"]


def add_veth(ns: str, name: str = "v0", peer: str = "v1", address: str = "10.0.0.1/24") -> Veth:
    """A veth pair inside ``ns``, both ends up, ``address`` on ``name``: its subnet is on-link."""
    ip(ns, "link", "add", name, "type", "veth", "peer", "name", peer)
    ip(ns, "addr", "add", address, "dev", name)
    ip(ns, "link", "set", name, "up")
    ip(ns, "link", "set", peer, "up")
    return Veth(name, ifindex(ns, name), peer, ifindex(ns, peer))


@pytest.fixture
def veth(netns) -> Veth:
    return add_veth(netns)
