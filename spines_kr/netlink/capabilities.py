"""What the running kernel (and host) offers spines-kr: probed once, used everywhere.

Data model:
    Feature(key, title, kconfig, used_for)
        one thing the kernel may lack; ``FEATURES`` lists them all, in display order.
    Capabilities(present, detail, kernel)
        the answer of one probe: ``present[key]`` is True, False, or None when the probe could
        not tell (no CAP_NET_ADMIN, a namespace that cannot be entered...); ``detail[key]`` says
        how it was found or why not.  ``has(key)``, ``missing_reason(key)`` (the one line a
        refusal or a test skip names, e.g. "kernel without IPv4 multicast routing
        (CONFIG_IP_MROUTE)"), ``to_json()``, ``summary()``.

Entry points: ``probe(netns=None, refresh=False) -> Capabilities`` (cached per process and
namespace: the set of features only grows while a kernel runs), ``render(caps)``.
``SPINES_KR_WITHOUT=feature,...`` in the environment reports those features absent whatever
the kernel has: how an operator (or a test) sees what the daemon does on a smaller kernel.
Users: ``spines-kr capabilities [--json]``, the daemon (its start-up line, ``show status`` and
the decision of what to use, ``daemon.features``), and the test suite (``tests/conftest.py``:
``@pytest.mark.needs("multicast_routing")`` skips naming the missing feature).

No probe changes anything.  Each asks the kernel a question whose answer differs by feature,
in the daemon's own namespace (so it works under systemd with CAP_NET_ADMIN and CAP_NET_RAW
only, where no namespace can be created):
  * multicast_routing: getsockopt(MRT_VERSION) on a raw IGMP socket answers 0x305, or
    ENOPROTOOPT without CONFIG_IP_MROUTE (``ip mroute`` then fails the same way).
  * multicast_tables, policy_rules: a dump of the rules of family RTNL_FAMILY_IPMR, resp.
    AF_INET, succeeds, or fails with EAFNOSUPPORT when the family has no rules
    (CONFIG_IP_MROUTE_MULTIPLE_TABLES, CONFIG_IP_MULTIPLE_TABLES).
  * nexthop_objects: an RTM_GETNEXTHOP dump (``netlink.nexthop.probe``).
  * multipath: the sysctl ``net.ipv4.fib_multipath_hash_policy`` exists only with
    CONFIG_IP_ROUTE_MULTIPATH.
  * tbf, netem: a root qdisc of that kind on lo with empty options is refused by the kind's
    init (EINVAL) when the kind exists, ENOENT otherwise (``netlink.emulation.probe``).
  * nftables: the ``nft`` program on PATH and an NFT_MSG_GETGEN request answered by the
    kernel's nf_tables (EINVAL or no netfilter netlink at all without it).
  * link kinds (veth, bridge, vxlan, gre, ipip, vrf, dummy): RTM_NEWLINK for the existing
    device "lo" with NLM_F_CREATE|NLM_F_EXCL, the kind, and a well-formed attribute that kind's
    validation refuses.  The kernel looks the kind up (loading its module if it can) and
    validates before it looks at the device: a kind it has fails validation (EINVAL/ERANGE),
    one it lacks reaches the device check and fails with EEXIST.  Nothing can be created (lo
    exists, NLM_F_EXCL).  Checked on 6.18 against ``ip link add ... type KIND`` in a throwaway
    namespace (tests/kernel/test_capabilities.py does that on every kernel it runs on):
        ip link add lo type dummy   # "RTNETLINK answers: File exists" when dummy is missing
    Loading ip_gre, ipip or dummy makes devices (gre0, gretap0, erspan0 in every namespace,
    tunl0, dummy0), so those three are not loaded by a probe: a kind whose module is known to
    the system (/lib/modules/<release>/modules.dep) but not loaded (/sys/module, /proc/modules)
    is reported present as "loadable module, not loaded" without asking the kernel.
  * wireguard: the generic netlink family "wireguard" (CONFIG_WIREGUARD; looking it up loads
    the module), else the ``wireguard-go`` program with a usable /dev/net/tun; the two ways
    apart: wireguard_module (the family) and wireguard_go (the program and /dev/net/tun).
    The daemon's tunnels use the module where it is, wireguard-go otherwise (daemon.tunnels).
  * tun: /dev/net/tun opens (no device is attached to it).
  * ipv6: an AF_INET6 socket opens and ``net.ipv6.conf.all.disable_ipv6`` is 0.
"""

