"""The kernel-feature decisions (daemon.features) for kernels with and without each feature,
and the probe's value type (netlink.capabilities.Capabilities)."""

import pytest

from spines_kr import config
from spines_kr.daemon.features import Plan, Refused, decide
from spines_kr.netlink.capabilities import FEATURES, Capabilities


def caps(**lacking) -> Capabilities:
    present = {k: True for k in FEATURES}
    present.update({k: v for k, v in lacking.items()})
    return Capabilities(present)


def cfg(**values):
    return config.build({"logical_id": "10.0.0.1", "auth": "none", **values})


def test_a_full_kernel_gets_nexthop_groups_and_kernel_multicast():
    plan = decide(cfg(kernel_levels=[0, 2], table=1000), caps())
    assert plan == Plan("nexthop groups", True, "kernel", False, ())


def test_multicast_without_kernel_support_goes_through_the_data_plane():
    plan = decide(cfg(kernel_levels=[2]), caps(multicast_routing=False))
    assert plan.multicast == "dataplane"
    assert "kernel without IPv4 multicast routing (CONFIG_IP_MROUTE)" in plan.warnings[0]
    with pytest.raises(Refused) as e:  # ... unless the data plane is off
        decide(cfg(kernel_levels=[2], data_plane=False), caps(multicast_routing=False))
    msg = str(e.value)
    assert "kernel without IPv4 multicast routing (CONFIG_IP_MROUTE)" in msg and "-k 2" in msg
    assert "\n" not in msg


def test_own_table_needs_policy_rules():
    with pytest.raises(Refused, match="CONFIG_IP_MULTIPLE_TABLES.*table = 1000"):
        decide(cfg(kernel_levels=[0], table=1000), caps(policy_rules=False))
    assert decide(cfg(kernel_levels=[0]), caps(policy_rules=False)).policy_rule is False


def test_multipath_falls_back_and_nexthop_on_is_a_demand():
    assert decide(cfg(kernel_levels=[0]), caps(nexthop_objects=False)).multipath == "classic"
    assert decide(cfg(kernel_levels=[0], nexthop_objects="off"), caps()).multipath == "classic"
    plan = decide(cfg(kernel_levels=[0]), caps(multipath=False))
    assert plan.multipath == "off" and "CONFIG_IP_ROUTE_MULTIPATH" in plan.warnings[0]
    with pytest.raises(Refused, match="nexthop_objects"):
        decide(cfg(kernel_levels=[0], nexthop_objects="on"), caps(nexthop_objects=False))
    assert decide(cfg(kernel_levels=[0], multipath=False), caps()).multipath == "off"


def test_one_multicast_table_is_a_warning_not_a_refusal():
    plan = decide(cfg(kernel_levels=[2], table=1000), caps(multicast_tables=False))
    assert plan.multicast == "kernel" and plan.multicast_default_table
    assert "CONFIG_IP_MROUTE_MULTIPLE_TABLES" in plan.warnings[0]


def test_unknown_features_are_not_refused():
    unknown = Capabilities({k: None for k in FEATURES}, {"multicast_routing": "no permission"})
    assert decide(cfg(kernel_levels=[0, 2], table=1000), unknown).multicast == "kernel"
    assert not unknown.has("multicast_routing")
    assert "unknown" in unknown.missing_reason("multicast_routing")


def test_capabilities_json_has_a_boolean_per_feature():
    c = caps(netem=False, wireguard=False)
    j = c.to_json()
    assert j["netem"] is False and j["multicast_routing"] is True
    assert all(isinstance(j[k], bool) for k in FEATURES)
    assert "netem" in c.summary().split("lack")[1]
    assert c.missing_reason("netem") == "kernel without the netem qdisc (CONFIG_NET_SCH_NETEM)"
    with pytest.raises(KeyError):
        c.has("warp_drive")
