"""Namespace lab: build a Topology on one machine, one network namespace and one daemon per node.

Entry points:
    up(topology, lab, *, port=None, daemon=daemon_argv, timeout=15.0, join=None,
       keep_routes=False) -> status dict
    status(lab) -> dict          down(lab) -> report dict     exec_argv(lab, node_or_host, cmd)
    restart(lab, node, *, kill=False) -> status dict          (one node's daemon)
    join_slot(base) -> int       joined_labs(base) -> [names]
    daemon_argv(**spec) -> argv  (the daemon command line; tests pass a stand-in with its signature)

What a lab is made of:
    namespace ``<LAB>-<node>`` per node: lo up with the logical ID as /32, ip_forward=1,
        rp_filter=0 (all and default, set before any link exists so every link inherits it);
    a veth pair per link, one end in each node's namespace (created there directly, so it never
        appears in the caller's namespace), named as in ``topology`` and addressed from its /30;
    a node with hosts: a bridge ``lan0`` in its namespace carrying its LAN address (``Node.lan``);
        per host a namespace ``<LAB>-<host>`` (lo up) and a veth pair, ``eth0`` there with the
        host's address and a default route via the node, ``lan-<host>`` a port of the bridge.
        Hosts run nothing: their traffic crosses the overlay on the nodes' kernel routes;
    one daemon per node, started through ``ip netns exec`` (which execs, so the pid we record is
        the daemon's), in its own session, output appended to ``<node>.out``; it is told the
        node's link addresses (-I, never the LAN's), neighbours and advertised prefixes (--prefix);
    ``/etc/iproute2/rt_protos.d/spines.conf`` if it was missing (the "spines" protocol name).
    With ``keep_routes`` every daemon gets ``--keep-routes``: a clean exit (SIGTERM, so also
    ``restart`` without ``kill``) leaves its routes for the next daemon to take over.

Several overlays on one set of namespaces: ``up(..., join=BASE)`` runs a second, independent
overlay in the namespaces of lab BASE (a lab of its own, phase up).  It creates no namespace:
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
Before anything is made, ``up`` refuses (``LabConflict``) a node BASE does not have, a port or
slot another overlay there uses, a logical ID, link /30 or prefix overlapping an address, link
or prefix of BASE or of another joined lab, and any planned interface name, lo address or table
(routes or rules) already present in a namespace.
``down`` of a joined lab stops its daemons, then removes what they may have left in its table
(routes, rules, nexthop objects in its port's id range, all protocol spines: a killed or
keep-routes daemon leaves them), its links and its lo addresses: nothing of BASE.  ``down`` of
BASE first takes down every lab joined to it (they live in its namespaces), then itself.

State: ``/run/spines-kr/lab/<LAB>/state.json`` is written before anything is created and rewritten
(atomically) as things are made, so ``down`` can always finish the job, whatever happened::

    {"version": 1, "name", "state_dir", "phase": planned|building|starting|up, "created",
     "port", "metric", "rt_protos": none|preexisting|installing|installed,
     "table": 254 | the port (joined), "join": null | "BASE", "slot": 0 | 1..9,
     "keep_routes": bool,
     "netns": [names the lab created: the nodes', then the hosts' (none when joined)],
     "nodes": [{"name", "netns", "logical_id", "addresses", "neighbors", "prefixes",
                "lan": null | {"ifname", "address": "10.210.0.1/24"}, "argv", "log", "out",
                "ipc", "control_socket", "pid", "start_time"}],
     "links": [{"a", "b", "a_ifname", "b_ifname", "a_address", "b_address"}],
     "hosts": [{"name", "netns", "attach", "address": "10.210.0.2", "prefix": "10.210.0.0/24",
                "gateway", "ifname": "eth0", "node_ifname": "lan-<host>"}]}

A process is ours only while /proc/<pid>/stat still shows the start time recorded at launch; it
is signalled through a pidfd opened before that check, so a recycled pid is never hit.  ``down``
also stops an unrecorded daemon (``up`` died between spawn and record) when a process inside one
of the lab's namespaces has exactly the planned argv; any other process there is reported, not
touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Callable

from ipaddress import IPv4Interface, IPv4Network

import spines_kr
from spines_kr import RTPROT_SPINES
from spines_kr.lab.topology import HOST_IFNAME, LAN_BRIDGE, MAX_SLOT, Topology

STATE_ROOT = Path("/run/spines-kr/lab")
NETNS_DIR = Path("/run/netns")
RT_PROTOS_PATH = Path("/etc/iproute2/rt_protos.d/spines.conf")
READY_TIMEOUT = 15.0
TERM_TIMEOUT = 5.0
KILL_TIMEOUT = 2.0
POLL = 0.02
LAB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
REPO_ROOT = Path(spines_kr.__file__).resolve().parent.parent
MAIN_TABLE = 254
RESERVED_TABLES = (0, 253, 254, 255)  # unspec, default, main, local


def nexthop_id_range(port: int) -> range:
    """The nexthop object ids the daemon of overlay ``port`` allocates from (daemon/main.py:
    ``id_base=port << 16``, ``id_count=1 << 16``)."""
    return range(port << 16, (port + 1) << 16)

_CHILDREN: dict[int, subprocess.Popen] = {}  # daemons this process spawned, reaped by us


class LabError(RuntimeError):
    """A lab operation failed; the message says what and where."""


class LabNotFound(LabError):
    """No state directory for that lab name."""


class LabConflict(LabError):
    """The request clashes with what is there: a port, slot, address, interface or table of
    another overlay in the same namespaces, or a node the joined lab does not have."""


def daemon_argv(*, port: int, logical_id: str, local_addresses: list[str], neighbors: list[str],
                metric: str, log_file: str, ipc_path: str, control_socket: str,
                prefixes: list[str] = (), multipath: bool = True, table: int = MAIN_TABLE,
                keep_routes: bool = False, groups: list[str] = (),
                kernel_levels: tuple[int, ...] = (0,), anypath: bool = False,
                key_file: str | None = None) -> list[str]:
    """The command line of one node's daemon (run inside its namespace); ``prefixes`` are the
    networks it advertises (``--prefix``, repeated; none when empty); ``table`` its route table
    (``--table`` when not main), ``keep_routes`` adds ``--keep-routes``."""
    argv = [sys.executable, "-m", "spines_kr", "daemon", "-p", str(port), "-l", logical_id]
    for a in local_addresses:
        argv += ["-I", a]
    for a in neighbors:
        argv += ["-a", a]
    for p in prefixes:
        argv += ["--prefix", p]
    argv.append("--multipath" if multipath else "--no-multipath")
    if table != MAIN_TABLE:
        argv += ["--table", str(table)]
    if keep_routes:
        argv.append("--keep-routes")
    for g in groups:
        argv += ["--group", g]
    if anypath:
        argv.append("--anypath")
    for level in kernel_levels:
        argv += ["-k", str(level)]
    if key_file:
        argv += ["--key-file", key_file]
    return argv + ["-m", "-w", metric, "-lf", log_file, "-ud", ipc_path,
                   "--control-socket", control_socket]


# -- small helpers -----------------------------------------------------------------------------

def _check_name(lab: str) -> None:
    if not isinstance(lab, str) or not LAB_NAME_RE.fullmatch(lab):
        raise LabError(f"lab name {lab!r}: expected 1-32 characters [A-Za-z0-9_-], "
                       f"not starting with '-'")


def state_dir(lab: str) -> Path:
    _check_name(lab)
    return STATE_ROOT / lab


def _run(argv: list[str]) -> str:
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip() or f"status {r.returncode}"
        raise LabError(f"{' '.join(argv)}: {why}")
    return r.stdout


def _ip_json(*args: str) -> list:
    return json.loads(_run(["ip", "-j", *args]) or "[]")


def _table_routes(ns: str, table: str, proto: str | None = None) -> list[dict]:
    """IPv4 routes of ``table`` in ``ns`` (of ``proto`` only, if given); a table that was never
    made has none (``ip route show table T`` fails on it: "FIB table does not exist")."""
    return [r for r in _ip_json("-4", "-n", ns, "route", "show", "table", "all")
            if str(r.get("table", MAIN_TABLE)) == table
            and (proto is None or str(r.get("protocol")) in (proto, "spines"))]


def _netns_exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def _save(state: dict) -> None:
    path = Path(state["state_dir"]) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, path)


def _load(lab: str) -> dict:
    path = state_dir(lab) / "state.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LabNotFound(f"lab {lab!r} does not exist (no {path})") from None
    except (OSError, ValueError) as e:
        raise LabError(f"lab {lab!r}: cannot read {path}: {e}") from None


@contextlib.contextmanager
def _lock():
    """Serialise labs on the one shared resource, the rt_protos file."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(STATE_ROOT / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _tail(path: str, n: int = 10) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