from __future__ import annotations

import errno
import os
import platform
import socket
import struct
from dataclasses import dataclass, field

from spines_kr.netlink import emulation, nexthop
from spines_kr.netlink.core import (
    NETLINK_GENERIC, NETLINK_NETFILTER, NLA_F_NESTED, NLM_F_CREATE, NLM_F_EXCL, Netlink, attr as _attr)
from spines_kr.netlink.kernel import IFINFOMSG, RTM_NEWLINK
from spines_kr.netlink.nsenter import socket_in_netns, which

# linux/rtnetlink.h, linux/fib_rules.h, linux/mroute.h, linux/if_link.h, linux/netfilter
RTM_GETRULE = 34
FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
RTNL_FAMILY_IPMR = 128
MRT_VERSION = 206
IFLA_ADDRESS, IFLA_IFNAME, IFLA_LINKINFO = 1, 3, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_GRE_IFLAGS = 2
IFLA_IPTUN_PROTO = 9
GRE_VERSION = 0x0007  # network order on the wire
NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN = 10, 16
GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME = 16, 3, 2
TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Feature:
    key: str
    title: str  # "IPv4 multicast routing"
    kconfig: str  # what provides it: "CONFIG_IP_MROUTE"
    used_for: str  # what of spines-kr needs it


FEATURES: dict[str, Feature] = {f.key: f for f in (
    Feature("multicast_routing", "IPv4 multicast routing", "CONFIG_IP_MROUTE",
            "kernel_levels 2 (-k 2): multicast groups forwarded by the kernel"),
    Feature("multicast_tables", "multicast routing tables", "CONFIG_IP_MROUTE_MULTIPLE_TABLES",
            "-k 2 with a table other than main (several overlays)"),
    Feature("nexthop_objects", "nexthop objects", "Linux 5.3 or later",
            "multipath routes as nexthop groups (nexthop_objects)"),
    Feature("multipath", "multipath routes", "CONFIG_IP_ROUTE_MULTIPATH",
            "multipath: equal-cost next hops in one route"),
    Feature("policy_rules", "policy routing rules", "CONFIG_IP_MULTIPLE_TABLES",
            "a route table other than main (table)"),
    Feature("tbf", "the tbf qdisc", "CONFIG_NET_SCH_TBF",
            "setlink bandwidth on the kernel's traffic"),
    Feature("netem", "the netem qdisc", "CONFIG_NET_SCH_NETEM",
            "setlink latency and loss on the kernel's traffic"),
    Feature("nftables", "nftables", "CONFIG_NF_TABLES and the nft program",
            "setlink loss on the kernel's traffic without netem"),
    Feature("veth", "veth devices", "CONFIG_VETH", "the namespace lab's links"),
    Feature("bridge", "bridges", "CONFIG_BRIDGE", "the namespace lab's host LANs"),
    Feature("vxlan", "VXLAN tunnels", "CONFIG_VXLAN", "virtual links over VXLAN"),
    Feature("wireguard", "WireGuard", "CONFIG_WIREGUARD, or wireguard-go with /dev/net/tun",
            "encrypted virtual links"),
    Feature("wireguard_module", "the WireGuard kernel module", "CONFIG_WIREGUARD",
            "WireGuard tunnels in the kernel (configured over generic netlink)"),
    Feature("wireguard_go", "wireguard-go", "the wireguard-go program and /dev/net/tun",
            "WireGuard tunnels without the kernel module (its UAPI socket)"),
    Feature("gre", "GRE tunnels", "CONFIG_NET_IPGRE", "virtual links over GRE"),
    Feature("ipip", "IPIP tunnels", "CONFIG_NET_IPIP", "virtual links over IPIP"),
    Feature("vrf", "VRF devices", "CONFIG_NET_VRF", "overlays bound to a VRF"),
    Feature("dummy", "dummy devices", "CONFIG_DUMMY", "a stable device for the logical ID"),
    Feature("tun", "TUN devices", "CONFIG_TUN (/dev/net/tun)", "wireguard-go"),
    Feature("ipv6", "IPv6", "CONFIG_IPV6", "IPv6 underlays"),
)}

