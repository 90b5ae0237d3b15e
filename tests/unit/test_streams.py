"""Reliable stream sessions through the daemon's session server (``dataplane.streams`` driving
``dataplane.stream`` ends): the session server of ``test_session_server`` (the daemon's loop in
a thread, real Unix sockets, ``send`` looping every message back into ``deliver``: a one-node
overlay) with the stream driver attached; clients are the Python stream sockets (blocking and
asyncio), the tools, and a hand-made libspines-wire client.

Every wait is a condition with a timeout; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import socket
import struct
import sys
import threading

import pytest

from spines_kr import client
from spines_kr.client import aio
from spines_kr.dataplane.message import RELIABLE_LINKS, STREAM_SEGMENT, Message
from spines_kr.dataplane.stream import StreamParams
from spines_kr.dataplane.streams import Streams
from spines_kr.wire import session as w
from spines_kr.wire import stream as ws

from .test_client_tools import run as cli_main
from .test_session_server import ME, Server, raw, recv_exact, wait

HERE = "10.0.0.1"


class StreamServer(Server):
    def __init__(self, tmp_path, params: StreamParams | None = None) -> None:
        super().__init__(tmp_path)
        self.streams = Streams(self.loop, self.log, self._send, ME, params=params)
        self.call(self._attach)

    def _attach(self) -> None:
        self.streams.attach(self.sessions)
        self.sessions.streams = self.streams

    def status(self) -> dict:
        return self.call(self.streams.status)


class LossyServer(StreamServer):
    """The one-node overlay with a bad path: messages lost, duplicated and delayed at random
    (so reordered) on the daemon's own loop."""

    def __init__(self, tmp_path, loss: float, dup: float, jitter: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.loss, self.dup, self.jitter = loss, dup, jitter
        super().__init__(tmp_path, StreamParams(rcv_buf=64 << 10, snd_buf=64 << 10))

    def _send(self, msg: Message) -> None:
        self.sent.append(msg)
        for _ in range(2 if self.rng.random() < self.dup else 1):
            if self.rng.random() >= self.loss:
                self.loop.call_later(self.rng.random() * self.jitter, self.sessions.deliver, msg)


@pytest.fixture
def srv(tmp_path):
    s = StreamServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def listener(srv, port: int) -> client.StreamSocket:
    L = client.stream_socket(srv.path, timeout=10)
    L.bind(port)
    L.listen()
    return L


def read_all(sock) -> bytes:
    buf = bytearray()
    while d := sock.recv(1 << 16):
        buf += d
    return bytes(buf)


class Background(threading.Thread):
    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def get(self, timeout: float = 30.0):
        self.join(timeout)
        assert not self.is_alive(), "the thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def test_bytes_both_ways_in_order_and_an_orderly_close_both_ends_see(srv):
    L = listener(srv, 9000)
    data, answer = os.urandom(2_000_000), os.urandom(300_000)

    def serve():
        c, peer = L.accept()
        with c:
            got = read_all(c)  # until the other end's FIN
            c.sendall(answer)  # a half-closed stream still carries this way
        return got, peer

    bg = Background(serve)
    with client.stream_socket(srv.path) as s:
        s.connect((HERE, 9000))
        assert s.getpeername() == (HERE, 9000)
        s.sendall(data)
        s.shutdown()
        back = read_all(s)
    got, peer = bg.get()
    assert got == data and back == answer
    assert peer == (HERE, s.getsockname()[1])
    # both ends finish (after lingering a moment for a lost FIN's acknowledgement)
    assert wait(lambda: not srv.status()["streams"], 10)
    st = srv.status()
    assert st["streams.ended.closed"] == 2 and st["streams.accepted"] == 1
    assert not st.get("streams.ended.reset")
    L.close()


def test_a_connect_nobody_listens_to_is_refused(srv):
    with client.stream_socket(srv.path) as s:
        with pytest.raises(ConnectionRefusedError):
            s.connect((HERE, 9999))
    assert srv.status()["streams.refused"] == 1


def test_an_abort_is_seen_by_the_other_end_as_a_reset(srv):
    L = listener(srv, 9001)
    bg = Background(lambda: L.accept()[0])
    s = client.stream_socket(srv.path)
    s.connect((HERE, 9001))
    c = bg.get()
    s.sendall(b"x" * 5000)
    assert recv_exact(c, 5000) == b"x" * 5000
    s.abort()
    with pytest.raises(ConnectionResetError):
        while c.recv(100):
            pass
    c.close()
    assert wait(lambda: not srv.status()["streams"], 10)
    assert srv.status()["streams.ended.aborted"] == 1
    assert srv.status()["streams.ended.reset"] == 1


def test_a_slow_reader_holds_the_sender_and_the_daemon_holds_its_buffers_only(tmp_path):
    p = StreamParams(rcv_buf=64 << 10, snd_buf=64 << 10)
    srv = StreamServer(tmp_path, params=p)
    try:
        L = listener(srv, 9002)
        bg = Background(lambda: L.accept()[0])
        s = client.stream_socket(srv.path)
        s.connect((HERE, 9002))
        c = bg.get()
        data = os.urandom(4_000_000)
        sent = [0]

        def send():
            for i in range(0, len(data), 32768):
                s.sendall(data[i:i + 32768])
                sent[0] = i + 32768

        tx = Background(send)

        def stuck():  # the receiver's window is shut and the sender's buffer full
            st = srv.status()["streams"]
            return len(st) == 2 and any(x["window"] == 0 for x in st) and \
                any(x["buffered"] >= p.snd_buf // 2 for x in st)

        assert wait(stuck, 20)
        held = srv.status()["streams"]
        assert all(x["buffered"] <= p.snd_buf and
                   x["unread"] + x["out_of_order_bytes"] <= p.rcv_buf for x in held), held
        # what the sender got rid of: the daemon's buffers and the sockets' own, far from all
        assert tx.is_alive() and sent[0] < 2_000_000
        c.settimeout(30)
        got = bytearray()
        while len(got) < len(data):
            got += c.recv(1 << 16)
        tx.get()
        assert bytes(got) == data
        s.close()
        assert c.recv(10) == b""
        c.close()
    finally:
        srv.stop()


def test_a_segment_for_no_connection_is_answered_with_a_reset(srv):
    seg = ws.Segment(ws.ACK, 0x1234, 5, 7, 1000, (), b"late data")
    before = len(srv.sent)
    srv.call(srv.sessions.deliver, Message(0x0A000009, 40001, ME, 40002, seg.encode(),
                                           link=RELIABLE_LINKS | STREAM_SEGMENT))
    out = [m for m in srv.sent[before:] if m.dst == 0x0A000009]
    assert len(out) == 1 and out[0].link == RELIABLE_LINKS | STREAM_SEGMENT
    rst = ws.Segment.decode(out[0].payload)
    assert rst.flags & ws.RST and rst.conn == 0x1234
    assert (out[0].src_port, out[0].dst_port) == (40002, 40001)


def test_the_libspines_wire(srv):
    """What a C program linked with libspines 5.7 sends and reads: LISTEN; the connect
    request delivered as a 24-byte message; ACCEPT on a new session with those bytes; the
    16-byte hello; data frames with their rel_udp_pkt_add (50,000 bytes at most) and raw
    bytes back."""
    lc, ld, order, _ = raw(srv)
    ld.sendall(w.Bind(9003).encode(order) + w.Listen().encode(order))
    cc, cd, _, _ = raw(srv)
    cd.sendall(w.Connect(ME, 9003).encode(order))
    head = recv_exact(ld, 32)
    (length,) = struct.unpack(order + "i", head[:4])
    h = w.Header(*struct.unpack(order + "IIIHHHHHBBBB2x", head[4:]))
    request = recv_exact(ld, length - 28)
    assert len(request) == w.STREAM_REQUEST_LEN == 24 and h.source == ME and h.dest_port == 9003
    ac, ad, _, _ = raw(srv)
    ad.sendall(w.Accept(h.source, h.source_port, request).encode(order))
    assert len(recv_exact(ad, 16)) == 16 and len(recv_exact(cd, 16)) == 16  # the hellos
    big = os.urandom(50_000)
    cd.sendall(w.stream_data(big, order) + w.stream_data(b"tail", order))
    assert recv_exact(ad, 50_004) == big + b"tail"
    ad.sendall(w.stream_data(b"reply", order))
    assert recv_exact(cd, 5) == b"reply"
    cd.shutdown(socket.SHUT_WR)  # spines_close: the other end reads EOF
    assert ad.recv(10) == b""
    for sock in (lc, ld, cc, cd, ac, ad):
        sock.close()


def test_the_asyncio_stream(srv):
    async def main():
        L = await aio.open_stream(srv.path)
        await L.bind(9004)
        await L.listen()

        async def serve():
            c, peer = await L.accept()
            buf = bytearray()
            while d := await c.recv():
                buf += d
            await c.send(b"ok")
            await c.close()
            return bytes(buf)

        task = asyncio.ensure_future(serve())
        s = await aio.open_stream(srv.path)
        await s.connect((HERE, 9004))
        data = os.urandom(500_000)
        await s.send(data)
        await s.shutdown()
        back = bytearray()
        while d := await s.recv():
            back += d
        got = await asyncio.wait_for(task, 20)
        await s.close()
        r = await aio.open_stream(srv.path)
        with pytest.raises(ConnectionRefusedError):
            await r.connect((HERE, 9998))
        await r.close()
        await L.close()
        return got == data, bytes(back)

    assert asyncio.run(main()) == (True, b"ok")


def test_the_tools_send_and_recv_a_stream(srv, capsysbinary):
    payload = b"stream from the shell " * 1000
    rx = Background(lambda: cli_main(["recv", "--stream", "--ipc", srv.path, "9005",
                                      "--timeout", "20"]))
    assert wait(lambda: 9005 in srv.status()["listening"], 10)
    r, wpipe = os.pipe()
    os.write(wpipe, payload)
    os.close(wpipe)
    stdin = io.TextIOWrapper(os.fdopen(r, "rb"))
    old = sys.stdin
    sys.stdin = stdin
    try:
        assert cli_main(["send", "--stream", "--ipc", srv.path, HERE, "9005"]) == 0
    finally:
        sys.stdin = old
        stdin.close()
    assert rx.get() == 0
    out = capsysbinary.readouterr()
    assert payload in out.out
    assert b"received %d bytes" % len(payload) in out.err
    assert cli_main(["send", "--stream", "--ipc", srv.path, HERE, "9006", "x"]) == 1
    assert b"connection refused" in capsysbinary.readouterr().err


@pytest.mark.parametrize("seed", [1, 2])
def test_through_a_path_that_loses_duplicates_and_reorders_every_byte_arrives_once(tmp_path,
                                                                                   seed):
    srv = LossyServer(tmp_path, loss=0.05, dup=0.03, jitter=0.02, seed=seed)
    try:
        L = listener(srv, 9007)
        bg = Background(lambda: L.accept()[0])
        s = client.stream_socket(srv.path)
        s.connect((HERE, 9007))
        c = bg.get()
        data = os.urandom(1_000_000)
        tx = Background(lambda: (s.sendall(data), s.shutdown()))
        c.settimeout(60)
        assert read_all(c) == data
        tx.get()
        c.close()
        assert read_all(s) == b""
        s.close()
        assert wait(lambda: not srv.status()["streams"], 20)
        st = srv.status()
        assert st["streams.ended.closed"] == 2
    finally:
        srv.stop()


def test_a_stream_over_the_tcp_session_ports(srv):
    tcp = ("127.0.0.1", srv.cfg.port)  # data at P+7, control at P+9
    L = client.stream_socket(tcp)
    L.bind(9008)
    L.listen()
    bg = Background(L.accept)
    s = client.stream_socket(tcp)
    s.connect((HERE, 9008))
    c, _peer = bg.get()
    data = os.urandom(300_000)
    tx = Background(lambda: (s.sendall(data), s.shutdown()))
    assert read_all(c) == data
    tx.get()
    c.abort()
    with pytest.raises(ConnectionResetError):
        while s.recv(100):
            pass
    s.close()
    L.close()