# -- processes ---------------------------------------------------------------------------------

def _proc(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of a pid, or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]), fields[0]


def _ours(pid, start) -> bool:
    info = _proc(pid) if pid else None
    return info is not None and info[0] == start


def _alive(pid, start) -> bool:
    info = _proc(pid) if pid else None
    return info is not None and info[0] == start and info[1] not in "ZX"


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _signal(pid: int, start: int, sig: int) -> bool:
    """Send ``sig`` to pid only if it is still the process that started at ``start``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not _ours(pid, start):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def _wait_gone(procs: dict[int, int], timeout: float) -> dict[int, int]:
    """Wait until the processes {pid: start} are gone (zombies count as gone); return the rest."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in list(procs):
            _reap(pid)
            if not _alive(pid, procs[pid]):
                del procs[pid]
        if not procs or time.monotonic() >= deadline:
            return procs
        time.sleep(POLL)


def _netns_pids(ns: str) -> list[int]:
    try:
        return [int(p) for p in _run(["ip", "netns", "pids", ns]).split()]
    except LabError:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


# -- rt_protos name file -----------------------------------------------------------------------

def _rt_protos_data() -> bytes:
    return resources.files("spines_kr").joinpath("data/rt_protos_spines.conf").read_bytes()


def _rt_protos_claimed_by_others(lab: str) -> bool:
    for sj in STATE_ROOT.glob("*/state.json"):
        if sj.parent.name == lab:
            continue
        try:
            if json.loads(sj.read_text()).get("rt_protos") in ("installing", "installed"):
                return True
        except (OSError, ValueError):
            continue
    return False