# The invalid-but-well-formed RTM_NEWLINK attributes per kind (see the module docstring):
# (top-level attributes, IFLA_INFO_DATA payload).  Each is exactly the size its policy wants,
# so the kernel logs nothing.
_ONE_BYTE_ADDRESS = (_attr(IFLA_ADDRESS, b"\x02"), b"")  # validate: "not an Ethernet address"
_KIND_PROBES = {
    "veth": _ONE_BYTE_ADDRESS,
    "bridge": _ONE_BYTE_ADDRESS,
    "vxlan": _ONE_BYTE_ADDRESS,
    "vrf": _ONE_BYTE_ADDRESS,
    "dummy": _ONE_BYTE_ADDRESS,
    # ipgre_tunnel_validate: a GRE version in the flags is refused
    "gre": (b"", _attr(IFLA_GRE_IFLAGS, struct.pack("!H", GRE_VERSION))),
    # ipip_tunnel_validate: an inner protocol other than IPIP or MPLS is refused
    "ipip": (b"", _attr(IFLA_IPTUN_PROTO, bytes([99]))),
}


@dataclass(frozen=True)
class Capabilities:
    present: dict[str, bool | None]
    detail: dict[str, str] = field(default_factory=dict)
    kernel: str = ""

    def has(self, key: str) -> bool:
        """True only when the probe found the feature (unknown counts as absent)."""
        if key not in FEATURES:
            raise KeyError(f"unknown feature {key!r} (one of {', '.join(FEATURES)})")
        return self.present.get(key) is True

    def missing_reason(self, key: str) -> str:
        """One line naming what is missing: "kernel without IPv4 multicast routing
        (CONFIG_IP_MROUTE)"; for a feature the probe could not judge, why."""
        f = FEATURES[key]
        if self.present.get(key) is None:
            why = self.detail.get(key) or "the probe could not tell"
            return f"{f.title} unknown ({why})"
        if self.detail.get(key) == "hidden by SPINES_KR_WITHOUT":
            return f"kernel without {f.title} ({f.kconfig}; hidden by SPINES_KR_WITHOUT)"
        if key == "wireguard":
            return "kernel without WireGuard (CONFIG_WIREGUARD) and no wireguard-go with /dev/net/tun"
        if key == "wireguard_go":
            return f"no wireguard-go ({self.detail.get(key) or f.kconfig})"
        if key == "nftables":
            return f"no nftables ({self.detail.get(key) or f.kconfig})"
        return f"kernel without {f.title} ({f.kconfig})"

    def missing(self) -> list[str]:
        return [k for k in FEATURES if not self.has(k)]

    def to_json(self) -> dict:
        """Every feature as a boolean (null: unknown), then the kernel release and details."""
        return {**{k: self.present.get(k) for k in FEATURES}, "kernel": self.kernel,
                "detail": {k: v for k, v in self.detail.items() if v}}

    def summary(self) -> str:
        """One line: what is there and what is not."""
        have = [k for k in FEATURES if self.present.get(k) is True]
        lack = [k for k in FEATURES if self.present.get(k) is False]
        unknown = [k for k in FEATURES if self.present.get(k) is None]
        parts = [f"have {' '.join(have) or '-'}", f"lack {' '.join(lack) or '-'}"]
        if unknown:
            parts.append(f"unknown {' '.join(unknown)}")
        return "; ".join(parts)


def render(caps: Capabilities) -> str:
    """The table ``spines-kr capabilities`` prints."""
    rows = [f"kernel {caps.kernel}", f"{'feature':18} {'present':8} {'provided by':44} used for"]
    for key, f in FEATURES.items():
        value = caps.present.get(key)
        mark = "yes" if value else ("no" if value is False else "unknown")
        rows.append(f"{key:18} {mark:8} {f.kconfig:44} {f.used_for}")
        if caps.detail.get(key):
            rows.append(f"{'':18} {'':8} {caps.detail[key]}")
    return "\n".join(rows)


# --- probes -------------------------------------------------------------------------------------

_cache: dict[str | None, Capabilities] = {}


