"""``spines-kr lab ...``: the namespace lab from the command line.

Entry point: ``add_lab_parser(subparsers)`` adds ``lab`` with ``up``, ``down``, ``status``,
``exec``, ``restart`` and ``demo``; each sets ``func`` to a handler ``(args) -> int``.  Handlers
print errors as one line ``spines-kr: error: ...`` on stderr (plus indented context lines when a
daemon failed) and return 2 for topology/usage problems (also a clash with an overlay already in
the namespaces: ``netns.LabConflict``), 1 for runtime failures (``status``: also when a daemon is
not alive), 0 otherwise; they never raise.

Several overlays: ``lab up TOPO --name LAB2 --join LAB --port 8200`` runs a second overlay in
LAB's namespaces (route table 8200, the port; topology defaults of the next free overlay slot:
see ``netns``); ``lab down --name LAB2`` removes only it; ``lab down --name LAB`` takes the labs
joined to LAB down first.  ``lab restart --name LAB NODE [--kill]`` restarts one daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from spines_kr.lab import netns
from spines_kr.lab.topology import TopologyError, load

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def _error(msg: str, code: int) -> int:
    print(f"spines-kr: error: {msg}", file=sys.stderr)
    return code


def _guard(fn):
    """Map the lab's exceptions onto the exit statuses."""
    def handler(args) -> int:
        try:
            return fn(args)
        except (TopologyError, netns.LabConflict) as e:
            return _error(str(e), EXIT_USAGE)
        except netns.LabError as e:
            return _error(str(e), EXIT_RUNTIME)
        except OSError as e:
            return _error(f"{e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}",
                          EXIT_RUNTIME)
    handler.__name__ = fn.__name__
    return handler


def _valid_name(lab: str) -> str | None:
    try:
        netns.state_dir(lab)
        return None
    except netns.LabError as e:
        return str(e)


@_guard
def cmd_up(args) -> int:
    if (problem := _valid_name(args.name)):
        return _error(problem, EXIT_USAGE)
    if args.port is not None and not 1 <= args.port <= 65535:
        return _error(f"--port: {args.port} is out of range 1..65535", EXIT_USAGE)
    if args.join is not None and (problem := _valid_name(args.join)):
        return _error(f"--join: {problem}", EXIT_USAGE)
    slot = netns.join_slot(args.join) if args.join else 0
    topo = load(args.topology, slot=slot)
    st = netns.up(topo, args.name, port=args.port, join=args.join, keep_routes=args.keep_routes,
                  daemon_config=args.daemon_config)
    hosts = f", {len(st['hosts'])} hosts" if st["hosts"] else ""
    joined = (f", joined to lab {st['join']} (port {st['port']}, table {st['table']})"
              if st["join"] else "")
    print(f"lab {st['name']} up: {len(st['nodes'])} nodes, {len(st['links'])} links{hosts}"
          f"{joined}, state in {st['state_dir']}")
    t, ready = st["timings"], [n["ready_s"] for n in st["nodes"] if n.get("ready_s") is not None]
    if t.get("up_s") is not None:
        print(f"up in {t['up_s']:.1f} s: build {t['build_s']:.1f} s, daemons {t['start_s']:.1f} s"
              + (f" (slowest ready {max(ready):.1f} s after its start)" if ready else ""))
    _print_status(st)
    return EXIT_OK


