"""Lab daemons: the command line of a node's daemon, starting daemons inside their namespaces
with a readiness deadline each, stopping them by pidfd, and link emulation through them.

Entry points:
    daemon_argv(**spec) -> argv      the daemon command line (tests pass a stand-in with its
                                     signature); child_env() -> environment for lab processes
    start(state, nodes=None, *, timeout=READY_TIMEOUT, window=START_WINDOW, save=None)
                                     spawn the daemons of ``nodes`` (default: all of ``state``'s)
    stop(procs) -> (stopped, killed, problems)     ``procs``: {pid: (start_time, node name)}
    recorded(state) -> procs         the daemons the state records that still run
    unrecorded(state) -> procs       daemons ``up`` never recorded, recognised by their argv
    emulate_links(state, save)       setlink on both ends of every link with emulation values
    proc(pid) -> (start, state) | None, ours(pid, start), alive(pid, start),
    signal_(pid, start, sig) -> bool, wait_gone({pid: start}, timeout) -> {left}, cmdline(pid)

Data model: a node of the state (``state.plan``) carries its ``argv``, its files (``out``: the
daemon's stdout and stderr, appended; ``log``; ``control_socket``) and, once spawned, ``pid``,
``start_time`` (clock ticks since boot, from /proc/<pid>/stat) and ``ready_s``.

Starting: each daemon runs through ``ip netns exec`` (which execs, so the pid we record is the
daemon's), in its own session, with the repository on PYTHONPATH.  At most ``window`` daemons are
starting at once (spawned, control socket not yet accepting); the next is spawned as soon as one
is ready, so a lab of any size loads the machine with ``window`` interpreter starts at a time
and every daemon is timed on its own: each must accept a connection on its control socket
within ``timeout`` seconds of its own spawn.  A daemon that exits first fails the start at once,
naming it, with the last lines of its output and log; one that misses its deadline fails it
naming every daemon late at that moment.  The state is saved after spawns, at most every
``SAVE_INTERVAL`` seconds, and at the end (``unrecorded`` covers a crash in between).

A process is ours only while /proc/<pid>/stat still shows the start time recorded at launch; it
is signalled through a pidfd opened before that check, so a recycled pid is never hit.
``unrecorded`` accepts a process inside one of the lab's namespaces only when its argv is exactly
the planned one; any other process there is reported by ``down``, never touched.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

import spines_kr
from spines_kr.lab.build import pids_in
from spines_kr.lab.state import MAIN_TABLE, LabError

READY_TIMEOUT = 60.0   # seconds from a daemon's own spawn to its first accepted connection
START_WINDOW = 16 * (os.cpu_count() or 1)  # daemons starting at once (bench/lab_scale.py)
TERM_TIMEOUT = 5.0     # for a clean exit, plus TERM_PER_DAEMON for each daemon stopped at once
TERM_PER_DAEMON = 0.05
KILL_TIMEOUT = 2.0
POLL = 0.02
SAVE_INTERVAL = 0.2    # the state is saved at most this often while daemons start
REPO_ROOT = Path(spines_kr.__file__).resolve().parent.parent

_CHILDREN: dict[int, subprocess.Popen] = {}  # daemons this process spawned, reaped by us


def daemon_argv(*, port: int, logical_id: str, local_addresses: list[str], neighbors: list[str],
                metric: str, log_file: str, ipc_path: str, control_socket: str,
                prefixes: list[str] = (), multipath: bool = True, table: int = MAIN_TABLE,
                keep_routes: bool = False, groups: list[str] = (),
                kernel_levels: tuple[int, ...] = (0,), anypath: bool = False,
                key_file: str | None = None, config_file: str | None = None,
                tunnel_neighbors: list[str] = (),
                wireguard_key_file: str | None = None) -> list[str]:
    """The command line of one node's daemon (run inside its namespace); ``prefixes`` are the
    networks it advertises (``--prefix``, repeated; none when empty); ``table`` its route table
    (``--table`` when not main), ``keep_routes`` adds ``--keep-routes``; ``config_file`` adds
    ``-c FILE`` (settings without a flag, e.g. timers; the flags win over it);
    ``tunnel_neighbors`` ("KIND:ADDRESS") add ``--tunnel-neighbor`` each, with the node's
    ``--wireguard-key-file``."""
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
    if config_file:
        argv += ["-c", config_file]
    for t in tunnel_neighbors:
        argv += ["--tunnel-neighbor", t]
    if wireguard_key_file:
        argv += ["--wireguard-key-file", wireguard_key_file]
    return argv + ["-m", "-w", metric, "-lf", log_file, "-ud", ipc_path,
                   "--control-socket", control_socket]


def child_env() -> dict:
    """Environment for processes the lab starts: the package importable even when not installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


# -- processes -----------------------------------------------------------------------------------

def proc(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of a pid, or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]), fields[0]


def ours(pid, start) -> bool:
    info = proc(pid) if pid else None
    return info is not None and info[0] == start


def alive(pid, start) -> bool:
    info = proc(pid) if pid else None
    return info is not None and info[0] == start and info[1] not in "ZX"


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def signal_(pid: int, start: int, sig: int) -> bool:
    """Send ``sig`` to pid only if it is still the process that started at ``start``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not ours(pid, start):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def wait_gone(procs: dict[int, int], timeout: float) -> dict[int, int]:
    """Wait until the processes {pid: start} are gone (zombies count as gone); return the rest."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in list(procs):
            _reap(pid)
            if not alive(pid, procs[pid]):
                del procs[pid]
        if not procs or time.monotonic() >= deadline:
            return procs
        time.sleep(POLL)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _tail(path: str, n: int = 10) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def log_excerpt(node: dict) -> str:
    text = ""
    for key in ("out", "log"):
        lines = _tail(node[key])
        if lines:
            text += f"\n  last lines of {node[key]}:\n" + "\n".join(f"    {ln}" for ln in lines)
    return text


