"""The daemon's local control socket: ``spines-kr show ...`` and friends.

Protocol: a Unix stream socket; the client sends one JSON object on one line, e.g.
``{"cmd": "show", "what": "routes"}``, and reads one JSON line back:
``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "one line for a person"}``.
A malformed request gets an error reply; the daemon carries on.

Permissions: the socket is created mode 0660 (owner root, group ``control_group`` when set),
in a directory only root can write (/run/spines-kr by default).

Entry points: ``serve(daemon, path, group)`` (called from the running loop), ``close(server,
path)``, and ``request(path, obj, timeout)`` for clients.
"""

from __future__ import annotations

import asyncio
import grp as grp_db
import ipaddress
import json
import os
import socket
import struct

from spines_kr.routing import groups as grp

MAX_REQUEST = 64 * 1024
SHOW = ("status", "neighbors", "links", "routes", "topology", "groups")


def serve(daemon, path: str, group: str | None = None):
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o660)
    if group:
        os.chown(path, -1, grp_db.getgrnam(group).gr_gid)
    sock.listen(16)
    sock.setblocking(False)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            reply = answer(daemon, line, may_change=_may_change(writer, group))
        except (asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError):
            reply = {"ok": False, "error": "request too long or too slow"}
        except ConnectionError:
            return
        try:
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()
        except ConnectionError:
            pass

    return asyncio.get_running_loop().create_task(
        asyncio.start_unix_server(handle, sock=sock, limit=MAX_REQUEST))


async def close(server_task, path: str) -> None:
    server = await server_task
    server.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


MUTATING = ("setlink", "join", "leave")


def _may_change(writer, group: str | None) -> bool:
    """Whether the peer may change things (setlink, join, leave): root, the daemon's own user,
    or a member of ``control_group``.  Anyone who can connect may read."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except (OSError, AttributeError):
        return False
    if uid in (0, os.geteuid()):
        return True
    if not group:
        return False
    try:
        wanted = grp_db.getgrnam(group).gr_gid
    except KeyError:
        return False
    return gid == wanted or wanted in _supplementary_groups(pid)


def _supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def answer(daemon, line: bytes, may_change: bool = True) -> dict:
    """The reply to one request line; never raises (a request is input from outside)."""
    try:
        req = json.loads(line)
        if not isinstance(req, dict):
            raise ValueError
    except (ValueError, RecursionError):
        return {"ok": False, "error": "malformed request: expected one JSON object per line"}
    try:
        return _dispatch(daemon, req, may_change)
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as e:
        return {"ok": False, "error": f"bad request: {type(e).__name__}: {e}"}


def _dispatch(daemon, req: dict, may_change: bool) -> dict:
    cmd = req.get("cmd")
    if cmd in MUTATING and not may_change:
        return {"ok": False, "error": f"{cmd}: permission denied (root, the daemon's user or "
                                     f"the control group only)"}
    if cmd == "ping":
        return {"ok": True, "data": "pong"}
    if cmd == "show":
        what = req.get("what")
        if what not in SHOW:
            return {"ok": False, "error": f"show: unknown view {what!r} (one of {', '.join(SHOW)})"}
        return {"ok": True, "data": VIEWS[what](daemon)}
    if cmd == "setlink":
        try:
            return {"ok": True, "data": daemon.setlink(req)}
        except ValueError as e:
            return {"ok": False, "error": str(e)}
    if cmd in ("join", "leave"):
        try:
            return {"ok": True, "data": daemon.join(str(req.get("group", "")), cmd == "join")}
        except ValueError as e:
            return {"ok": False, "error": f"{cmd}: {e}"}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


def _ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def _neighbors(d):
    now = asyncio.get_running_loop().time()
    return [l.to_json(now) for l in sorted(d.node.links.values(), key=lambda l: l.key)]


def _routes(d):
    spf = d.node.spf()
    out = []
    for dst, r in sorted(d.node.routes().items()):
        node = int(ipaddress.IPv4Network(dst).network_address)
        out.append({"dst": dst, "cost": spf.get(node, (None,))[0], "metric": d.cfg.metric,
                    "prefsrc": r.prefsrc, "protocol": d.cfg.route_protocol, "table": d.cfg.table,
                    "nexthops": [{"gateway": nh.gateway, "ifindex": nh.ifindex,
                                  "dev": d.ifnames.get(nh.ifindex, ""), "weight": nh.weight}
                                 for nh in r.nexthops],
                    "installed": d.reconciler is not None and d.reconciler.installed.get(dst) == r})
    return out


def _topology(d):
    graph = d.node.lsdb.graph()
    return {"self": d.cfg.logical_id,
            "nodes": [{"id": _ip(o), "seq": lsa.seq, "links": len(lsa.links)}
                      for o, lsa in sorted(d.node.lsdb.lsas.items())],
            "links": [{"from": _ip(a), "to": _ip(b), "cost": c}
                      for a, adj in sorted(graph.items()) for b, c in sorted(adj.items())]}


def _groups(d):
    node = d.node
    members = node.group_members()
    node.routes()  # refreshes group_choice
    out = []
    for g in sorted(set(members) | node.groups):
        kind = ("gateway" if g == node.p.gateway_group else
                "anycast" if grp.is_anycast(g) else "multicast")
        out.append({"group": _ip(g), "kind": kind,
                    "members": [_ip(m) for m in sorted(members.get(g, ()))],
                    "member": g in node.groups,
                    "route_to": [_ip(m) for m in node.group_choice.get(g, [])],
                    "route_dst": grp.mapped_dst(g, d.cfg.spines_mappings) if kind != "gateway"
                    else "0.0.0.0/0"})
    return out


VIEWS = {"status": lambda d: d.status(), "neighbors": _neighbors, "links": _neighbors,
         "routes": _routes, "topology": _topology, "groups": _groups}


def request(path: str, obj: dict, timeout: float = 5.0) -> dict:
    """Send one request to the daemon at ``path``; raise OSError when it cannot be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(obj).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    try:
        return json.loads(buf)
    except ValueError:
        raise OSError(f"daemon at {path} sent a malformed reply") from None
