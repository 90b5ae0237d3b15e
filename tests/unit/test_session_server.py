"""The daemon's session server (``dataplane.sessions``) with real Unix sockets in a temporary
directory: the daemon's own loop runs in a thread of the test process, clients (the Python client
and hand-made raw ones) in the test's thread.  No netlink, no namespaces: ``commands`` is a stub,
and ``send`` loops every message back into ``deliver`` (a one-node overlay), recording it.

Conditions are awaited with timeouts (``wait``), never with fixed sleeps."""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from typing import ClassVar

import pytest

from spines_kr import client, config
from spines_kr.daemon.commands import Pending
from spines_kr.daemon.loop import Loop
from spines_kr.dataplane import sessions as sess_mod
from spines_kr.dataplane.message import Message
from spines_kr.dataplane.sessions import Sessions, SessionsUnavailable
from spines_kr.wire import session as w

ME = 0x0A000001  # 10.0.0.1
G = "225.1.1.1"
A = "245.1.1.1"


def ipn(s: str) -> int:
    return int.from_bytes(socket.inet_aton(s), "big")


def wait(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return bool(cond())


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def _add(self, level, event, fields):
        self.events.append((level, event, fields))

    def debug(self, event, **f):
        self._add("debug", event, f)

    def info(self, event, **f):
        self._add("info", event, f)

    def warning(self, event, **f):
        self._add("warning", event, f)

    def error(self, event, **f):
        self._add("error", event, f)

    def named(self, event: str) -> list[dict]:
        return [f for _, e, f in self.events if e == event]


class Commands:
    """The commands API as far as sessions use it, with canned overlay answers."""

    PATHS: ClassVar[dict] = {ipn("10.0.0.3"): [(ME, 0, 0), (ipn("10.0.0.2"), 1, 4), (ipn("10.0.0.3"), 2, 9)],
             ipn("10.0.0.2"): [(ME, 0, 0), (ipn("10.0.0.2"), 1, 4)],
             ME: [(ME, 0, 0)]}

    def __init__(self) -> None:
        self.joins: list[tuple[str, bool, str]] = []
        self.setlinks: list[dict] = []
        self.neighbors: list[tuple[str, str, str]] = []

    def neighbor(self, op, address, tunnel=None, origin="control"):
        if address == "10.9.9.9":
            raise ValueError("neighbor add: 10.9.9.9 is not on-link and no tunnel kind is set")
        self.neighbors.append((op, address, origin))
        return {"neighbor": address, "op": op}

    def logical_id(self) -> int:
        return ME

    def join(self, group, joined=True, origin="control"):
        if group.startswith("224.0.0."):
            raise ValueError(f"{group} is a link-local multicast group (224.0.0.0/24), which is "
                             f"never routed")
        self.joins.append((group, joined, origin))
        return {"group": group, "member": joined, "changed": True, "held_by": [origin]}

    def traceroute(self, dst):
        return list(self.PATHS.get(dst, []))

    def edistance(self, group):
        return [(ME, 2, 0), (ipn("10.0.0.2"), 1, 0)]

    def members(self, group):
        return [ME, ipn("10.0.0.3"), ipn("10.0.0.9")] if group == ipn(G) else []

    def setlink(self, req):
        if req["source"] == "10.9.9.9":
            raise ValueError("setlink: no link from 10.9.9.9 to 10.0.0.1")
        self.setlinks.append(req)
        p = Pending()
        p.resolve({"links": []})
        return p


class Server:
    def __init__(self, tmp_path, **settings) -> None:
        self.path = str(tmp_path / "spines")
        values = {"logical_id": "10.0.0.1", "auth": "none", "ipc_path": self.path,
                  "port": 20000 + os.getpid() % 20000}
        values.update(settings)
        self.cfg = config.build(values)
        self.loop = Loop()
        self.commands = Commands()
        self.log = Log()
        self.sent: list[Message] = []
        self.sessions = Sessions(self.loop, self.commands, self.cfg, self.log, self._send)
        try:
            self.sessions.open()
        except BaseException:
            self.loop.close()
            raise
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def _send(self, msg: Message) -> None:
        self.sent.append(msg)
        self.sessions.deliver(msg)

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the loop's thread; its result."""
        box, done = [], threading.Event()

        def run():
            try:
                box.append(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the test
                box.append(e)
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(10), "the loop did not run the call"
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    @property
    def counters(self) -> dict:
        return self.sessions.counters

    def open_sessions(self) -> int:
        return self.call(lambda: len(self.sessions._sessions))

    def stop(self) -> None:
        self.call(self.sessions.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


def connect(srv, **kw) -> client.SpinesSocket:
    return client.socket(srv.path, timeout=10, **kw)


def recv_exact(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return buf
        buf += chunk
    return buf


def raw(srv, order: str = "<", links: bytes | None = None, token: bytes | None = None):
    """A hand-made session: (control, data, daemon's byte order, ID reply or None)."""
    ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctrl.settimeout(10)
    ctrl.connect(srv.path)
    tok = recv_exact(ctrl, 4)
    data = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    data.settimeout(10)
    data.connect(srv.path + "data")
    daemon_order = w.order_of(recv_exact(data, 4))
    if links is None:
        links = w.Links().encode(order)
    data.sendall(w.endian_word(order) + (tok if token is None else token) + links)
    ident = None
    if links:
        head = recv_exact(data, 32)
        if len(head) == 32:
            h, _, _ = w.next_frame(head + recv_exact(data, 12), 0, daemon_order)
            ident = h
    return ctrl, data, daemon_order, ident


def closed_by_daemon(sock) -> bool:
    """Reads until EOF (the daemon closed the session) or times out."""
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        return False
    return True


# --- handshake, identity, ports ----------------------------------------------------------------


def test_handshake_gives_identity_and_ports_from_40001(server):
    with connect(server) as a, connect(server) as b:
        assert a.getsockname() == ("10.0.0.1", 40001) and b.getsockname() == ("10.0.0.1", 40002)
        assert (a.session_id, b.session_id) == (1, 2)
    assert wait(lambda: server.open_sessions() == 0)
    assert server.counters["sessions.accepted"] == 2 and server.counters["sessions.closed"] == 2


def test_ipc_sockets_have_the_control_sockets_permissions(server):
    for p in (server.path, server.path + "data"):
        st = os.stat(p)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660


def test_ports_wrap_in_40000_to_59999_and_skip_bound_ones(server):
    with connect(server) as a:
        a.bind(59999)
        server.call(setattr, server.sessions, "_last_port", 59997)
        with connect(server) as b, connect(server) as c, connect(server) as d:
            assert [b.port, c.port, d.port] == [59998, 40000, 40001]


# --- delivery -----------------------------------------------------------------------------------


def test_unicast_goes_to_the_bound_session_with_source_stamped(server):
    with connect(server) as a, connect(server) as b:
        a.bind(8400)
        b.setsockopt(0, client.SPINES_IP_TTL, 7)
        assert b.sendto(b"hello", ("10.0.0.1", 8400)) == 5
        a.settimeout(10)
        assert a.recvfrom() == (b"hello", ("10.0.0.1", b.port))
        m = server.sent[-1]
        assert (m.src, m.src_port, m.dst, m.dst_port, m.ttl, m.session, m.link, m.routing) == (
            ME, b.port, ME, 8400, 7, b.session_id, 0, 0)
        assert server.counters["sessions.messages_in"] == 1
        assert server.counters["sessions.messages_out"] == 1


def test_an_empty_message_arrives_as_an_empty_message(server):
    """Spines' sample programs end a stream with one."""
    with connect(server) as a, connect(server) as b:
        b.sendto(b"", a.getsockname())
        assert a.recvfrom() == (b"", ("10.0.0.1", b.port))


def test_a_50000_byte_message_arrives_whole(server):
    big = os.urandom(50_000)
    with connect(server) as a, connect(server) as b:
        b.sendto(big, a.getsockname())
        got, sender = a.recvfrom()
        assert got == big and sender == b.getsockname()
        with pytest.raises(ValueError):
            b.sendto(big + b"!", a.getsockname())


def test_multicast_reaches_every_joined_session_once_and_the_sender_only_with_loop(server):
    with connect(server) as a, connect(server) as b, connect(server) as c:
        a.join(G)
        b.join(G)
        assert (G, True, f"session:{a.session_id}") in server.commands.joins
        assert server.call(server.sessions.groups) == {ipn(G)}
        c.sendto(b"m1", (G, 8400))  # a sender need not be a member
        assert a.recvfrom_dest() == (b"m1", ("10.0.0.1", c.port), G)
        assert b.recvfrom_dest() == (b"m1", ("10.0.0.1", c.port), G)
        a.sendto(b"m2", (G, 8400))  # loop is on by default (Spines)
        assert a.recv() == b"m2" and b.recv() == b"m2"
        a.set_loop(False)
        a.sendto(b"m3", (G, 8400))
        assert b.recv() == b"m3"
        c.sendto(b"m4", (G, 8400))
        assert a.recv() == b"m4"  # m3 was not delivered to a: m4 comes first
        assert b.recv() == b"m4"
        assert next(m for m in server.sent if m.payload == b"m3").session == a.session_id
        a.leave(G)
        assert (G, False, f"session:{a.session_id}") in server.commands.joins
        c.sendto(b"m5", (G, 8400))
        assert b.recv() == b"m5"
        a.sendto(b"to-a", a.getsockname())
        assert a.recv() == b"to-a"  # nothing else was waiting


def test_anycast_reaches_one_joined_session(server):
    with connect(server) as a, connect(server) as b, connect(server) as c:
        a.join(A)
        b.join(A)
        n = server.call(server.sessions.deliver,
                        Message(ipn("10.0.0.7"), 9, ipn(A), 8400, b"any"))
        assert n == 1
        assert a.recv() == b"any"  # the first member
        c.sendto(b"u", b.getsockname())
        assert b.recv() == b"u"  # b got nothing before


def test_closing_leaves_the_sessions_groups(server):
    with connect(server) as a:
        a.join(G)
        a.join(A)
        sid = a.session_id
    assert wait(lambda: server.open_sessions() == 0)
    left = {(g, o) for g, joined, o in server.commands.joins if not joined}
    assert left == {(G, f"session:{sid}"), (A, f"session:{sid}")}
    assert server.call(server.sessions.groups) == set()


def test_unicast_to_an_unbound_port_is_counted(server):
    assert server.call(server.sessions.deliver, Message(ME, 1, ME, 9999, b"x")) == 0
    assert server.counters["sessions.dropped.no_session"] == 1


# --- refusals: closing the session, as libspines expects ------------------------------------------


def test_bind_to_a_port_in_use_is_refused_and_only_that_session_closes(server):
    with connect(server) as a, connect(server) as b:
        a.bind(8400)
        with pytest.raises(client.SpinesError) as e:
            b.bind(8400)
        assert e.value.errno == errno.EADDRINUSE
        assert server.counters["sessions.refused.bind_in_use"] == 1
        closed = server.log.named("session.closed")
        assert closed[-1]["reason"] == "bind_in_use" and "8400" in closed[-1]["detail"]
        with connect(server) as c:
            c.sendto(b"still", ("10.0.0.1", 8400))
            assert a.recv() == b"still"


def test_binding_the_port_one_holds_is_no_change(server):
    with connect(server) as a:
        a.bind(a.port)
        a.bind(0)
        assert a.port == 40001


@pytest.mark.parametrize("protocol", [client.RELIABLE_LINKS, client.SOFT_REALTIME_LINKS])
def test_reliable_and_realtime_link_sessions_send_with_their_protocol(server, protocol):
    with connect(server, protocol=protocol) as a:
        a.sendto(b"hi", ("10.0.0.1", 7))
        assert wait(lambda: server.sent)
    assert server.sent[-1].link == protocol


def test_backpressure_stops_reading_reliable_sessions_only(server):
    with connect(server, protocol=client.RELIABLE_LINKS) as rel, connect(server) as be:
        server.call(server.sessions.backpressure, True)
        assert server.counters["sessions.backpressure_on"] == 1
        n = len(server.sent)
        rel.sendto(b"waits", ("10.0.0.1", 7))
        be.sendto(b"goes", ("10.0.0.1", 7))
        assert wait(lambda: any(m.payload == b"goes" for m in server.sent[n:]))
        server.call(lambda: None)  # one more turn of the loop: the reliable one is not read
        assert not any(m.payload == b"waits" for m in server.sent[n:])
        server.call(server.sessions.backpressure, False)
        assert wait(lambda: any(m.payload == b"waits" for m in server.sent[n:]))


@pytest.mark.parametrize("protocol, words", [
    (client.INTRUSION_TOL_LINKS, "INTRUSION_TOL_LINKS"),
    (client.SOURCE_BASED_ROUTING, "SOURCE_BASED_ROUTING"),
    (client.INTRUSION_TOL_LINKS | client.IT_PRIORITY_ROUTING, "INTRUSION_TOL_LINKS"),
])
def test_link_protocols_not_served_close_the_session_with_a_logged_reason(server, protocol, words):
    with pytest.raises(client.SpinesError) as e:
        connect(server, protocol=protocol)
    assert e.value.errno == errno.ECONNRESET
    assert server.counters["sessions.refused.unsupported"] == 1
    assert words in server.log.named("session.closed")[-1]["detail"]


def test_udp_connect_is_refused(server):
    with pytest.raises(ValueError):
        connect(server, protocol=client.UDP_CONNECT)
    _, data, _, ident = raw(server, links=w.Links(0, 0, 0, 1, ipn("10.0.0.1"), -1).encode("<"))
    assert ident is None and closed_by_daemon(data)
    assert "UDP_CONNECT" in server.log.named("session.closed")[-1]["detail"]


@pytest.mark.parametrize("optname, value, words", [
    (client.SPINES_SET_PRIORITY, 3, "intrusion-tolerant"),
    (client.SPINES_SET_EXPIRATION, (5, 0), "intrusion-tolerant"),
    (client.SPINES_DISJOINT_PATHS, 2, "intrusion-tolerant"),
])
def test_intrusion_tolerance_options_close_the_session(server, optname, value, words):
    with connect(server) as a:
        a.setsockopt(0, optname, value)
        with pytest.raises(client.SpinesError):
            a.confirm()
    assert words in server.log.named("session.closed")[-1]["detail"]


@pytest.mark.parametrize("cmd, words", [
    (w.Listen(), "stream"), (w.Connect(1, 2), "stream"), (w.Accept(1, 2, b"x"), "stream"),
    (w.SetDissem(2, 0), "intrusion-tolerant"), (w.FloodSend(1, 2, 3, 4, 5), "flooder"),
])
def test_streams_dissemination_and_the_flooder_close_the_session(server, cmd, words):
    _, data, _, _ = raw(server)
    data.sendall(cmd.encode("<"))
    assert closed_by_daemon(data)
    assert words in server.log.named("session.closed")[-1]["detail"]


def test_join_refused_by_the_node_or_of_a_non_group_closes_the_session(server):
    with connect(server) as a, pytest.raises(client.SpinesError):
        a.join("224.0.0.5")
    assert "link-local" in server.log.named("session.closed")[-1]["detail"]
    with connect(server) as b, pytest.raises(client.SpinesError):
        b.join("10.1.1.1")
    assert server.counters["sessions.refused.join"] == 2


def test_add_neighbor_without_m_is_logged_and_changes_nothing(server):
    with connect(server) as a:
        a.setsockopt(0, client.SPINES_ADD_NEIGHBOR, "10.0.0.9")
        a.confirm()
        assert server.counters["sessions.ignored.add_neighbor"] == 1
        assert server.log.named("session.add_neighbor_ignored")[0]["neighbor"] == "10.0.0.9"
        assert server.commands.neighbors == []


def test_add_neighbor_with_m_adds_the_link(tmp_path):
    srv = Server(tmp_path, accept_link_commands=True)
    try:
        with connect(srv) as a:
            a.setsockopt(0, client.SPINES_ADD_NEIGHBOR, "10.0.0.9")
            a.setsockopt(0, client.SPINES_ADD_NEIGHBOR, "10.9.9.9")  # refused: stays open
            a.confirm()
            assert srv.commands.neighbors == [("add", "10.0.0.9", f"session:{a.session_id}")]
            assert srv.counters["sessions.add_neighbor"] == 1
            assert srv.counters["sessions.ignored.add_neighbor"] == 1
    finally:
        srv.stop()


def test_setlink_needs_accept_link_commands(server):
    with connect(server) as a:
        a.setlink("10.0.0.2", "10.0.0.1", 1000, 20, 5, 0)
        a.confirm()  # no reply, no close: Spines ignores it silently too
        assert server.counters["sessions.refused.setlink"] == 1
        assert server.commands.setlinks == []
        assert "-m" in server.log.named("session.setlink_refused")[0]["reason"]


def test_setlink_is_passed_through_in_spines_units(tmp_path):
    srv = Server(tmp_path, accept_link_commands=True)
    try:
        with client.socket(srv.path) as a:
            a.setlink("10.0.0.2", "10.0.0.1", 1000, 20, 5.5, 1)
            a.setlink("10.9.9.9", "10.0.0.1", 1000, 20, 5, 0)
            a.confirm()
        req = srv.commands.setlinks[0]
        assert (req["source"], req["dest"], req["bandwidth_kbps"], req["latency_ms"],
                req["loss_pct"], req["burst_pct"]) == ("10.0.0.2", "10.0.0.1", 1000, 20, 5.5, 1)
        assert "no link" in srv.log.named("session.setlink_refused")[0]["reason"]
    finally:
        srv.stop()


# --- queries on the control channel ----------------------------------------------------------------


def test_traceroute_edistance_and_membership_answer_on_the_control_channel(server):
    with connect(server) as a:
        assert a.traceroute("10.0.0.3") == [("10.0.0.2", 1, 4), ("10.0.0.3", 2, 9)]
        assert a.traceroute("10.0.0.1") == [("10.0.0.1", 0, 0)]
        assert a.traceroute("10.0.0.99") == []
        assert a.edistance(A) == [("10.0.0.1", 2, 0), ("10.0.0.2", 1, 0)]
        # members: this node at 0, 10.0.0.3 two hops away, 10.0.0.9 unreachable (left out)
        assert a.membership(G) == [("10.0.0.1", 0, 0), ("10.0.0.3", 2, 9)]


def test_the_trace_reply_frame_is_spines_layout(server):
    ctrl, data, order, _ = raw(server)
    data.sendall(w.Traceroute(ipn("10.0.0.2")).encode("<"))
    head = recv_exact(ctrl, 32)
    (length,) = struct.unpack("<i", head[:4])
    assert length == 28 + w.trace_size()
    body = recv_exact(ctrl, length - 28)
    h, _, _ = w.next_frame(head + body, 0, order)
    assert (h.source, h.dest, h.source_port, h.len) == (ME, ME, 40001, w.trace_size())
    assert w.TraceReply.decode(h, body, order).entries == ((ipn("10.0.0.2"), 1, 4),)


# --- malformed input, dead clients --------------------------------------------------------------------


@pytest.mark.parametrize("what, send", [
    ("length 27", lambda o: struct.pack(o + "i", 27) + bytes(27)),
    ("length 50029", lambda o: struct.pack(o + "i", 50_029)),
    ("negative length", lambda o: struct.pack(o + "i", -5)),
    ("unknown command", lambda o: w.frame(o, (0,) * 12, struct.pack(o + "i", 99) + bytes(28))),
    ("short command", lambda o: w.frame(o, (0,) * 12, struct.pack(o + "i", 5) + bytes(10))),
    ("data length disagrees", lambda o: w.frame(o, (0, 1, 0, 0, 5, 9, 0, 0, 0, 0, 0, 0), b"abc")),
    ("second LINKS", lambda o: w.Links().encode(o)),
])
def test_a_malformed_frame_closes_that_session_only(server, what, send):
    with connect(server) as good:
        good.bind(8400)
        _, data, _, _ = raw(server)
        data.sendall(send("<"))
        assert closed_by_daemon(data)
        assert server.counters["sessions.malformed"] == 1
        closed = server.log.named("session.closed")[-1]
        assert closed["reason"] == "malformed" and closed["detail"].startswith("malformed frame")
        with connect(server) as other:
            other.sendto(b"fine", ("10.0.0.1", 8400))
            assert good.recv() == b"fine"


def test_a_bad_endian_word_is_malformed(server):
    ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctrl.connect(server.path)
    tok = recv_exact(ctrl, 4)
    data = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    data.connect(server.path + "data")
    data.sendall(b"\x12\x34\x56\x78" + tok)
    assert recv_exact(data, 4) == w.endian_word(w.NATIVE)  # the daemon's, at accept
    assert closed_by_daemon(data)
    assert server.counters["sessions.malformed"] == 1
    assert "endian" in server.log.named("session.closed")[-1]["detail"]


@pytest.mark.parametrize("what, kw", [
    ("unknown token", {"token": b"\x00\x01\x02\x03"}),
    ("data before LINKS", {"links": w.SendTo(ME, 5, b"x").encode("<")}),
    ("a command before LINKS", {"links": w.Bind(5).encode("<")}),
])
def test_handshakes_gone_wrong_are_malformed(server, what, kw):
    _, data, _, ident = raw(server, **kw)
    assert ident is None
    assert closed_by_daemon(data)
    assert server.counters["sessions.malformed"] == 1


def test_a_client_closing_mid_message_loses_that_message_only(server):
    with connect(server) as a:
        _, data, _, _ = raw(server)
        frame = w.SendTo(ME, a.port, b"x" * 1000).encode("<")
        data.sendall(frame[:32])  # header and payload come in separate sends
        data.sendall(frame[32:500])
        data.close()
        assert wait(lambda: server.log.named("session.closed")
                    and server.log.named("session.closed")[-1]["reason"] == "eof_mid_frame")
        assert server.sent == []
        a.sendto(b"after", a.getsockname())
        assert a.recv() == b"after"


def test_a_client_killed_mid_message(server):
    """A real process, SIGKILLed after writing part of a 50,000-byte message."""
    code = ("import os, signal, sys\n"
            "from spines_kr import client\n"
            "from spines_kr.wire import session as w\n"
            "s = client.socket(sys.argv[1])\n"
            "frame = w.SendTo(0x0A000001, 8400, bytes(50000)).encode()\n"
            "s._data.sendall(frame[:32]); s._data.sendall(frame[32:20000])\n"
            "print('written', flush=True)\n"
            "sys.stdin.readline()\n")
    with connect(server) as a:
        a.bind(8400)
        p = subprocess.Popen([sys.executable, "-c", code, server.path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "written"
            p.kill()
        finally:
            p.wait(10)
        assert wait(lambda: [f for f in server.log.named("session.closed")
                             if f["reason"] == "eof_mid_frame"])
        assert server.sent == []
        a.sendto(b"alive", a.getsockname())
        assert a.recv() == b"alive"


def test_frames_split_at_every_byte_are_reassembled(server):
    with connect(server) as a:
        _, data, _, _ = raw(server)
        frames = b"".join(w.SendTo(ME, a.port, bytes([i]) * i).encode("<") for i in range(1, 6))
        for i in range(len(frames)):
            data.sendall(frames[i:i + 1])
        got = [a.recv() for _ in range(5)]
        assert got == [bytes([i]) * i for i in range(1, 6)]


def test_a_big_endian_client_is_understood(server):
    """Its frames are in its order; the daemon's come in the daemon's (announced) order."""
    with connect(server) as a:
        ctrl, data, order, ident = raw(server, order=">")
        assert ident is not None and order == w.NATIVE
        data.sendall(w.SendTo(ME, a.port, b"from BE", 9).encode(">"))
        assert a.recvfrom() == (b"from BE", ("10.0.0.1", 40002))
        assert server.sent[-1].ttl == 9
        data.sendall(w.Traceroute(ME).encode(">"))
        head = recv_exact(ctrl, 32)
        assert struct.unpack(order + "i", head[:4])[0] == 28 + w.trace_size()


def test_handshake_timeouts(tmp_path, monkeypatch):
    monkeypatch.setattr(sess_mod, "HANDSHAKE_TIMEOUT", 0.2)
    srv = Server(tmp_path)
    try:
        ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctrl.connect(srv.path)
        data = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        data.connect(srv.path + "data")
        assert closed_by_daemon(ctrl) and closed_by_daemon(data)
        assert srv.counters["sessions.handshake_timeout"] == 2
    finally:
        srv.stop()


# --- limits ------------------------------------------------------------------------------------------


def test_a_full_queue_drops_and_other_sessions_carry_on(server):
    with connect(server) as fast:
        _, slow, _, _ = raw(server)  # never reads
        slow_port = 40002
        msg = Message(ME, 1, ME, slow_port, b"y" * 100)
        taken = 0
        for _ in range(200):  # batches until the socket and then the queue are full
            taken += server.call(lambda: sum(server.sessions.deliver(msg) for _ in range(1000)))
            if server.counters["sessions.dropped.queue_full"]:
                break
        assert server.counters["sessions.dropped.queue_full"] > 0
        assert server.call(lambda: len(server.sessions._by_port[slow_port].out)) == \
            sess_mod.QUEUE_LIMIT
        fast.sendto(b"not stalled", fast.getsockname())
        assert fast.recv() == b"not stalled"
        assert server.open_sessions() == 2
        slow.close()


def test_a_full_queue_with_delivery_2_closes(server):
    _, slow, _, _ = raw(server)
    slow.sendall(w.Delivery(2).encode("<"))
    msg = Message(ME, 1, ME, 40001, b"z" * 100)
    assert wait(lambda: server.call(lambda: server.sessions._sessions[1].delivery) == 2)
    for _ in range(200):
        server.call(lambda: [server.sessions.deliver(msg) for _ in range(1000)])
        if server.counters["sessions.closed.queue_full"]:
            break
    assert server.counters["sessions.closed.queue_full"] == 1
    assert closed_by_daemon(slow)


def test_the_session_limit(tmp_path):
    srv = Server(tmp_path, max_sessions=3)
    try:
        socks = [client.socket(srv.path) for _ in range(3)]
        with pytest.raises(client.SpinesError) as e:
            client.socket(srv.path)
        assert e.value.errno == errno.ECONNRESET
        assert srv.counters["sessions.refused.too_many_sessions"] == 1
        socks.pop().close()
        assert wait(lambda: srv.open_sessions() == 2)
        socks.append(client.socket(srv.path))
        for s in socks:
            s.close()
    finally:
        srv.stop()


def test_1000_sessions_on_one_daemon(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * 1000 + 200  # each session: 2 fds here, 2 in the daemon
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    srv = Server(tmp_path, max_sessions=1000)
    socks = []
    try:
        for _ in range(1000):
            socks.append(client.socket(srv.path))
        assert srv.open_sessions() == 1000
        assert len({s.port for s in socks}) == 1000
        sender = socks[0]
        for s in socks:
            sender.sendto(s.port.to_bytes(2, "big"), s.getsockname())
        assert all(s.recv() == s.port.to_bytes(2, "big") for s in socks)
        assert srv.counters["sessions.messages_out"] == 1000
        with pytest.raises(client.SpinesError):
            client.socket(srv.path)
    finally:
        for s in socks:
            s.close()
        assert wait(lambda: srv.open_sessions() == 0, 30)
        srv.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- endpoints ------------------------------------------------------------------------------------


def test_close_removes_the_socket_files_and_a_stale_one_is_replaced(tmp_path):
    srv = Server(tmp_path)
    srv.stop()
    assert not os.path.exists(srv.path) and not os.path.exists(srv.path + "data")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(srv.path)  # a file left by a daemon that died: nobody listens
    stale.close()
    srv = Server(tmp_path)
    try:
        with client.socket(srv.path) as a:
            assert a.port == 40001
    finally:
        srv.stop()


def test_a_path_in_use_or_not_a_socket_is_refused(tmp_path, server):
    loop = Loop()
    try:
        other = Sessions(loop, Commands(), server.cfg, Log(), lambda m: None)
        with pytest.raises(SessionsUnavailable, match="in use by a live process"):
            other.open()
        assert os.path.exists(server.path)  # the live daemon's socket is untouched
        plain = tmp_path / "plainfile"
        plain.write_text("x")
        cfg = config.build({"logical_id": "10.0.0.1", "auth": "none", "ipc_path": str(plain)})
        with pytest.raises(SessionsUnavailable, match="not a socket"):
            Sessions(loop, Commands(), cfg, Log(), lambda m: None).open()
        assert plain.read_text() == "x"
    finally:
        loop.close()


def free_overlay_port() -> int:
    """An overlay port P whose TCP session ports P+7 and P+9 are free on 127.0.0.1 now."""
    for p in range(30000 + os.getpid() % 10000, 65000, 10):
        probes = [socket.socket() for _ in range(2)]
        try:
            for sock, off in zip(probes, (7, 9)):
                sock.bind(("127.0.0.1", p + off))
            return p
        except OSError:
            continue
        finally:
            for sock in probes:
                sock.close()
    raise AssertionError("no free port pair on 127.0.0.1")


def test_tcp_sessions_on_loopback(tmp_path):
    port = free_overlay_port()
    srv = Server(tmp_path, port=port)
    try:
        ep = srv.sessions.endpoints
        assert (ep["tcp_data"], ep["tcp_control"]) == (f"127.0.0.1:{port + 7}",
                                                       f"127.0.0.1:{port + 9}")
        with client.socket(("127.0.0.1", port)) as t, client.socket(srv.path) as u:
            t.sendto(b"over tcp", u.getsockname())
            assert u.recvfrom() == (b"over tcp", t.getsockname())
            u.join(G)
            t.sendto(b"g", (G, 1))
            assert u.recv() == b"g"
            assert {x["transport"] for x in srv.call(srv.sessions.sessions)} == {"tcp", "ipc"}
    finally:
        srv.stop()


def test_a_taken_tcp_port_costs_only_the_tcp_endpoints(tmp_path):
    port = free_overlay_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port + 7))  # the first one opened: nothing else gets opened
    squatter.listen(1)
    try:
        srv = Server(tmp_path, port=port)
        try:
            assert srv.sessions.endpoints["tcp_data"] is None
            assert "in use" in srv.log.named("sessions.no_tcp")[0]["reason"]
            with client.socket(srv.path) as a:
                assert a.port == 40001
        finally:
            srv.stop()
        with pytest.raises(SessionsUnavailable, match="TCP session data port"):
            Server(tmp_path, port=port, remote_sessions=True)
    finally:
        squatter.close()


def test_the_handshake_may_come_one_byte_at_a_time(server):
    ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctrl.connect(server.path)
    tok = recv_exact(ctrl, 4)
    data = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    data.settimeout(10)
    data.connect(server.path + "data")
    hello = w.endian_word("<") + tok + w.Links().encode("<")
    for i in range(len(hello)):
        data.sendall(hello[i:i + 1])
    assert recv_exact(data, 4) == w.endian_word(w.NATIVE)
    head = recv_exact(data, 44)
    h, start, end = w.next_frame(head, 0, w.NATIVE)
    assert w.IdReply.decode(h, head[start:end], w.NATIVE) == w.IdReply(1, 40001, ME)


def test_status_and_counters(server):
    with connect(server) as a:
        a.join(G)
        st = server.call(server.sessions.status)
        assert st["sessions"] == 1 and st["groups"] == 1 and st["max_sessions"] == 1024
        assert st["endpoints"]["ipc"] == server.path
        assert server.call(server.sessions.sessions)[0]["groups"] == [G]
    assert all(k.startswith("sessions.") for k in server.counters)
    assert {"sessions.dropped.queue_full", "sessions.malformed",
            "sessions.refused.too_many_sessions"} <= set(server.counters)


# --- the clients' other faces -----------------------------------------------------------------------


def test_recv_batch_and_selectors(server):
    import selectors

    with connect(server) as a, connect(server) as b:
        b.send_batch([b"1", b"2", b"3"], a.getsockname())
        got = []
        while len(got) < 3:
            got += [m.payload for m in a.recv_batch()]
        assert got == [b"1", b"2", b"3"] and not a.pending()
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ)
        b.sendto(b"4", a.getsockname())
        b.sendto(b"5", a.getsockname())
        assert sel.select(10) and a.recv() == b"4"
        assert sel.select(10) and a.recv() == b"5"  # exact reads: the fd tells the truth
        sel.close()


def test_the_asyncio_client(server):
    import asyncio

    from spines_kr.client import aio

    async def main():
        async with await aio.open_session(server.path) as a:
            b = await aio.open_session(server.path)
            await a.bind(8500)
            with pytest.raises(client.SpinesError):
                await b.bind(8500)
            c = await aio.open_session(server.path)
            await c.join(G)
            await a.sendto(b"hi", ("10.0.0.1", 8500))
            await a.sendto(b"group", (G, 1))
            got = await asyncio.wait_for(a.recvfrom(), 10)
            assert got == (b"hi", ("10.0.0.1", 8500))
            assert (await asyncio.wait_for(c.recvfrom(), 10))[0] == b"group"
            assert await c.traceroute("10.0.0.2") == [("10.0.0.2", 1, 4)]
            await b.close()
            await c.close()

    asyncio.run(main())
