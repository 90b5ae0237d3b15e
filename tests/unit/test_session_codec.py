"""Golden bytes of every frame and reply of libspines 5.7's session protocol (``wire.session``).

The little-endian goldens are written out by hand from Spines' C structs (``daemon/net_types.h``
udp_header: source u32 @0, dest u32 @4, reserved32 @8, source_port u16 @12, dest_port u16 @14,
len u16 @16, seq_no u16 @18, sess_id u16 @20, frag_num @22, frag_idx @23, ttl @24, routing @25,
2 pad bytes; ``libspines/spines_lib.c``: the int32 length first, the int32 command type after
the header, the "cmd" header or the int32 arguments after it; ``spines_lib.h``: spines_trace).
The big-endian ones are derived from them with ``flip``: every integer field of the C layout
byte-swapped, single bytes and padding kept -- what a big-endian host would put on the wire
(``Flip_udp_hdr`` and ``Flip_int32`` undo exactly that).
"""

from __future__ import annotations

import struct

import pytest

from spines_kr.wire import session as w

Z28 = "00" * 28
HDR = [4, 4, 4, 2, 2, 2, 2, 2, 1, 1, 1, 1, -2]  # udp_header fields (-n: n padding bytes)
FRAME = [4] + HDR  # length + header
CMD = FRAME + [4] + HDR  # + type + cmd header


def hx(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts).replace(" ", ""))


def flip(data: bytes, layout: list[int]) -> bytes:
    """The same C fields with every integer byte-swapped (layout: field sizes; -n = padding;
    whatever follows the layout is copied as it is: payloads travel unflipped)."""
    out, pos = bytearray(), 0
    for size in layout:
        n = abs(size)
        field = data[pos:pos + n]
        out += field[::-1] if size > 1 else field
        pos += n
    return bytes(out + data[pos:])


def both(golden_le: bytes, layout: list[int]) -> list[tuple[str, bytes]]:
    return [("<", golden_le), (">", flip(golden_le, layout))]


# --- handshake -----------------------------------------------------------------------------------


def test_endian_words_and_the_orders_they_announce():
    assert w.endian_word("<") == hx("80000080")  # ARCH_ENDIAN of a little-endian host
    assert w.endian_word(">") == hx("00000000")
    assert w.order_of(hx("80000080")) == "<" and w.order_of(hx("00000000")) == ">"
    assert w.endian_word(w.NATIVE) == struct.pack("=I", 0x80000080 if w.NATIVE == "<" else 0)
    for bad in (hx("80000000"), hx("00000080"), hx("01000000"), hx("800000")):
        with pytest.raises(w.DecodeError) as e:
            w.order_of(bad)
        assert e.value.reason == "endian"


# --- client -> daemon ------------------------------------------------------------------------------

LINKS_LE = hx("38000000", Z28, "07000000",
              "00000000 00000000 00000000 78563412 ffffffff ffffffff")
LINKS_LAYOUT = FRAME + [4, 4, 4, 4, 4, 4, 4]


@pytest.mark.parametrize("order, golden", both(LINKS_LE, LINKS_LAYOUT))
def test_links_frame(order, golden):
    cmd = w.Links(0, 0, 0, 0x12345678, -1, -1)
    assert cmd.encode(order) == golden
    header, start, end = w.next_frame(golden, 0, order)
    assert header.is_command and end == len(golden)
    assert w.decode_request(header, golden[start:end], order) == cmd


def test_links_keeps_the_protocol_bits_unshifted_as_libspines():
    cmd = w.Links.for_protocol(0x1000 | 0x300 | 0x2, rnd=7)
    assert (cmd.link, cmd.routing, cmd.session, cmd.rnd) == (2, 0x300, 0x1000, 7)
    assert (cmd.udp_addr, cmd.udp_port) == (-1, -1)


def cmd_golden(ctype: str, source="00000000", dest="00000000", dest_port="0000",
               length="0000", extra="") -> bytes:
    """length, the zero header, type, then the cmd header: source, dest, reserved32,
    source_port, dest_port, len, seq_no, sess_id, frag_num, frag_idx, ttl, routing, pad."""
    body = (f"{ctype} {source} {dest} 00000000 0000 {dest_port} {length} 0000 0000 00 00 00 00 "
            f"0000 {extra}")
    return hx(struct.pack("<i", len(hx(body)) + 28).hex(), Z28, body)