# -- start ---------------------------------------------------------------------------------------

def _spawn(state: dict, node: dict, env: dict) -> float:
    with open(node["out"], "ab") as out:
        child = subprocess.Popen(["ip", "netns", "exec", node["netns"], *node["argv"]],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, env=env, cwd=state["state_dir"])
    spawned = time.monotonic()
    _CHILDREN[child.pid] = child
    info = proc(child.pid)
    node["pid"], node["start_time"], node["ready_s"] = child.pid, info[0] if info else None, None
    return spawned


def accepts(path: str) -> bool:
    """Whether a daemon listens on the control socket ``path`` (a connection is accepted)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        try:
            s.connect(path)
            return True
        except OSError as e:
            return e.errno == errno.EPROTOTYPE  # a datagram socket is bound there: it is up


def _exited(node: dict) -> LabError:
    child = _CHILDREN.pop(node["pid"], None)
    try:
        code = child.wait(timeout=1) if child else None
    except subprocess.TimeoutExpired:
        code = None
    rc = "" if code is None else f" with status {code}"
    return LabError(f"daemon of node {node['name']} exited{rc} before it was ready"
                    + log_excerpt(node))


def start(state: dict, nodes: list[dict] | None = None, *, timeout: float = READY_TIMEOUT,
          window: int = START_WINDOW, save: Callable[[dict], None] | None = None) -> None:
    """Spawn the daemons of ``nodes`` (default: every node of ``state``), at most ``window``
    starting at once, each ready within ``timeout`` s of its own spawn (see the module's doc);
    ``save(state)`` after spawns (at most every ``SAVE_INTERVAL`` s) and at the end.
    ``LabError`` names the daemon that exited or was late; the caller stops what was started."""
    env = child_env()
    todo = deque(state["nodes"] if nodes is None else nodes)
    starting: dict[str, tuple[dict, float]] = {}
    window = max(1, window)
    unsaved, saved_at = False, 0.0
    try:
        while todo or starting:
            while todo and len(starting) < window:
                node = todo.popleft()
                starting[node["name"]] = (node, _spawn(state, node, env))
                unsaved = True
            if unsaved and save and time.monotonic() - saved_at >= SAVE_INTERVAL:
                save(state)
                unsaved, saved_at = False, time.monotonic()
            progress, late = False, []
            for name, (node, t0) in list(starting.items()):
                if not alive(node["pid"], node["start_time"]):
                    raise _exited(node)
                now = time.monotonic()
                if accepts(node["control_socket"]):
                    node["ready_s"] = round(now - t0, 3)
                    del starting[name]
                    progress = True
                elif now - t0 >= timeout:
                    late.append(node)
            if late:
                names, many = ", ".join(n["name"] for n in late), len(late) > 1
                raise LabError(("daemons of nodes" if many else "daemon of node")
                               + f" {names} not ready after {timeout:g} s from "
                               + ("their" if many else "its")
                               + " start (no connection on the control socket)"
                               + log_excerpt(late[0]))
            if not progress and starting:
                time.sleep(POLL)
    finally:
        if save:
            save(state)


# -- stop ----------------------------------------------------------------------------------------

def recorded(state: dict) -> dict[int, tuple[int, str]]:
    return {n["pid"]: (n["start_time"], n["name"]) for n in state["nodes"]
            if n.get("pid") and ours(n["pid"], n["start_time"])}


def unrecorded(state: dict, known=()) -> dict[int, tuple[int, str]]:
    """Processes in the nodes' namespaces whose argv is exactly a node's planned argv and that
    are not in ``known`` (pids): daemons spawned by an ``up`` that died before recording them."""
    found = {}
    by_ns: dict[str, list[dict]] = {}
    for n in state["nodes"]:
        by_ns.setdefault(n["netns"], []).append(n)
    for ns, pids in pids_in(by_ns).items():
        for pid in pids:
            if pid in known:
                continue
            argv = cmdline(pid)
            info = proc(pid)
            for n in by_ns[ns]:
                if info and argv == n["argv"]:
                    found[pid] = (info[0], n["name"])
    return found


def stop(procs: dict[int, tuple[int, str]], term_timeout: float | None = None,
         kill_timeout: float = KILL_TIMEOUT) -> tuple[list[str], list[str], list[str]]:
    """SIGTERM every process of ``procs`` ({pid: (start_time, name)}), SIGKILL those still
    there after ``term_timeout`` (default: ``TERM_TIMEOUT`` + ``TERM_PER_DAEMON`` each: they
    all withdraw their routes at once); returns (names stopped, names killed, problems)."""
    if term_timeout is None:
        term_timeout = TERM_TIMEOUT + TERM_PER_DAEMON * len(procs)
    for pid, (start_time, _name) in procs.items():
        signal_(pid, start_time, signal.SIGTERM)
    left = wait_gone({p: s for p, (s, _n) in procs.items()}, term_timeout)
    stopped = [name for p, (_s, name) in procs.items() if p not in left]
    killed, problems = [], []
    for pid, start_time in left.items():
        signal_(pid, start_time, signal.SIGKILL)
        killed.append(procs[pid][1])
    for pid in wait_gone(left, kill_timeout):
        problems.append(f"process {pid} (node {procs[pid][1]}) survived SIGKILL")
    return stopped, killed, problems


# -- link emulation ------------------------------------------------------------------------------

def emulate_links(state: dict, save: Callable[[dict], None]) -> None:
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
        save(state)