def _install_rt_protos(state: dict) -> None:
    with _lock():
        if RT_PROTOS_PATH.exists():
            # Another lab installed it: share the claim so the last one down removes it.
            claimed = _rt_protos_claimed_by_others(state["name"])
            state["rt_protos"] = "installed" if claimed else "preexisting"
            _save(state)
            return
        state["rt_protos"] = "installing"
        _save(state)
        RT_PROTOS_PATH.parent.mkdir(parents=True, exist_ok=True)
        RT_PROTOS_PATH.write_bytes(_rt_protos_data())
        state["rt_protos"] = "installed"
        _save(state)


def _remove_rt_protos(state: dict) -> bool:
    if state.get("rt_protos") not in ("installing", "installed"):
        return False
    with _lock():
        if _rt_protos_claimed_by_others(state["name"]):
            return False
        try:
            if RT_PROTOS_PATH.read_bytes() == _rt_protos_data():
                RT_PROTOS_PATH.unlink()
                return True
        except FileNotFoundError:
            pass
        return False


# -- up ----------------------------------------------------------------------------------------

def plan(topology: Topology, lab: str, *, port: int | None = None,
         daemon: Callable[..., list[str]] = daemon_argv, join: dict | None = None,
         keep_routes: bool = False) -> dict:
    """The state document of a lab that is about to be built (pure apart from the clock);
    ``join`` is the state of the lab whose namespaces it joins."""
    sdir = state_dir(lab)
    port = topology.port if port is None else port
    table = port if join else MAIN_TABLE
    base_ns = {n["name"]: n["netns"] for n in join["nodes"]} if join else {}
    nodes = []
    for i, n in enumerate(topology.nodes):
        if join and n.name not in base_ns:
            raise LabConflict(f"node[{i}].name: {n.name!r} is not a node of lab {join['name']!r} "
                              f"(nodes: {', '.join(base_ns)})")
        ends = [ln.end(n.name) for ln in topology.links_of(n.name)]
        files = {k: str(sdir / f"{n.name}.{k}") for k in ("log", "out", "ipc", "ctl")}
        spec = dict(port=port, logical_id=str(n.logical_id),
                    local_addresses=[str(e[1].ip) for e in ends],
                    neighbors=[str(e[3].ip) for e in ends], metric=topology.metric,
                    log_file=files["log"], ipc_path=files["ipc"], control_socket=files["ctl"],
                    key_file=str(sdir / KEY_FILE))
        # optional keywords only when set, so a stand-in without them still fits
        if n.advertised:
            spec["prefixes"] = [str(p) for p in n.advertised]
        if not topology.multipath:
            spec["multipath"] = False
        if n.groups:
            spec["groups"] = [str(g) for g in n.groups]
        if topology.kernel_levels != (0,):
            spec["kernel_levels"] = topology.kernel_levels
        if topology.anypath:
            spec["anypath"] = True
        if table != MAIN_TABLE:
            spec["table"] = table
        if keep_routes:
            spec["keep_routes"] = True
        lan = {"ifname": LAN_BRIDGE, "address": str(n.lan)} if n.lan else None
        nodes.append({"name": n.name, "netns": base_ns.get(n.name, f"{lab}-{n.name}"),
                      "logical_id": str(n.logical_id),
                      "addresses": spec["local_addresses"], "neighbors": spec["neighbors"],
                      "prefixes": spec.get("prefixes", []), "lan": lan,
                      "argv": daemon(**spec), "log": files["log"], "out": files["out"],
                      "ipc": files["ipc"], "control_socket": files["ctl"],
                      "pid": None, "start_time": None})
    links = [{"a": ln.a, "b": ln.b, "a_ifname": ln.a_ifname, "b_ifname": ln.b_ifname,
              "a_address": str(ln.a_address), "b_address": str(ln.b_address),
              "latency_ms": ln.latency_ms, "loss_pct": ln.loss_pct,
              "bandwidth_kbps": ln.bandwidth_kbps}
             for ln in topology.links]
    hosts = [{"name": h.name, "netns": f"{lab}-{h.name}", "attach": h.attach,
              "address": str(h.address.ip), "prefix": str(h.address.network),
              "gateway": str(h.gateway), "ifname": HOST_IFNAME, "node_ifname": h.ifname}
             for h in topology.hosts]
    return {"version": 1, "name": lab, "state_dir": str(sdir), "phase": "planned",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "port": port,
            "metric": topology.metric, "rt_protos": "none", "table": table,
            "join": join["name"] if join else None, "slot": topology.slot,
            "keep_routes": keep_routes,
            "netns": [] if join else [m["netns"] for m in nodes + hosts], "nodes": nodes,
            "links": links, "hosts": hosts}


