"""Wire format: golden bytes, round trips, and strict rejection of bad packets."""


import pytest
from hypothesis import given, settings, strategies as st

from spines_kr.wire import packets as w

N1 = 0x0A640001  # 10.100.0.1

GOLDEN_HELLO = bytes.fromhex(
    "534b" "01" "01" "1fa4" "00" "00" "0a640001" "0020" "0000"  # header
    "00000007" "0000000000000064" "00000000000000c8" "0000012c" "0032" "00fa" "01" "03" "0000")


def test_hello_golden():
    h = w.Hello(seq=7, tx_us=100, echo_us=200, hold_us=300, hello_ms=50, dead_ms=250,
                metric=1, state=3)
    assert w.encode(h, instance=8100, sender=N1) == GOLDEN_HELLO
    header, msg, trailer = w.decode(GOLDEN_HELLO, instance=8100)
    assert header == w.Header(1, 8100, N1, 0) and msg == h and trailer == b""


def test_lsu_golden():
    lsa = w.LSA.make(N1, 5, [(0x0A640002, 1)], [(0x0A010000, 16, 0)], [0xE0000001])
    pkt = w.encode(w.LinkStateUpdate((lsa,)), instance=8100, sender=N1)
    assert pkt.hex() == (
        "534b01021fa400000a640001002c0000" "0001" "0000"
        "0a640001" "0000000000000005" "0001" "0001" "0001" "0000"
        "0a640002" "00000001" "0a010000" "10" "00" "0000" "e0000001")
    assert w.decode(pkt)[1] == w.LinkStateUpdate((lsa,))


def test_ack_round_trip():
    ack = w.LinkStateAck(((1, 2), (3, 4)))
    assert w.decode(w.encode(ack, instance=1, sender=2))[1] == ack


@pytest.mark.parametrize("data, reason", [
    (b"", "short"),
    (GOLDEN_HELLO[:15], "short"),
    (b"XX" + GOLDEN_HELLO[2:], "magic"),
    (GOLDEN_HELLO[:2] + b"\x02" + GOLDEN_HELLO[3:], "version"),
    (GOLDEN_HELLO[:3] + b"\x09" + GOLDEN_HELLO[4:], "type"),
    (GOLDEN_HELLO[:-1], "short"),
    (GOLDEN_HELLO + b"\x00", "long"),
    (GOLDEN_HELLO[:6] + b"\x80" + GOLDEN_HELLO[7:], "malformed"),
    (GOLDEN_HELLO[:6] + b"\x01" + GOLDEN_HELLO[7:], "short"),  # trailer announced, none there
])
def test_bad_packets_are_rejected_with_a_reason(data, reason):
    with pytest.raises(w.DecodeError) as e:
        w.decode(data)
    assert e.value.reason == reason


def test_wrong_instance():
    with pytest.raises(w.DecodeError) as e:
        w.decode(GOLDEN_HELLO, instance=8200)
    assert e.value.reason == "instance"


def test_trailer_is_returned():
    pkt = w.encode(w.LinkStateAck(((1, 1),)), instance=1, sender=1, trailer=b"MAC")
    assert w.decode(pkt)[2] == b"MAC"


def test_unsorted_lsa_is_malformed():
    lsa = w.LSA(1, 1, ((3, 1), (2, 1)))
    with pytest.raises(w.DecodeError) as e:
        w.decode(w.encode(w.LinkStateUpdate((lsa,)), instance=1, sender=1))
    assert e.value.reason == "malformed"


def test_lsu_packets_split_to_budget():
    lsas = [w.LSA.make(i, 1, [(j, 1) for j in range(20)]) for i in range(30)]
    pkts = w.lsu_packets(lsas, instance=1, sender=1, budget=1400)
    assert all(len(p) <= 1400 for p in pkts) and len(pkts) > 1
    got = [l for p in pkts for l in w.decode(p)[1].lsas]
    assert got == lsas


u32 = st.integers(0, 2**32 - 1)
lsas = st.builds(lambda o, s, l, g: w.LSA.make(o, s, l, (), g), u32, st.integers(0, w.MAX_SEQ - 1),
                 st.lists(st.tuples(u32, u32), max_size=8), st.lists(u32, max_size=4))


@given(st.lists(lsas, min_size=1, max_size=5))
def test_lsu_round_trip(ls):
    pkt = w.encode(w.LinkStateUpdate(tuple(ls)), instance=8100, sender=1)
    assert w.decode(pkt, instance=8100)[1].lsas == tuple(ls)


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_decode_error(data):
    try:
        w.decode(data)
    except w.DecodeError:
        pass


@settings(max_examples=1000)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 60))
def test_mutated_valid_packets_never_crash(noise, at):
    base = w.encode(w.LinkStateUpdate((w.LSA.make(1, 2, [(3, 4)]),)), instance=1, sender=1)
    data = base[:at] + noise + base[at + len(noise):]
    try:
        w.decode(data)
    except w.DecodeError:
        pass
