"""Lab state: the one document that says what a lab is made of and what of it may exist.

Entry points:
    state_dir(lab) -> Path           check_name(lab) (raises ``LabError``)
    plan(topology, lab, *, daemon, port=None, join=None, keep_routes=False) -> state dict
                                     (pure apart from the clock; ``daemon`` builds each argv)
    save(state)                      atomic rewrite of ``state.json``
    load(lab) -> state               (``LabNotFound`` when there is none)
    lock()                           context manager: one lab operation at a time on the shared
                                     things (the rt_protos file, the checks before a first save)
    joined_labs(base) -> [names]     labs whose state says ``"join": base``
    install_rt_protos(state), remove_rt_protos(state) -> bool   the shared name file
    write_key(path)                  the lab's overlay key (``KEY_FILE``), 0600, created once
Errors: ``LabError`` (what failed and where), ``LabNotFound``, ``LabConflict``.

Data model: ``/run/spines-kr/lab/<LAB>/state.json`` is written before anything is created and
rewritten (atomically: a temporary file renamed over it) as things are made, so ``down`` can
always finish the job, whatever happened::

    {"version": 1, "name", "state_dir", "phase": planned|building|starting|up, "created",
     "port", "metric", "rt_protos": none|preexisting|installing|installed,
     "table": 254 | the port (joined), "join": null | "BASE", "slot": 0 | 1..9,
     "keep_routes": bool,
     "timings": {"build_s", "start_s", "up_s"} (filled in as ``up`` goes),
     "netns": [names the lab created: the nodes', then the hosts' (none when joined)],
     "nodes": [{"name", "netns", "logical_id", "addresses", "neighbors", "prefixes",
                "lan": null | {"ifname", "address": "10.210.0.1/24"}, "argv", "log", "out",
                "ipc", "control_socket", "pid", "start_time",
                "ready_s": null | seconds from its spawn to its first accepted connection}],
     "links": [{"a", "b", "a_ifname", "b_ifname", "a_address", "b_address", "latency_ms",
                "loss_pct", "bandwidth_kbps", "emulation" (once applied)}],
     "hosts": [{"name", "netns", "attach", "address": "10.210.0.2", "prefix": "10.210.0.0/24",
                "gateway", "ifname": "eth0", "node_ifname": "lan-<host>"}],
     "routers": [{"name", "netns"}],           (the underlay: namespaces that only route)
     "underlay": [{"a", "b", "a_ifname", "b_ifname", "a_address", "b_address"}],
     "underlay_routes": {member: [[destination, gateway], ...]},
     "tunnels": [{"a", "b", "kind", "a_endpoint", "b_endpoint"}]}  (the devices' names, made by
                                              the daemons, are read from the kernel: ``status``)
A node with tunnels also has "tunnels" ([KIND:ADDRESS, ...], its daemon's --tunnel-neighbor)
and "wireguard_key" (its own WireGuard key file in the state directory, made at up).

The file is JSON with one node, link or host per line (written by the C encoder: a save of a
200-node lab costs about 4 ms, where an indented dump cost 25 ms at 100 nodes).  Every other
module of the lab reads and writes labs only through this document; nothing else on disk is
authoritative.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from importlib import resources
from pathlib import Path
from typing import Callable

from spines_kr.lab.topology import HOST_IFNAME, LAN_BRIDGE, Topology

STATE_ROOT = Path("/run/spines-kr/lab")
RT_PROTOS_PATH = Path("/etc/iproute2/rt_protos.d/spines.conf")
LAB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
MAIN_TABLE = 254
RESERVED_TABLES = (0, 253, 254, 255)  # unspec, default, main, local
KEY_FILE = "key.toml"  # the lab's overlay key, one per lab (its daemons authenticate with it)
DAEMON_CONFIG = "daemon.toml"  # with up(daemon_config=FILE): its copy, every daemon's -c


class LabError(RuntimeError):
    """A lab operation failed; the message says what and where."""


class LabNotFound(LabError):
    """No state directory for that lab name."""


class LabConflict(LabError):
    """The request clashes with what is there: a port, slot, address, interface or table of
    another overlay in the same namespaces, or a node the joined lab does not have."""


def check_name(lab: str) -> None:
    if not isinstance(lab, str) or not LAB_NAME_RE.fullmatch(lab):
        raise LabError(f"lab name {lab!r}: expected 1-32 characters [A-Za-z0-9_-], "
                       f"not starting with '-'")


def state_dir(lab: str) -> Path:
    check_name(lab)
    return STATE_ROOT / lab


def dumps(state: dict) -> str:
    """``state`` as JSON text, one element of each list of objects per line."""
    parts = []
    for key, value in state.items():
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            body = ",\n".join("  " + json.dumps(x) for x in value)
            parts.append(f" {json.dumps(key)}: [\n{body}]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def save(state: dict) -> None:
    path = Path(state["state_dir"]) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dumps(state))
    os.replace(tmp, path)


def load(lab: str) -> dict:
    path = state_dir(lab) / "state.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LabNotFound(f"lab {lab!r} does not exist (no {path})") from None
    except (OSError, ValueError) as e:
        raise LabError(f"lab {lab!r}: cannot read {path}: {e}") from None


@contextlib.contextmanager
def lock():
    """Serialise labs on the shared resources (the rt_protos file, the checks before a save)."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(STATE_ROOT / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


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


# -- the plan ----------------------------------------------------------------------------------

def wireguard_key_path(sdir: Path, node: str) -> Path:
    """A node's WireGuard private key in the lab's state directory (removed with it)."""
    return Path(sdir) / f"{node}.wg.key"