def joined_labs(lab: str) -> list[str]:
    """Names of the labs joined to ``lab`` (their state says ``"join": lab``), sorted."""
    names = []
    for sj in sorted(STATE_ROOT.glob("*/state.json")):
        try:
            if json.loads(sj.read_text()).get("join") == lab:
                names.append(sj.parent.name)
        except (OSError, ValueError):
            continue
    return names


def join_slot(base: str) -> int:
    """The overlay slot for a lab about to join ``base``: the lowest of 1..MAX_SLOT that no lab
    joined to it holds.  Parse the joining topology with it (``topology.parse(..., slot=)``)."""
    state = _load(base)
    if state.get("join"):
        raise LabConflict(f"lab {base!r} is itself joined to lab {state['join']!r}; "
                          f"join {state['join']!r} instead")
    used = set()
    for name in joined_labs(base):
        with contextlib.suppress(LabError):
            used.add(_load(name).get("slot"))
    for k in range(1, MAX_SLOT + 1):
        if k not in used:
            return k
    raise LabConflict(f"lab {base!r} has {MAX_SLOT} overlays joined to it already")


def _claims(state: dict) -> list[tuple[IPv4Network, str]]:
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


def _check_join(state: dict, base: dict) -> None:
    """Refuse (``LabConflict``) a joined lab that would clash with its base or a sibling, by
    their states, then by what the kernel holds in the namespaces.  Called under ``_lock``."""
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
            siblings.append(_load(name))
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
    taken = [c for other in (base, *siblings) for c in _claims(other)]
    for net, what in _claims(state):
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
        if not _netns_exists(ns):
            raise LabError(f"network namespace {ns} of lab {join!r} does not exist")
        ifaces = _ip_json("-n", ns, "addr", "show")
        have = {i["ifname"] for i in ifaces}
        clash = sorted(have & set(ifnames.get(n["name"], [])))
        if clash:
            raise LabConflict(f"interface {clash[0]} exists already in {ns}")
        local = {a.get("local") for i in ifaces for a in i.get("addr_info", [])}
        if n["logical_id"] in local:
            raise LabConflict(f"address {n['logical_id']} (logical ID of {n['name']}) is already "
                              f"on an interface in {ns}")
        if _table_routes(ns, table):
            raise LabConflict(f"route table {table} in {ns} is not empty; another overlay uses "
                              f"it? (the joined overlay's table is its port)")
        if any(str(r.get("table")) == table for r in _ip_json("-n", ns, "rule", "show")):
            raise LabConflict(f"a policy rule in {ns} looks up table {table} already")


