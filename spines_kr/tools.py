"""Tools on the Python client (``spines_kr.client``): messages through the overlay from a shell.

    spines-kr send DEST PORT [MESSAGE...]     one message (or one per stdin line) to a node's
                                              logical ID or a group, and a virtual port
    spines-kr recv PORT [--group G]...        print what arrives on a virtual port / groups
    spines-kr send --stream DEST PORT [MSG]   a reliable stream: MESSAGE, or stdin as it is,
                                              then an orderly close
    spines-kr recv --stream PORT              accept one stream on PORT, its bytes to stdout
    spines-kr ping DEST                       round trips through the overlay (sp_ping's)
    spines-kr ping --echo                     answer pings (sp_ping without -s)
    spines-kr traceroute DEST                 the overlay path with hops and costs
                         [--members | --edistance] GROUP
    spines-kr flood send DEST PORT            throughput: a stream of numbered messages
    spines-kr flood recv PORT                 ... counted, with loss, rate and latency
                                              (sp_uflooder's messages)

The link protocol (``--link``, send/recv/ping/flood): ``udp`` (best effort, the default), ``reliable``
(Spines' RELIABLE_LINKS: every hop recovers its losses, in order) or ``realtime``
(SOFT_REALTIME_LINKS: losses recovered while they can still arrive in time); it is the session's,
as libspines' ``spines_socket`` protocol argument, and applies to what that session sends.
A stream (``--stream``: Spines' RELIABLE_STREAM_SESSION, end-to-end acknowledged, flow
controlled, ordered) runs over ``reliable`` links unless ``--link`` says otherwise.

The daemon: ``--ipc PATH``; or ``--host HOST`` (TCP, its session ports: overlay port + 7 and + 9)
with ``--port`` (default $SPINES_KR_PORT, else 8100); or ``--port P`` alone: IPC at
/tmp/spines<P> (Spines' sample programs' ``-p``); else $SPINES_KR_IPC (``lab exec`` sets it to
that node's IPC path); else $SPINES_KR_PORT's /tmp/spines<P>; else /tmp/spines8100.

Protocols (byte-compatible with Spines' sample programs, so either side may be Spines'):
    ping (testprogs/sp_ping.c): a message of SIZE bytes (at least 56) starting with three
        struct timevals (t1: sent, t2: received by the echoer, t3: echoed; 64-bit seconds and
        microseconds, the host's byte order) and two ints (round number, message size).  The
        echoer checks the size, stamps t2 and t3 and sends it back to the sender's (node,
        port); round trip = (t2 - t1) + (t4 - t3), t4 being its arrival: clocks need not agree.
    flood (testprogs/sp_uflooder.c): messages of SIZE bytes (at least 20) starting with five
        big-endian int32: size, count being sent, sequence number, send time (seconds,
        microseconds); then 9 end marks (sequence -1, 72 bytes: sizeof(pkt_stats) on 64-bit).
Errors: one line on stderr; exit 2 for usage errors, 1 when the daemon cannot be reached or
refuses, or nothing arrived in time.  Nothing here is imported by the daemon.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time

DEFAULT_PORT = 8100
PING_FORMAT = "=qqqqqqii"  # struct timeval t1, t2, t3; int round_no, msg_size (LP64)
PING_MIN = struct.calcsize(PING_FORMAT)  # 56
FLOOD_FORMAT = "!iiiii"  # size, count, number, seconds, microseconds
FLOOD_MIN = struct.calcsize(FLOOD_FORMAT)  # 20
FLOOD_END_SIZE = 72  # sizeof(pkt_stats) on 64-bit Linux: sp_uflooder's end mark
FLOOD_END_COPIES = 9


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def _median(xs) -> float:
    """(statistics would load decimal, which OpenWrt's Python does not have)"""
    ys = sorted(xs)
    mid = len(ys) // 2
    return ys[mid] if len(ys) % 2 else (ys[mid - 1] + ys[mid]) / 2


def add_tool_parsers(sub) -> None:
    """Add send, recv, ping, traceroute and flood to the ``spines-kr`` subcommands."""
    _send_parser(sub)
    _recv_parser(sub)
    _ping_parser(sub)
    _traceroute_parser(sub)
    _flood_parser(sub)


# --- shared -------------------------------------------------------------------------------------


LINKS = {"udp": 0x0, "reliable": 0x1, "realtime": 0x2}  # client.UDP_LINKS, ...


def _daemon_flags(p, link: bool = True) -> None:
    if link:
        p.add_argument("--link", choices=tuple(LINKS), default=None,
                       help="link protocol of what this session sends: udp (best effort, "
                            "default), reliable (hop-by-hop recovery, in order; the default "
                            "of --stream), realtime (soft real time: recovered while still "
                            "in time)")
    g = p.add_argument_group("the daemon (default: $SPINES_KR_IPC, else /tmp/spines8100)")
    g.add_argument("--ipc", metavar="PATH", help="the daemon's IPC path (its -ud)")
    g.add_argument("--host", help="reach the daemon over TCP at HOST")
    g.add_argument("--port", type=int, metavar="P",
                   help="the daemon's overlay port: TCP with --host, else IPC at /tmp/spines<P>")


def daemon_address(args, environ=None):
    """Where the daemon is, from the flags, then the environment (see the module doc)."""
    env = os.environ if environ is None else environ
    port = getattr(args, "port", None)
    if port is not None and not 1 <= port <= 65535 - 9:
        _usage(f"--port {port}: 1..65526 (the session ports are P+7 and P+9)")
    if getattr(args, "ipc", None):
        return args.ipc
    if getattr(args, "host", None):
        if port is None:
            port = _env_port(env) or DEFAULT_PORT
        return (args.host, port)
    if port is not None:
        return f"/tmp/spines{port}"
    if env.get("SPINES_KR_IPC"):
        return env["SPINES_KR_IPC"]
    return f"/tmp/spines{_env_port(env) or DEFAULT_PORT}"


def _env_port(env) -> int | None:
    raw = env.get("SPINES_KR_PORT")
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535 - 9:
        _usage(f"SPINES_KR_PORT={raw!r} is not a port")
    return port


def _usage(message: str):
    from spines_kr.cli import UsageError

    raise UsageError(message)


def _fail(message: str) -> int:
    print(f"spines-kr: error: {message}", file=sys.stderr)
    return 1


def _open(args, protocol: int = 0):
    """(a session with the daemon, None), or (None, exit code) after one line of error."""
    from spines_kr import client

    where = daemon_address(args)
    protocol |= LINKS[getattr(args, "link", None) or "udp"]
    try:
        return client.socket(where, protocol, timeout=10.0), None
    except client.SpinesError as e:
        return None, _fail(e.strerror or str(e))
    except ValueError as e:
        _usage(str(e))


def _address(text: str, what: str) -> int:
    from spines_kr import client

    try:
        return client.address(text)
    except ValueError as e:
        _usage(f"{what}: {e}")


def _port(text, what: str, zero: bool = False) -> int:
    lo = 0 if zero else 1
    if not str(text).isdigit() or not lo <= int(text) <= 65535:
        _usage(f"{what} {text!r}: a virtual port, {lo}..65535")
    return int(text)


def _show(payload: bytes) -> str:
    try:
        text = payload.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "0x" + payload.hex()


def _quiet_stdout() -> None:
    """stdout was closed under us (``| head``): stop writing there, without a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _bind_and_join(s, args) -> int | None:
    """Bind ``args.bind`` and join ``args.group``; an exit code when the daemon refused."""
    from spines_kr import client

    try:
        if getattr(args, "bind", None):
            s.bind(args.bind)
        for g in getattr(args, "group", None) or ():
            s.join(g)
    except client.SpinesError as e:
        return _fail(e.strerror or str(e))
    return None


# --- send ---------------------------------------------------------------------------------------


def _send_parser(sub) -> None:
    p = sub.add_parser("send", help="send a message through the overlay",
                       description="Send MESSAGE (or each line of stdin when none is given) to "
                                   "virtual port PORT of DEST: a node's logical ID, a multicast "
                                   "(224.0.0.0/4) or an anycast (240.0.0.0/4) group.")
    p.add_argument("dest", help="logical ID or group")
    p.add_argument("dest_port", metavar="PORT", help="virtual port")
    p.add_argument("message", nargs="*", help="the message (words joined by spaces)")
    p.add_argument("--size", type=int, metavar="N", help="send N bytes (zeros) instead")
    p.add_argument("-n", "--count", type=int, default=1, help="send it this many times")
    p.add_argument("--ttl", type=int, help="hops the message may travel (default 255)")
    p.add_argument("--bind", type=int, metavar="PORT", help="send from this virtual port")
    p.add_argument("--end", action="store_true",
                   help="then send an empty message (Spines' sample programs' end of stream)")
    p.add_argument("--stream", action="store_true",
                   help="connect a reliable stream to DEST:PORT (a stream listener there) and "
                        "send MESSAGE, --size bytes or stdin as it is, then close in order")
    _daemon_flags(p)
    p.set_defaults(func=cmd_send)


def _stream_open(args):
    """(a stream session, None), or (None, exit code) after one line of error."""
    from spines_kr import client

    where = daemon_address(args)
    try:
        return client.stream_socket(where, LINKS[args.link or "reliable"], timeout=10.0), None
    except client.SpinesError as e:
        return None, _fail(e.strerror or str(e))


def _stream_error(e: OSError, what: str) -> int:
    if isinstance(e, ConnectionRefusedError):
        return _fail(f"{what}: connection refused (nobody listens there)")
    if isinstance(e, ConnectionResetError):
        return _fail(f"{what}: the stream was reset by the other end")
    if isinstance(e, TimeoutError):
        return _fail(f"{what}: no answer in time")
    return _fail(f"{what}: {e.strerror or e}")


def _send_stream(args, dest: int, port: int) -> int:
    from spines_kr import client

    if client.is_group(dest):
        _usage(f"DEST {client.ip(dest)}: a stream connects to a node, not a group")
    if args.end or args.ttl is not None or args.count != 1:
        _usage("--stream: --end, --ttl and --count do not apply to a stream")
    s, code = _stream_open(args)
    if s is None:
        return code
    what = f"stream to {client.ip(dest)}:{port}"
    total = 0
    with s:
        try:
            if args.bind:
                s.bind(args.bind)
            s.connect((dest, port))
            if args.size is not None:
                left = args.size
                while left:
                    n = min(left, 1 << 20)
                    s.sendall(bytes(n))
                    left -= n
                total = args.size
            elif args.message:
                data = " ".join(args.message).encode()
                s.sendall(data)
                total = len(data)
            else:
                while chunk := sys.stdin.buffer.read1(1 << 20):
                    s.sendall(chunk)
                    total += len(chunk)
            s.shutdown()
            while s.recv(65536):  # the other end's close: everything arrived
                pass
        except OSError as e:
            return _stream_error(e, what)
        src, sport = s.getsockname()
    print(f"sent {total} bytes over a stream to {client.ip(dest)}:{port} from {src}:{sport}")
    return 0


def cmd_send(args) -> int:
    from spines_kr import client

    dest = _address(args.dest, "DEST")
    port = _port(args.dest_port, "PORT")
    if args.stream:
        if args.size is not None and args.size < 0:
            _usage(f"--size {args.size}: at least 0")
        return _send_stream(args, dest, port)
    if args.count < 0:
        _usage(f"--count {args.count}: at least 0")
    if args.ttl is not None and not 0 <= args.ttl <= 255:
        _usage(f"--ttl {args.ttl}: 0..255")
    if args.size is not None:
        if not 0 <= args.size <= client.MAX_SPINES_CLIENT_MSG:
            _usage(f"--size {args.size}: 0..{client.MAX_SPINES_CLIENT_MSG}")
        messages = [bytes(args.size)] * args.count
    elif args.message:
        messages = [" ".join(args.message).encode()] * args.count
    else:
        messages = [line.rstrip(b"\n") for line in sys.stdin.buffer]
    for m in messages:
        if len(m) > client.MAX_SPINES_CLIENT_MSG:
            _usage(f"a message of {len(m)} bytes: at most {client.MAX_SPINES_CLIENT_MSG}")
    s, code = _open(args)
    if s is None:
        return code
    with s:
        if (code := _bind_and_join(s, args)) is not None:
            return code
        if args.ttl is not None:
            s.setsockopt(0, client.SPINES_IP_MULTICAST_TTL if client.is_group(dest)
                         else client.SPINES_IP_TTL, args.ttl)
        try:
            for m in messages:
                s.sendto(m, (dest, port))
            if args.end:
                s.sendto(b"", (dest, port))
            s.confirm()  # everything sent reached the daemon before the session closes
        except client.SpinesError as e:
            return _fail(e.strerror or str(e))
        src, sport = s.getsockname()
    total = sum(len(m) for m in messages)
    print(f"sent {len(messages)} message{'s' if len(messages) != 1 else ''} ({total} bytes) "
          f"to {client.ip(dest)}:{port} from {src}:{sport}")
    return 0


# --- recv ---------------------------------------------------------------------------------------


def _recv_parser(sub) -> None:
    p = sub.add_parser("recv", help="print messages arriving on a virtual port or group",
                       description="Bind virtual port PORT (0: any), join the groups given, and "
                                   "print each message that arrives: sender -> destination, "
                                   "size, content.")
    p.add_argument("vport", metavar="PORT", help="virtual port to bind (0: the daemon picks)")
    p.add_argument("-g", "--group", action="append", metavar="GROUP",
                   help="join this multicast or anycast group (repeatable)")
    p.add_argument("-n", "--count", type=int, help="stop after this many messages")
    p.add_argument("-t", "--timeout", type=float, metavar="S",
                   help="stop after S seconds without a message")
    p.add_argument("--until-empty", action="store_true",
                   help="stop at an empty message (Spines' end of stream)")
    p.add_argument("--no-loop", action="store_true",
                   help="do not receive this session's own group messages")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per message")
    out.add_argument("--raw", action="store_true", help="write the payloads only, as they are")
    p.add_argument("--stream", action="store_true",
                   help="listen for a reliable stream on PORT, accept one and write its bytes "
                        "to stdout until the other end closes (--timeout: for the connection)")
    _daemon_flags(p)
    p.set_defaults(func=cmd_recv)


def _recv_stream(args, port: int) -> int:
    from spines_kr import client

    if args.group or args.count is not None or args.until_empty or args.json:
        _usage("--stream: --group, --count, --until-empty and --json do not apply to a stream")
    if not port:
        _usage("--stream: a listener needs a virtual port (not 0)")
    s, code = _stream_open(args)
    if s is None:
        return code
    total = 0
    with s:
        try:
            s.bind(port)
            s.listen()
        except client.SpinesError as e:
            return _fail(e.strerror or str(e))
        node, bound = s.getsockname()
        print(f"listening for a stream on {node}:{bound}", file=sys.stderr, flush=True)
        s.settimeout(args.timeout)
        try:
            conn, (peer, pport) = s.accept()
        except TimeoutError:
            return _fail(f"no connection within {args.timeout:g} s")
        except OSError as e:
            return _stream_error(e, "accept")
        what = f"stream from {peer}:{pport}"
        print(f"connection from {peer}:{pport}", file=sys.stderr, flush=True)
        with conn:
            conn.settimeout(None)
            try:
                while data := conn.recv(1 << 20):
                    total += len(data)
                    sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                _quiet_stdout()
                conn.abort()
                return 0
            except OSError as e:
                return _stream_error(e, what)
    print(f"received {total} bytes from {peer}:{pport}", file=sys.stderr)
    return 0


def cmd_recv(args) -> int:
    from spines_kr import client

    port = _port(args.vport, "PORT", zero=True)
    if args.stream:
        if args.timeout is not None and args.timeout <= 0:
            _usage(f"--timeout {args.timeout}: more than 0")
        return _recv_stream(args, port)
    for g in args.group or ():
        if not client.is_group(_address(g, "--group")):
            _usage(f"--group {g}: not a multicast (224.0.0.0/4) or anycast (240.0.0.0/4) group")
    if args.count is not None and args.count < 1:
        _usage(f"--count {args.count}: at least 1")
    if args.timeout is not None and args.timeout <= 0:
        _usage(f"--timeout {args.timeout}: more than 0")
    s, code = _open(args)
    if s is None:
        return code
    args.bind = port
    got = 0
    with s:
        if (code := _bind_and_join(s, args)) is not None:
            return code
        if args.no_loop:
            s.set_loop(False)
        node, bound = s.getsockname()
        groups = f" and {', '.join(args.group)}" if args.group else ""
        print(f"listening on {node}:{bound}{groups}", file=sys.stderr, flush=True)
        s.settimeout(args.timeout)
        try:
            while args.count is None or got < args.count:
                try:
                    m = s.recv_message()
                except TimeoutError:
                    break
                got += 1
                _print_message(m, args)
                if args.until_empty and not m.payload:
                    break
        except client.SpinesError as e:
            return _fail(e.strerror or str(e))
        except BrokenPipeError:
            _quiet_stdout()
            return 0
    if got == 0 and args.timeout is not None:
        return _fail(f"no message within {args.timeout:g} s")
    return 0


def _print_message(m, args) -> None:
    from spines_kr import client

    if args.raw:
        sys.stdout.buffer.write(m.payload)
        sys.stdout.buffer.flush()
        return
    if args.json:
        line = json.dumps({"from": client.ip(m.source), "from_port": m.source_port,
                           "to": client.ip(m.dest), "to_port": m.dest_port,
                           "bytes": len(m.payload), "ttl": m.ttl, "data": _show(m.payload)})
    else:
        line = (f"{client.ip(m.source)}:{m.source_port} -> {client.ip(m.dest)}:{m.dest_port} "
                f"{len(m.payload)} bytes: {_show(m.payload)}")
    print(line, flush=True)


# --- ping ---------------------------------------------------------------------------------------


def _ping_parser(sub) -> None:
    p = sub.add_parser("ping", help="round trips through the overlay (as Spines' sp_ping)",
                       description="Send numbered messages to virtual port --to-port of DEST, "
                                   "where 'spines-kr ping --echo' (or Spines' sp_ping) answers, "
                                   "and print each round trip.")
    p.add_argument("dest", nargs="?", help="logical ID of the node whose echoer answers")
    p.add_argument("--echo", action="store_true", help="answer pings instead")
    p.add_argument("--to-port", type=int, default=8400, metavar="PORT",
                   help="the echoer's virtual port (default 8400, sp_ping's)")
    p.add_argument("--bind", type=int, metavar="PORT",
                   help="bind this virtual port (echo: default 8400)")
    p.add_argument("-c", "--count", type=int, help="rounds (default 5; echo: forever)")
    p.add_argument("-i", "--interval", type=float, default=1.0, metavar="S",
                   help="seconds between rounds (default 1)")
    p.add_argument("-s", "--size", type=int, default=64, metavar="BYTES",
                   help=f"message size (default 64, at least {PING_MIN})")
    p.add_argument("-W", "--wait", type=float, default=2.0, metavar="S",
                   help="seconds to wait for each answer (default 2)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _daemon_flags(p)
    p.set_defaults(func=cmd_ping)


def _now_tv() -> tuple[int, int]:
    ns = time.time_ns()
    return ns // 1_000_000_000, ns // 1000 % 1_000_000


def cmd_ping(args) -> int:
    if args.echo:
        if args.dest:
            _usage("ping --echo takes no DEST")
        return _ping_echo(args)
    if not args.dest:
        _usage("ping: DEST is required (or --echo to answer pings)")
    dest = _address(args.dest, "DEST")
    _port(args.to_port, "--to-port")
    if not PING_MIN <= args.size <= 50_000:
        _usage(f"--size {args.size}: {PING_MIN}..50000")
    count = 5 if args.count is None else args.count
    if count < 1 or args.interval < 0 or args.wait <= 0:
        _usage("ping: --count at least 1, --interval at least 0, --wait more than 0")
    s, code = _open(args)
    if s is None:
        return code
    from spines_kr import client

    rtts: list[float] = []
    sent = 0
    with s:
        if (code := _bind_and_join(s, args)) is not None:
            return code
        print(f"ping {client.ip(dest)}:{args.to_port} from {':'.join(map(str, s.getsockname()))}: "
              f"{args.size} bytes", flush=True)
        try:
            for rnd in range(count):
                if rnd:
                    time.sleep(args.interval)
                t1 = _now_tv()
                body = struct.pack(PING_FORMAT, *t1, 0, 0, 0, 0, rnd, args.size)
                s.sendto(body + bytes(args.size - PING_MIN), (dest, args.to_port))
                sent += 1
                rtt = _ping_wait(s, rnd, args)
                if rtt is None:
                    print(f"round {rnd}: no answer within {args.wait:g} s", flush=True)
                else:
                    rtts.append(rtt)
                    print(f"{args.size} bytes from {client.ip(dest)}:{args.to_port}: round {rnd} "
                          f"rtt {rtt:.0f} us", flush=True)
        except KeyboardInterrupt:
            pass
        except client.SpinesError as e:
            return _fail(e.strerror or str(e))
    return _ping_summary(client.ip(dest), sent, rtts, args.json)


def _ping_wait(s, rnd: int, args) -> float | None:
    deadline = time.monotonic() + args.wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        s.settimeout(left)
        try:
            m = s.recv_message()
        except TimeoutError:
            return None
        t4 = time.time_ns() // 1000
        if len(m.payload) < PING_MIN:
            continue
        s1, u1, s2, u2, s3, u3, got, size = struct.unpack_from(PING_FORMAT, m.payload)
        if got != rnd or size != len(m.payload):
            continue  # a late answer to an earlier round, or not an answer
        return (s2 * 1e6 + u2 - s1 * 1e6 - u1) + (t4 - s3 * 1e6 - u3)


def _ping_summary(dest: str, sent: int, rtts: list[float], as_json: bool) -> int:
    loss = 100.0 * (sent - len(rtts)) / sent if sent else 0.0
    summary = {"dest": dest, "sent": sent, "received": len(rtts), "loss_pct": round(loss, 1)}
    if rtts:
        summary.update(rtt_us_min=round(min(rtts)), rtt_us_avg=round(_mean(rtts)),
                       rtt_us_max=round(max(rtts)), rtt_us_median=round(_median(rtts)))
    if as_json:
        print(json.dumps(summary))
    else:
        line = f"--- {dest}: {sent} sent, {len(rtts)} answered, {loss:.0f}% lost"
        if rtts:
            line += (f"; rtt min/avg/max {summary['rtt_us_min']}/{summary['rtt_us_avg']}/"
                     f"{summary['rtt_us_max']} us")
        print(line)
    return 0 if rtts else 1


def _ping_echo(args) -> int:
    from spines_kr import client

    if args.bind is None:
        args.bind = 8400
    s, code = _open(args)
    if s is None:
        return code
    answered = 0
    with s:
        if (code := _bind_and_join(s, args)) is not None:
            return code
        print(f"answering pings on {':'.join(map(str, s.getsockname()))}", file=sys.stderr,
              flush=True)
        try:
            while args.count is None or answered < args.count:
                m = s.recv_message()
                t2 = _now_tv()
                if len(m.payload) < PING_MIN:
                    continue
                fields = list(struct.unpack_from(PING_FORMAT, m.payload))
                if fields[7] != len(m.payload):
                    continue  # sp_ping: "corrupted packet"
                fields[2:4] = t2
                fields[4:6] = _now_tv()
                s.sendto(struct.pack(PING_FORMAT, *fields) + m.payload[PING_MIN:],
                         (client.ip(m.source), m.source_port))
                answered += 1
        except KeyboardInterrupt:
            pass
        except client.SpinesError as e:
            return _fail(e.strerror or str(e))
    return 0


# --- traceroute ---------------------------------------------------------------------------------


def _traceroute_parser(sub) -> None:
    p = sub.add_parser("traceroute", help="the overlay path to a node or group, with costs",
                       description="Ask the daemon for the overlay path to DEST (a node, or the "
                                   "nearest member of a group): each hop with its distance and "
                                   "path cost.  --members lists a group's member nodes, "
                                   "--edistance the farthest member's distance from each node.")
    p.add_argument("dest", help="logical ID or group")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--members", action="store_true", help="DEST is a group: its members")
    mode.add_argument("--edistance", action="store_true",
                      help="DEST is a group: for each node, the hops to its farthest member")
    p.add_argument("--json", action="store_true", help="print JSON")
    _daemon_flags(p, link=False)
    p.set_defaults(func=cmd_traceroute)


def cmd_traceroute(args) -> int:
    from spines_kr import client

    dest = _address(args.dest, "DEST")
    if (args.members or args.edistance) and not client.is_group(dest):
        _usage(f"{args.dest} is not a group")
    s, code = _open(args)
    if s is None:
        return code
    with s:
        try:
            if args.members:
                rows, what = s.membership(dest), "members"
            elif args.edistance:
                rows, what = s.edistance(dest), "edistance"
            else:
                rows, what = s.traceroute(dest), "path"
        except client.SpinesError as e:
            return _fail(e.strerror or str(e))
        me = s.getsockname()[0]
    if args.json:
        print(json.dumps({"from": me, "dest": client.ip(dest), what: [
            {"node": a, "distance": d, "cost": c} for a, d, c in rows]}))
        return 0 if rows else 1
    if not rows:
        kind = "no member reachable" if what != "path" else "unreachable"
        return _fail(f"{client.ip(dest)}: {kind} from {me}")
    if what == "path":
        print(f"overlay path from {me} to {client.ip(dest)}")
        if rows[0][1] != 0:
            print(f"{0:3}  {me:15}  cost 0")
    else:
        print(f"{'members of' if what == 'members' else 'edistance of'} {client.ip(dest)}, "
              f"seen from {me}")
    for a, d, c in rows:
        print(f"{d:3}  {a:15}  cost {c}" if what != "edistance" else f"{a:15}  {d} hops")
    return 0


# --- flood --------------------------------------------------------------------------------------


def _flood_parser(sub) -> None:
    p = sub.add_parser("flood", help="throughput: send or receive a numbered stream "
                                     "(as Spines' sp_uflooder)",
                       description="'flood send DEST PORT' sends COUNT messages of SIZE bytes, "
                                   "at RATE kbit/s or as fast as it can; 'flood recv PORT' counts "
                                   "them and reports loss, throughput and one-way latency "
                                   "(meaningful where the clocks agree, as in a lab).")
    fs = p.add_subparsers(dest="mode", required=True, parser_class=type(p))
    snd = fs.add_parser("send", help="send the stream")
    snd.add_argument("dest", help="logical ID or group")
    snd.add_argument("dest_port", metavar="PORT", help="virtual port of the receiver")
    snd.add_argument("-n", "--count", type=int, default=10_000, help="messages (default 10000)")
    snd.add_argument("-s", "--size", type=int, default=1000,
                     help=f"bytes each (default 1000, at least {FLOOD_MIN})")
    snd.add_argument("-r", "--rate", type=float, default=0.0, metavar="KBPS",
                     help="kbit/s (default 0: as fast as possible; sp_uflooder's is 500)")
    snd.add_argument("--ttl", type=int, help="hops the messages may travel")
    snd.add_argument("--batch", type=int, default=32, help="messages per write (default 32)")
    snd.add_argument("--json", action="store_true", help="print the summary as JSON")
    _daemon_flags(snd)
    rcv = fs.add_parser("recv", help="receive and count the stream")
    rcv.add_argument("vport", metavar="PORT", help="virtual port to bind")
    rcv.add_argument("-g", "--group", action="append", metavar="GROUP", help="join a group")
    rcv.add_argument("-t", "--timeout", type=float, default=10.0, metavar="S",
                     help="stop after S seconds without a message (default 10)")
    rcv.add_argument("--json", action="store_true", help="print the summary as JSON")
    _daemon_flags(rcv)
    p.set_defaults(func=cmd_flood)


def cmd_flood(args) -> int:
    return _flood_send(args) if args.mode == "send" else _flood_recv(args)


def _flood_send(args) -> int:
    from spines_kr import client

    dest = _address(args.dest, "DEST")
    port = _port(args.dest_port, "PORT")
    if not FLOOD_MIN <= args.size <= client.MAX_SPINES_CLIENT_MSG:
        _usage(f"--size {args.size}: {FLOOD_MIN}..{client.MAX_SPINES_CLIENT_MSG}")
    if args.count < 1 or args.rate < 0 or not 1 <= args.batch <= 4096:
        _usage("flood send: --count at least 1, --rate at least 0, --batch 1..4096")
    if args.ttl is not None and not 0 <= args.ttl <= 255:
        _usage(f"--ttl {args.ttl}: 0..255")
    s, code = _open(args)
    if s is None:
        return code
    pad = bytes(args.size - FLOOD_MIN)
    with s:
        if args.ttl is not None:
            s.setsockopt(0, client.SPINES_IP_MULTICAST_TTL if client.is_group(dest)
                         else client.SPINES_IP_TTL, args.ttl)
        start = time.monotonic()
        try:
            i = 0
            while i < args.count:
                n = min(args.batch, args.count - i)
                sec, usec = _now_tv()
                s.send_batch([struct.pack(FLOOD_FORMAT, args.size, args.count, i + k, sec, usec)
                              + pad for k in range(n)], (dest, port))
                i += n
                if args.rate:
                    due = start + i * args.size * 8 / (args.rate * 1000)
                    if due > time.monotonic():
                        time.sleep(due - time.monotonic())
            elapsed = time.monotonic() - start
            sec, usec = _now_tv()
            end = struct.pack(FLOOD_FORMAT, FLOOD_END_SIZE, args.count, -1, sec, usec)
            s.send_batch([end + bytes(FLOOD_END_SIZE - FLOOD_MIN)] * FLOOD_END_COPIES, (dest, port))
            s.confirm()
        except client.SpinesError as e:
            return _fail(e.strerror or str(e))
    rate = args.count / elapsed if elapsed > 0 else 0.0
    summary = {"sent": args.count, "size": args.size, "seconds": round(elapsed, 3),
               "msgs_per_s": round(rate), "kbps": round(rate * args.size * 8 / 1000, 1)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"sent {args.count} messages of {args.size} bytes to {client.ip(dest)}:{port} in "
              f"{elapsed:.3f} s: {summary['msgs_per_s']} msgs/s, {summary['kbps']} kbit/s")
    return 0


def _flood_recv(args) -> int:
    from spines_kr import client

    port = _port(args.vport, "PORT")
    for g in args.group or ():
        if not client.is_group(_address(g, "--group")):
            _usage(f"--group {g}: not a group")
    if args.timeout <= 0:
        _usage(f"--timeout {args.timeout}: more than 0")
    s, code = _open(args)
    if s is None:
        return code
    args.bind = port
    seen: set[int] = set()
    latencies: list[int] = []
    expected = size = duplicates = corrupted = 0
    first = last = None
    ended = False
    with s:
        if (code := _bind_and_join(s, args)) is not None:
            return code
        print(f"receiving on {':'.join(map(str, s.getsockname()))}", file=sys.stderr,
              flush=True)
        s.settimeout(args.timeout)
        try:
            while not ended:
                try:
                    batch = s.recv_batch()
                except TimeoutError:
                    break
                now_us = time.time_ns() // 1000
                for m in batch:
                    if len(m.payload) < FLOOD_MIN:
                        corrupted += 1
                        continue
                    psize, count, number, sec, usec = struct.unpack_from(FLOOD_FORMAT, m.payload)
                    if psize != len(m.payload):
                        corrupted += 1
                        continue
                    if number == -1:
                        ended = True
                        break
                    if number in seen:
                        duplicates += 1
                        continue
                    if first is None:
                        first, expected, size = time.monotonic(), count, psize
                    seen.add(number)
                    last = time.monotonic()
                    latencies.append(now_us - (sec * 1_000_000 + usec))
        except KeyboardInterrupt:
            pass
        except client.SpinesError as e:
            return _fail(e.strerror or str(e))
    got = len(seen)
    duration = (last - first) if got > 1 else 0.0
    summary = {"received": got, "expected": expected, "ended": ended,
               "loss_pct": round(100.0 * (expected - got) / expected, 3) if expected else None,
               "size": size, "duplicates": duplicates, "corrupted": corrupted,
               "seconds": round(duration, 3),
               "msgs_per_s": round(got / duration) if duration else None,
               "kbps": round(got * size * 8 / duration / 1000, 1) if duration else None}
    if latencies:
        summary.update(latency_ms_mean=round(_mean(latencies) / 1000, 3),
                       latency_ms_median=round(_median(latencies) / 1000, 3),
                       latency_ms_max=round(max(latencies) / 1000, 3))
    if args.json:
        print(json.dumps(summary))
    elif got:
        print(f"received {got} of {expected} messages ({summary['loss_pct']}% lost) of {size} "
              f"bytes in {duration:.3f} s: {summary['msgs_per_s']} msgs/s, {summary['kbps']} "
              f"kbit/s; latency mean {summary['latency_ms_mean']} ms, median "
              f"{summary['latency_ms_median']} ms, max {summary['latency_ms_max']} ms"
              + (f"; {duplicates} duplicates" if duplicates else "")
              + ("" if ended else "; no end mark (timed out)"))
    if not got:
        return _fail(f"no message within {args.timeout:g} s")
    return 0


__all__ = ["add_tool_parsers", "daemon_address"]