CMD_GOLDENS = [  # (command, little-endian golden, layout after the cmd header)
    (w.Bind(8400), cmd_golden("01000000", dest_port="d020"), []),
    (w.Connect(0x0A000003, 8400), cmd_golden("02000000", dest="0300000a", dest_port="d020"), []),
    (w.Listen(), cmd_golden("03000000"), []),
    (w.Abort(), cmd_golden("28000000"), []),  # spines-kr's stream abort (not libspines')
    (w.Accept(0x0A000003, 8400, b"hi"),
     cmd_golden("04000000", dest="0300000a", dest_port="d020", length="0200", extra="6869"), []),
    (w.Join(0xE0010101), cmd_golden("05000000", dest="010101e0"), []),
    (w.Leave(0xE0010101), cmd_golden("06000000", dest="010101e0"), []),
    (w.SetLink(0x0A000001, 0x0A000002, 1_000_000, 20, 50_000, 0),
     cmd_golden("09000000", source="0100000a", dest="0200000a", length="1000",
                extra="40420f00 14000000 50c30000 00000000"), [4, 4, 4, 4]),
    (w.AddNeighbor(0x0A000002), cmd_golden("0c000000", dest="0200000a"), []),
    (w.Loop(1), cmd_golden("0d000000", dest="01000000"), []),
    (w.Traceroute(0x0A000004), cmd_golden("15000000", dest="0400000a"), []),
    (w.EDistance(0xF0010101), cmd_golden("16000000", dest="010101f0"), []),
    (w.Membership(0xE0010101), cmd_golden("17000000", dest="010101e0"), []),
    (w.Delivery(2), cmd_golden("18000000", dest="02000000"), []),
    (w.Priority(3), cmd_golden("19000000", dest="03000000"), []),
    (w.Expiration(5, 250_000), cmd_golden("1a000000", source="05000000", dest="90d00300"), []),
    (w.DisjointPaths(2), cmd_golden("1b000000", dest="02000000"), []),
    (w.SetDissem(2, 0), cmd_golden("1c000000", length="0800", extra="02000000 00000000"),
     [4, 4]),
]


@pytest.mark.parametrize("cmd, golden_le, extra", CMD_GOLDENS,
                         ids=[type(c[0]).__name__ for c in CMD_GOLDENS])
@pytest.mark.parametrize("order", ["<", ">"])
def test_command_frames(cmd, golden_le, extra, order):
    golden = golden_le if order == "<" else flip(golden_le, CMD + extra)
    assert cmd.encode(order) == golden
    header, start, end = w.next_frame(golden, 0, order)
    assert end == len(golden) and header == w.Header()
    assert w.decode_request(header, golden[start:end], order) == cmd


FLOOD_SEND_LE = hx("34000000", Z28, "0a000000 0200000a d0200000 f4010000 e8030000 0a000000")
FLOOD_RECV_LE = hx("27000000", Z28, "0b000000 03000000 6c6f67")


@pytest.mark.parametrize("cmd, golden_le, layout", [
    (w.FloodSend(0x0A000002, 8400, 500, 1000, 10), FLOOD_SEND_LE, FRAME + [4] * 6),
    (w.FloodRecv(b"log"), FLOOD_RECV_LE, FRAME + [4, 4]),
])
@pytest.mark.parametrize("order", ["<", ">"])
def test_flooder_frames_have_no_cmd_header(cmd, golden_le, layout, order):
    golden = golden_le if order == "<" else flip(golden_le, layout)
    assert cmd.encode(order) == golden
    header, start, end = w.next_frame(golden, 0, order)
    assert w.decode_request(header, golden[start:end], order) == cmd


SENDTO_LE = hx("21000000", "00000000 0300000a 00000000 0000 d020 0500 0000 0000 00 00 ff 00 0000",
               "68656c6c6f")


@pytest.mark.parametrize("order, golden", both(SENDTO_LE, FRAME))
def test_sendto_frame(order, golden):
    msg = w.SendTo(0x0A000003, 8400, b"hello", 255, 0)
    assert msg.encode(order) == golden
    header, start, end = w.next_frame(golden, 0, order)
    assert not header.is_command
    assert w.decode_request(header, golden[start:end], order) == msg


def test_a_largest_message_round_trips_and_one_byte_more_is_refused():
    big = bytes(range(256)) * 195 + bytes(80)  # 50,000 bytes
    frame = w.SendTo(0x0A000003, 8400, big).encode("<")
    assert len(frame) == 4 + w.MAX_FRAME
    header, start, end = w.next_frame(frame, 0, "<")
    assert w.decode_request(header, frame[start:end], "<").payload == big
    too_big = struct.pack("<i", w.MAX_FRAME + 1) + frame[4:] + b"x"
    with pytest.raises(w.DecodeError) as e:
        w.next_frame(too_big, 0, "<")
    assert e.value.reason == "length"


# --- daemon -> client --------------------------------------------------------------------------------

ID_LE = hx("28000000", "00000000 00000000 00000000 0000 0000 0c00 0000 0000 01 00 00 00 0000",
           "01000000 419c0000 0100000a")