def up(topology: Topology, lab: str, *, port: int | None = None,
       daemon: Callable[..., list[str]] = daemon_argv, timeout: float = READY_TIMEOUT,
       join: str | None = None, keep_routes: bool = False) -> dict:
    """Build the lab and start its daemons; return ``status(lab)`` once every control socket
    accepts a connection.  On any failure (or interrupt) everything is torn down again.
    ``join``: run the overlay in the namespaces of that lab (see the module's doc)."""
    _check_name(lab)
    base = None
    if join is not None:
        _check_name(join)
        if join == lab:
            raise LabConflict(f"lab {lab!r} cannot join itself")
        try:
            base = _load(join)
        except LabNotFound as e:
            raise LabNotFound(f"cannot join: {e}") from None
    state = plan(topology, lab, port=port, daemon=daemon, join=base, keep_routes=keep_routes)
    sdir = Path(state["state_dir"])
    if (sdir / "state.json").exists():
        raise LabError(f"lab {lab!r} exists ({sdir}); run 'spines-kr lab down --name {lab}' first")
    with _lock():  # the checks and the first save, atomically with respect to other labs
        if base is not None:
            _check_join(state, base)
        taken = [ns for ns in state["netns"] if _netns_exists(ns)]
        if taken:
            raise LabError(f"network namespace {taken[0]} already exists and is not part of a "
                           f"lab state; refusing to touch it")
        try:
            sdir.mkdir()
        except FileExistsError:
            raise LabError(f"lab {lab!r}: {sdir} exists; run 'spines-kr lab down --name {lab}' "
                           f"first") from None
        _save(state)
        _write_key(sdir / KEY_FILE)
    try:
        if base is None:  # a joined lab lives inside its base, which holds the name file
            _install_rt_protos(state)
        state["phase"] = "building"
        _save(state)
        _build(state)
        state["phase"] = "starting"
        _save(state)
        _start(state)
        _wait_ready(state, timeout)
        _emulate_links(state)
        state["phase"] = "up"
        _save(state)
    except BaseException:
        with contextlib.suppress(Exception):
            down(lab)
        raise
    return status(lab)


def _build(state: dict) -> None:
    for node in state["nodes"]:
        ns = node["netns"]
        if not state.get("join"):  # a joined lab's namespaces are its base's, set up already
            _run(["ip", "netns", "add", ns])
            _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                  "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                  # multipath: spread flows by ports too (the default policy 0 hashes addresses)
                  "net.ipv4.fib_multipath_hash_policy=1"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{node['logical_id']}/32", "dev", "lo"])
    netns = {n["name"]: n["netns"] for n in state["nodes"]}
    for ln in state["links"]:
        _run(["ip", "link", "add", ln["a_ifname"], "netns", netns[ln["a"]], "type", "veth",
              "peer", "name", ln["b_ifname"], "netns", netns[ln["b"]]])
        for side in ("a", "b"):
            ns, ifname = netns[ln[side]], ln[f"{side}_ifname"]
            _run(["ip", "-n", ns, "addr", "add", ln[f"{side}_address"], "dev", ifname])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])
    for node in state["nodes"]:
        if node.get("lan"):
            ns, br = node["netns"], node["lan"]["ifname"]
            _run(["ip", "-n", ns, "link", "add", br, "type", "bridge"])
            _run(["ip", "-n", ns, "addr", "add", node["lan"]["address"], "dev", br])
            _run(["ip", "-n", ns, "link", "set", br, "up"])
    lans = {n["name"]: n["lan"]["ifname"] for n in state["nodes"] if n.get("lan")}
    for host in state["hosts"]:
        ns, node_ns = host["netns"], netns[host["attach"]]
        plen = host["prefix"].split("/")[1]
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", host["ifname"], "netns", ns, "type", "veth",
              "peer", "name", host["node_ifname"], "netns", node_ns])
        _run(["ip", "-n", node_ns, "link", "set", host["node_ifname"], "master",
              lans[host["attach"]], "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{host['address']}/{plen}", "dev", host["ifname"]])
        _run(["ip", "-n", ns, "link", "set", host["ifname"], "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", host["gateway"]])


KEY_FILE = "key.toml"  # the lab's overlay key, one per lab (its daemons authenticate with it)


def _write_key(path: Path) -> None:
    from spines_kr.keys import new_key_file_text

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key_file_text())


