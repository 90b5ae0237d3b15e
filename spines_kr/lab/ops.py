"""What one does to a running lab: read kernel routes, wait for convergence, trace a path,
fail and heal links, and measure an outage with probes.  Used by ``lab demo``, the lab tests
and ``bench/``.

Entry points (``st`` is ``netns.status(lab)``; a "member" is a node or a host of the lab):
    kernel_routes(netns, table=254) -> {dst: [gateway, ...]}
                                                        routes of proto spines in one table
    kernel_rules(netns, table) -> [priority, ...]      policy rules of proto spines -> table
    all_routes(st) -> {node: {dst: [gateway, ...]}}     kernel_routes of every node, read over
                                                        netlink (``lab.routes``: no process each)
    converged(st) / wait_converged(st, timeout) -> seconds or None
                                                        (in the lab's table: ``st["table"]``,
                                                        and ``settled``: one LSDB everywhere)
    unconverged(st) -> [node names]                     the nodes whose tables are not complete
    address_of(st, member) -> address                   a node's logical ID, a host's address
    netns_of(st, member) -> namespace name
    ping(st, src, dst, count=3, source=None) -> CompletedProcess
                                                        real ping, src's namespace to dst's address
    path(st, src, dst) -> [node names]                  the kernel's hop-by-hop path (nodes),
                                                        by the routes in the lab's table
    silent_failure(st, a, b, on)                        nftables drop on a's end of link a-b
                                                        (an overlay link, or an underlay link:
                                                        a and b may be routers then)
    carrier(st, a, b, up)                               ``ip link set down`` on a's end
    Probe(st, src, dst, duration, rate)                 UDP probe stream src -> dst's address

Silent failure: an nftables table ``spines_kr_lab`` in a's namespace drops everything in and
out of the link's interface, which stays up: only the hello protocol can notice.  Carrier loss:
a's end set down, so b's end loses carrier too and both kernels report it at once.

A joined lab (``lab up --join``) runs in its base's namespaces with a route table of its own
(``st["table"]``, its port): every helper here reads the table of the lab it is given, and its
silent failures use an nftables table of their own (``spines_kr_lab_<table>``).
"""

from __future__ import annotations

import collections
import ipaddress
import json
import subprocess
import sys
import time

from spines_kr import RTPROT_SPINES
from spines_kr.ctl import request
from spines_kr.lab import netns as labns
from spines_kr.lab import routes as _routes

MAIN_TABLE = 254

NFT_TABLE = "spines_kr_lab"
PROBE_PORT = 9901


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def kernel_routes(ns: str, table: int = MAIN_TABLE) -> dict[str, list[str]]:
    """Our routes (protocol spines) in ``table`` of namespace ``ns``: {dst: sorted gateways}.
    A table the kernel never made holds none (``ip route show table T`` fails on it with
    "FIB table does not exist", iproute2 6.1 / Linux 6.18)."""
    r = subprocess.run(["ip", "-n", ns, "-j", "route", "show", "table", str(table), "proto",
                        str(RTPROT_SPINES)], capture_output=True, text=True)
    if r.returncode != 0:
        if "table does not exist" in r.stderr:
            return {}
        raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout, r.stderr)
    out = json.loads(r.stdout or "[]")
    routes = {}
    for r in out:
        dst = ("0.0.0.0/0" if r["dst"] == "default" else
               r["dst"] if "/" in r["dst"] else r["dst"] + "/32")
        hops = [h.get("gateway") for h in r.get("nexthops", [])] or [r.get("gateway")]
        routes[dst] = sorted(h for h in hops if h)
    return routes


def kernel_rules(ns: str, table: int) -> list[int]:
    """Priorities of the policy rules of protocol spines that look up ``table`` in ``ns``."""
    return sorted(r["priority"] for r in json.loads(_ip("-n", ns, "-j", "rule", "show") or "[]")
                  if str(r.get("table")) == str(table)
                  and str(r.get("protocol")) in (str(RTPROT_SPINES), "spines"))


def table_of(st: dict) -> int:
    """The route table of a lab's overlay (main, or a joined lab's own)."""
    return st.get("table", MAIN_TABLE)


