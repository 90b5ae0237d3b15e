"""The ``spines-kr`` command.

    spines-kr daemon [Spines flags] [long options]   run one overlay router in the foreground
    spines-kr show status|neighbors|links|routes|topology|groups|tunnels [--json]
    spines-kr setlink | join | leave | keygen [--wireguard] | capabilities [--json]
    spines-kr neighbor add|remove ADDRESS [--tunnel wireguard|vxlan|gre|ipip]
    spines-kr lab up|down|status|exec|demo ...        namespace lab on this machine

Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.  Errors are one line
on stderr naming the problem, never a traceback.

The control socket of ``show`` is ``--socket``, else $SPINES_KR_SOCKET (``lab exec`` sets it),
else the default path for ``--port`` / $SPINES_KR_PORT (8100).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from spines_kr import __version__

USAGE_ERROR = 2

# Spines flags we accept but do not implement yet: flag -> what it is.
NOT_YET = {
    "-W": "wireless timers",
    "-pc": "the packet-capture flag",
}


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports one line and exits 2, without the usage dump."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _daemon_parser(sub) -> None:
    from spines_kr import config

    p = sub.add_parser("daemon", help="run one overlay router in the foreground",
                       description="Run one spines-kr overlay router (Spines daemon flags; every "
                                   "flag is also a key of the TOML file, see spines_kr/config.py).")
    p.add_argument("-c", "--config", help="TOML configuration file (flags win over it)")
    config.add_flags(p)
    for flag, what in NOT_YET.items():
        p.add_argument(flag, dest="not_yet_" + flag.strip("-"), action="append", nargs="?",
                       const=True, help=f"({what}: not implemented yet)")
    p.set_defaults(func=cmd_daemon)


def cmd_daemon(args) -> int:
    from spines_kr import config

    for flag in NOT_YET:
        if getattr(args, "not_yet_" + flag.strip("-")):
            raise UsageError(f"daemon: {flag} ({NOT_YET[flag]}) is not implemented yet")
    flags = config.flag_values(args)
    try:
        file_values = config.load_file(args.config) if args.config else {}
        cfg = config.build(file_values, flags)
        if cfg.log_file:
            config.check_log_file(cfg.log_file)
    except config.ConfigError as e:
        raise UsageError(f"daemon: {e}") from None
    if cfg.key_file:
        from spines_kr.keys import KeyFileError, load_key_file

        try:
            load_key_file(cfg.key_file)  # mode, format: refuse before touching anything
        except KeyFileError as e:
            raise UsageError(f"daemon: {e}") from None
    if os.geteuid() != 0 and cfg.kernel_routing:
        print("spines-kr: warning: not root; kernel route writes need CAP_NET_ADMIN",
              file=sys.stderr)
    from spines_kr.daemon.features import Refused, decide
    from spines_kr.netlink import capabilities

    caps = capabilities.probe()
    try:
        plan = decide(cfg, caps)
    except Refused as e:
        raise UsageError(f"daemon: {e}") from None
    from spines_kr.daemon.main import run

    def reload_config():
        """SIGHUP: the file again, the same flags on top."""
        return config.build(config.load_file(args.config) if args.config else {}, flags)

    return run(cfg, caps, plan, reload_config)


def _capabilities_parser(sub) -> None:
    p = sub.add_parser("capabilities", help="what this kernel offers spines-kr",
                       description="Probe (without changing anything) what the running kernel "
                                   "and host offer: multicast routing, nexthop objects, "
                                   "qdiscs, nftables, tunnel kinds, ...")
    p.add_argument("--json", action="store_true", help="print JSON (true/false/null per feature)")
    p.set_defaults(func=cmd_capabilities)


def cmd_capabilities(args) -> int:
    from spines_kr.netlink import capabilities

    caps = capabilities.probe()
    if args.json:
        print(json.dumps(caps.to_json(), indent=2))
    else:
        print(capabilities.render(caps))
    return 0


def _show_parser(sub) -> None:
    from spines_kr.ctl import SHOW

    p = sub.add_parser("show", help="ask the running daemon")
    p.add_argument("what", choices=SHOW)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--dot", action="store_true", help="topology: print Graphviz DOT")
    p.add_argument("--png", metavar="FILE", help="topology: render a picture (needs Graphviz)")
    p.add_argument("--socket", help="control socket of the daemon")
    p.add_argument("-p", "--port", type=int, help="overlay port of the daemon (default 8100)")
    p.set_defaults(func=cmd_show)


def control_path(args) -> str:
    from spines_kr.config import default_control_socket

    if getattr(args, "socket", None):
        return args.socket
    if os.environ.get("SPINES_KR_SOCKET"):
        return os.environ["SPINES_KR_SOCKET"]
    port = getattr(args, "port", None) or int(os.environ.get("SPINES_KR_PORT", 8100))
    return default_control_socket(port)


def ask(args, req: dict):
    """One request to the daemon; its data, or None after printing one line of error."""
    from spines_kr.ctl import request, unreachable

    path = control_path(args)
    try:
        reply = request(path, req)
    except OSError as e:
        print(f"spines-kr: error: {unreachable(path, e)}", file=sys.stderr)
        return None
    if not reply.get("ok"):
        print(f"spines-kr: error: {reply.get('error')}", file=sys.stderr)
        return None
    return reply["data"]


def cmd_show(args) -> int:
    data = ask(args, {"cmd": "show", "what": args.what})
    if data is None:
        return 1
    if (args.dot or args.png) and args.what != "topology":
        raise UsageError("show: --dot and --png draw the topology only")
    if args.dot or args.png:
        return _draw(data, args)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(render(args.what, data))
    return 0


def _draw(topo: dict, args) -> int:
    import shutil
    import subprocess

    from spines_kr.viz import to_dot

    dot = to_dot(topo)
    if args.dot:
        print(dot, end="")
    if args.png:
        if shutil.which("dot") is None:
            print("spines-kr: error: --png needs Graphviz's dot (apt install graphviz)",
                  file=sys.stderr)
            return 1
        out = subprocess.run(["dot", "-Tpng", "-o", args.png], input=dot, text=True,
                             capture_output=True)
        if out.returncode != 0:
            print(f"spines-kr: error: dot failed: {out.stderr.strip()}", file=sys.stderr)
            return 1
    return 0


def _data_link_rows(l: dict) -> list[str]:
    """The data links' figures under a link's row of ``show links``."""
    rows = []
    r, t = l.get("reliable"), l.get("realtime")
    if r and (r["frames_sent"] or r["frames_in"]):
        rows.append(f"    reliable: window {r['window']:g} in flight {r['in_flight']} backlog "
                    f"{r['backlog_frames']} sent {r['frames_sent']} retransmitted "
                    f"{r['retransmissions']} timeouts {r['timeouts']} recovery "
                    f"{r['recovery_ms'] if r['recovery_ms'] is not None else '-'} ms; in "
                    f"{r['frames_in']} duplicates {r['duplicates_in']}")
    if t and (t["frames_sent"] or t["frames_in"]):
        rows.append(f"    realtime: sent {t['frames_sent']} nacks in {t['nacks_in']} "
                    f"retransmitted {t['retransmissions']} (capped {t['retransmissions_capped']},"
                    f" too late {t['too_late_to_resend']}); in {t['frames_in']} nacks out "
                    f"{t['nacks_out']} recovered {t['recovered']} late drops {t['late_drops']} "
                    f"recovery {t['recovery_ms'] if t['recovery_ms'] is not None else '-'} ms")
    return rows


def render(what: str, data) -> str:
    """Human-readable tables of the show views."""
    if what == "status":
        counters = data.pop("counters", {})
        lines = [f"{k:16} {v}" for k, v in data.items()]
        lines += ["counters:"] + [f"  {k:30} {v}" for k, v in counters.items()]
        return "\n".join(lines)
    if what in ("neighbors", "links"):
        head = (f"{'neighbor':15} {'address':15} {'dev':12} {'state':5} {'rtt_ms':>8} {'loss':>7} "
                f"{'cost':>6} {'since_s':>9}  emulation")
        rows = []
        for l in data:
            emu = l.get("emulation") or {}
            rows.append(
                f"{l['neighbor_id'] or '-':15} {l['neighbor_address']:15} {l['ifname']:12} "
                f"{l['state']:5} {l['rtt_ms'] if l['rtt_ms'] is not None else '-':>8} "
                f"{l['loss']:>7.2%} {l['cost'] if l.get('cost') is not None else '-':>6}"
                f"{'!' if l.get('problematic') else ' '}{l['since_s']:>8.1f}  "
                + (" ".join(f"{k}={v:g}" for k, v in emu.items() if v) or "-"))
            if what == "links":
                rows += _data_link_rows(l)
        return "\n".join([head, *rows])
    if what == "routes":
        head = f"{'destination':18} {'cost':>5}  next hops"
        rows = [f"{r['dst']:18} {r['cost']:>5}  " + ", ".join(
            f"via {h['gateway']} dev {h['dev'] or h['ifindex']}" for h in r["nexthops"])
            + ("" if r["installed"] else "  (not installed)") for r in data]
        return "\n".join([head, *rows])
    if what == "groups":
        rows = [f"{g['group']:15} {g['kind']:9} {'yes' if g['member'] else 'no':6} "
                f"{','.join(g['members']) or '-':32} {','.join(g['route_to']) or '-'}" for g in data]
        return "\n".join([f"{'group':15} {'kind':9} {'member':6} {'members':32} route to", *rows])
    if what == "tunnels":
        head = (f"{'peer':15} {'kind':9} {'interface':15} {'mtu':>5} {'local':15} "
                f"{'remote':15} state")
        rows = [f"{t['peer'] or '-':15} {t['kind']:9} {t['ifname'] or '-':15} "
                f"{t['mtu'] or '-':>5} {t['local'] or '-':15} {t['remote']:15} {t['state']}"
                + (f" ({t['error']})" if t.get("error") else "") for t in data["tunnels"]]
        extra = [f"unresolved {a}: {why}" for a, why in data.get("unresolved", {}).items()]
        return "\n".join([head, *rows, *extra])
    if what == "topology":
        rows = [f"{l['from']:15} -> {l['to']:15} cost {l['cost']}" for l in data["links"]]
        return "\n".join([f"{len(data['nodes'])} nodes, seen from {data['self']}", *rows])
    return json.dumps(data, indent=2)


def _setlink_parser(sub) -> None:
    p = sub.add_parser("setlink", help="emulate a link's bandwidth, latency, loss and burst",
                       description="Set the emulated characteristics of the link from SOURCE to "
                                   "DEST (Spines' setlink; the daemon told must run with -m). "
                                   "Told to DEST's daemon, as Spines does, it shapes what DEST "
                                   "receives from SOURCE; told to SOURCE's, what SOURCE sends. "
                                   "Zeros clear the emulation.")
    p.add_argument("bandwidth", type=float, help="kbit/s (0: unlimited)")
    p.add_argument("latency", type=float, help="ms added")
    p.add_argument("loss", type=float, help="loss rate, percent")
    p.add_argument("burst", type=float, help="probability, percent, that a loss follows a loss")
    p.add_argument("source", help="the sending end's logical ID or link address")
    p.add_argument("dest", help="the receiving end's logical ID or link address")
    p.add_argument("port", nargs="?", type=int,
                   help="overlay port of the daemon (default 8100; the daemon checks it is its own)")
    p.add_argument("--socket", help="control socket of the daemon")
    p.set_defaults(func=cmd_setlink)


def cmd_setlink(args) -> int:
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"setlink: port {args.port} is not a UDP port (1..65535)")
    req = {"cmd": "setlink", "bandwidth_kbps": args.bandwidth, "latency_ms": args.latency,
           "loss_pct": args.loss, "burst_pct": args.burst, "source": args.source, "dest": args.dest}
    if args.port is not None:
        req["port"] = args.port
    data = ask(args, req)
    if data is None:
        return 1
    for item in data["links"]:
        print(f"{item['link']} (at the {item.get('end', 'sending')} end): daemon traffic "
              f"{item['daemon']}; kernel traffic: {item['kernel']}")
    return 0


def _join_parsers(sub) -> None:
    for name, what in (("join", "join a multicast or anycast group"),
                       ("leave", "leave a group")):
        p = sub.add_parser(name, help=what, description=f"{what.capitalize()} (class D "
                           "224.0.0.0/4 multicast, class E 240.0.0.0/4 anycast) on the running daemon.")
        p.add_argument("group", help="group address")
        p.add_argument("--socket", help="control socket of the daemon")
        p.add_argument("-p", "--port", type=int, help="overlay port of the daemon (default 8100)")
        p.set_defaults(func=cmd_join)


def cmd_join(args) -> int:
    d = ask(args, {"cmd": args.command, "group": args.group})
    if d is None:
        return 1
    state = "member of" if d["member"] else "not a member of"
    others = [h for h in d.get("held_by", []) if h != "control"]
    note = "" if d["changed"] else " (already)"
    if not d["member"] or others:
        note += f" (also held by: {', '.join(others)})" if others else ""
    print(f"{state} {d['group']}{note}")
    return 0


def _neighbor_parser(sub) -> None:
    p = sub.add_parser("neighbor", help="add or remove a neighbor (link or tunnel) at run time",
                       description="Add or remove a neighbor on the running daemon, without a "
                                   "restart: a direct link when ADDRESS is on-link, else a kernel "
                                   "tunnel (--tunnel, or the daemon's tunnel setting).  Kept until "
                                   "the daemon restarts: put it in the configuration to keep it.")
    p.add_argument("op", choices=("add", "remove"))
    p.add_argument("address", help="the neighbor's address (on-link, or its underlay address)")
    p.add_argument("--tunnel", choices=("wireguard", "vxlan", "gre", "ipip"),
                   help="make a tunnel of this kind to it")
    p.add_argument("--socket", help="control socket of the daemon")
    p.add_argument("-p", "--port", type=int, help="overlay port of the daemon (default 8100)")
    p.set_defaults(func=cmd_neighbor)


def cmd_neighbor(args) -> int:
    d = ask(args, {"cmd": "neighbor", "op": args.op, "address": args.address,
                   "tunnel": args.tunnel})
    if d is None:
        return 1
    how = f"over a {d['tunnel']} tunnel" if d["tunnel"] else "direct link"
    what = "added" if d["op"] == "add" else "removed"
    print(f"neighbor {d['neighbor']} {what}" + (f" ({how})" if d["op"] == "add" else "")
          + ("" if d["changed"] else " (already)"))
    return 0


def _keygen_parser(sub) -> None:
    p = sub.add_parser("keygen", help="write a new overlay key file (mode 0600)",
                       description="Write a new overlay key (shared by every node), or with "
                                   "--wireguard this node's own WireGuard private key (the "
                                   "'wg genkey' format; its public key is printed and reaches "
                                   "tunnel peers over the authenticated control plane).")
    p.add_argument("file", help="path of the key file to create (never overwritten)")
    p.add_argument("--wireguard", action="store_true",
                   help="a WireGuard private key for this node's tunnels (wireguard_key_file)")
    p.set_defaults(func=cmd_keygen)


def cmd_keygen(args) -> int:
    from spines_kr.keys import new_key_file_text, new_wireguard_key

    public = None
    if args.wireguard:
        text, public = new_wireguard_key()
    else:
        text = new_key_file_text()
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"keygen: {args.file} exists; not overwriting a key") from None
    except OSError as e:
        print(f"spines-kr: error: keygen: {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if public is not None:
        print(f"wrote {args.file} (mode 0600): this node's WireGuard key; public key {public}")
        return 0
    print(f"wrote {args.file}: copy it to every node of the overlay (mode 0600)")
    return 0


def build_parser(with_lab: bool = True, with_vagrant: bool = True) -> Parser:
    """The whole command line; ``with_lab=False`` leaves the lab package unloaded (the daemon,
    ``show`` and the rest start faster and smaller) with a stand-in ``lab`` entry; the same for
    ``with_vagrant`` and the Vagrant lab (``spines_kr.vagrantlab``)."""
    parser = Parser(prog="spines-kr", description="Kernel-routing overlay manager.")
    parser.add_argument("--version", action="version", version=f"spines-kr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _daemon_parser(sub)
    _show_parser(sub)
    _setlink_parser(sub)
    _join_parsers(sub)
    _keygen_parser(sub)
    _neighbor_parser(sub)
    _capabilities_parser(sub)
    from spines_kr.tools import add_tool_parsers

    add_tool_parsers(sub)
    if with_lab:
        from spines_kr.lab.cli import add_lab_parser

        add_lab_parser(sub)
    else:
        sub.add_parser("lab", help="namespace lab on this machine (spines-kr lab --help)")
    if with_vagrant:
        from spines_kr.vagrantlab.cli import add_vagrant_parser

        add_vagrant_parser(sub)
    else:
        sub.add_parser("vagrant", help="Vagrant multi-VM lab on this machine, inside its own "
                                       "namespace (spines-kr vagrant --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] != "daemon":
        from spines_kr.daemon.logging import setup

        setup("warning")  # library logs (probes, the lab) stay quiet unless something is wrong
    try:
        args = build_parser(with_lab=bool(words) and words[0] == "lab",
                            with_vagrant=bool(words) and words[0] == "vagrant").parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(f"spines-kr: error: {str(e).removeprefix('spines-kr: ')}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one line for the user, the traceback on request
        if os.environ.get("SPINES_KR_DEBUG"):
            raise
        print(f"spines-kr: internal error: {type(e).__name__}: {e} "
              f"(set SPINES_KR_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
