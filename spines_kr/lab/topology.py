"""Lab topology file: a TOML description of overlay nodes, the links between them, and hosts.

Data model (all frozen dataclasses, addresses are ``ipaddress`` objects):
    Topology  metric, port, link_subnet, nodes, links, hosts, multipath, slot; and the underlay:
              routers, underlay, underlay_subnet, tunnels
    Node      name, logical_id (/32 put on lo), prefixes, groups, lan; ``advertised`` (property)
    Link      index, a, b, subnet (a /30), a_address (.1), b_address (.2), a_ifname, b_ifname,
              latency_ms, loss_pct, bandwidth_kbps (stored; honoured by a later issue)
    Host      name, attach (a node name), address, gateway, ifname
    Router    name: a namespace that only routes the underlay (no overlay daemon)
    UnderlayLink  index, a, b (nodes or routers), subnet (a /30 of underlay_subnet), a_address,
              b_address, a_ifname, b_ifname (``u-<peer>``)
    TunnelLink    index (in [[link]] order), a, b, kind: an overlay link made by the daemons as
              a kernel tunnel over the underlay (``tunnel = "wireguard" | "vxlan" | ...``);
              ``endpoint(node)`` is the node's underlay address (its first underlay link's)

File format::

    metric = "distance"          # optional: distance|latency|loss|explat|problem
    port = 8100                  # optional: overlay UDP port of every daemon
    multipath = true             # optional: multipath routes where next hops tie (the daemon's
                                 #   default); false gives every daemon --no-multipath
    kernel_levels = [0, 1]       # optional: -k levels of every daemon (0 nodes, 1 anycast, ...)
    anypath = false              # optional: anycast routes to all nearest members
    link_subnet = "10.200.0.0/16"  # optional: pool the links' /30s are cut from, in link order
    [[node]]
    name = "n1"                  # [a-z0-9_-], at most 32 characters
    logical_id = "10.100.0.1"    # optional; default 10.100.0.<i>, i = 1, 2, ... skipping taken ones
    prefixes = ["192.168.1.0/24"]  # optional: networks behind the node that it advertises
    groups = ["247.0.0.1"]       # optional
    [[link]]
    a = "n1"
    b = "n2"
    latency_ms = 5               # optional, also loss_pct (0..100) and bandwidth_kbps
    [[host]]
    name = "h1"                  # a namespace on a LAN behind n1; runs no overlay software
    attach = "n1"
    underlay_subnet = "172.16.0.0/16"  # optional: pool of the underlay links' /30s
    [[router]]
    name = "r1"                  # a namespace that only routes (no daemon)
    [[underlay]]
    a = "n1"                     # a node or a router
    b = "r1"
    [[link]]
    a = "n1"
    b = "n2"
    tunnel = "wireguard"         # an overlay link over the underlay: wireguard|vxlan|gre|ipip

The underlay: routers and nodes joined by ``[[underlay]]`` links (veth pairs, /30s of
``underlay_subnet``, ends named ``u-<peer>``).  Routers get a static route to every underlay
subnet (the first hop of a shortest path, in file order); a node gets a default route via its
first underlay link's other end, as an edge router has, so an overlay prefix can cover the
underlay (the daemons pin their tunnels' endpoint routes: ``daemon.tunnels``).  A ``[[link]]``
with ``tunnel`` is no veth: both nodes' daemons ask each other for a tunnel of that kind
between their underlay addresses (each node's first underlay link's address); both nodes need
an underlay link.  Nodes with tunnels and no other link may share no subnet at all.

Hosts and LANs: a node with hosts gets a LAN, a bridge ``lan0`` in its namespace whose address
(``Node.lan``) is the first usable address of the node's first prefix; its hosts get the next
ones (.2, .3, ... in file order) and a default route via the node (``Host.gateway``).  A node with
hosts but no ``prefixes`` gets a /24 picked for it: the first of 10.210.0.0/24, 10.210.1.0/24, ...
(up to 10.255.255.0/24), in node order, that overlaps no link_subnet, logical ID, prefix or
earlier pick.  ``Node.advertised`` (what the daemon announces) is ``prefixes``, else that /24.
Prefixes must not overlap link_subnet, each other or a logical ID (default logical IDs skip them).
Interface names: the end of a link in node X that leads to node Y is ``to-Y`` cut to 15 characters
(IFNAMSIZ - 1); when several of X's links share a name (parallel links, or names equal after the
cut) each of them gets a suffix ``-1``, ``-2``, ... that makes it unique within X.  A host's veth
end in its node's namespace is ``lan-<host>`` (made unique the same way; a port of ``lan0``), its
end in the host's namespace ``eth0``.

Several overlays on one set of namespaces (``lab up --join``): a topology parsed for overlay slot
``k`` (keyword ``slot``; 0, the default, is a lab of its own) gets defaults that stay clear of
slot 0 and of every other slot: logical IDs 10.(100+k).0.<i>, link_subnet 10.(200+k).0.0/16 and
link interface names ``o<k>-Y`` instead of ``to-Y``; k is 1..9 (``MAX_SLOT``).  Explicit
``logical_id`` and ``link_subnet`` values are kept as written (the lab checks them against the
overlays already there).  A topology for a slot above 0 may not have hosts: the LANs and host
namespaces belong to the lab that created the namespaces.

Entry points: ``parse(text)``, ``load(path)``, ``from_dict(data)`` -> ``Topology`` (each takes
``slot=``);
``DEMO_TOPOLOGY`` (TOML text of the 5-node ring used by ``lab demo`` and the tests);
``ring(n, chord=None)`` -> ``Topology`` (a ring with chords, average degree 4, for labs at scale).  Every problem
raises ``TopologyError`` with a one-line message that starts with the field, e.g.
``link[2].b: unknown node 'n9'`` (indices count from 0, in file order).  No I/O except ``load``.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from spines_kr.routing.metrics import ALL_METRICS

IFNAMSIZ = 15  # longest Linux interface name (IFNAMSIZ 16 including the NUL)
DEFAULT_PORT = 8100
DEFAULT_METRIC = "distance"
DEFAULT_LINK_SUBNET = IPv4Network("10.200.0.0/16")
DEFAULT_UNDERLAY_SUBNET = IPv4Network("172.16.0.0/16")
TUNNEL_KINDS = ("wireguard", "vxlan", "gre", "ipip")
LOGICAL_ID_BASE = IPv4Address("10.100.0.0")
NAME_RE = re.compile(r"[a-z0-9_-]{1,32}")
LAN_BRIDGE = "lan0"                     # a node's LAN bridge, in its namespace
HOST_IFNAME = "eth0"                    # a host's one interface, in its namespace
LAN_POOL_START = IPv4Address("10.210.0.0")  # picked LAN /24s: 10.210.0.0/24 ... 10.255.255.0/24
LAN_POOL_END = IPv4Address("10.255.255.0")
MAX_SLOT = 9                            # overlay slots 1..9 stay below the LAN pool (10.210/16)


def slot_defaults(slot: int) -> tuple[IPv4Address, IPv4Network, str]:
    """(logical ID base, default link_subnet, link ifname prefix) of overlay slot ``slot``."""
    if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot <= MAX_SLOT:
        raise TopologyError(f"slot: {slot!r} is not an overlay slot 0..{MAX_SLOT}")
    if slot == 0:
        return LOGICAL_ID_BASE, DEFAULT_LINK_SUBNET, "to-"
    return (LOGICAL_ID_BASE + (slot << 16),
            IPv4Network((int(DEFAULT_LINK_SUBNET.network_address) + (slot << 16), 16)),
            f"o{slot}-")

DEMO_TOPOLOGY = """\
# The spines-kr demo: five nodes in a ring, every link one hop.
#   n1 - n2 - n3
#   |         |
#   n4 ------ n5
metric = "distance"