def probe(netns: str | None = None, refresh: bool = False) -> Capabilities:
    """Probe everything (about 10-50 ms); cached per namespace.  Never raises."""
    if not refresh and netns in _cache:
        return _cache[netns]
    present: dict[str, bool | None] = {}
    detail: dict[str, str] = {}

    def note(key: str, result: tuple[bool | None, str]) -> None:
        present[key], detail[key] = result

    try:
        nl = Netlink(netns, timeout=TIMEOUT)
    except OSError as e:
        nl = None
        why = f"no netlink socket: {e.strerror or e}"
        for key in ("multicast_tables", "policy_rules", "nexthop_objects", *_KIND_PROBES):
            note(key, (None, why))
    if nl is not None:
        with nl:
            note("multicast_tables", _rules(nl, RTNL_FAMILY_IPMR))
            note("policy_rules", _rules(nl, socket.AF_INET))
            note("nexthop_objects", _nexthops(nl))
            for kind, (top, data) in _KIND_PROBES.items():
                unloaded = _unloaded_module(kind)
                note(kind, (True, f"loadable module {unloaded}, not loaded") if unloaded
                     else _link_kind(nl, kind, top, data))
    note("multicast_routing", _mroute(netns))
    if present["multicast_routing"] is False:
        note("multicast_tables", (False, "no multicast routing at all"))
    note("multipath", _sysctl_exists("net/ipv4/fib_multipath_hash_policy"))
    qdiscs = emulation.probe(netns)
    unknown = qdiscs.detail or None
    present["tbf"] = qdiscs.tbf if not unknown else None
    present["netem"] = qdiscs.netem if not unknown else None
    detail["tbf"] = detail["netem"] = qdiscs.detail
    note("nftables", _nftables(netns))
    note("tun", _tun())
    note("wireguard", _wireguard(netns, present["tun"]))
    module = _genl_family(netns, "wireguard")
    note("wireguard_module", module if module[0] is not None else (None, module[1]))
    note("wireguard_go", _wireguard_go(present["tun"], detail["tun"]))
    note("ipv6", _ipv6(netns))
    for key in os.environ.get("SPINES_KR_WITHOUT", "").replace(",", " ").split():
        if key in FEATURES:
            present[key], detail[key] = False, "hidden by SPINES_KR_WITHOUT"
    caps = Capabilities(present, detail, platform.release())
    if all(v is not None for v in present.values()):
        _cache[netns] = caps
    return caps


def _why(e: OSError) -> str:
    if e.errno == errno.EPERM:
        return "not permitted: needs CAP_NET_ADMIN"
    return e.strerror or str(e)


def _rules(nl: Netlink, family: int) -> tuple[bool | None, str]:
    body = FIB_RULE_HDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    try:
        for _ in nl.dump(RTM_GETRULE, body):
            pass
    except OSError as e:
        if e.errno == errno.EAFNOSUPPORT:
            return False, ""
        return None, f"rule dump: {_why(e)}"
    return True, ""


def _nexthops(nl: Netlink) -> tuple[bool | None, str]:
    try:
        return nexthop.probe(nl.sock, nl.next_seq()), ""
    except OSError as e:
        return None, f"nexthop dump: {_why(e)}"


def _link_kind(nl: Netlink, kind: str, top: bytes, data: bytes) -> tuple[bool | None, str]:
    linkinfo = _attr(IFLA_INFO_KIND, kind.encode() + b"\0")
    if data:
        linkinfo += _attr(IFLA_INFO_DATA | NLA_F_NESTED, data)
    body = (IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, b"lo\0") + top
            + _attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo))
    try:
        code, text = nl.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)
    except OSError as e:
        return None, f"link probe: {_why(e)}"
    if code in (errno.EINVAL, errno.ERANGE, errno.EADDRNOTAVAIL):
        return True, ""
    if code == errno.EEXIST:
        return False, ""
    if code == errno.EPERM:
        return None, "not permitted: needs CAP_NET_ADMIN"
    return None, f"link probe answered {text or 'success'}"


# Kinds whose module makes devices when it loads: a probe must not load it.
_DEVICE_MAKING_MODULES = {"gre": "ip_gre", "ipip": "ipip", "dummy": "dummy"}


def _unloaded_module(kind: str) -> str | None:
    """The module of ``kind`` when it exists as a loadable module that is not loaded yet."""
    module = _DEVICE_MAKING_MODULES.get(kind)
    if module is None or os.path.isdir(f"/sys/module/{module}"):
        return None  # loaded, or built in (with parameters, which these three have)
    if not os.path.exists("/proc/modules"):
        return None  # no loadable modules in this kernel: nothing can load
    try:
        with open(f"/lib/modules/{platform.release()}/modules.dep") as f:
            for line in f:
                name = line.split(":", 1)[0].rsplit("/", 1)[-1]
                if name.split(".ko", 1)[0].replace("-", "_") == module:
                    return module
    except OSError:
        pass
    return None