def child_env() -> dict:
    """Environment for processes the lab starts: the package importable even when not installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _start(state: dict, nodes: list[dict] | None = None) -> None:
    env = child_env()
    for node in state["nodes"] if nodes is None else nodes:
        with open(node["out"], "ab") as out:
            child = subprocess.Popen(["ip", "netns", "exec", node["netns"], *node["argv"]],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env, cwd=state["state_dir"])
        _CHILDREN[child.pid] = child
        info = _proc(child.pid)
        node["pid"], node["start_time"] = child.pid, info[0] if info else None
        _save(state)


def restart(lab: str, node: str, *, kill: bool = False, timeout: float = READY_TIMEOUT) -> dict:
    """Restart one node's daemon: SIGTERM (a clean exit: it withdraws its routes, unless the lab
    was made with ``keep_routes``), or SIGKILL with ``kill`` (a crash: the routes stay), then
    start it again with the same arguments and wait until it is ready.  A daemon that finds
    routes of its own at start keeps them until the overlay has converged."""
    state = _load(lab)
    found = [n for n in state["nodes"] if n["name"] == node]
    if not found:
        raise LabError(f"lab {lab!r} has no node {node!r}")
    n = found[0]
    if n["pid"] and _signal(n["pid"], n["start_time"], signal.SIGKILL if kill else signal.SIGTERM):
        left = _wait_gone({n["pid"]: n["start_time"]}, TERM_TIMEOUT)
        if left and _signal(n["pid"], n["start_time"], signal.SIGKILL):
            _wait_gone(left, TERM_TIMEOUT)
    _start(state, [n])
    _wait_ready({**state, "nodes": [n]}, timeout)
    return status(lab)


def _emulate_links(state: dict) -> None:
    """Apply the topology's latency_ms/loss_pct/bandwidth_kbps to both directions of each link,
    through each end's daemon (Spines' setlink), and record what each daemon applied."""
    from spines_kr.daemon.control import request

    nodes = {n["name"]: n for n in state["nodes"]}
    for ln in state["links"]:
        values = {k: ln.get(k) or 0 for k in ("bandwidth_kbps", "latency_ms", "loss_pct")}
        if not any(values.values()):
            continue
        ln["emulation"] = {}
        for side, other in (("a", "b"), ("b", "a")):
            req = {"cmd": "setlink", "burst_pct": 0, **values,
                   "source": ln[f"{side}_address"].split("/")[0],
                   "dest": ln[f"{other}_address"].split("/")[0]}
            try:
                reply = request(nodes[ln[side]]["control_socket"], req)
            except OSError as e:
                raise LabError(f"link {ln['a']}-{ln['b']}: setlink on {ln[side]} failed: {e}") from None
            if not reply.get("ok"):
                raise LabError(f"link {ln['a']}-{ln['b']}: setlink on {ln[side]}: {reply.get('error')}")
            ln["emulation"][ln[side]] = reply["data"]["links"]
        _save(state)


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
            return True
        except OSError as e:
            return e.errno == errno.EPROTOTYPE  # a datagram socket is bound there: it is up


def _wait_ready(state: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(state["nodes"])
    while pending:
        for node in list(pending):
            if not _alive(node["pid"], node["start_time"]):
                child = _CHILDREN.pop(node["pid"], None)
                code = child.wait(timeout=1) if child else None
                rc = "" if code is None else f" with status {code}"
                raise LabError(f"daemon of node {node['name']} exited{rc} before it was ready"
                               + _log_excerpt(node))
            if _accepts(node["control_socket"]):
                pending.remove(node)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise LabError(f"daemons not ready after {timeout:g} s (no connection on their control "
                           f"socket): {', '.join(n['name'] for n in pending)}"
                           + _log_excerpt(pending[0]))
        time.sleep(POLL)


def _log_excerpt(node: dict) -> str:
    text = ""
    for key in ("out", "log"):
        lines = _tail(node[key])
        if lines:
            text += f"\n  last lines of {node[key]}:\n" + "\n".join(f"    {ln}" for ln in lines)
    return text


# -- status, exec, down ------------------------------------------------------------------------

def status(lab: str) -> dict:
    """What the lab is and whether each daemon still runs (``LabNotFound`` if there is none)::

        {"name", "state_dir", "phase", "port", "metric", "table" (254: main), "join" (null or
         the lab whose namespaces it runs in), "joined" (labs joined to this one), "slot",
         "keep_routes",
         "nodes": [{"name", "netns", "logical_id", "prefixes" (advertised), "lan" (null or
                    "10.210.0.1/24"), "pid", "alive", "log", "control_socket"}],
         "links": [{"a", "b", "a_ifname", "b_ifname", "a_address", "b_address"}],
         "hosts": [{"name", "netns", "address" ("10.210.0.2"), "prefix" ("10.210.0.0/24"),
                    "gateway", "attach"}]}
    """
    state = _load(lab)
    nodes = [{"name": n["name"], "netns": n["netns"], "logical_id": n["logical_id"],
              "prefixes": n.get("prefixes", []),
              "lan": n["lan"]["address"] if n.get("lan") else None,
              "pid": n["pid"], "alive": _alive(n["pid"], n["start_time"]), "log": n["log"],
              "control_socket": n["control_socket"]} for n in state["nodes"]]
    hosts = [{"name": h["name"], "netns": h["netns"], "address": h["address"],
              "prefix": h["prefix"], "gateway": h["gateway"], "attach": h["attach"]}
             for h in state["hosts"]]
    return {"name": state["name"], "state_dir": state["state_dir"], "phase": state["phase"],
            "port": state["port"], "metric": state["metric"],
            "table": state.get("table", MAIN_TABLE), "join": state.get("join"),
            "joined": joined_labs(lab), "slot": state.get("slot", 0),
            "keep_routes": state.get("keep_routes", False), "nodes": nodes,
            "links": state["links"], "hosts": hosts}


def exec_argv(lab: str, member: str, command: list[str]) -> tuple[list[str], dict]:
    """argv and environment that run ``command`` (default: $SHELL) inside the namespace of
    ``member``, a node or a host.  For a node SPINES_KR_SOCKET (its daemon's control socket) and
    SPINES_KR_PORT are set; a host runs no daemon, so both are removed from its environment."""
    state = _load(lab)
    nodes = [n for n in state["nodes"] if n["name"] == member]
    hosts = [h for h in state["hosts"] if h["name"] == member]
    if not nodes and not hosts:
        raise LabError(f"lab {lab!r} has no node {member!r} "
                       f"(nodes: {', '.join(n['name'] for n in state['nodes'])}"
                       + (f"; hosts: {', '.join(h['name'] for h in state['hosts'])}"
                          if state["hosts"] else "") + ")")
    m = (nodes or hosts)[0]
    if not _netns_exists(m["netns"]):
        raise LabError(f"network namespace {m['netns']} does not exist (run lab down, then up)")
    env = dict(os.environ)
    if nodes:
        env.update(SPINES_KR_SOCKET=m["control_socket"], SPINES_KR_PORT=str(state["port"]))
    else:
        env.pop("SPINES_KR_SOCKET", None)
        env.pop("SPINES_KR_PORT", None)
    command = command or [os.environ.get("SHELL", "/bin/sh")]
    return ["ip", "netns", "exec", m["netns"], *command], env


def down(lab: str) -> dict:
    """Stop the lab's daemons and remove everything it created, and its state directory.
    Idempotent.  A lab of its own: first every lab joined to it (``down`` of each), then its
    namespaces (nodes' and hosts'; with them its links and addresses), the rt_protos file if it
    was the last lab to claim it.  A joined lab: what its daemons left in its table, its links
    and lo addresses in its base's namespaces (see the module's doc).  Returns a report::

        {"name", "found", "joined_down": [labs taken down first], "stopped", "killed",
         "netns_deleted", "links_deleted": ["a-b"], "addresses_removed": ["node address/32"],
         "kernel_cleaned": ["node: what"], "rt_protos_removed", "problems", "warnings"}

    The state directory is kept (for a retry) only when ``problems`` is not empty."""
    sdir = state_dir(lab)
    report = {"name": lab, "found": False, "joined_down": [], "stopped": [], "killed": [],
              "netns_deleted": [], "links_deleted": [], "addresses_removed": [],
              "kernel_cleaned": [], "rt_protos_removed": False, "problems": [], "warnings": []}
    try:
        state = _load(lab)
    except LabNotFound:
        if sdir.exists():  # up died between mkdir and its first write: nothing was created
            shutil.rmtree(sdir, ignore_errors=True)
            report["found"] = True
        stray = [ns for ns in _netns_names() if ns.startswith(f"{lab}-")]
        if stray:
            report["problems"].append(f"no state for lab {lab!r}, but namespaces "
                                      f"{', '.join(stray)} exist; not known to be ours, left "
                                      f"alone (ip netns del NAME)")
        return report
    report["found"] = True

    # 0. Overlays joined to this one live in its namespaces: they go first.
    for other in joined_labs(lab):
        if other == lab:
            continue
        sub = down(other)
        report["joined_down"].append(other)
        report["problems"] += [f"joined lab {other}: {p}" for p in sub["problems"]]
        report["warnings"] += [f"joined lab {other}: {w}" for w in sub["warnings"]]
        report["kernel_cleaned"] += [f"joined lab {other}: {c}" for c in sub["kernel_cleaned"]]

    # 1. Daemons: the recorded ones, and unrecorded ones recognised by their planned argv.
    procs = {n["pid"]: n["start_time"] for n in state["nodes"] if _ours(n["pid"], n["start_time"])}
    names = {n["pid"]: n["name"] for n in state["nodes"]}
    for n in state["nodes"]:
        if _netns_exists(n["netns"]):
            for pid in _netns_pids(n["netns"]):
                info = _proc(pid)
                if pid not in procs and info and _cmdline(pid) == n["argv"]:
                    procs[pid], names[pid] = info[0], n["name"]
    for pid, start in procs.items():
        _signal(pid, start, signal.SIGTERM)
    left = _wait_gone(dict(procs), TERM_TIMEOUT)
    report["stopped"] = [names[p] for p in procs if p not in left]
    for pid, start in left.items():
        _signal(pid, start, signal.SIGKILL)
        report["killed"].append(names[pid])
    for pid in _wait_gone(left, KILL_TIMEOUT):
        report["problems"].append(f"process {pid} (node {names[pid]}) survived SIGKILL")

    # 2. A joined lab: what it made or its daemons left in its base's namespaces.
    if state.get("join"):
        _unbuild_joined(state, report)

    # 3. Namespaces (deleting one destroys the veth ends in it, and so the pairs).
    for ns in state["netns"]:
        if not _netns_exists(ns):
            continue
        for pid in _netns_pids(ns):
            report["warnings"].append(f"process {pid} ({' '.join(_cmdline(pid))[:60]}) still runs "
                                      f"in {ns}; not started by the lab, left running")
        try:
            _run(["ip", "netns", "del", ns])
            report["netns_deleted"].append(ns)
        except LabError as e:
            report["problems"].append(str(e))

    # 4. The rt_protos name file, then the state directory.
    report["rt_protos_removed"] = _remove_rt_protos(state)
    if not report["problems"]:
        shutil.rmtree(sdir, ignore_errors=True)
    return report


def _unbuild_joined(state: dict, report: dict) -> None:
    """Remove, in each namespace of a joined lab that still exists: the routes, policy rules and
    nexthop objects of protocol spines in its table / id range (its daemons are gone by now),
    its links and its lo addresses.  Only things that can be the lab's own are touched."""
    table, proto = str(state.get("table", MAIN_TABLE)), str(RTPROT_SPINES)
    if table == str(MAIN_TABLE):  # never: a joined lab has a table of its own
        report["problems"].append(f"lab {state['name']!r} is joined but records table main; "
                                  f"its routes are left alone")
        table = None
    ids = nexthop_id_range(state["port"])
    for n in state["nodes"]:
        ns, name = n["netns"], n["name"]
        if not _netns_exists(ns):
            continue
        try:
            if table is not None:
                deleted = 0
                for _ in range(3):  # routes of one dst at several metrics need a delete each
                    routes = _table_routes(ns, table, proto)
                    if not routes:
                        break
                    for r in routes:
                        # one by one: iproute2 6.1's "route flush" fails on routes with nhid
                        with contextlib.suppress(LabError):
                            _run(["ip", "-n", ns, "route", "del", r["dst"], "table", table,
                                  "proto", proto])
                            deleted += 1
                if deleted:
                    report["kernel_cleaned"].append(f"{name}: {deleted} routes in table {table}")
                for r in _ip_json("-n", ns, "rule", "show"):
                    if str(r.get("table")) == table and str(r.get("protocol")) in (proto, "spines"):
                        _run(["ip", "-n", ns, "rule", "del", "priority", str(r["priority"]),
                              "table", table, "protocol", proto])
                        report["kernel_cleaned"].append(f"{name}: rule priority {r['priority']} "
                                                        f"lookup {table}")
            objs = [o for o in _ip_json("-n", ns, "nexthop", "show")
                    if o.get("id") in ids and str(o.get("protocol")) in (proto, "spines")]
            for o in sorted(objs, key=lambda o: "group" not in o):  # groups before members
                with contextlib.suppress(LabError):
                    _run(["ip", "-n", ns, "nexthop", "del", "id", str(o["id"])])
            if objs:
                report["kernel_cleaned"].append(f"{name}: {len(objs)} nexthop objects")
        except LabError as e:
            report["problems"].append(str(e))
    nodes = {n["name"]: n["netns"] for n in state["nodes"]}
    for ln in state["links"]:
        for side in ("a", "b"):  # deleting one end of the pair deletes the other
            ns, ifname = nodes[ln[side]], ln[f"{side}_ifname"]
            if not _netns_exists(ns):
                continue
            try:
                if ifname in {i["ifname"] for i in _ip_json("-n", ns, "link", "show")}:
                    _run(["ip", "-n", ns, "link", "del", ifname])
                    report["links_deleted"].append(f"{ln['a']}-{ln['b']}")
                    break
            except LabError as e:
                report["problems"].append(str(e))
    for n in state["nodes"]:
        ns, lid = n["netns"], n["logical_id"]
        if not _netns_exists(ns):
            continue
        try:
            lo = _ip_json("-n", ns, "addr", "show", "dev", "lo")
            if any(a.get("local") == lid and a.get("prefixlen") == 32
                   for i in lo for a in i.get("addr_info", [])):
                _run(["ip", "-n", ns, "addr", "del", f"{lid}/32", "dev", "lo"])
                report["addresses_removed"].append(f"{n['name']} {lid}/32")
        except LabError as e:
            report["problems"].append(str(e))


def _netns_names() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []
