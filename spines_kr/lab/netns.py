"""Namespace lab: build a Topology on one machine, one network namespace and one daemon per node.

Entry points:
    up(topology, lab, *, port=None, daemon=daemon_argv, timeout=READY_TIMEOUT, join=None,
       keep_routes=False, window=START_WINDOW, daemon_config=None) -> status dict
    status(lab) -> dict          down(lab) -> report dict     exec_argv(lab, node_or_host, cmd)
    restart(lab, node, *, kill=False) -> status dict          (one node's daemon)
    join_slot(base) -> int       joined_labs(base) -> [names]
    daemon_argv(**spec) -> argv  (the daemon command line; tests pass a stand-in with its signature)

This module is the orchestration of ``up`` and ``down``; the parts live beside it, one concern
each, and the names callers use are re-exported here:
    ``state``    the state document (``state.json``): plan, save, load, lock, rt_protos, key;
                 ``LabError``, ``LabNotFound``, ``LabConflict``, ``STATE_ROOT``, ...
    ``build``    namespaces, veth links, addresses, LAN bridges, hosts (iproute2 batches), and
                 what is found in namespaces (processes, routes)
    ``daemons``  daemon argv, start with a readiness deadline per daemon, stop by pidfd,
                 link emulation through the daemons
    ``join``     a second overlay in another lab's namespaces: slots, checks, unbuild

``up``: plan the state and check it (under ``state.lock``: a joined lab is checked against its
base; no planned namespace may exist), save it before anything is made, install the rt_protos
name file (not for a joined lab), ``build`` (phase building), start the daemons (phase
starting; ``daemons.start``: at most ``window`` starting at once, each ready within ``timeout``
seconds of its own spawn), apply link emulation, phase up.  On any failure or interrupt
everything is torn down again (``down``) and the error raised.  The seconds each phase took are
in the state and in ``status``: ``timings`` {"build_s", "start_s", "up_s"}, and per node
``ready_s`` (spawn to first accepted connection).
With ``keep_routes`` every daemon gets ``--keep-routes``: a clean exit (SIGTERM, so also
``restart`` without ``kill``) leaves its routes for the next daemon to take over.  With
``daemon_config=FILE`` (a daemon configuration file, TOML) every daemon gets ``-c`` a copy of
it in the state directory (``daemon.toml``): settings that have no flag, e.g. the timers of a
large lab on a small machine.

``down``: a lab of its own first takes down every lab joined to it (they live in its
namespaces); then its daemons stop (the recorded ones, and those an ``up`` that died spawned but
never recorded, recognised by their planned argv; SIGTERM, then SIGKILL); a joined lab removes
what its daemons left in its table, its links and lo addresses (``join.unbuild``); the lab's
namespaces are deleted (with them its links and addresses; a process there that the lab did not
start is reported, not touched); the rt_protos file goes if it was the last lab to claim it;
the state directory goes unless something could not be removed.  It works from the state file
alone, whatever phase an ``up`` died in, and is idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

from spines_kr.lab import build as _build
from spines_kr.lab import daemons as _daemons
from spines_kr.lab import join as _join
from spines_kr.lab import state as _state
from spines_kr.lab.topology import Topology

# Re-exported: the lab's public names, and the helpers tests reach for.
from spines_kr.lab.build import NETNS_DIR, netns_names as _netns_names  # noqa: F401
from spines_kr.lab.build import netns_exists as _netns_exists, run as _run  # noqa: F401
from spines_kr.lab.build import ip_json as _ip_json, table_routes as _table_routes  # noqa: F401
from spines_kr.lab.daemons import (KILL_TIMEOUT, POLL, READY_TIMEOUT, REPO_ROOT,  # noqa: F401
                                   START_WINDOW, TERM_TIMEOUT, child_env, daemon_argv)
from spines_kr.lab.daemons import (_CHILDREN, alive as _alive, cmdline as _cmdline,  # noqa: F401
                                   ours as _ours, proc as _proc, signal_ as _signal,
                                   wait_gone as _wait_gone)
from spines_kr.lab.join import join_slot, nexthop_id_range  # noqa: F401
from spines_kr.lab.state import (KEY_FILE, LAB_NAME_RE, MAIN_TABLE, RESERVED_TABLES,  # noqa: F401
                                 RT_PROTOS_PATH, STATE_ROOT, LabConflict, LabError, LabNotFound,
                                 joined_labs, plan, state_dir)
from spines_kr.lab.state import load as _load, save as _save  # noqa: F401


def _netns_pids(ns: str) -> list[int]:
    return _build.pids_in([ns])[ns]


# -- up ------------------------------------------------------------------------------------------

def up(topology: Topology, lab: str, *, port: int | None = None,
       daemon: Callable[..., list[str]] = daemon_argv, timeout: float = READY_TIMEOUT,
       join: str | None = None, keep_routes: bool = False, window: int = START_WINDOW,
       daemon_config: str | os.PathLike | None = None) -> dict:
    """Build the lab and start its daemons; return ``status(lab)`` once every control socket
    accepts a connection (each within ``timeout`` s of its own spawn, ``window`` starting at
    once).  On any failure (or interrupt) everything is torn down again.  ``join``: run the
    overlay in the namespaces of that lab (see ``join``); ``daemon_config``: a configuration
    file every daemon reads (``-c``; copied into the state directory)."""
    t0 = time.monotonic()
    _state.check_name(lab)
    base = None
    if join is not None:
        _state.check_name(join)
        if join == lab:
            raise LabConflict(f"lab {lab!r} cannot join itself")
        try:
            base = _state.load(join)
        except LabNotFound as e:
            raise LabNotFound(f"cannot join: {e}") from None
    config_text = None
    if daemon_config is not None:
        try:
            config_text = Path(daemon_config).read_bytes()
        except OSError as e:
            raise LabError(f"daemon configuration {daemon_config}: {e.strerror}") from None
    state = plan(topology, lab, port=port, daemon=daemon, join=base, keep_routes=keep_routes,
                 daemon_config=config_text is not None)
    sdir = Path(state["state_dir"])
    if (sdir / "state.json").exists():
        raise LabError(f"lab {lab!r} exists ({sdir}); run 'spines-kr lab down --name {lab}' first")
    with _state.lock():  # the checks and the first save, atomically with respect to other labs
        if base is not None:
            _join.check(state, base)
        taken = [ns for ns in state["netns"] if _build.netns_exists(ns)]
        if taken:
            raise LabError(f"network namespace {taken[0]} already exists and is not part of a "
                           f"lab state; refusing to touch it")
        try:
            sdir.mkdir()
        except FileExistsError:
            raise LabError(f"lab {lab!r}: {sdir} exists; run 'spines-kr lab down --name {lab}' "
                           f"first") from None
        _state.save(state)
        _state.write_key(sdir / KEY_FILE)
        _state.write_wireguard_keys(state)
        if config_text is not None:
            (sdir / _state.DAEMON_CONFIG).write_bytes(config_text)
    timings = state["timings"]
    try:
        if base is None:  # a joined lab lives inside its base, which holds the name file
            _state.install_rt_protos(state)
        state["phase"] = "building"
        _state.save(state)
        t1 = time.monotonic()
        _build.build(state)
        timings["build_s"] = round(time.monotonic() - t1, 3)
        state["phase"] = "starting"
        _state.save(state)
        t2 = time.monotonic()
        _daemons.start(state, timeout=timeout, window=window, save=_state.save)
        _daemons.emulate_links(state, _state.save)
        timings["start_s"] = round(time.monotonic() - t2, 3)
        timings["up_s"] = round(time.monotonic() - t0, 3)
        state["phase"] = "up"
        _state.save(state)
    except BaseException:
        try:
            down(lab)
        except Exception:  # noqa: BLE001 - the original error is the one to raise
            pass
        raise
    return status(lab)


def restart(lab: str, node: str, *, kill: bool = False, timeout: float = READY_TIMEOUT) -> dict:
    """Restart one node's daemon: SIGTERM (a clean exit: it withdraws its routes, unless the lab
    was made with ``keep_routes``), or SIGKILL with ``kill`` (a crash: the routes stay), then
    start it again with the same arguments and wait until it is ready.  A daemon that finds
    routes of its own at start keeps them until the overlay has converged."""
    state = _state.load(lab)
    found = [n for n in state["nodes"] if n["name"] == node]
    if not found:
        raise LabError(f"lab {lab!r} has no node {node!r}")
    n = found[0]
    if n["pid"] and _daemons.signal_(n["pid"], n["start_time"],
                                     signal.SIGKILL if kill else signal.SIGTERM):
        left = _daemons.wait_gone({n["pid"]: n["start_time"]}, TERM_TIMEOUT)
        if left and _daemons.signal_(n["pid"], n["start_time"], signal.SIGKILL):
            _daemons.wait_gone(left, TERM_TIMEOUT)
    _daemons.start(state, [n], timeout=timeout, window=1, save=_state.save)
    return status(lab)


# -- status, exec --------------------------------------------------------------------------------

def status(lab: str) -> dict:
    """What the lab is and whether each daemon still runs (``LabNotFound`` if there is none)::

        {"name", "state_dir", "phase", "port", "metric", "table" (254: main), "join" (null or
         the lab whose namespaces it runs in), "joined" (labs joined to this one), "slot",
         "keep_routes", "timings" ({"build_s", "start_s", "up_s"} as far as ``up`` got),
         "nodes": [{"name", "netns", "logical_id", "prefixes" (advertised), "lan" (null or
                    "10.210.0.1/24"), "pid", "alive", "log", "control_socket", "ipc" (its
                    client session path, libspines' -ud), "sessions_tcp" (the session TCP
                    ports, inside its namespace), "ready_s"}],
         "links": [{"a", "b", "a_ifname", "b_ifname", "a_address", "b_address", ...}],
         "hosts": [{"name", "netns", "address" ("10.210.0.2"), "prefix" ("10.210.0.0/24"),
                    "gateway", "attach"}]}
    """
    state = _state.load(lab)
    nodes = [{"name": n["name"], "netns": n["netns"], "logical_id": n["logical_id"],
              "prefixes": n.get("prefixes", []),
              "lan": n["lan"]["address"] if n.get("lan") else None,
              "pid": n["pid"], "alive": _daemons.alive(n["pid"], n["start_time"]),
              "log": n["log"], "control_socket": n["control_socket"], "ipc": n.get("ipc"),
              "sessions_tcp": [f"127.0.0.1:{state['port'] + 7}", f"127.0.0.1:{state['port'] + 9}"],
              "ready_s": n.get("ready_s")} for n in state["nodes"]]
    hosts = [{"name": h["name"], "netns": h["netns"], "address": h["address"],
              "prefix": h["prefix"], "gateway": h["gateway"], "attach": h["attach"]}
             for h in state["hosts"]]
    underlay = {}
    if state.get("routers") or state.get("underlay"):
        underlay = {"routers": state.get("routers", []), "underlay": state.get("underlay", []),
                    "tunnels": _tunnel_status(state)}
    return {"name": state["name"], "state_dir": state["state_dir"], "phase": state["phase"],
            "port": state["port"], "metric": state["metric"],
            "table": state.get("table", MAIN_TABLE), "join": state.get("join"),
            "joined": joined_labs(lab), "slot": state.get("slot", 0),
            "keep_routes": state.get("keep_routes", False),
            "timings": state.get("timings", {}), "nodes": nodes,
            "links": state["links"], "hosts": hosts, **underlay}


def _tunnel_status(state: dict) -> list[dict]:
    """Each tunnel of the plan with its devices as the kernel shows them: the daemons name them
    (``daemon.tunnels``) and mark them with an alias ``spines-kr <port> <kind> <peer> via
    <remote>``; None while an end does not exist."""
    from spines_kr.netlink.tunnels import parse_alias

    ns_of = {n["name"]: n["netns"] for n in state["nodes"]}
    lid = {n["name"]: n["logical_id"] for n in state["nodes"]}
    found: dict[tuple[str, str], dict] = {}  # (node, peer logical ID) -> link
    for node in {t[side] for t in state.get("tunnels", []) for side in ("a", "b")}:
        try:
            links = _build.ip_json("-d", "-n", ns_of[node], "link", "show")
        except (LabError, ValueError):
            links = []
        for link in links:
            parsed = parse_alias(link.get("ifalias", ""))
            if parsed is not None and parsed[0] == state["port"]:
                found[(node, parsed[2])] = link
    out = []
    for t in state.get("tunnels", []):
        a, b = found.get((t["a"], lid[t["b"]])), found.get((t["b"], lid[t["a"]]))
        out.append({**t, "a_ifname": a and a["ifname"], "b_ifname": b and b["ifname"],
                    "a_mtu": a and a.get("mtu"), "b_mtu": b and b.get("mtu"),
                    "mtu": min(x["mtu"] for x in (a, b)) if a and b else None})
    return out


def exec_argv(lab: str, member: str, command: list[str]) -> tuple[list[str], dict]:
    """argv and environment that run ``command`` (default: $SHELL) inside the namespace of
    ``member``, a node or a host.  For a node SPINES_KR_SOCKET (its daemon's control socket),
    SPINES_KR_PORT and SPINES_KR_IPC (its client session path: ``spines-kr send`` and the other
    tools find the node's daemon) are set; a host runs no daemon, so they are removed from its
    environment."""
    state = _state.load(lab)
    nodes = [n for n in state["nodes"] if n["name"] == member]
    hosts = [h for h in state["hosts"] + state.get("routers", []) if h["name"] == member]
    if not nodes and not hosts:
        raise LabError(f"lab {lab!r} has no node {member!r} "
                       f"(nodes: {', '.join(n['name'] for n in state['nodes'])}"
                       + (f"; hosts: {', '.join(h['name'] for h in state['hosts'])}"
                          if state["hosts"] else "") + ")")
    m = (nodes or hosts)[0]
    if not _build.netns_exists(m["netns"]):
        raise LabError(f"network namespace {m['netns']} does not exist (run lab down, then up)")
    env = dict(os.environ)
    if nodes:
        env.update(SPINES_KR_SOCKET=m["control_socket"], SPINES_KR_PORT=str(state["port"]))
        if m.get("ipc"):
            env["SPINES_KR_IPC"] = m["ipc"]
    else:
        for var in ("SPINES_KR_SOCKET", "SPINES_KR_PORT", "SPINES_KR_IPC"):
            env.pop(var, None)
    command = command or [os.environ.get("SHELL", "/bin/sh")]
    return ["ip", "netns", "exec", m["netns"], *command], env


# -- down ----------------------------------------------------------------------------------------

def _stop_tunnel_processes(state: dict) -> list[str]:
    from spines_kr.daemon.tunnels import stop_process
    from spines_kr.netlink.wireguard import socket_path

    stopped = []
    for n in state["nodes"]:
        path = Path(n["control_socket"] + ".tunnels.json")
        try:
            recorded = json.loads(path.read_text()).get("processes", {})
        except (OSError, ValueError):
            continue
        for ifname, (pid, start) in recorded.items():
            if stop_process(int(pid), int(start)):
                stopped.append(f"wireguard-go {ifname} ({n['name']})")
        for ifname in recorded:
            try:
                os.unlink(socket_path(ifname))
            except OSError:
                pass
    return stopped


def down(lab: str) -> dict:
    """Stop the lab's daemons and remove everything it created, and its state directory (see
    the module's doc).  Idempotent.  Returns a report::

        {"name", "found", "joined_down": [labs taken down first], "stopped", "killed",
         "netns_deleted", "links_deleted": ["a-b"], "addresses_removed": ["node address/32"],
         "kernel_cleaned": ["node: what"], "rt_protos_removed", "problems", "warnings"}

    The state directory is kept (for a retry) only when ``problems`` is not empty."""
    sdir = state_dir(lab)
    report = {"name": lab, "found": False, "joined_down": [], "stopped": [], "killed": [],
              "netns_deleted": [], "links_deleted": [], "addresses_removed": [],
              "kernel_cleaned": [], "rt_protos_removed": False, "problems": [], "warnings": []}
    try:
        state = _state.load(lab)
    except LabNotFound:
        if sdir.exists():  # up died between mkdir and its first write: nothing was created
            shutil.rmtree(sdir, ignore_errors=True)
            report["found"] = True
        stray = [ns for ns in _build.netns_names() if ns.startswith(f"{lab}-")]
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
    procs = _daemons.recorded(state)
    procs.update(_daemons.unrecorded(state, known=procs))
    stopped, killed, problems = _daemons.stop(procs)
    report["stopped"], report["killed"] = stopped, killed
    report["problems"] += problems

    # 1b. wireguard-go processes a daemon that died left (its state file records them), and
    #     their host-global control sockets.
    report["stopped"] += _stop_tunnel_processes(state)

    # 2. A joined lab: what it made or its daemons left in its base's namespaces.
    if state.get("join"):
        _join.unbuild(state, report)

    # 3. Namespaces (deleting one destroys the veth ends in it, and so the pairs).
    for ns, pids in _build.pids_in(state["netns"]).items():
        for pid in pids:
            report["warnings"].append(f"process {pid} ({' '.join(_daemons.cmdline(pid))[:60]}) "
                                      f"still runs in {ns}; not started by the lab, left running")
    deleted, problems = _build.delete_namespaces(state["netns"])
    report["netns_deleted"] = deleted
    report["problems"] += problems

    # 4. The rt_protos name file, then the state directory.
    report["rt_protos_removed"] = _state.remove_rt_protos(state)
    if not report["problems"]:
        shutil.rmtree(sdir, ignore_errors=True)
    return report
