"""Policy rules for an overlay's own table, against the real kernel in a private namespace."""

import json
import subprocess

import pytest

from spines_kr.netlink.rules import RuleTable, default_priority

pytestmark = [pytest.mark.kernel, pytest.mark.needs("policy_rules")]


def rules(ns):
    out = subprocess.run(["ip", "-n", ns, "-N", "-j", "rule", "show"], capture_output=True,
                         text=True, check=True).stdout
    return [(r.get("priority"), str(r.get("table")), str(r.get("protocol", ""))) for r in json.loads(out)]


def test_ensure_adds_one_rule_and_remove_takes_only_ours(netns):
    subprocess.run(["ip", "-n", netns, "rule", "add", "pref", "100", "lookup", "7", "proto", "static"],
                   check=True)
    t = RuleTable(1000, netns=netns)
    try:
        assert t.ensure() == [f"added rule priority {default_priority(1000)} lookup 1000"]
        assert t.ensure() == []  # idempotent
        assert (default_priority(1000), "1000", "81") in rules(netns)
        other = RuleTable(1000, priority=555, netns=netns)  # a configuration change
        assert other.ensure() == [f"removed stale rule priority {default_priority(1000)}",
                                  "added rule priority 555 lookup 1000"]
        assert other.remove()
        left = rules(netns)
        assert not any(t == "1000" for _p, t, _pr in left)
        assert (100, "7", "4") in left  # someone else's rule is untouched
        other.close()
    finally:
        t.close()


def test_two_tables_keep_their_own_rules(netns):
    a, b = RuleTable(1100, netns=netns), RuleTable(1200, netns=netns)
    try:
        a.ensure()
        b.ensure()
        a.remove()
        assert [t for _p, t, pr in rules(netns) if pr == "81"] == ["1200"]
    finally:
        b.remove()
        a.close()
        b.close()