def _mroute(netns: str | None) -> tuple[bool | None, str]:
    try:
        s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    except OSError as e:
        # without CAP_NET_RAW: the proc file exists exactly when CONFIG_IP_MROUTE is set
        if netns is None:
            return os.path.exists("/proc/net/ip_mr_vif"), f"from /proc/net ({_why(e)})"
        return None, f"raw socket: {e.strerror or e}"
    with s:
        try:
            version = struct.unpack("=i", s.getsockopt(socket.IPPROTO_IP, MRT_VERSION, 4))[0]
        except OSError as e:
            if e.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                return False, ""
            return None, f"MRT_VERSION: {e.strerror}"
    return True, f"version {version >> 8}.{version & 0xFF}"


def _sysctl_exists(name: str) -> tuple[bool | None, str]:
    """Whether a sysctl exists: it does when the kernel was built with what it belongs to.
    /proc/sys/net shows the reader's namespace, but every namespace has the same network
    sysctls, so the caller's view answers for any namespace."""
    return os.path.exists(f"/proc/sys/{name}"), ""


def _nftables(netns: str | None) -> tuple[bool | None, str]:
    nft = which("nft")
    try:
        nl = Netlink(netns, NETLINK_NETFILTER, timeout=TIMEOUT)
    except OSError as e:
        if e.errno == errno.EPROTONOSUPPORT:
            return False, "kernel without netfilter netlink (CONFIG_NETFILTER_NETLINK)"
        return None, f"netfilter netlink: {e.strerror or e}"
    with nl:
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)  # nfgenmsg: family, version, res_id
        try:
            code, _text = nl.request(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN, 0, body)
        except OSError as e:
            return None, f"nf_tables: {_why(e)}"
    if code == errno.EPERM:
        return None, "not permitted: needs CAP_NET_ADMIN"
    if code:
        return False, "kernel without nf_tables (CONFIG_NF_TABLES)"
    if nft is None:
        return False, "the nft program is not installed (Debian: nftables)"
    return True, nft


def _tun() -> tuple[bool | None, str]:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, "no /dev/net/tun"
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENXIO):
            return False, ""
        return None, f"/dev/net/tun: {e.strerror}"
    os.close(fd)
    return True, ""


def _wireguard(netns: str | None, tun: bool | None) -> tuple[bool | None, str]:
    kernel = _genl_family(netns, "wireguard")
    if kernel[0]:
        return True, "kernel module"
    go = which("wireguard-go")
    if go and tun:
        return True, f"wireguard-go ({go})"
    if kernel[0] is None:
        return None, kernel[1]
    return False, ("" if go else "no wireguard-go program (Debian: wireguard-go)") + (
        "" if tun or not go else "; no usable /dev/net/tun")


def _wireguard_go(tun: bool | None, tun_detail: str) -> tuple[bool | None, str]:
    go = which("wireguard-go")
    if go is None:
        return False, "no wireguard-go program (Debian: wireguard-go)"
    if tun is None:
        return None, tun_detail
    return (True, go) if tun else (False, "no usable /dev/net/tun")


def _genl_family(netns: str | None, name: str) -> tuple[bool | None, str]:
    try:
        nl = Netlink(netns, NETLINK_GENERIC, timeout=TIMEOUT)
    except OSError as e:
        return None, f"generic netlink: {e.strerror or e}"
    with nl:
        body = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + _attr(CTRL_ATTR_FAMILY_NAME,
                                                                      name.encode() + b"\0")
        try:
            answers = nl.get(GENL_ID_CTRL, body)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False, ""
            return None, f"generic netlink: {e.strerror or e}"
    return any(mtype == GENL_ID_CTRL for mtype, _payload in answers), ""


def _ipv6(netns: str | None) -> tuple[bool | None, str]:
    try:
        socket_in_netns(netns, socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError as e:
        if e.errno == errno.EAFNOSUPPORT:
            return False, ""
        return None, f"AF_INET6 socket: {e.strerror or e}"
    try:
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as f:
            if f.read().strip() == "1":
                return False, "disabled (net.ipv6.conf.all.disable_ipv6 = 1)"
    except OSError:
        pass
    return True, ""