[[node]]
name = "n1"
[[node]]
name = "n2"
[[node]]
name = "n3"
[[node]]
name = "n4"
[[node]]
name = "n5"

[[link]]
a = "n1"
b = "n2"
[[link]]
a = "n2"
b = "n3"
[[link]]
a = "n3"
b = "n5"
[[link]]
a = "n5"
b = "n4"
[[link]]
a = "n4"
b = "n1"
"""


class TopologyError(ValueError):
    """A problem in a topology file; the message is one line that names the field."""


@dataclass(frozen=True)
class Node:
    name: str
    logical_id: IPv4Address
    prefixes: tuple[IPv4Network, ...] = ()
    groups: tuple[IPv4Address, ...] = ()
    lan: IPv4Interface | None = None  # address on the LAN bridge (only a node with hosts has one)

    @property
    def advertised(self) -> tuple[IPv4Network, ...]:
        """The prefixes the node's daemon announces: ``prefixes``, else its picked LAN prefix."""
        if self.prefixes:
            return self.prefixes
        return (self.lan.network,) if self.lan else ()


@dataclass(frozen=True)
class Link:
    index: int
    a: str
    b: str
    subnet: IPv4Network
    a_address: IPv4Interface
    b_address: IPv4Interface
    a_ifname: str
    b_ifname: str
    latency_ms: float | None = None
    loss_pct: float | None = None
    bandwidth_kbps: int | None = None

    def end(self, node: str) -> tuple[str, IPv4Interface, str, IPv4Interface]:
        """(local ifname, local address, peer name, peer address) of the link seen from ``node``."""
        return _end(self, node)


