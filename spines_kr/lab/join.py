"""Joined overlays: a second, independent overlay run in the namespaces of another lab.

Entry points:
    join_slot(base) -> int           the overlay slot for a lab about to join ``base``
    check(state, base)               refuse (``LabConflict``) a joined lab that would clash with
                                     its base or a sibling; called under ``state.lock``
    unbuild(state, report)           ``down`` of a joined lab, after its daemons are gone
    nexthop_id_range(port) -> range  the nexthop object ids the daemon of overlay ``port`` uses
    claims(state) -> [(network, what)]   every network a lab's overlay uses

Data model: ``up(..., join=BASE)`` runs a lab of its own (phase up) that creates no namespace
(its state has ``"join": BASE``, ``"netns": []``, ``"slot": k``, ``"table": PORT``):
    nodes are matched by name (each must be a node of BASE; BASE's other nodes take no part);
    overlay slot k (1..9, ``topology.MAX_SLOT``): the topology must be parsed with
        ``slot=join_slot(BASE)`` (``lab up --join`` does it), the lowest slot no other lab joined
        to BASE holds; its defaults are logical IDs 10.(100+k).0.<i>, link_subnet
        10.(200+k).0.0/16 and link interface names ``o<k>-<peer>`` (see ``topology``);
    a second loopback identity per node: its logical ID as another /32 on lo;
    its own links: veth pairs between BASE's namespaces, as the topology says;
    its own route table: the overlay's port (``--table PORT``; 8200 -> table 8200), so the port
        must differ from BASE's and every other joined lab's, and not be 253..255 (reserved
        tables).  The daemon installs the policy rule ``lookup PORT`` (protocol spines, priority
        by the daemon's default for the table) and removes it at a clean exit; BASE's daemons
        use main (254), without a rule;
    its daemons' control sockets, logs and IPC paths in its own state directory; no hosts.
Before anything is made, ``check`` refuses a node BASE does not have, a port or slot another
overlay there uses, a logical ID, link /30 or prefix overlapping an address, link or prefix of
BASE or of another joined lab, and any planned interface name, lo address or table (routes or
rules) already present in a namespace.
``unbuild`` removes what the joined lab's daemons may have left in its table (routes, rules,
nexthop objects in its port's id range, all protocol spines: a killed or keep-routes daemon
leaves them), its links and its lo addresses: nothing of BASE.
"""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Interface, IPv4Network

from spines_kr import RTPROT_SPINES
from spines_kr.lab.build import ip_json, netns_exists, run, table_routes
from spines_kr.lab.state import (MAIN_TABLE, RESERVED_TABLES, LabConflict, LabError, LabNotFound,
                                 joined_labs, load)
from spines_kr.lab.topology import MAX_SLOT


def nexthop_id_range(port: int) -> range:
    """The nexthop object ids the daemon of overlay ``port`` allocates from (daemon/main.py:
    ``id_base=port << 16``, ``id_count=1 << 16``)."""
    return range(port << 16, (port + 1) << 16)


def join_slot(base: str) -> int:
    """The overlay slot for a lab about to join ``base``: the lowest of 1..MAX_SLOT that no lab
    joined to it holds.  Parse the joining topology with it (``topology.parse(..., slot=)``)."""
    state = load(base)
    if state.get("join"):
        raise LabConflict(f"lab {base!r} is itself joined to lab {state['join']!r}; "
                          f"join {state['join']!r} instead")
    used = set()
    for name in joined_labs(base):
        with contextlib.suppress(LabError):
            used.add(load(name).get("slot"))
    for k in range(1, MAX_SLOT + 1):
        if k not in used:
            return k
    raise LabConflict(f"lab {base!r} has {MAX_SLOT} overlays joined to it already")


def claims(state: dict) -> list[tuple[IPv4Network, str]]:
    """Every network a lab's overlay uses, with what it is: logical IDs, links, prefixes, LANs."""
    out, lab = [], state["name"]
    for n in state["nodes"]:
        out.append((IPv4Network(f"{n['logical_id']}/32"),
                    f"logical ID of node {n['name']} in lab {lab!r}"))
        out += [(IPv4Network(p), f"prefix of node {n['name']} in lab {lab!r}")
                for p in n.get("prefixes", [])]
        if n.get("lan"):
            out.append((IPv4Interface(n["lan"]["address"]).network,
                        f"LAN of node {n['name']} in lab {lab!r}"))
    out += [(IPv4Interface(ln["a_address"]).network,
             f"link {ln['a']}-{ln['b']} of lab {lab!r}") for ln in state["links"]]
    out += [(IPv4Network(h["prefix"]), f"host {h['name']} of lab {lab!r}")
            for h in state.get("hosts", [])]
    return out


