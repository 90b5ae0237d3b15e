"""One validated daemon configuration from a TOML file and Spines-style flags (flags win).

Data model: ``Config``, a frozen dataclass whose fields *are* the description of every setting:
each field is declared with ``setting(default, *flags, kind=..., ...)``, and that one
declaration feeds the TOML file's checks (``build``), the daemon's command-line flags
(``add_flags``), the protocol engine's parameters (``daemon.node.Params.from_config`` reads the
fields marked ``engine``) and what a reload may change (``RESTART_ONLY``: the fields marked
``reload=False``).  ``FIELDS`` maps names to dataclass fields; ``SETTINGS`` maps names to
``Setting`` (kind, bounds, flags, help).

Entry points: ``load_file(path) -> dict`` (TOML -> raw values), ``build(file_values, flag_values)
-> Config`` (merge, validate), ``add_flags(parser)`` / ``flag_values(args)`` (argparse).  Every
problem raises ``ConfigError`` with a one-line message naming the setting; the CLI prints it and
exits 2 before anything touches the kernel.

Spines' daemon flags and their keys here (Spines 5.x meaning):
    -p port            port             overlay UDP port, shared by all daemons (default 8100)
    -l logical_id      logical_id       IPv4 identity of this node (put it on lo)
    -I local_address   local_addresses  addresses to run links from (repeatable)
    -a neighbor        neighbors        neighbor link addresses to create links to (repeatable)
    -w metric          metric           distance|latency|loss|explat|problem
    -k level           kernel_levels    kernel routing levels (repeatable): 0 = a /32 to every
                                        node and prefix routes; 1 = anycast groups (+ gateway);
                                        2 = multicast groups; 3 = 1 and 2 without delivering at
                                        the member edge (no group address put on lo)
    -m                 accept_link_commands   accept setlink (and sessions' ADD_NEIGHBOR)
    -x seconds         exit_after       exit gracefully after that many seconds
    -U                 unicast_only
    -lf file           log_file
    -ud path           ipc_path         client IPC path (data channel: path + "data")
    -c file            (the TOML file itself)
Ours: prefixes (announced behind this node), multipath (on by default; + multipath_tolerance for
measured metrics), table/route_protocol/route_priority (our kernel slot), limits, timers,
client sessions (remote_sessions: Spines' Remote_Connections config key; max_sessions).
Virtual links (daemon.tunnels): ``[[neighbor]]`` tables (address, tunnel, keepalive_s) or
``--tunnel-neighbor KIND:ADDRESS``; ``tunnel`` (--tunnel) makes -a neighbors that are not on-link
tunnels of that kind; ``wireguard_key_file``, ``accept_tunnels``, ``wireguard_keepalive_s``,
``vxlan_port``.  Discovery (daemon.discovery): ``-d ADDRESS`` (``discovery``, up to 10 class D
addresses, Spines' meaning), ``discovery_interval_ms``.
Data links (dataplane.links): -rl kbps (rate_limit_kbps), -sf (stream_fairness), -tf
(tcp_fairness), realtime_history_ms.
Flags of Spines not implemented yet (-W, -pc) are refused by the CLI with a message saying so.

Addresses are strings in the TOML file ("10.0.0.1"): an integer such as ``logical_id = 5`` is
refused, never read as 0.0.0.5.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from spines_kr import RTPROT_SPINES
from spines_kr.routing.groups import ANYCAST, LOCAL_MULTICAST, is_group
from spines_kr.routing.metrics import ALL_METRICS

KERNEL_LEVELS_IMPLEMENTED = {0, 1, 2, 3}
TUNNEL_KINDS = ("wireguard", "vxlan", "gre", "ipip")
MAX_DISCOVERY = 10  # Spines: up to 10 discovery addresses
RESERVED_TABLES = (0, 253, 255)
NOT_AN_ID = (ipaddress.IPv4Network("0.0.0.0/8"), ipaddress.IPv4Network("127.0.0.0/8"),
             ipaddress.IPv4Network("224.0.0.0/3"))  # this-network, loopback, multicast+class E


class ConfigError(ValueError):
    """A configuration problem; the message names the setting."""


@dataclass(frozen=True, slots=True)
class Setting:
    kind: str  # ipv4 | ipv4s | int | ints | float | bool | choice | str | path | prefixes | groups
    flags: tuple[str, ...] = ()
    help: str = ""
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    reload: bool = True  # a SIGHUP may change it; False: kept until a restart
    engine: bool = False  # a parameter of the protocol engine (daemon.node.Params)
    optional: bool = False  # None is a valid value (unset)
    metavar: str | None = None


def setting(default: Any, *flags: str, kind: str, help: str = "", lo=None, hi=None,
            choices: tuple[str, ...] = (), reload: bool = True, engine: bool = False,
            metavar: str | None = None):
    """A Config field and its description (kept in the field's metadata)."""
    s = Setting(kind, flags, help, lo, hi, choices, reload, engine, default is None, metavar)
    if isinstance(default, (list, set)):
        raise TypeError("defaults must be immutable")
    return field(default=default, metadata={"setting": s})


@dataclass(frozen=True)
class Config:
    logical_id: str = setting("", "-l", "--logical-id", kind="ipv4", reload=False,
                              help="this node's logical ID (IPv4; put it on lo)")
    port: int = setting(8100, "-p", "--port", kind="int", lo=1, hi=65535, reload=False,
                        help="overlay UDP port, the same on every daemon of the overlay")
    local_addresses: tuple[str, ...] = setting(
        (), "-I", "--local-address", kind="ipv4s", metavar="ADDRESS",
        help="local address to run links from (repeatable); must be an address of this host")
    neighbors: tuple[str, ...] = setting((), "-a", "--neighbor", kind="ipv4s", metavar="ADDRESS",
                                         help="neighbor link address to create a link to (repeatable)")
    accept_unknown_neighbors: bool = setting(True, kind="bool", engine=True,
                                             help="form links with on-link daemons not listed")
    # virtual links as kernel tunnels (daemon.tunnels) and discovery (daemon.discovery)
    neighbor: tuple[tuple[str, str | None, int | None], ...] = setting(
        (), "--tunnel-neighbor", kind="tunnels", metavar="KIND:ADDRESS",
        help="a neighbor reached through the underlay, over a kernel tunnel of KIND "
             "(wireguard|vxlan|gre|ipip; repeatable); in the file: [[neighbor]] tables with "
             "address, tunnel and keepalive_s")
    tunnel: str = setting("none", "--tunnel", kind="choice", choices=("none", *TUNNEL_KINDS),
                          help="tunnel kind for -a neighbors that are not on-link (default "
                               "none: they must be on-link)")
    accept_tunnels: bool = setting(True, kind="bool",
                                   help="make a tunnel when a node of this overlay (its offer "
                                        "authenticated with the overlay key) asks for one")
    wireguard_key_file: str | None = setting(None, "--wireguard-key-file", kind="path",
                                             reload=False, metavar="FILE",
                                             help="this node's WireGuard private key (mode 0600;"
                                                  " 'spines-kr keygen --wireguard FILE')")
    wireguard_keepalive_s: int = setting(25, kind="int", lo=0, hi=3600,
                                         help="persistent keepalive of the tunnels this node "
                                              "asks for (keeps NAT mappings open; 0: off)")
    vxlan_port: int = setting(4789, kind="int", lo=1, hi=65535, reload=False,
                              help="UDP port of VXLAN tunnels (both ends)")
    discovery: tuple[str, ...] = setting((), "-d", "--discovery", kind="ipv4s",
                                         metavar="ADDRESS",
                                         help="multicast discovery address (repeatable, up to "
                                              "10): find daemons of this overlay on each LAN")
    discovery_interval_ms: int = setting(1000, kind="int", lo=100, hi=600000,
                                         help="announcements on each LAN this often")
    # data links (dataplane.links): Spines' -rl, -sf, -tf and its real-time history
    rate_limit_kbps: int = setting(500_000, "-rl", "--rate-limit", kind="int", lo=0,
                                   hi=100_000_000, reload=False, metavar="KBPS",
                                   help="rate limit of each reliable data link, kbit/s (Spines' "
                                        "default 500000; 0: none)")
    stream_fairness: bool = setting(False, "-sf", "--stream-fairness", kind="bool", reload=False,
                                    help="share each data link fairly between the streams on "
                                         "it (round robin), not first come first served")
    tcp_fairness: bool = setting(False, "-tf", "--tcp-fairness", kind="bool", reload=False,
                                 help="reliable links halve their window on every loss "
                                      "episode, as TCP does (default: only on congestion; "
                                      "the random loss of a lossy link is just repaired)")
    realtime_history_ms: int = setting(100, kind="int", lo=10, hi=10_000, reload=False,
                                       help="soft-real-time links: how long a sent packet can "
                                            "be recovered, and the extra delay a message may "
                                            "gain on its whole way (Spines' 100 ms)")
    metric: str = setting("distance", "-w", "--metric", kind="choice", choices=ALL_METRICS,
                          engine=True, help="link metric: " + "|".join(ALL_METRICS))
    kernel_levels: tuple[int, ...] = setting(
        (), "-k", "--kernel", kind="ints", lo=0, hi=3, reload=False, engine=True,
        metavar="LEVEL", help="kernel routing level (repeatable): 0 = a /32 route to every node "
        "and prefix routes, 1 = anycast groups, 2 = multicast groups, 3 = 1/2 without the edge")
    accept_link_commands: bool = setting(False, "-m", "--accept-link-commands", kind="bool",
                                         help="accept setlink commands, and client sessions' "
                                              "ADD_NEIGHBOR")
    exit_after: float | None = setting(None, "-x", "--exit-after", kind="float", lo=0, hi=1e9,
                                       reload=False, metavar="SECONDS",
                                       help="exit gracefully after SECONDS")
    unicast_only: bool = setting(False, "-U", "--unicast-only", kind="bool", reload=False,
                                 help="Spines' unicast-only mode: no multicast discovery (-d)")
    log_file: str | None = setting(None, "-lf", "--log-file", kind="path", reload=False,
                                   metavar="FILE", help="append logs to FILE")
    log_level: str = setting("info", "--log-level", kind="choice",
                             choices=("debug", "info", "warning", "error"))
    log_format: str = setting("auto", "--log-format", kind="choice",
                              choices=("auto", "json", "console"), reload=False)
    ipc_path: str = setting("", "-ud", "--ipc-path", kind="path", reload=False, metavar="PATH",
                            help="client IPC path (default /tmp/spines<port>; data: PATH + 'data')")
    control_socket: str = setting("", "--control-socket", kind="path", reload=False,
                                  metavar="PATH", help="management socket path")
    control_group: str | None = setting(None, kind="str", reload=False,
                                        help="group whose members may change things")
    # client sessions (dataplane.sessions): Spines' Remote_Connections, and a bound
    remote_sessions: bool = setting(False, "--remote-sessions", kind="bool", reload=False,
                                    help="accept client sessions on the TCP session ports "
                                         "(overlay port + 7 and + 9) from every address, not "
                                         "only 127.0.0.1 (Spines' Remote_Connections)")
    max_sessions: int = setting(1024, kind="int", lo=1, hi=20_000, reload=False,
                                help="client sessions open at once (a session more is refused)")
    # kernel
    table: int = setting(254, "--table", kind="int", lo=1, hi=0xFFFFFFFF, reload=False,
                         help="kernel route table (default 254, main)")
    route_protocol: int = setting(RTPROT_SPINES, kind="int", lo=5, hi=255, reload=False)
    route_priority: int = setting(20, "--route-priority", kind="int", lo=0, hi=0xFFFFFFFF,
                                  reload=False, help="metric of our routes (default 20)")
    rule_priority: int | None = setting(None, "--rule-priority", kind="int", lo=1, hi=32765,
                                        reload=False,
                                        help="priority of the policy rule for a table other than main")
    keep_routes: bool = setting(False, "--keep-routes", kind="bool",
                                help="keep our routes at clean exit (for a restart) instead of "
                                     "withdrawing them")
    prefsrc: bool = setting(True, kind="bool", engine=True)
    multipath: bool = setting(True, "--multipath", kind="bool", engine=True,
                              help="one route through every equal-cost next hop (default; "
                                   "--no-multipath for one next hop)")
    multipath_tolerance: float = setting(0.1, kind="float", lo=0, hi=1, engine=True)
    multipath_weights: str = setting("equal", kind="choice", choices=("equal", "cost"),
                                     engine=True)
    nexthop_objects: str = setting("auto", kind="choice", choices=("auto", "on", "off"),
                                   reload=False)
    prefixes: tuple[str, ...] = setting((), "--prefix", kind="prefixes", engine=True,
                                        metavar="PREFIX",
                                        help="announce this prefix (behind this node; repeatable)")
    groups: tuple[str, ...] = setting((), "--group", kind="groups", metavar="GROUP",
                                      help="join this multicast (class D) or anycast (class E) "
                                           "group (repeatable)")
    anypath: bool = setting(False, "--anypath", kind="bool", engine=True,
                            help="anycast routes to all members at the best cost")
    spines_mappings: bool = setting(False, "--spines-mappings", kind="bool", engine=True,
                                    help="route 247.x.y.z anycast / 227.x.y.z multicast as "
                                         "10.x.y.z (Spines)")
    gateway_group: str = setting("240.220.11.1", kind="ipv4", engine=True)
    auth: str = setting("hmac-sha256", "--auth", kind="choice", choices=("hmac-sha256", "none"),
                        reload=False, help="authenticate control packets (default) or not "
                                           "(none: say so explicitly)")
    key_file: str | None = setting(None, "--key-file", kind="path", metavar="FILE",
                                   help="overlay key file (TOML, mode 0600)")
    # bounded state: what a neighbor or origin may make us hold, and what we hold ourselves
    max_nodes: int = setting(2000, kind="int", lo=2, hi=1_000_000, engine=True)
    max_links_per_node: int = setting(128, kind="int", lo=1, hi=65535, engine=True)
    max_prefixes_per_node: int = setting(256, kind="int", lo=0, hi=65535, engine=True)
    max_groups_per_node: int = setting(256, kind="int", lo=0, hi=65535, engine=True)
    max_dynamic_links: int = setting(64, kind="int", lo=0, hi=10_000, engine=True)
    max_packets_per_s: float = setting(400.0, kind="float", lo=20, hi=1e6, engine=True)
    # Own state: 4096 groups and 4096 prefixes still fit one LSA (wire.MAX_LSA_SIZE).
    max_own_groups: int = setting(256, kind="int", lo=0, hi=4096, engine=True,
                                  help="groups this node may belong to (config, join, IGMP)")
    max_own_prefixes: int = setting(256, kind="int", lo=0, hi=4096,
                                    help="prefixes this node may announce")
    data_plane: bool = setting(True, "--data-plane", kind="bool", reload=False,
                               help="client sessions and the data port (overlay port + 1); "
                                    "--no-data-plane for a routing-only daemon")
    metrics_listen: str = setting("", "--metrics-listen", kind="str", reload=False,
                                  metavar="ADDR:PORT",
                                  help="serve Prometheus metrics there (off by default)")
    igmp_proxy: bool = setting(True, kind="bool",
                               help="join groups for hosts on our LANs from their IGMP reports")
    reconcile_interval_s: float = setting(30.0, kind="float", lo=0.1, hi=86400)
    startup_grace_s: float = setting(5.0, kind="float", lo=0, hi=3600)
    # timers (Spines: 100 ms hellos, dead after 10)
    hello_interval_ms: int = setting(60, kind="int", lo=10, hi=60000, engine=True)
    dead_interval_ms: int = setting(250, kind="int", lo=30, hi=600000, engine=True)
    up_after_hellos: int = setting(3, kind="int", lo=1, hi=100, engine=True)
    retransmit_ms: int = setting(400, kind="int", lo=10, hi=60000, engine=True,
                                 help="an unacknowledged LSA is sent again after this (at least "
                                      "3 RTT), doubling up to 8x")
    lsa_min_interval_ms: int = setting(200, kind="int", lo=0, hi=60000, engine=True,
                                       help="our LSA at most this often; the first change at once")
    flood_pace_ms: int = setting(10, kind="int", lo=0, hi=10000, engine=True,
                                 help="updates on one link at most this often, bundled")
    ack_delay_ms: int = setting(20, kind="int", lo=0, hi=10000, engine=True,
                                help="acknowledgements wait this long to go in one packet")
    lsa_refresh_s: float = setting(600.0, kind="float", lo=1, hi=86400, engine=True)
    lsa_max_age_s: float = setting(1800.0, kind="float", lo=3, hi=86400 * 7, engine=True)

    @property
    def kernel_routing(self) -> bool:
        """Any kernel level: the daemon reconciles a route table (level 0 adds node and
        prefix routes to it, levels 1-3 group routes)."""
        return bool(self.kernel_levels)


FIELDS = {f.name: f for f in fields(Config)}
SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(Config)}
RESTART_ONLY = tuple(name for name, s in SETTINGS.items() if not s.reload)
ENGINE = tuple(name for name, s in SETTINGS.items() if s.engine)