@dataclass(frozen=True)
class Host:
    name: str
    attach: str
    address: IPv4Interface | None = None  # in the node's LAN prefix, e.g. 10.210.0.2/24
    gateway: IPv4Address | None = None    # the node's LAN address (the default route)
    ifname: str = ""                      # its veth end in the node's namespace (a port of lan0)


@dataclass(frozen=True)
class Router:
    name: str


@dataclass(frozen=True)
class UnderlayLink:
    index: int
    a: str
    b: str
    subnet: IPv4Network
    a_address: IPv4Interface
    b_address: IPv4Interface
    a_ifname: str
    b_ifname: str

    def end(self, name: str) -> tuple[str, IPv4Interface, str, IPv4Interface]:
        return _end(self, name)


@dataclass(frozen=True)
class TunnelLink:
    index: int
    a: str
    b: str
    kind: str


@dataclass(frozen=True)
class Topology:
    metric: str
    port: int
    link_subnet: IPv4Network
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    hosts: tuple[Host, ...] = ()
    multipath: bool = True  # daemons install multipath routes where next hops tie (their default)
    kernel_levels: tuple[int, ...] = (0, 1)  # -k levels of every daemon
    anypath: bool = False  # anycast routes to all nearest members
    slot: int = 0            # overlay slot the defaults were allocated for (0: a lab of its own)
    routers: tuple[Router, ...] = ()
    underlay: tuple[UnderlayLink, ...] = ()
    underlay_subnet: IPv4Network = DEFAULT_UNDERLAY_SUBNET
    tunnels: tuple[TunnelLink, ...] = ()

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def links_of(self, name: str) -> list[Link]:
        return [ln for ln in self.links if name in (ln.a, ln.b)]

    def hosts_of(self, name: str) -> list[Host]:
        return [h for h in self.hosts if h.attach == name]

    def underlay_of(self, name: str) -> list[UnderlayLink]:
        return [u for u in self.underlay if name in (u.a, u.b)]

    def endpoint(self, name: str) -> IPv4Address | None:
        """A node's underlay address: its first underlay link's (None without one)."""
        mine = self.underlay_of(name)
        return mine[0].end(name)[1].ip if mine else None

    def tunnels_of(self, name: str) -> list[TunnelLink]:
        return [t for t in self.tunnels if name in (t.a, t.b)]

    def underlay_routes(self) -> dict[str, list[tuple[str, str]]]:
        """Static routes of the underlay: {namespace member: [(destination, gateway), ...]}.
        A router: every underlay subnet it is not on, via the first hop of a shortest path
        (breadth first, neighbors in link order); a node: a default route via its first
        underlay link's other end."""
        adj: dict[str, list[tuple[str, str]]] = {}
        for u in self.underlay:
            adj.setdefault(u.a, []).append((u.b, str(u.b_address.ip)))
            adj.setdefault(u.b, []).append((u.a, str(u.a_address.ip)))
        routers = {r.name for r in self.routers}
        out: dict[str, list[tuple[str, str]]] = {}
        for name in adj:
            if name not in routers:
                out[name] = [("default", adj[name][0][1])]
                continue
            first: dict[str, str] = {name: ""}
            dist = {name: 0}
            queue = [name]
            while queue:
                here = queue.pop(0)
                for peer, gw in adj[here]:
                    if peer not in first:
                        first[peer] = gw if here == name else first[here]
                        dist[peer] = dist[here] + 1
                        queue.append(peer)
            routes = []
            for u in self.underlay:
                if name in (u.a, u.b):
                    continue
                reach = [x for x in (u.a, u.b) if x in dist]
                if reach:
                    nearer = min(reach, key=lambda x: dist[x])
                    routes.append((str(u.subnet), first[nearer]))
            out[name] = routes
        return out