def check(state: dict, base: dict) -> None:
    """Refuse (``LabConflict``) a joined lab that would clash with its base or a sibling, by
    their states, then by what the kernel holds in the namespaces.  Called under ``lock``."""
    join, port, slot = base["name"], state["port"], state["slot"]
    if base.get("join"):
        raise LabConflict(f"lab {join!r} is itself joined to lab {base['join']!r}; "
                          f"join {base['join']!r} instead")
    if base.get("phase") != "up":
        raise LabError(f"lab {join!r} is not up (phase {base.get('phase')}); bring it up or "
                       f"take it down first")
    siblings = []
    for name in joined_labs(join):
        with contextlib.suppress(LabNotFound):
            siblings.append(load(name))
    if not 1 <= slot <= MAX_SLOT:
        raise LabConflict(f"the topology was parsed for a lab of its own (slot {slot}); a lab "
                          f"joining {join!r} needs slot=join_slot({join!r}) (lab up --join "
                          f"does it)")
    for sib in siblings:
        if sib.get("slot") == slot:
            raise LabConflict(f"overlay slot {slot} is taken by lab {sib['name']!r}, joined to "
                              f"{join!r}; parse the topology with slot=join_slot({join!r})")
    for other in (base, *siblings):
        if other["port"] == port:
            raise LabConflict(f"port {port} is the overlay port of lab {other['name']!r} in the "
                              f"same namespaces; give the joined overlay its own (--port)")
    if port in RESERVED_TABLES:
        raise LabConflict(f"port {port}: a joined overlay's route table is its port, and table "
                          f"{port} is reserved; use another port")
    taken = [c for other in (base, *siblings) for c in claims(other)]
    for net, what in claims(state):
        for other, where in taken:
            if net.overlaps(other):
                raise LabConflict(f"{what} {net} overlaps the {where} ({other})")
    # The kernel: nothing we are about to make may be there already.
    table = str(state["table"])
    ifnames = {}
    for ln in state["links"]:
        for side in ("a", "b"):
            ifnames.setdefault(ln[side], []).append(ln[f"{side}_ifname"])
    for n in state["nodes"]:
        ns = n["netns"]
        if not netns_exists(ns):
            raise LabError(f"network namespace {ns} of lab {join!r} does not exist")
        ifaces = ip_json("-n", ns, "addr", "show")
        have = {i["ifname"] for i in ifaces}
        clash = sorted(have & set(ifnames.get(n["name"], [])))
        if clash:
            raise LabConflict(f"interface {clash[0]} exists already in {ns}")
        local = {a.get("local") for i in ifaces for a in i.get("addr_info", [])}
        if n["logical_id"] in local:
            raise LabConflict(f"address {n['logical_id']} (logical ID of {n['name']}) is already "
                              f"on an interface in {ns}")
        if table_routes(ns, table):
            raise LabConflict(f"route table {table} in {ns} is not empty; another overlay uses "
                              f"it? (the joined overlay's table is its port)")
        if any(str(r.get("table")) == table for r in ip_json("-n", ns, "rule", "show")):
            raise LabConflict(f"a policy rule in {ns} looks up table {table} already")


def unbuild(state: dict, report: dict) -> None:
    """Remove, in each namespace of a joined lab that still exists: the routes, policy rules and
    nexthop objects of protocol spines in its table / id range (its daemons are gone by now),
    its links and its lo addresses.  Only things that can be the lab's own are touched; what
    was done goes into ``report`` (``down``'s)."""
    table, proto = str(state.get("table", MAIN_TABLE)), str(RTPROT_SPINES)
    if table == str(MAIN_TABLE):  # never: a joined lab has a table of its own
        report["problems"].append(f"lab {state['name']!r} is joined but records table main; "
                                  f"its routes are left alone")
        table = None
    ids = nexthop_id_range(state["port"])
    for n in state["nodes"]:
        ns, name = n["netns"], n["name"]
        if not netns_exists(ns):
            continue
        try:
            if table is not None:
                deleted = 0
                for _ in range(3):  # routes of one dst at several metrics need a delete each
                    routes = table_routes(ns, table, proto)
                    if not routes:
                        break
                    for r in routes:
                        # one by one: iproute2 6.1's "route flush" fails on routes with nhid
                        with contextlib.suppress(LabError):
                            run(["ip", "-n", ns, "route", "del", r["dst"], "table", table,
                                 "proto", proto])
                            deleted += 1
                if deleted:
                    report["kernel_cleaned"].append(f"{name}: {deleted} routes in table {table}")
                for r in ip_json("-n", ns, "rule", "show"):
                    if str(r.get("table")) == table and str(r.get("protocol")) in (proto, "spines"):
                        run(["ip", "-n", ns, "rule", "del", "priority", str(r["priority"]),
                             "table", table, "protocol", proto])
                        report["kernel_cleaned"].append(f"{name}: rule priority {r['priority']} "
                                                        f"lookup {table}")
            objs = [o for o in ip_json("-n", ns, "nexthop", "show")
                    if o.get("id") in ids and str(o.get("protocol")) in (proto, "spines")]
            for o in sorted(objs, key=lambda o: "group" not in o):  # groups before members
                with contextlib.suppress(LabError):
                    run(["ip", "-n", ns, "nexthop", "del", "id", str(o["id"])])
            if objs:
                report["kernel_cleaned"].append(f"{name}: {len(objs)} nexthop objects")
        except LabError as e:
            report["problems"].append(str(e))
    nodes = {n["name"]: n["netns"] for n in state["nodes"]}
    for ln in state["links"]:
        for side in ("a", "b"):  # deleting one end of the pair deletes the other
            ns, ifname = nodes[ln[side]], ln[f"{side}_ifname"]
            if not netns_exists(ns):
                continue
            try:
                if ifname in {i["ifname"] for i in ip_json("-n", ns, "link", "show")}:
                    run(["ip", "-n", ns, "link", "del", ifname])
                    report["links_deleted"].append(f"{ln['a']}-{ln['b']}")
                    break
            except LabError as e:
                report["problems"].append(str(e))
    for n in state["nodes"]:
        ns, lid = n["netns"], n["logical_id"]
        if not netns_exists(ns):
            continue
        try:
            lo = ip_json("-n", ns, "addr", "show", "dev", "lo")
            if any(a.get("local") == lid and a.get("prefixlen") == 32
                   for i in lo for a in i.get("addr_info", [])):
                run(["ip", "-n", ns, "addr", "del", f"{lid}/32", "dev", "lo"])
                report["addresses_removed"].append(f"{n['name']} {lid}/32")
        except LabError as e:
            report["problems"].append(str(e))
