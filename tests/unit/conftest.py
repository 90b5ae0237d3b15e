"""Unit tests are pure: none may start a daemon (it would open sockets in the namespace the
test runs in, usually the machine's own), and none may open a netlink socket of ours: a test
double must be given instead (netlink.core.open_socket fails here).  A CLI test that parses
valid daemon flags by mistake fails here instead of starting one."""

import pytest


@pytest.fixture(autouse=True)
def no_daemon(monkeypatch):
    import spines_kr.daemon.main as daemon_main

    def refuse(cfg, *args, **kwargs):
        raise AssertionError("a unit test tried to start a daemon (would bind sockets in this "
                             "namespace); use a lab test")

    monkeypatch.setattr(daemon_main, "run", refuse)


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch, request):
    """Netlink sockets only in the kernel and lab tiers (and the capability probe, which
    changes nothing: tests/conftest.py runs it once for the suite's summary)."""
    from spines_kr.netlink import core

    def refuse(*args, **kwargs):
        raise AssertionError("a unit test opened a netlink socket of ours in this namespace; "
                             "give it a scripted socket (or make it a kernel test)")

    monkeypatch.setattr(core, "open_socket", refuse)
