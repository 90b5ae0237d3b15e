"""This node's own groups: joins and leaves, their limit, and the addresses they put on lo.

Data model (``Membership``): the engine holds the groups (they travel in our LSA); this part
keeps who holds each group (``holders``: group -> origins such as "config", "control" for
``spines-kr join``, "igmp" for the hosts of our LANs, "session:<id>" for a client session): the
node is a member while anyone holds the group, so a session leaving does not undo an explicit
join; the operator's leave ("control") lets go of the config's hold too.  It decides whether a join may happen (a routable group, at most ``max_own_groups``: a
refusal is counted as ``refused.own_groups`` and logged once a minute per origin with a count),
and keeps
the loopback addresses of the groups this node delivers locally in step (``netlink.addresses``:
anycast groups at kernel level 1, not at level 3, Spines' "without edge"; mapped when Spines'
mappings are on).

Entry points: ``Membership(cfg, engine, loopback, log, log_limit, counters)``,
``join(group, joined, now, origin) -> dict`` (ValueError with the reason), ``sync_loopback()``,
``close()`` (and ``clear()`` at exit: our addresses off lo).
"""

from __future__ import annotations

import ipaddress

from spines_kr.config import ConfigError, check_group
from spines_kr.routing import groups as grp


class Membership:
    def __init__(self, cfg, engine, loopback, log, log_limit, counters) -> None:
        self.cfg = cfg
        self.engine = engine
        self.loopback = loopback  # netlink.addresses.LoopbackAddresses, or None (no kernel levels)
        self.log = log
        self.log_limit = log_limit
        self.counters = counters
        self.counters.setdefault("refused.own_groups", 0)
        self.holders: dict[int, set[str]] = {}

    def join(self, group: str, joined: bool, now: float, origin: str = "control") -> dict:
        """``origin`` joins or leaves a group; ValueError with the reason when it cannot be
        done.  ``changed``: whether the node's own membership changed."""
        try:
            g = ipaddress.IPv4Address(group)
        except ValueError:
            raise ValueError(f"'{group}' is not an IPv4 address") from None
        if joined:
            try:
                check_group(str(g), "group")
            except ConfigError as e:
                raise ValueError(str(e).removeprefix("group: ")) from None
        node, limit = self.engine, self.cfg.max_own_groups
        if joined and int(g) not in node.groups and len(node.groups) >= limit:
            self.counters["refused.own_groups"] += 1
            if self.log_limit.allow(("groups.refused", origin), now):
                self.log.warning("groups.refused", group=str(g), origin=origin,
                                 groups=len(node.groups), limit=limit,
                                 hint="max_own_groups bounds this node's groups")
            raise ValueError(f"this node already belongs to {len(node.groups)} groups, the "
                             f"limit (max_own_groups = {limit})")
        key = int(g)
        holders = self.holders.setdefault(key, set())
        if joined:
            holders.add(origin)
            changed = node.join(key, now)
        else:
            holders.discard(origin)
            if origin == "control":
                # The operator's leave overrides the config file's join (until a reload that
                # lists the group anew, or a restart); holders that are programs -- sessions,
                # IGMP hosts -- keep the node a member, and the reply says who.
                holders.discard("config")
            changed = False
            if not holders:
                del self.holders[key]
                changed = node.leave(key, now)
        self.sync_loopback()
        return {"group": str(g), "member": key in node.groups, "changed": changed,
                "held_by": sorted(self.holders.get(key, ()))}

    def leave_all(self, origin: str, now: float) -> None:
        """``origin`` (a closed session) lets go of every group it held."""
        for key in [g for g, h in self.holders.items() if origin in h]:
            self.join(str(ipaddress.IPv4Address(key)), False, now, origin)

    def delivered_locally(self) -> set[str]:
        levels = set(self.cfg.kernel_levels)
        if 1 not in levels or 3 in levels:
            return set()
        return {grp.mapped_dst(g, self.cfg.spines_mappings).split("/")[0]
                for g in self.engine.groups
                if grp.is_anycast(g) and g != self.engine.p.gateway_group}

    def sync_loopback(self, wanted: set[str] | None = None) -> None:
        if self.loopback is None:
            return
        try:
            added, removed = self.loopback.sync(self.delivered_locally() if wanted is None
                                                else wanted)
        except OSError as e:
            self.log.error("groups.loopback_failed", error=str(e))
            return
        if added or removed:
            self.log.info("groups.loopback", added=added, removed=removed)

    def clear(self) -> None:
        """At exit: our group addresses off lo."""
        self.sync_loopback(set())

    def close(self) -> None:
        if self.loopback is not None:
            self.loopback.close()
