"""Unit tests are pure: none may start a daemon (it would open sockets in the namespace the
test runs in, usually the machine's own).  A CLI test that parses valid daemon flags by
mistake fails here instead of starting one."""

import pytest


@pytest.fixture(autouse=True)
def no_daemon(monkeypatch):
    import spines_kr.daemon.main as daemon_main

    def refuse(cfg, *args, **kwargs):
        raise AssertionError("a unit test tried to start a daemon (would bind sockets in this "
                             "namespace); use a lab test")

    monkeypatch.setattr(daemon_main, "run", refuse)