@_guard
def cmd_down(args) -> int:
    if (problem := _valid_name(args.name)):
        return _error(problem, EXIT_USAGE)
    r = netns.down(args.name)
    if not r["found"] and not r["problems"]:
        print(f"lab {args.name}: no state directory; nothing to do")
        return EXIT_OK
    for w in r["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for p in r["problems"]:
        print(f"spines-kr: error: {p}", file=sys.stderr)
    for other in r["joined_down"]:
        print(f"lab {other} (joined to {args.name}) taken down first")
    for what in r["kernel_cleaned"]:
        print(f"removed what a daemon left: {what}")
    if r["found"]:
        own = (f", {len(r['links_deleted'])} links deleted, {len(r['addresses_removed'])} "
               f"addresses removed" if r["links_deleted"] or r["addresses_removed"] else "")
        print(f"lab {args.name} down: {len(r['stopped'])} daemons stopped, "
              f"{len(r['killed'])} killed, {len(r['netns_deleted'])} namespaces deleted{own}"
              + (", rt_protos name file removed" if r["rt_protos_removed"] else ""))
    return EXIT_RUNTIME if r["problems"] else EXIT_OK


def _print_status(st: dict) -> None:
    rows = [("NODE", "NETNS", "LOGICAL_ID", "PID", "ALIVE", "PREFIXES")]
    rows += [(n["name"], n["netns"], n["logical_id"], str(n["pid"] or "-"),
              "yes" if n["alive"] else "NO", ",".join(n.get("prefixes", [])) or "-")
             for n in st["nodes"]]
    _table(rows)
    print()
    rows = [("A", "IFNAME", "ADDRESS", "B", "IFNAME", "ADDRESS")]
    rows += [(ln["a"], ln["a_ifname"], ln["a_address"], ln["b"], ln["b_ifname"], ln["b_address"])
             for ln in st["links"]]
    _table(rows)
    if st["hosts"]:
        print()
        rows = [("HOST", "NETNS", "ADDRESS", "PREFIX", "ATTACH", "GATEWAY")]
        rows += [(h["name"], h["netns"], h["address"], h["prefix"], h["attach"], h["gateway"])
                 for h in st["hosts"]]
        _table(rows)
    if st.get("underlay"):
        print()
        rows = [("UNDERLAY A", "IFNAME", "ADDRESS", "B", "IFNAME", "ADDRESS")]
        rows += [(u["a"], u["a_ifname"], u["a_address"], u["b"], u["b_ifname"], u["b_address"])
                 for u in st["underlay"]]
        _table(rows)
    if st.get("tunnels"):
        print()
        rows = [("TUNNEL", "A", "IFNAME", "ENDPOINT", "B", "IFNAME", "ENDPOINT", "MTU")]
        rows += [(t["kind"], t["a"], t["a_ifname"], t["a_endpoint"], t["b"], t["b_ifname"],
                  t["b_endpoint"], str(t.get("mtu") or "-")) for t in st["tunnels"]]
        _table(rows)


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@_guard
def cmd_status(args) -> int:
    if (problem := _valid_name(args.name)):
        return _error(problem, EXIT_USAGE)
    st = netns.status(args.name)
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        table = "main" if st["table"] == netns.MAIN_TABLE else st["table"]
        joined = f", joined to lab {st['join']}" if st["join"] else ""
        others = f", overlays joined: {', '.join(st['joined'])}" if st["joined"] else ""
        print(f"lab {st['name']} ({st['phase']}, port {st['port']}, table {table}, metric "
              f"{st['metric']}{joined}{others}, state in {st['state_dir']})")
        _print_status(st)
    return EXIT_OK if all(n["alive"] for n in st["nodes"]) else EXIT_RUNTIME


@_guard
def cmd_exec(args) -> int:
    if (problem := _valid_name(args.name)):
        return _error(problem, EXIT_USAGE)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv, env = netns.exec_argv(args.name, args.node, command)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)
    return EXIT_RUNTIME  # not reached


@_guard
def cmd_restart(args) -> int:
    if (problem := _valid_name(args.name)):
        return _error(problem, EXIT_USAGE)
    st = netns.restart(args.name, args.node, kill=args.kill)
    pid = next(n["pid"] for n in st["nodes"] if n["name"] == args.node)
    print(f"{args.node}: daemon restarted (pid {pid})")
    return EXIT_OK


@_guard
def cmd_demo(args) -> int:
    if (problem := _valid_name(args.name)):
        return _error(problem, EXIT_USAGE)
    from spines_kr.lab import demo

    return demo.run(args.name, args.port)


def add_lab_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``lab`` and its subcommands to an ``argparse`` subparsers object; return its parser."""
    lab = subparsers.add_parser("lab", help="namespace lab: build a topology on this machine",
                                description="Build a topology of spines-kr daemons in network "
                                            "namespaces on this machine (needs root).")
    sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", help="create the namespaces, links and daemons of a topology")
    p.add_argument("topology", metavar="TOPOLOGY", help="topology TOML file")
    p.add_argument("--name", required=True, metavar="LAB", help="lab name (namespace prefix)")
    p.add_argument("--port", type=int, help="overlay port (default: the topology's, else 8100)")
    p.add_argument("--join", metavar="BASE",
                   help="run this overlay in the namespaces of lab BASE (nodes matched by name; "
                        "its own links, logical IDs and route table = its port; needs a --port "
                        "BASE does not use)")
    p.add_argument("--keep-routes", action="store_true",
                   help="daemons keep their routes at a clean exit (a SIGTERM restart keeps "
                        "them too)")
    p.add_argument("--daemon-config", metavar="FILE",
                   help="a daemon configuration file (TOML) every daemon reads (-c), e.g. "
                        "slower timers for a large lab on a small machine")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the daemons and remove everything the lab created "
                                    "(first the labs joined to it)")
    p.add_argument("--name", required=True, metavar="LAB")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="nodes, daemons, links and hosts of a lab")
    p.add_argument("--name", required=True, metavar="LAB")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("exec", help="run a command inside a node's or host's namespace",
                       description="Run COMMAND (default: $SHELL) in the namespace of NODE (with "
                                   "SPINES_KR_SOCKET, SPINES_KR_PORT and SPINES_KR_IPC set) or of a host (a "
                                   "host runs no daemon). Options go before NODE.")
    p.add_argument("--name", required=True, metavar="LAB")
    p.add_argument("node", metavar="NODE|HOST")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("restart", help="restart one node's daemon (a crash with --kill)")
    p.add_argument("--name", required=True, metavar="LAB")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser("demo", help="run the embedded 5-node ring end to end, then tear it down")
    p.add_argument("--name", default="spdemo", metavar="LAB", help="lab name (default spdemo)")
    p.add_argument("--port", type=int, help="overlay port (default 8100)")
    p.set_defaults(func=cmd_demo)
    return lab