def load_file(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    for key in raw:
        if key not in FIELDS:
            raise ConfigError(f"config file {path}: unknown key '{key}'")
    return raw


# --- values by kind -------------------------------------------------------------------------


def _ipv4(name: str, value) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected an IPv4 address as a string (\"10.0.0.1\"), "
                          f"got {value!r}")
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError):
        raise ConfigError(f"{name}: '{value}' is not an IPv4 address") from None


def _list(name: str, value) -> list:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name}: expected a list, got {value!r}")
    return list(value)


def _number(name: str, s: Setting, value, integer: bool):
    if isinstance(value, bool) or not isinstance(value, (int,) if integer else (int, float)):
        raise ConfigError(f"{name}: expected {'an integer' if integer else 'a number'}, "
                          f"got {value!r}")
    if value != value:  # NaN
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if (s.lo is not None and value < s.lo) or (s.hi is not None and value > s.hi):
        lo, hi = (int(s.lo), int(s.hi)) if integer else (s.lo, s.hi)
        raise ConfigError(f"{name}: {value} is out of range {lo:g}..{hi:g}")
    return value if integer else float(value)


def _value(name: str, s: Setting, value):
    """The validated value of one setting (its kind and bounds; cross-checks come later)."""
    if value is None and s.optional:
        return None
    kind = s.kind
    if kind == "ipv4":
        return _ipv4(name, value)
    if kind == "ipv4s":
        return tuple(dict.fromkeys(_ipv4(name, a) for a in _list(name, value)))
    if kind == "int":
        return _number(name, s, value, True)
    if kind == "float":
        return _number(name, s, value, False)
    if kind == "ints":
        return tuple(sorted({_number(name, s, x, True) for x in _list(name, value)}))
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if kind == "choice":
        if value not in s.choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(s.choices)}")
        return value
    if kind in ("str", "path"):
        if not isinstance(value, str) or (kind == "path" and not value) or "\0" in value:
            raise ConfigError(f"{name}: expected a {'path' if kind == 'path' else 'string'}, "
                              f"got {value!r}")
        return value
    if kind == "prefixes":
        out = []
        for p in _list(name, value):
            try:
                if not isinstance(p, str):
                    raise TypeError
                out.append(str(ipaddress.IPv4Network(p)))
            except (ValueError, TypeError):
                raise ConfigError(f"{name}: {p!r} is not an IPv4 network (address/length with no "
                                  f"host bits set)") from None
        return tuple(dict.fromkeys(out))
    if kind == "groups":
        return tuple(dict.fromkeys(check_group(_ipv4(name, g), name) for g in _list(name, value)))
    if kind == "tunnels":
        return _tunnels(name, value)
    raise AssertionError(f"setting {name}: unknown kind {kind}")