def plan(topology: Topology, lab: str, *, daemon: Callable[..., list[str]],
         port: int | None = None, join: dict | None = None, keep_routes: bool = False,
         daemon_config: bool = False) -> dict:
    """The state document of a lab that is about to be built (pure apart from the clock);
    ``daemon(**spec)`` gives each node's argv (``daemons.daemon_argv`` or a stand-in with its
    signature); ``join`` is the state of the lab whose namespaces it joins; ``daemon_config``:
    every daemon reads ``DAEMON_CONFIG`` in the state directory (``-c``)."""
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
        if daemon_config:
            spec["config_file"] = str(sdir / DAEMON_CONFIG)
        tunnels = []
        for t in topology.tunnels_of(n.name):
            peer = t.b if t.a == n.name else t.a
            tunnels.append(f"{t.kind}:{topology.endpoint(peer)}")
        if tunnels:
            spec["tunnel_neighbors"] = tunnels
        if any(t.kind == "wireguard" for t in topology.tunnels_of(n.name)):
            spec["wireguard_key_file"] = str(wireguard_key_path(sdir, n.name))
        lan = {"ifname": LAN_BRIDGE, "address": str(n.lan)} if n.lan else None
        nodes.append({"name": n.name, "netns": base_ns.get(n.name, f"{lab}-{n.name}"),
                      "logical_id": str(n.logical_id),
                      "addresses": spec["local_addresses"], "neighbors": spec["neighbors"],
                      "prefixes": spec.get("prefixes", []), "lan": lan,
                      "argv": daemon(**spec), "log": files["log"], "out": files["out"],
                      "ipc": files["ipc"], "control_socket": files["ctl"],
                      "pid": None, "start_time": None, "ready_s": None,
                      **({"tunnels": spec["tunnel_neighbors"]} if tunnels else {}),
                      **({"wireguard_key": spec["wireguard_key_file"]}
                         if "wireguard_key_file" in spec else {})})
    links = [{"a": ln.a, "b": ln.b, "a_ifname": ln.a_ifname, "b_ifname": ln.b_ifname,
              "a_address": str(ln.a_address), "b_address": str(ln.b_address),
              "latency_ms": ln.latency_ms, "loss_pct": ln.loss_pct,
              "bandwidth_kbps": ln.bandwidth_kbps}
             for ln in topology.links]
    hosts = [{"name": h.name, "netns": f"{lab}-{h.name}", "attach": h.attach,
              "address": str(h.address.ip), "prefix": str(h.address.network),
              "gateway": str(h.gateway), "ifname": HOST_IFNAME, "node_ifname": h.ifname}
             for h in topology.hosts]
    routers = [{"name": r.name, "netns": f"{lab}-{r.name}"} for r in topology.routers]
    underlay = [{"a": u.a, "b": u.b, "a_ifname": u.a_ifname, "b_ifname": u.b_ifname,
                 "a_address": str(u.a_address), "b_address": str(u.b_address)}
                for u in topology.underlay]
    tunnels = [{"a": t.a, "b": t.b, "kind": t.kind,
                "a_endpoint": str(topology.endpoint(t.a)), "b_endpoint": str(topology.endpoint(t.b))}
               for t in topology.tunnels]
    extra = {}
    if routers or underlay:
        extra = {"routers": routers, "underlay": underlay,
                 "underlay_routes": {k: [list(r) for r in v]
                                     for k, v in topology.underlay_routes().items()},
                 "tunnels": tunnels}
    return {"version": 1, "name": lab, "state_dir": str(sdir), "phase": "planned",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "port": port,
            "metric": topology.metric, "rt_protos": "none", "table": table,
            "join": join["name"] if join else None, "slot": topology.slot,
            "keep_routes": keep_routes, "timings": {},
            "netns": [] if join else [m["netns"] for m in nodes + hosts + routers],
            "nodes": nodes, "links": links, "hosts": hosts, **extra}


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


def install_rt_protos(state: dict) -> None:
    """Install the "spines" protocol name file if missing; the state records the claim."""
    with lock():
        if RT_PROTOS_PATH.exists():
            # Another lab installed it: share the claim so the last one down removes it.
            claimed = _rt_protos_claimed_by_others(state["name"])
            state["rt_protos"] = "installed" if claimed else "preexisting"
            save(state)
            return
        state["rt_protos"] = "installing"
        save(state)
        RT_PROTOS_PATH.parent.mkdir(parents=True, exist_ok=True)
        RT_PROTOS_PATH.write_bytes(_rt_protos_data())
        state["rt_protos"] = "installed"
        save(state)


def remove_rt_protos(state: dict) -> bool:
    """Remove the name file if this lab installed it, no other lab claims it and it is ours."""
    if state.get("rt_protos") not in ("installing", "installed"):
        return False
    with lock():
        if _rt_protos_claimed_by_others(state["name"]):
            return False
        try:
            if RT_PROTOS_PATH.read_bytes() == _rt_protos_data():
                RT_PROTOS_PATH.unlink()
                return True
        except FileNotFoundError:
            pass
        return False


def write_wireguard_keys(state: dict) -> None:
    """Each node's WireGuard key (``wireguard_key``), 0600, created once."""
    from spines_kr.keys import new_wireguard_key

    for n in state["nodes"]:
        if n.get("wireguard_key"):
            fd = os.open(n["wireguard_key"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_wireguard_key()[0])


def write_key(path: Path) -> None:
    from spines_kr.keys import new_key_file_text

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key_file_text())