def _node(st: dict, name: str) -> dict:
    return next(n for n in st["nodes"] if n["name"] == name)


def _member(st: dict, name: str) -> dict:
    for m in [*st["nodes"], *st.get("hosts", []), *st.get("routers", [])]:
        if m["name"] == name:
            return m
    raise KeyError(f"lab {st['name']!r} has no node or host {name!r}")


def address_of(st: dict, name: str) -> str:
    """The address traffic to a lab member goes to: a node's logical ID, a host's address."""
    m = _member(st, name)
    return m["logical_id"] if "logical_id" in m else m["address"]


def netns_of(st: dict, name: str) -> str:
    return _member(st, name)["netns"]


def ping(st: dict, src: str, dst: str, count: int = 3, interval: float = 0.2,
         reply_wait: float = 1.0, source: str | None = None) -> subprocess.CompletedProcess:
    """``ping`` from ``src``'s namespace to ``address_of(dst)``, from address ``source`` when
    given (``-I``; e.g. ``address_of(st, src)``); check ``returncode``."""
    return subprocess.run(["ip", "netns", "exec", netns_of(st, src), "ping", "-n", "-c",
                           str(count), "-i", str(interval), "-W", f"{reply_wait:g}",
                           *(["-I", source] if source else []), address_of(st, dst)],
                          capture_output=True, text=True,
                          timeout=count * (interval + reply_wait) + 10)


def _link(st: dict, a: str, b: str) -> dict:
    for l in [*st["links"], *st.get("underlay", [])]:
        if (l["a"], l["b"]) in ((a, b), (b, a)):
            return l
    raise KeyError(f"no link {a}-{b}")


def _end(st: dict, a: str, b: str) -> tuple[str, str]:
    """(ifname, address) of a's end of link a-b."""
    l = _link(st, a, b)
    return (l["a_ifname"], l["a_address"]) if l["a"] == a else (l["b_ifname"], l["b_address"])


def all_routes(st: dict, gateways: bool = True) -> dict[str, dict[str, list[str]]]:
    """``kernel_routes`` of every node of the lab, in its table: {node: {dst: gateways}} (with
    ``gateways=False`` only the destinations are decoded: every list is empty)."""
    by_ns = _routes.dump([n["netns"] for n in st["nodes"]], table_of(st), gateways=gateways)
    return {n["name"]: by_ns[n["netns"]] for n in st["nodes"]}


def unconverged(st: dict) -> list[str]:
    """The nodes that lack a spines route to another node's logical ID or advertised prefix, or
    have one to anything else but group routes (anycast/multicast /32s, the gateway default), in
    the lab's table.  One netlink dump per node (``all_routes``)."""
    own = {n["name"]: {n["logical_id"] + "/32", *n.get("prefixes", [])} for n in st["nodes"]}
    owners = collections.Counter(d for dsts in own.values() for d in dsts)
    every = set(owners)
    # the pinned underlay routes to tunnel endpoints (daemon.tunnels) are ours too
    pins = {f"{t[s]}/32" for t in st.get("tunnels", []) for s in ("a_endpoint", "b_endpoint")}
    out = []
    for name, have in all_routes(st, gateways=False).items():
        want = every - {d for d in own[name] if owners[d] == 1}  # another node's too: wanted
        got = have.keys() - pins
        if want - got or any(not _group_route(d) for d in got - want):
            out.append(name)
    return out


def converged(st: dict) -> bool:
    """Every node has a spines route to every other node's logical ID and advertised prefixes,
    and to nothing else but group routes (anycast/multicast /32s, the gateway default), in the
    lab's table; and the overlay is at rest (``settled``): complete tables can still be about
    to change while a better path's news travels."""
    return not unconverged(st) and settled(st)


def settled(st: dict) -> bool:
    """Every daemon of the lab holds the same link-state database (its digest) and none has an
    origination waiting (``show sync``)."""
    digests = set()
    for n in st["nodes"]:
        try:
            r = request(n["control_socket"], {"cmd": "show", "what": "sync"}, timeout=2.0)
        except OSError:
            return False
        s = r.get("data") or {}
        if not r.get("ok") or s.get("origination_pending"):
            return False
        digests.add(s.get("lsdb_digest"))
    return len(digests) == 1


def _group_route(dst: str) -> bool:
    return dst == "0.0.0.0/0" or (dst.endswith("/32") and
                                  ipaddress.IPv4Address(dst[:-3]) in ipaddress.IPv4Network("224.0.0.0/3"))


def wait(cond, timeout: float, interval: float = 0.02) -> float | None:
    """Poll ``cond`` until true; the seconds it took, or None after ``timeout``."""
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


def wait_converged(st: dict, timeout: float = 10.0, interval: float = 0.02) -> float | None:
    return wait(lambda: converged(st), timeout, interval)


def path(st: dict, src: str, dst: str) -> list[str]:
    """The nodes a packet from ``src`` to ``dst``'s logical ID crosses, by the kernels' routes."""
    owner = {n["logical_id"]: n["name"] for n in st["nodes"]}  # tunnels: gateway = peer's ID
    for l in st["links"]:
        owner[l["a_address"].split("/")[0]] = l["a"]
        owner[l["b_address"].split("/")[0]] = l["b"]
    target = _node(st, dst)["logical_id"] + "/32"
    hops, here = [src], src
    while here != dst and len(hops) <= len(st["nodes"]):
        gws = kernel_routes(_node(st, here)["netns"], table_of(st)).get(target)
        if not gws:
            return hops + ["?"]
        here = owner.get(gws[0], "?")
        hops.append(here)
        if here == "?":
            break
    return hops


def _nft_table(st: dict) -> str:
    table = table_of(st)
    return NFT_TABLE if table == MAIN_TABLE else f"{NFT_TABLE}_{table}"


def silent_failure(st: dict, a: str, b: str, on: bool = True) -> None:
    ifname, _ = _end(st, a, b)
    ns, nft_table = _member(st, a)["netns"], _nft_table(st)
    if on:
        rules = (f"table inet {nft_table} {{\n"
                 f" chain in {{ type filter hook prerouting priority -300; iifname \"{ifname}\" drop; }}\n"
                 f" chain out {{ type filter hook postrouting priority 300; oifname \"{ifname}\" drop; }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                       check=True, capture_output=True)
    else:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", nft_table],
                       check=False, capture_output=True)


def carrier(st: dict, a: str, b: str, up: bool) -> None:
    ifname, _ = _end(st, a, b)
    _ip("-n", _node(st, a)["netns"], "link", "set", ifname, "up" if up else "down")


class Probe:
    """A UDP probe stream from ``src`` to ``address_of(dst)`` (nodes or hosts); ``result()`` is
    the receiver's report (see ``lab.probe``).  The receiver is bound before the sender starts."""

    def __init__(self, st: dict, src: str, dst: str, duration: float, rate: float = 100.0,
                 port: int = PROBE_PORT):
        py = [sys.executable, "-m", "spines_kr.lab.probe"]
        env = labns.child_env()
        self.recv = subprocess.Popen(
            ["ip", "netns", "exec", netns_of(st, dst), *py, "recv", "--port", str(port),
             "--duration", str(duration + 2)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        ready = self.recv.stderr.readline()
        if ready.strip() != "ready":
            self.recv.kill()
            raise RuntimeError(f"probe receiver did not start: {ready}{self.recv.stderr.read()}")
        self.send = subprocess.Popen(
            ["ip", "netns", "exec", netns_of(st, src), *py, "send",
             "--dst", address_of(st, dst), "--port", str(port), "--rate", str(rate),
             "--duration", str(duration)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env)

    def result(self) -> dict:
        sent = json.loads(self.send.communicate(timeout=120)[0] or "{}")
        out = json.loads(self.recv.communicate(timeout=120)[0] or "{}")
        out["sent"] = sent.get("sent")
        out["send_errors"] = sent.get("send_errors")
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in (self.send, self.recv):
            if p.poll() is None:
                p.kill()
                p.wait()