@pytest.mark.parametrize("order, golden", both(ID_LE, FRAME + [4, 4, 4]))
def test_id_reply(order, golden):
    reply = w.IdReply(1, 40001, 0x0A000001)
    assert reply.encode(order) == golden
    header, start, end = w.next_frame(golden, 0, order)
    assert w.IdReply.decode(header, golden[start:end], order) == reply


RECEIVED_LE = hx("1e000000",
                 "0100000a 010101e1 00000000 419c d020 0200 0000 0300 01 00 fe 00 0000", "6869")


@pytest.mark.parametrize("order, golden", both(RECEIVED_LE, FRAME))
def test_received_frame(order, golden):
    msg = w.Received(0x0A000001, 40001, 0xE1010101, 8400, b"hi", ttl=254, sess_id=3)
    assert msg.encode(order) == golden
    header, start, end = w.next_frame(golden, 0, order)
    assert w.Received.decode(header, golden[start:end]) == msg


def trace_golden(long_size: int) -> bytes:
    """spines_trace {int count; long address[64]; int distance[64]; int cost[64]} with two
    entries, written out by hand, and its frame header."""
    if long_size == 8:
        body = ("02000000 00000000" + "0200000a00000000 0300000a00000000" + "00" * 8 * 62)
    else:
        body = "02000000" + "0200000a 0300000a" + "00" * 4 * 62
    body += "01000000 02000000" + "00" * 4 * 62 + "05000000 07000000" + "00" * 4 * 62
    n = len(hx(body))
    assert n == {8: 1032, 4: 772}[long_size]
    head = (struct.pack("<i", n + 28).hex() + "0100000a 0100000a 00000000 419c 419c "
            + struct.pack("<H", n).hex() + " 0000 0000 00 00 00 00 0000")
    return hx(head, body)


def trace_layout(long_size: int) -> list[int]:
    return FRAME + ([4, -4] if long_size == 8 else [4]) + [long_size] * 64 + [4] * 128


@pytest.mark.parametrize("long_size", [8, 4])
@pytest.mark.parametrize("order", ["<", ">"])
def test_trace_reply_both_layouts(long_size, order):
    reply = w.TraceReply(((0x0A000002, 1, 5), (0x0A000003, 2, 7)), 0x0A000001, 40001)
    golden = trace_golden(long_size)
    if order == ">":
        golden = flip(golden, trace_layout(long_size))
    assert reply.encode(order, long_size) == golden
    header, start, end = w.next_frame(golden, 0, order)
    assert w.TraceReply.decode(header, golden[start:end], order) == reply


def test_trace_reply_keeps_at_most_64_entries_and_addresses_above_2_31():
    many = tuple((0xC0A80000 + i, i, -i) for i in range(70))
    frame = w.TraceReply(many, 1, 2).encode("<", 8)
    header, start, end = w.next_frame(frame, 0, "<")
    got = w.TraceReply.decode(header, frame[start:end], "<")
    assert got.entries == many[:64]
    assert got.describe()[1] == "192.168.0.1 distance 1 cost -1"


@pytest.mark.parametrize("body, reason", [(bytes(1000), "trace"),
                                          (struct.pack("<i", 65) + bytes(1028), "trace")])
def test_bad_trace_replies(body, reason):
    with pytest.raises(w.DecodeError) as e:
        w.TraceReply.decode(w.Header(len=len(body)), body, "<")
    assert e.value.reason == reason


# --- strict decoding -----------------------------------------------------------------------------


def test_a_frame_is_none_until_whole():
    frame = w.SendTo(0x0A000003, 8400, b"hello").encode("<") + b"next"
    for cut in range(len(frame) - 4):
        assert w.next_frame(frame[:cut], 0, "<") is None
    assert w.next_frame(frame, 0, "<")[2] == len(frame) - 4


@pytest.mark.parametrize("length", [-1, 0, 27, w.MAX_FRAME + 1, 1 << 30])
def test_lengths_outside_28_to_50028_are_refused(length):
    with pytest.raises(w.DecodeError) as e:
        w.next_frame(struct.pack("<i", length) + bytes(28), 0, "<")
    assert e.value.reason == "length"