# -- field checks ------------------------------------------------------------------------------

def _end(link, node: str) -> tuple[str, IPv4Interface, str, IPv4Interface]:
    """A point-to-point link (overlay or underlay) seen from ``node``."""
    if node == link.a:
        return link.a_ifname, link.a_address, link.b, link.b_address
    if node == link.b:
        return link.b_ifname, link.b_address, link.a, link.a_address
    raise KeyError(node)


def _table(value, field: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise TopologyError(f"{field}: expected a table, got {value!r}")
    for key in value:
        if key not in allowed:
            raise TopologyError(f"{field}.{key}: unknown key" if field else f"{key}: unknown key")
    for key in required:
        if key not in value:
            raise TopologyError(f"{field}.{key}: missing")
    return value


def _list(value, field: str) -> list:
    if not isinstance(value, list):
        raise TopologyError(f"{field}: expected a list, got {value!r}")
    return value


def _name(value, field: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise TopologyError(f"{field}: {value!r} is not a name of 1-32 characters [a-z0-9_-]")
    return value


def _ipv4(value, field: str) -> IPv4Address:
    try:
        if not isinstance(value, str):
            raise ValueError
        return IPv4Address(value)
    except ValueError:
        raise TopologyError(f"{field}: {value!r} is not an IPv4 address") from None


def _network(value, field: str) -> IPv4Network:
    try:
        if not isinstance(value, str):
            raise ValueError
        return IPv4Network(value)
    except ValueError:
        raise TopologyError(f"{field}: {value!r} is not an IPv4 network (address/prefix, "
                            f"no host bits)") from None


def _number(value, field: str, lo: float, hi: float | None, integer: bool = False):
    ok = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok):
        kind = "an integer" if integer else "a number"
        raise TopologyError(f"{field}: expected {kind}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise TopologyError(f"{field}: {value} is out of range {lo}..{'' if hi is None else hi}")
    return value


def _ifnames(peers: list[str], prefix: str = "to-") -> list[str]:
    """Interface names of one node's link ends, given the peer of each link in link order."""
    bases = [f"{prefix}{p}"[:IFNAMSIZ] for p in peers]
    counts = Counter(bases)
    used = {b for b in bases if counts[b] == 1}
    out = []
    for base in bases:
        name, k = base, 0
        while counts[base] > 1 and (k == 0 or name in used):
            k += 1
            suffix = f"-{k}"
            name = base[:IFNAMSIZ - len(suffix)] + suffix
        used.add(name)
        out.append(name)
    return out


# -- entry points ------------------------------------------------------------------------------

def from_dict(data: dict, *, slot: int = 0) -> Topology:
    """Validate the parsed TOML ``data`` and return the Topology (addresses allocated, with the
    defaults of overlay ``slot``)."""
    lid_base, default_subnet, if_prefix = slot_defaults(slot)
    _table(data, "", {"metric", "port", "link_subnet", "multipath", "kernel_levels", "anypath",
                      "node", "link", "host", "router", "underlay", "underlay_subnet"})
    levels = data.get("kernel_levels", [0, 1])
    if (not isinstance(levels, list) or not levels
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 3 for x in levels)):
        raise TopologyError(f"kernel_levels: expected a list of levels 0..3, got {levels!r}")
    anypath = data.get("anypath", False)
    if not isinstance(anypath, bool):
        raise TopologyError(f"anypath: expected true or false, got {anypath!r}")
    multipath = data.get("multipath", True)
    if not isinstance(multipath, bool):
        raise TopologyError(f"multipath: expected true or false, got {multipath!r}")
    metric = data.get("metric", DEFAULT_METRIC)
    if metric not in ALL_METRICS:
        raise TopologyError(f"metric: {metric!r} is not one of {'|'.join(ALL_METRICS)}")
    port = _number(data.get("port", DEFAULT_PORT), "port", 1, 65535, integer=True)
    link_subnet = _network(data.get("link_subnet", str(default_subnet)), "link_subnet")
    if link_subnet.prefixlen > 30:
        raise TopologyError(f"link_subnet: {link_subnet} is smaller than one /30")

    raw_nodes = _list(data.get("node", []), "node")
    if not raw_nodes:
        raise TopologyError("node: a topology needs at least one [[node]]")
    names: dict[str, str] = {}  # name -> field that defined it
    explicit: dict[IPv4Address, str] = {}
    parsed = []
    for i, raw in enumerate(raw_nodes):
        f = f"node[{i}]"
        _table(raw, f, {"name", "logical_id", "prefixes", "groups"}, ("name",))
        name = _name(raw["name"], f"{f}.name")
        if name in names:
            raise TopologyError(f"{f}.name: duplicate name {name!r} (also {names[name]})")
        names[name] = f
        lid = None
        if "logical_id" in raw:
            lid = _ipv4(raw["logical_id"], f"{f}.logical_id")
            if lid in explicit:
                raise TopologyError(f"{f}.logical_id: duplicate logical ID {lid} "
                                    f"(also {explicit[lid]})")
            if lid in link_subnet:
                raise TopologyError(f"{f}.logical_id: {lid} lies inside link_subnet {link_subnet}")
            explicit[lid] = f
        prefixes = tuple(_network(p, f"{f}.prefixes[{j}]")
                         for j, p in enumerate(_list(raw.get("prefixes", []), f"{f}.prefixes")))
        groups = tuple(_ipv4(g, f"{f}.groups[{j}]")
                       for j, g in enumerate(_list(raw.get("groups", []), f"{f}.groups")))
        parsed.append((name, lid, prefixes, groups))

    # Prefixes: no overlap with link_subnet, each other, or an explicit logical ID.
    taken: list[tuple[IPv4Network, str]] = []  # (network, field that claimed it)
    for i, (_n, _l, prefixes, _g) in enumerate(parsed):
        for j, net in enumerate(prefixes):
            f = f"node[{i}].prefixes[{j}]"
            if net.overlaps(link_subnet):
                raise TopologyError(f"{f}: {net} overlaps link_subnet {link_subnet}")
            for other, where in taken:
                if net.overlaps(other):
                    raise TopologyError(f"{f}: {net} overlaps {other} ({where})")
            for lid, where in explicit.items():
                if lid in net:
                    raise TopologyError(f"{f}: {net} contains the logical ID {lid} of {where}")
            taken.append((net, f))

    lids, k = [], 0
    for _n, lid, _p, _g in parsed:
        while lid is None:
            k += 1
            candidate = lid_base + k
            if (candidate not in explicit and candidate not in link_subnet
                    and not any(candidate in net for net, _ in taken)):
                lid = candidate
        lids.append(lid)

    raw_links = _list(data.get("link", []), "link")
    subnets = link_subnet.subnets(new_prefix=30)
    ends: list[tuple] = []
    tunnel_links: list[TunnelLink] = []
    for i, raw in enumerate(raw_links):
        f = f"link[{i}]"
        _table(raw, f, {"a", "b", "latency_ms", "loss_pct", "bandwidth_kbps", "tunnel"},
               ("a", "b"))
        for side in ("a", "b"):
            if not isinstance(raw[side], str) or raw[side] not in names:
                raise TopologyError(f"{f}.{side}: unknown node {raw[side]!r}")
        if raw["a"] == raw["b"]:
            raise TopologyError(f"{f}.b: a link needs two different nodes, got {raw['b']!r} twice")
        if "tunnel" in raw:
            if raw["tunnel"] not in TUNNEL_KINDS:
                raise TopologyError(f"{f}.tunnel: {raw['tunnel']!r} is not one of "
                                    f"{'|'.join(TUNNEL_KINDS)}")
            extra = set(raw) - {"a", "b", "tunnel"}
            if extra:
                raise TopologyError(f"{f}.{sorted(extra)[0]}: not for a tunnel (link emulation "
                                    f"applies to veth links)")
            for t in tunnel_links:
                if {t.a, t.b} == {raw["a"], raw["b"]}:
                    raise TopologyError(f"{f}: a second tunnel between {raw['a']} and "
                                        f"{raw['b']} (one tunnel per pair of nodes)")
            tunnel_links.append(TunnelLink(i, raw["a"], raw["b"], raw["tunnel"]))
            continue
        subnet = next(subnets, None)
        if subnet is None:
            raise TopologyError(f"{f}: link_subnet {link_subnet} has no /30 left")
        chars = {}
        if "latency_ms" in raw:
            chars["latency_ms"] = _number(raw["latency_ms"], f"{f}.latency_ms", 0, None)
        if "loss_pct" in raw:
            chars["loss_pct"] = _number(raw["loss_pct"], f"{f}.loss_pct", 0, 100)
        if "bandwidth_kbps" in raw:
            chars["bandwidth_kbps"] = _number(raw["bandwidth_kbps"], f"{f}.bandwidth_kbps", 1,
                                              None, integer=True)
        hosts = list(subnet.hosts())
        ends.append((raw["a"], raw["b"], subnet, IPv4Interface(f"{hosts[0]}/30"),
                     IPv4Interface(f"{hosts[1]}/30"), chars))

    # Interface names per node, in link order.
    ifn: dict[tuple[int, str], str] = {}
    for name, *_rest in parsed:
        mine = [(i, b if a == name else a) for i, (a, b, *_rest) in enumerate(ends)
                if name in (a, b)]
        for (i, _peer), ifname in zip(mine, _ifnames([p for _i, p in mine], if_prefix)):
            ifn[(i, name)] = ifname
    links = tuple(Link(i, a, b, subnet, aa, ba, ifn[(i, a)], ifn[(i, b)], **chars)
                  for i, (a, b, subnet, aa, ba, chars) in enumerate(ends))

    raw_hosts = []  # (field, name, attach)
    for i, raw in enumerate(_list(data.get("host", []), "host")):
        f = f"host[{i}]"
        if slot:
            raise TopologyError(f"{f}: a topology joined to another lab's namespaces cannot have "
                                f"hosts (the LANs belong to the lab that made the namespaces)")
        _table(raw, f, {"name", "attach"}, ("name", "attach"))
        name = _name(raw["name"], f"{f}.name")
        if name in names:
            raise TopologyError(f"{f}.name: duplicate name {name!r} (also {names[name]})")
        names[name] = f
        if not isinstance(raw["attach"], str) or raw["attach"] not in {p[0] for p in parsed}:
            raise TopologyError(f"{f}.attach: unknown node {raw['attach']!r}")
        raw_hosts.append((f, name, raw["attach"]))

    # LANs: the node's first prefix, else a picked /24; the node .1, its hosts .2, .3, ...
    nodes, hosts_by_node = [], {}
    for i, ((name, _lid, prefixes, groups), lid) in enumerate(zip(parsed, lids)):
        mine = [h for h in raw_hosts if h[2] == name]
        lan = None
        if mine:
            net = prefixes[0] if prefixes else _pick_lan(link_subnet, lids, taken, f"node[{i}]")
            if not prefixes:
                taken.append((net, f"node[{i}] LAN"))
            usable = net.num_addresses - 2 if net.prefixlen <= 30 else 0  # no network/broadcast
            if len(mine) >= usable:
                f, hname, _attach = mine[max(usable - 1, 0)]
                room = max(usable - 1, 0)
                raise TopologyError(f"{f}.attach: the LAN {net} of node {name!r} has no address "
                                    f"left for host {hname!r} (room for {room} "
                                    f"host{'' if room == 1 else 's'} besides the node)")
            lan = _nth(net, 1)
            ifnames = _ifnames([h[1] for h in mine], prefix="lan-")
            hosts_by_node[name] = [Host(hname, name, _nth(net, k + 2), lan.ip, ifnames[k])
                                   for k, (_f, hname, _a) in enumerate(mine)]
        nodes.append(Node(name, lid, prefixes, groups, lan))
    order = {h[1]: k for k, h in enumerate(raw_hosts)}
    hosts = sorted((h for hs in hosts_by_node.values() for h in hs), key=lambda h: order[h.name])

    routers, underlay, underlay_subnet = _underlay(data, names, link_subnet, taken, lids, slot)
    node_names = {p[0] for p in parsed}
    with_underlay = {x for u in underlay for x in (u.a, u.b)}
    for t in tunnel_links:
        for side in (t.a, t.b):
            if side not in with_underlay:
                raise TopologyError(f"link[{t.index}].tunnel: node {side!r} has no [[underlay]] "
                                    f"link (a tunnel runs between underlay addresses)")
    for r in routers:
        if r.name in node_names:
            raise TopologyError(f"router {r.name!r}: also a node")
    return Topology(metric, port, link_subnet, tuple(nodes), links, tuple(hosts), multipath,
                    kernel_levels=tuple(sorted(set(levels))), anypath=anypath, slot=slot,
                    routers=routers, underlay=underlay, underlay_subnet=underlay_subnet,
                    tunnels=tuple(tunnel_links))


def _underlay(data: dict, names: dict[str, str], link_subnet: IPv4Network,
              taken: list[tuple[IPv4Network, str]], lids: list[IPv4Address], slot: int
              ) -> tuple[tuple[Router, ...], tuple[UnderlayLink, ...], IPv4Network]:
    """Routers, underlay links (addresses and names) and the underlay subnet of ``data``."""
    underlay_subnet = _network(data.get("underlay_subnet", str(DEFAULT_UNDERLAY_SUBNET)),
                               "underlay_subnet")
    raw_routers = _list(data.get("router", []), "router")
    raw_underlay = _list(data.get("underlay", []), "underlay")
    if slot and (raw_routers or raw_underlay):
        raise TopologyError("router: a topology joined to another lab's namespaces cannot have "
                            "an underlay (it belongs to the lab that made the namespaces)")
    if not raw_underlay and not raw_routers:
        return (), (), underlay_subnet
    if underlay_subnet.prefixlen > 30:
        raise TopologyError(f"underlay_subnet: {underlay_subnet} is smaller than one /30")
    if underlay_subnet.overlaps(link_subnet):
        raise TopologyError(f"underlay_subnet: {underlay_subnet} overlaps link_subnet "
                            f"{link_subnet}")
    # Prefixes may cover the underlay (the daemons pin their tunnels' endpoint routes); the
    # LANs picked for hosts come from 10.210.0.0/16 and up, clear of the default underlay.
    for lid in lids:
        if lid in underlay_subnet:
            raise TopologyError(f"underlay_subnet: {underlay_subnet} contains the logical ID "
                                f"{lid}")
    routers = []
    for i, raw in enumerate(raw_routers):
        f = f"router[{i}]"
        _table(raw, f, {"name"}, ("name",))
        name = _name(raw["name"], f"{f}.name")
        if name in names:
            raise TopologyError(f"{f}.name: duplicate name {name!r} (also {names[name]})")
        names[name] = f
        routers.append(Router(name))
    members = {n for n, w in names.items() if w.startswith(("node[", "router["))}
    subnets = underlay_subnet.subnets(new_prefix=30)
    ends = []
    for i, raw in enumerate(raw_underlay):
        f = f"underlay[{i}]"
        _table(raw, f, {"a", "b"}, ("a", "b"))
        for side in ("a", "b"):
            if not isinstance(raw[side], str) or raw[side] not in members:
                raise TopologyError(f"{f}.{side}: unknown node or router {raw[side]!r}")
        if raw["a"] == raw["b"]:
            raise TopologyError(f"{f}.b: an underlay link needs two different ends")
        subnet = next(subnets, None)
        if subnet is None:
            raise TopologyError(f"{f}: underlay_subnet {underlay_subnet} has no /30 left")
        hosts = list(subnet.hosts())
        ends.append((raw["a"], raw["b"], subnet, IPv4Interface(f"{hosts[0]}/30"),
                     IPv4Interface(f"{hosts[1]}/30")))
    ifn: dict[tuple[int, str], str] = {}
    for name in members:
        mine = [(i, b if a == name else a) for i, (a, b, *_r) in enumerate(ends) if name in (a, b)]
        for (i, _peer), ifname in zip(mine, _ifnames([p for _i, p in mine], "u-")):
            ifn[(i, name)] = ifname
    underlay = tuple(UnderlayLink(i, a, b, subnet, aa, ba, ifn[(i, a)], ifn[(i, b)])
                     for i, (a, b, subnet, aa, ba) in enumerate(ends))
    return tuple(routers), underlay, underlay_subnet


def _nth(net: IPv4Network, k: int) -> IPv4Interface:
    """Address number ``k`` of ``net`` (0 = the network address), with the prefix length."""
    return IPv4Interface(f"{net.network_address + k}/{net.prefixlen}")


def _pick_lan(link_subnet: IPv4Network, lids: list[IPv4Address],
              taken: list[tuple[IPv4Network, str]], field: str) -> IPv4Network:
    """The first /24 of the LAN pool clear of link_subnet, every logical ID and ``taken``."""
    addr = LAN_POOL_START
    while addr <= LAN_POOL_END:
        net = IPv4Network(f"{addr}/24")
        if (not net.overlaps(link_subnet) and not any(lid in net for lid in lids)
                and not any(net.overlaps(t) for t, _ in taken)):
            return net
        addr += 256
    raise TopologyError(f"{field}.prefixes: the node has hosts but no prefixes, and no /24 in "
                        f"{LAN_POOL_START}-{LAN_POOL_END}.255 is free for its LAN; give it "
                        f"prefixes")


def parse(text: str, *, slot: int = 0) -> Topology:
    """Parse TOML text; a syntax error is a TopologyError too."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"topology: invalid TOML: {e}") from None
    return from_dict(data, slot=slot)


def load(path, *, slot: int = 0) -> Topology:
    """Read and parse the topology file at ``path``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as e:
        raise TopologyError(f"topology file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"topology file {path}: invalid TOML: {e}") from None
    return from_dict(data, slot=slot)


def demo() -> Topology:
    """The embedded demo ring."""
    return parse(DEMO_TOPOLOGY)


def line(names, *, metric: str = DEFAULT_METRIC) -> Topology:
    """Nodes named ``names`` (e.g. "abcd") in a line, linked in that order."""
    names = list(names)
    if len(names) < 2:
        raise TopologyError(f"line: {len(names)} nodes; a line needs at least 2")
    return from_dict({"metric": metric, "node": [{"name": n} for n in names],
                      "link": [{"a": a, "b": b} for a, b in zip(names, names[1:])]})


def star(n: int, *, metric: str = DEFAULT_METRIC) -> Topology:
    """A node "hub" linked to each of s1..s<n>."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TopologyError(f"star: {n!r} spokes; a star needs at least 1")
    spokes = [f"s{i}" for i in range(1, n + 1)]
    return from_dict({"metric": metric, "node": [{"name": x} for x in ["hub", *spokes]],
                      "link": [{"a": "hub", "b": x} for x in spokes]})


def ring(n: int, chord: int | None = None, *, metric: str = DEFAULT_METRIC) -> Topology:
    """Nodes n1..n<n> in a ring, each also linked to the node ``chord`` places on (a circulant
    graph C_n(1, chord)): degree 4 everywhere (3 when ``chord`` is n/2), diameter about
    n / (2 chord) + chord / 2.  ``chord`` defaults to round(sqrt(n)) (diameter about sqrt(n));
    0 or 1 makes the plain ring.  Links in ring order, then the chords."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise TopologyError(f"ring: {n!r} nodes; a ring needs at least 3")
    chord = max(2, round(n ** 0.5)) if chord is None else chord
    if not 0 <= chord < n:
        raise TopologyError(f"ring: chord {chord} is not in 0..{n - 1}")
    pairs, seen = [], set()
    for step in (1, chord) if chord > 1 and chord != n - 1 else (1,):
        for i in range(n):
            a, b = i, (i + step) % n
            if frozenset((a, b)) not in seen:
                seen.add(frozenset((a, b)))
                pairs.append((a, b))
    return from_dict({"metric": metric, "node": [{"name": f"n{i + 1}"} for i in range(n)],
                      "link": [{"a": f"n{a + 1}", "b": f"n{b + 1}"} for a, b in pairs]})
