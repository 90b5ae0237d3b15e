"""What the daemon uses of the kernel, decided in one place from the config and the probe.

Entry point: ``decide(cfg, caps) -> Plan``; raises ``Refused`` with one line naming the missing
feature and the flag or setting that asked for it ("kernel without IPv4 multicast routing
(CONFIG_IP_MROUTE), which -k 2 (kernel_levels) needs").  Pure: the CLI probes
(``netlink.capabilities.probe``), decides, and exits 2 on a refusal before the daemon touches
the kernel; the daemon logs the plan at start and shows it in ``show status``.

Decisions (a feature the probe could not judge, e.g. without CAP_NET_ADMIN, is assumed present:
the kernel's own answer then says what is wrong):
    -k 2 (multicast groups)        kernel multicast routing; without it the overlay's own data
                                   plane carries the LAN hosts' multicast (dataplane.hostmcast,
                                   warned), unless the data plane is off: then refused.
    -k 2 with table != main        multicast tables, else the default multicast table (a
                                   second overlay on the host would collide: warned)
    table != main                  policy rules (our rule sends lookups to our table), else
                                   refused
    multipath (default on)         nexthop groups when nexthop_objects is auto or on and the
                                   kernel has them; classic multipath routes otherwise; without
                                   CONFIG_IP_ROUTE_MULTIPATH one next hop (warned).
                                   nexthop_objects = "on" without them is refused.
    tunnels (daemon.tunnels)       each configured kind (``[[neighbor]]`` tunnel, ``tunnel``)
                                   needs its feature: wireguard (the module, or wireguard-go
                                   with /dev/net/tun), vxlan, gre, ipip; refused otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

MAIN_TABLE = 254


class Refused(Exception):
    """The kernel lacks what the configuration asks for; the message says which."""


@dataclass(frozen=True)
class Plan:
    multipath: str = "off"  # "nexthop groups" | "classic" | "off"
    policy_rule: bool = False
    multicast: str | None = None  # "kernel" | "dataplane" (kernel_levels 2) or None
    multicast_default_table: bool = False  # no multicast tables: the default one is used
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"multipath": self.multipath, "policy_rule": self.policy_rule,
                "multicast": self.multicast or "off", "warnings": list(self.warnings)}


def _lacks(caps, key: str) -> bool:
    return caps.present.get(key) is False


def decide(cfg, caps) -> Plan:
    warnings = []
    levels = set(cfg.kernel_levels)
    multicast = None
    default_table = False
    if 2 in levels and _lacks(caps, "multicast_routing"):
        if not getattr(cfg, "data_plane", True):
            raise Refused(f"{caps.missing_reason('multicast_routing')}, which -k 2 "
                          f"(kernel_levels) needs for multicast groups without the data plane "
                          f"(data_plane = false)")
        multicast = "dataplane"
        warnings.append(f"{caps.missing_reason('multicast_routing')}: the overlay's data plane "
                        f"carries the LAN hosts' multicast (-k 2)")
    elif 2 in levels:
        multicast = "kernel"
        if cfg.table != MAIN_TABLE and _lacks(caps, "multicast_tables"):
            default_table = True
            warnings.append(f"{caps.missing_reason('multicast_tables')}: multicast uses the "
                            f"default table, which a second overlay on this host would share")
    policy_rule = bool(levels) and cfg.table != MAIN_TABLE
    if policy_rule and _lacks(caps, "policy_rules"):
        raise Refused(f"{caps.missing_reason('policy_rules')}, which table = {cfg.table} "
                      f"(--table) needs")
    if cfg.nexthop_objects == "on" and cfg.multipath and _lacks(caps, "nexthop_objects"):
        raise Refused(f"{caps.missing_reason('nexthop_objects')}, which nexthop_objects = "
                      f"\"on\" needs (\"auto\" falls back to classic multipath routes)")
    kinds = sorted({k for _a, k, _ka in getattr(cfg, "neighbor", ()) if k}
                   | ({getattr(cfg, "tunnel", "none")} - {"none"}))
    for kind in kinds:
        if _lacks(caps, kind):
            raise Refused(f"{caps.missing_reason(kind)}, which {kind} tunnels ([[neighbor]] "
                          f"tunnel, --tunnel, --tunnel-neighbor) need")
    multipath = "off"
    if cfg.multipath:
        if _lacks(caps, "multipath"):
            warnings.append(f"{caps.missing_reason('multipath')}: one next hop per route")
        elif cfg.nexthop_objects != "off" and not _lacks(caps, "nexthop_objects"):
            multipath = "nexthop groups"
        else:
            multipath = "classic"
    return Plan(multipath, policy_rule, multicast, default_table, tuple(warnings))
