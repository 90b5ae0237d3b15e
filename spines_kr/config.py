"""One validated daemon configuration from a TOML file and Spines-style flags (flags win).

Data model: ``Config``, a frozen dataclass; ``FIELDS`` documents each key of the TOML file (the
same names as the dataclass).  Entry points: ``load_file(path) -> dict`` (TOML -> raw values),
``build(file_values, flag_values) -> Config`` (merge, validate).  Every problem raises
``ConfigError`` with a one-line message naming the field; the CLI prints it and exits 2 before
anything touches the kernel.

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
    -m                 accept_link_commands   accept setlink
    -x seconds         exit_after       exit gracefully after that many seconds
    -U                 unicast_only
    -lf file           log_file
    -ud path           ipc_path         client IPC path (data channel: path + "data")
    -c file            (the TOML file itself)
Ours: prefixes (announced behind this node), multipath (+ multipath_tolerance for measured
metrics), table/route_protocol/route_priority (our kernel slot), timers.
Flags of Spines not implemented yet (-d, -W, -rl, -tf, -sf, -pc) are refused by the CLI with a
message saying so.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, fields

from spines_kr import RTPROT_SPINES
from spines_kr.routing.groups import ANYCAST, is_group
from spines_kr.routing.metrics import ALL_METRICS

KERNEL_LEVELS_IMPLEMENTED = {0, 1, 2, 3}


class ConfigError(ValueError):
    """A configuration problem; the message names the field."""


@dataclass(frozen=True)
class Config:
    logical_id: str
    port: int = 8100
    local_addresses: tuple[str, ...] = ()
    neighbors: tuple[str, ...] = ()
    accept_unknown_neighbors: bool = True
    metric: str = "distance"
    kernel_levels: tuple[int, ...] = ()
    accept_link_commands: bool = False
    exit_after: float | None = None
    unicast_only: bool = False
    log_file: str | None = None
    log_level: str = "info"
    log_format: str = "auto"
    ipc_path: str = ""
    control_socket: str = ""
    control_group: str | None = None
    # kernel
    table: int = 254
    route_protocol: int = RTPROT_SPINES
    route_priority: int = 20
    rule_priority: int | None = None  # policy rule for a table other than main (default by table)
    keep_routes: bool = False  # at clean exit keep our routes (a restart follows), else withdraw
    prefsrc: bool = True
    multipath: bool = False
    multipath_tolerance: float = 0.1
    multipath_weights: str = "equal"
    nexthop_objects: str = "auto"  # multipath through kernel nexthop groups: auto|on|off
    prefixes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # joined at start (class D multicast, class E anycast)
    anypath: bool = False  # anycast routes to all members at the best cost
    spines_mappings: bool = False  # 247.x.y.z / 227.x.y.z routed as 10.x.y.z (Spines -k 1/2)
    gateway_group: str = "240.220.11.1"
    auth: str = "hmac-sha256"  # or "none", which must be said explicitly
    key_file: str | None = None
    max_nodes: int = 2000  # bounded state (issue: a neighbor must not exhaust our memory)
    max_links_per_node: int = 128
    max_prefixes_per_node: int = 256
    max_groups_per_node: int = 256
    max_dynamic_links: int = 64
    max_packets_per_s: float = 400.0
    metrics_listen: str = ""  # Prometheus endpoint "ADDRESS:PORT" (off when empty)
    igmp_proxy: bool = True  # join/leave groups for hosts on our LANs from their IGMP reports
    reconcile_interval_s: float = 30.0
    startup_grace_s: float = 5.0
    # timers (Spines: 100 ms hellos, dead after 10)
    hello_interval_ms: int = 60
    dead_interval_ms: int = 250
    up_after_hellos: int = 3
    retransmit_ms: int = 100
    lsa_refresh_s: float = 600.0
    lsa_max_age_s: float = 1800.0

    @property
    def kernel_routing(self) -> bool:
        """Any kernel level: the daemon reconciles a route table (level 0 adds node and
        prefix routes to it, levels 1-3 group routes)."""
        return bool(self.kernel_levels)


FIELDS = {f.name: f for f in fields(Config)}


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


def _ipv4(field: str, value) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ConfigError(f"{field}: '{value}' is not an IPv4 address") from None


def _int(field, value, lo, hi) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{field}: {value} is out of range {lo}..{hi}")
    return value


def _num(field, value, lo, hi) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}: expected a number, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{field}: {value} is out of range {lo}..{hi}")
    return float(value)


def _bool(field, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: expected true or false, got {value!r}")
    return value


def _list(field, value) -> list:
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field}: expected a list, got {value!r}")
    return list(value)


def build(file_values: dict | None = None, flag_values: dict | None = None) -> Config:
    """Merge file and flag values (flags win) and validate them into a Config."""
    v = dict(file_values or {})
    v.update({k: x for k, x in (flag_values or {}).items() if x is not None})
    for key in v:
        if key not in FIELDS:
            raise ConfigError(f"unknown setting '{key}'")
    out: dict = {}

    out["port"] = _int("port", v.get("port", 8100), 1, 65535)
    out["local_addresses"] = tuple(_ipv4("local_addresses", a)
                                   for a in _list("local_addresses", v.get("local_addresses", [])))
    out["neighbors"] = tuple(dict.fromkeys(_ipv4("neighbors", a)
                                           for a in _list("neighbors", v.get("neighbors", []))))
    if "logical_id" in v:
        out["logical_id"] = _ipv4("logical_id", v["logical_id"])
    elif out["local_addresses"]:
        out["logical_id"] = out["local_addresses"][0]  # Spines: the node's own address
    else:
        raise ConfigError("logical_id: not set (give -l ADDRESS, or -I so the first local "
                          "address serves as the logical ID)")
    metric = v.get("metric", "distance")
    if metric not in ALL_METRICS:
        raise ConfigError(f"metric: '{metric}' is not one of {', '.join(ALL_METRICS)}")
    out["metric"] = metric
    prefixes = []
    for p in _list("prefixes", v.get("prefixes", [])):
        try:
            prefixes.append(str(ipaddress.IPv4Network(p)))
        except (ValueError, TypeError):
            raise ConfigError(f"prefixes: '{p}' is not an IPv4 network (address/length with no "
                              f"host bits set)") from None
    out["prefixes"] = tuple(dict.fromkeys(prefixes))
    groups = []
    for g in _list("groups", v.get("groups", [])):
        a = _ipv4("groups", g)
        if not is_group(a):
            raise ConfigError(f"groups: {a} is neither a multicast (224.0.0.0/4) nor an anycast "
                              f"(240.0.0.0/4) group")
        groups.append(a)
    out["groups"] = tuple(dict.fromkeys(groups))
    gw = _ipv4("gateway_group", v.get("gateway_group", "240.220.11.1"))
    if not is_anycast_addr(gw):
        raise ConfigError(f"gateway_group: {gw} is not an anycast (class E) address")
    out["gateway_group"] = gw
    weights = v.get("multipath_weights", "equal")
    if weights not in ("equal", "cost"):
        raise ConfigError(f"multipath_weights: '{weights}' is not one of equal, cost")
    out["multipath_weights"] = weights
    nh = v.get("nexthop_objects", "auto")
    if nh not in ("auto", "on", "off"):
        raise ConfigError(f"nexthop_objects: '{nh}' is not one of auto, on, off")
    out["nexthop_objects"] = nh
    if "multipath_tolerance" in v:
        out["multipath_tolerance"] = _num("multipath_tolerance", v["multipath_tolerance"], 0, 1)
    levels = tuple(sorted({_int("kernel_levels", x, 0, 3)
                           for x in _list("kernel_levels", v.get("kernel_levels", []))}))
    missing = [x for x in levels if x not in KERNEL_LEVELS_IMPLEMENTED]
    if missing:
        raise ConfigError(f"kernel_levels: level {missing[0]} is not implemented yet "
                          f"(available: {', '.join(map(str, sorted(KERNEL_LEVELS_IMPLEMENTED)))})")
    out["kernel_levels"] = levels
    for key in ("accept_link_commands", "unicast_only", "prefsrc", "multipath",
                "accept_unknown_neighbors", "keep_routes", "anypath", "spines_mappings",
                "igmp_proxy"):
        if key in v:
            out[key] = _bool(key, v[key])
    if v.get("exit_after") is not None:
        out["exit_after"] = _num("exit_after", v["exit_after"], 0, 10 ** 9)
    for key in ("log_file", "control_group"):
        if v.get(key) is not None:
            if not isinstance(v[key], str) or not v[key]:
                raise ConfigError(f"{key}: expected a non-empty string")
            out[key] = v[key]
    level = v.get("log_level", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: '{level}' is not one of debug, info, warning, error")
    out["log_level"] = level
    fmt = v.get("log_format", "auto")
    if fmt not in ("auto", "json", "console"):
        raise ConfigError(f"log_format: '{fmt}' is not one of auto, json, console")
    out["log_format"] = fmt
    out["ipc_path"] = v.get("ipc_path") or f"/tmp/spines{out['port']}"
    out["control_socket"] = v.get("control_socket") or default_control_socket(out["port"])
    auth = v.get("auth", "hmac-sha256")
    if auth not in ("hmac-sha256", "none"):
        raise ConfigError(f"auth: '{auth}' is not one of hmac-sha256, none")
    out["auth"] = auth
    if v.get("key_file") is not None:
        if not isinstance(v["key_file"], str) or not v["key_file"]:
            raise ConfigError("key_file: expected a path")
        out["key_file"] = v["key_file"]
    if auth != "none" and not out.get("key_file"):
        raise ConfigError("key_file: not set; control packets are authenticated (HMAC-SHA256): "
                          "give key_file = PATH ('spines-kr keygen PATH' writes one) or set "
                          "auth = \"none\" explicitly")
    listen = v.get("metrics_listen", "")
    if listen:
        host, _, port = str(listen).rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"metrics_listen: '{listen}' is not ADDRESS:PORT (e.g. 127.0.0.1:9181)")
    out["metrics_listen"] = listen
    for key in ("ipc_path", "control_socket"):
        if not isinstance(out[key], str):
            raise ConfigError(f"{key}: expected a path")

    out["table"] = _int("table", v.get("table", 254), 1, 0xFFFFFFFF)
    if out["table"] in (0, 253, 255):
        raise ConfigError(f"table: {out['table']} is reserved by the kernel")
    out["route_protocol"] = _int("route_protocol", v.get("route_protocol", RTPROT_SPINES), 5, 255)
    out["route_priority"] = _int("route_priority", v.get("route_priority", 20), 0, 0xFFFFFFFF)
    if v.get("rule_priority") is not None:
        out["rule_priority"] = _int("rule_priority", v["rule_priority"], 1, 32765)
    for key, lo, hi in (("reconcile_interval_s", 0.1, 86400), ("startup_grace_s", 0, 3600),
                        ("lsa_refresh_s", 1, 86400), ("lsa_max_age_s", 3, 86400 * 7)):
        if key in v:
            out[key] = _num(key, v[key], lo, hi)
    for key, lo, hi in (("max_nodes", 2, 1_000_000), ("max_links_per_node", 1, 65535),
                        ("max_prefixes_per_node", 0, 65535), ("max_groups_per_node", 0, 65535),
                        ("max_dynamic_links", 0, 10_000)):
        if key in v:
            out[key] = _int(key, v[key], lo, hi)
    if "max_packets_per_s" in v:
        out["max_packets_per_s"] = _num("max_packets_per_s", v["max_packets_per_s"], 20, 1e6)
    for key, lo, hi in (("hello_interval_ms", 10, 60000), ("dead_interval_ms", 30, 600000),
                        ("up_after_hellos", 1, 100), ("retransmit_ms", 10, 60000)):
        if key in v:
            out[key] = _int(key, v[key], lo, hi)
    cfg = Config(**out)
    if cfg.dead_interval_ms < 2 * cfg.hello_interval_ms:
        raise ConfigError(f"dead_interval_ms: {cfg.dead_interval_ms} must be at least twice "
                          f"hello_interval_ms ({cfg.hello_interval_ms})")
    if cfg.lsa_max_age_s < 2 * cfg.lsa_refresh_s:
        raise ConfigError("lsa_max_age_s: must be at least twice lsa_refresh_s")
    if cfg.logical_id in cfg.neighbors:
        raise ConfigError(f"neighbors: {cfg.logical_id} is this node's own logical ID")
    return cfg


def is_anycast_addr(a: str) -> bool:
    return ipaddress.IPv4Address(a) in ANYCAST


def default_control_socket(port: int) -> str:
    """Management socket of the daemon on ``port`` (systemd's RuntimeDirectory is /run/spines-kr)."""
    return f"/run/spines-kr/spines-kr-{port}.sock"