def _tunnels(name: str, value) -> tuple[tuple[str, str | None, int | None], ...]:
    """[[neighbor]] tables ({address, tunnel, keepalive_s}) or flags "KIND:ADDRESS", as
    (address, kind or None, keepalive or None), one per address (the last wins)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out: dict[str, tuple[str, str | None, int | None]] = {}
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        if isinstance(item, str):
            kind, sep, address = item.partition(":")
            if not sep:
                raise ConfigError(f"{where}: {item!r} is not KIND:ADDRESS (e.g. "
                                  f"wireguard:192.0.2.7)")
            item = {"address": address, "tunnel": kind}
        elif isinstance(item, tuple) and len(item) == 3:  # already validated (a reload)
            item = {k: v for k, v in zip(("address", "tunnel", "keepalive_s"), item)
                    if v is not None}
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a table with address (and tunnel, "
                              f"keepalive_s), got {item!r}")
        extra = set(item) - {"address", "tunnel", "keepalive_s"}
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown key (address, tunnel, "
                              f"keepalive_s)")
        if "address" not in item:
            raise ConfigError(f"{where}.address: missing")
        address = _ipv4(f"{where}.address", item["address"])
        kind = item.get("tunnel")
        if kind is not None and kind not in TUNNEL_KINDS:
            raise ConfigError(f"{where}.tunnel: {kind!r} is not one of {', '.join(TUNNEL_KINDS)}")
        keepalive = item.get("keepalive_s")
        if keepalive is not None:
            keepalive = _number(f"{where}.keepalive_s", Setting("int", lo=0, hi=3600), keepalive,
                                True)
        out[address] = (address, kind, keepalive)
    return tuple(out.values())


def check_group(group: str, name: str = "group") -> str:
    """A group this node may join: class D (multicast) or E (anycast), and routable."""
    a = ipaddress.IPv4Address(group)
    if not is_group(a):
        raise ConfigError(f"{name}: {a} is neither a multicast (224.0.0.0/4) nor an anycast "
                          f"(240.0.0.0/4) group")
    if a in LOCAL_MULTICAST:
        raise ConfigError(f"{name}: {a} is a link-local multicast group (224.0.0.0/24), which "
                          f"is never routed")
    if a == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(f"{name}: 255.255.255.255 is the limited broadcast address")
    return str(a)


def build(file_values: dict | None = None, flag_values: dict | None = None) -> Config:
    """Merge file and flag values (flags win) and validate them into a Config."""
    v = dict(file_values or {})
    v.update({k: x for k, x in (flag_values or {}).items() if x is not None})
    for key in v:
        if key not in FIELDS:
            raise ConfigError(f"unknown setting '{key}'")
    out: dict = {}
    for name, s in SETTINGS.items():
        if name in v:
            out[name] = _value(name, s, v[name])

    # --- defaults that depend on other settings, and cross-checks --------------------------
    if not out.get("logical_id"):
        if out.get("local_addresses"):
            out["logical_id"] = out["local_addresses"][0]  # Spines: the node's own address
        else:
            raise ConfigError("logical_id: not set (give -l ADDRESS, or -I so the first local "
                              "address serves as the logical ID)")
    lid = ipaddress.IPv4Address(out["logical_id"])
    if any(lid in net for net in NOT_AN_ID) or lid == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(f"logical_id: {lid} cannot identify a node (this-network, loopback, "
                          f"multicast or class E address)")
    port = out.get("port", 8100)
    out.setdefault("ipc_path", f"/tmp/spines{port}")
    out.setdefault("control_socket", default_control_socket(port))
    missing = [x for x in out.get("kernel_levels", ()) if x not in KERNEL_LEVELS_IMPLEMENTED]
    if missing:
        raise ConfigError(f"kernel_levels: level {missing[0]} is not implemented yet")
    gw = out.get("gateway_group", "240.220.11.1")
    if not is_anycast_addr(gw):
        raise ConfigError(f"gateway_group: {gw} is not an anycast (class E) address")
    if out.get("table") in RESERVED_TABLES:
        raise ConfigError(f"table: {out['table']} is reserved by the kernel")
    auth = out.get("auth", "hmac-sha256")
    if auth == "none" and out.get("key_file"):
        raise ConfigError(f"auth: \"none\" contradicts key_file = {out['key_file']}: drop one "
                          f"(a key file means authenticated packets)")
    if auth != "none" and not out.get("key_file"):
        raise ConfigError("key_file: not set; control packets are authenticated (HMAC-SHA256): "
                          "give key_file = PATH ('spines-kr keygen PATH' writes one) or set "
                          "auth = \"none\" explicitly")
    listen = out.get("metrics_listen", "")
    if listen:
        host, _, lport = listen.rpartition(":")
        if not host or not lport.isdigit() or not 1 <= int(lport) <= 65535:
            raise ConfigError(f"metrics_listen: '{listen}' is not ADDRESS:PORT "
                              f"(e.g. 127.0.0.1:9181)")
    cfg = Config(**out)
    _check_tunnels(cfg)
    if cfg.dead_interval_ms < 2 * cfg.hello_interval_ms:
        raise ConfigError(f"dead_interval_ms: {cfg.dead_interval_ms} must be at least twice "
                          f"hello_interval_ms ({cfg.hello_interval_ms})")
    if cfg.lsa_max_age_s < 2 * cfg.lsa_refresh_s:
        raise ConfigError("lsa_max_age_s: must be at least twice lsa_refresh_s")
    if cfg.logical_id in cfg.neighbors:
        raise ConfigError(f"neighbors: {cfg.logical_id} is this node's own logical ID")
    if len(cfg.groups) > cfg.max_own_groups:
        raise ConfigError(f"groups: {len(cfg.groups)} groups, more than max_own_groups "
                          f"({cfg.max_own_groups})")
    if len(cfg.prefixes) > cfg.max_own_prefixes:
        raise ConfigError(f"prefixes: {len(cfg.prefixes)} prefixes, more than max_own_prefixes "
                          f"({cfg.max_own_prefixes})")
    return cfg


def _check_tunnels(cfg: Config) -> None:
    """Tunnels and discovery: what the settings must agree on."""
    kinds = {k for _a, k, _ka in cfg.neighbor if k} | ({cfg.tunnel} - {"none"})
    if "wireguard" in kinds and not cfg.wireguard_key_file:
        raise ConfigError("wireguard_key_file: not set; WireGuard tunnels need this node's key "
                          "('spines-kr keygen --wireguard FILE' writes one)")
    if kinds and cfg.route_priority == 0:
        raise ConfigError("route_priority: tunnels need 1 or more (their endpoints' underlay "
                          "routes are pinned at route_priority - 1)")
    for address, _kind, _ka in cfg.neighbor:
        if address == cfg.logical_id:
            raise ConfigError(f"neighbor: {address} is this node's own logical ID")
    if len(cfg.discovery) > MAX_DISCOVERY:
        raise ConfigError(f"discovery: {len(cfg.discovery)} addresses, at most {MAX_DISCOVERY} "
                          f"(as Spines)")
    for a in cfg.discovery:
        if ipaddress.IPv4Address(a) not in ipaddress.IPv4Network("224.0.0.0/4"):
            raise ConfigError(f"discovery: {a} is not a multicast address (224.0.0.0/4)")
    if cfg.discovery and cfg.unicast_only:
        raise ConfigError("discovery: -d (multicast discovery) contradicts -U (unicast only)")


def check_log_file(path: str) -> None:
    """The log file must be a file we can append to: refuse anything else now, with its name,
    rather than fail at the first log line (``/proc/version`` opens but takes no write).
    Called by the daemon's command before it starts (it creates the file), not by ``build``,
    which only validates."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as e:
        raise ConfigError(f"log_file: cannot append to {path}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode) or not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)
                                      or stat.S_ISFIFO(mode)):
            raise ConfigError(f"log_file: {path} is not a file")
        try:
            os.write(fd, b"")  # a file without a write operation (procfs, sysfs) fails here
        except OSError as e:
            raise ConfigError(f"log_file: cannot write to {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def is_anycast_addr(a: str) -> bool:
    return ipaddress.IPv4Address(a) in ANYCAST


def default_control_socket(port: int) -> str:
    """Management socket of the daemon on ``port`` (systemd's RuntimeDirectory is /run/spines-kr)."""
    return f"/run/spines-kr/spines-kr-{port}.sock"


# --- the daemon's flags, from the same description -----------------------------------------


def add_flags(parser) -> None:
    """Add a flag for every setting that has one (argparse)."""
    import argparse

    for name, s in SETTINGS.items():
        if not s.flags:
            continue
        kw: dict = {"dest": name, "help": s.help or None, "default": None}
        if s.metavar:
            kw["metavar"] = s.metavar
        if s.kind == "bool":
            if name in ("multipath", "data_plane"):
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw.update(action="store_const", const=True)
        elif s.kind in ("ipv4s", "prefixes", "groups", "tunnels"):
            kw["action"] = "append"
        elif s.kind == "ints":
            kw.update(action="append", type=int)
        elif s.kind == "int":
            kw["type"] = int
        elif s.kind == "float":
            kw["type"] = float
        elif s.kind == "choice":
            kw["choices"] = s.choices
        parser.add_argument(*s.flags, **kw)


def flag_values(args) -> dict:
    """The settings given on the command line (None: not given)."""
    return {name: getattr(args, name) for name, s in SETTINGS.items() if s.flags}