def test_uninitialised_header_bytes_are_ignored():
    """libspines sets only some fields; the rest are whatever was on its stack."""
    golden = w.Bind(8400).encode("<")
    dirty = bytearray(golden)
    dirty[4 + 12:4 + 16] = b"\xff\xff\x12\x34"  # outer source_port, dest_port
    dirty[4 + 18:4 + 28] = b"\xaa" * 10  # outer seq_no .. pad
    dirty[4 + 28 + 4 + 8:4 + 28 + 4 + 14] = b"\x55" * 6  # cmd reserved32, source_port
    dirty[4 + 28 + 4 + 18:4 + 28 + 4 + 28] = b"\x77" * 10  # cmd seq_no .. pad
    header, start, end = w.next_frame(bytes(dirty), 0, "<")
    assert w.decode_request(header, bytes(dirty[start:end]), "<") == w.Bind(8400)
    data = bytearray(w.SendTo(0x0A000003, 8400, b"x").encode("<"))
    data[4 + 8:4 + 14] = b"\x99" * 6  # reserved32, source_port: unset by spines_sendto
    header, start, end = w.next_frame(bytes(data), 0, "<")
    assert w.decode_request(header, bytes(data[start:end]), "<") == w.SendTo(0x0A000003, 8400, b"x")


@pytest.mark.parametrize("body, reason", [
    (b"", "short"),
    (b"\x05\x00", "short"),
    (struct.pack("<i", 99) + bytes(28), "command"),
    (struct.pack("<i", 8) + bytes(28), "command"),  # REL_JOIN: libspines never sends it
    (struct.pack("<i", 1) + bytes(27), "short"),
    (struct.pack("<i", 1) + bytes(29), "long"),
    (struct.pack("<i", 7) + bytes(20), "short"),
    (struct.pack("<i", 7) + bytes(28), "long"),
    (struct.pack("<i", 9) + bytes(28), "short"),
    (w.Accept(1, 2, b"abc").encode("<")[32:-1], "len"),
    (struct.pack("<ii", 11, 5) + b"abc", "len"),
])
def test_malformed_commands(body, reason):
    with pytest.raises(w.DecodeError) as e:
        w.decode_request(w.Header(), body, "<")
    assert e.value.reason == reason


def test_data_whose_header_length_disagrees_with_the_frame():
    with pytest.raises(w.DecodeError) as e:
        w.decode_request(w.Header(dest=0x0A000003, dest_port=1, len=6), b"hello", "<")
    assert e.value.reason == "len"


def test_a_zero_length_sendto_to_0_0_0_0_reads_as_a_command():
    """Spines' pitfall: header len, source and dest all zero is how commands are told apart."""
    frame = w.SendTo(0, 8400, b"").encode("<")
    header, start, end = w.next_frame(frame, 0, "<")
    assert header.is_command
    with pytest.raises(w.DecodeError) as e:
        w.decode_request(header, frame[start:end], "<")
    assert e.value.reason == "short"


def test_loop_option_reads_the_c_char_libspines_sends():
    assert w.Loop(1).on and w.Loop(-1).on and not w.Loop(0).on and not w.Loop(256).on


def test_every_command_round_trips_in_both_orders():
    for cmd, _, _ in CMD_GOLDENS:
        for order in ("<", ">"):
            frame = cmd.encode(order)
            header, start, end = w.next_frame(frame, 0, order)
            assert w.decode_request(header, frame[start:end], order) == cmd
    assert set(w.COMMANDS) == {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 21, 22, 23, 24, 25, 26,
                               27, 28, 40}  # 40: spines-kr's stream abort


def test_stream_session_wire_goldens():
    """libspines 5.7's stream frames: spines_send's rel_udp_pkt_add (endian word, data_len,
    ack_len 0) before the bytes, counted in the header's len; the 24-byte connect request
    (rel_udp_pkt_add + ses_hello_packet naming the connection) and the 16-byte hello."""
    f = w.stream_data(b"hi", "<")
    assert f == hx(struct.pack("<i", 28 + 10).hex(), "00" * 16, "0a00", "00" * 10,
                   "80000080", "0200", "0000", "6869")
    header, start, end = w.next_frame(f, 0, "<")
    assert not header.is_command and w.stream_payload(f[start:end]) == b"hi"
    assert w.stream_payload(w.stream_data(b"x" * 50_000, ">")[32:]) == b"x" * 50_000
    req = w.stream_request(0xDEADBEEF, 40001, "<")
    assert req == hx("80000080", "1000", "0000", "00000000", "00000000", "efbeadde", "419c",
                     "419c")
    assert w.stream_request_conn(req) == 0xDEADBEEF
    assert w.stream_request_conn(w.stream_request(7, 1, ">")) == 7
    assert len(w.stream_hello(1, 2, 3)) == w.STREAM_HELLO_LEN == 16
    end_frame = w.stream_end(w.STREAM_RESET, "<")
    h, a, b = w.next_frame(end_frame, 0, "<")
    assert w.stream_end_code(h, end_frame[a:b], "<") == w.STREAM_RESET
    with pytest.raises(w.DecodeError):
        w.stream_payload(hx("80000080", "0500", "0000") + b"hi")  # says 5 bytes, holds 2
