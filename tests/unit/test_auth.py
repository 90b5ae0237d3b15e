"""The HMAC trailer and replay protection (pure), and the engine refusing what fails them."""

from hypothesis import given, strategies as st

from spines_kr.wire import packets as w
from spines_kr.wire.auth import TRAILER_LEN, WINDOW, KeyRing
from tests.unit.sim import Sim

K1, K2 = b"1" * 32, b"2" * 32


def ring(keys=None, send=1, boot=1000):
    return KeyRing(keys or {1: K1}, send, boot)


def pkt():
    return w.encode(w.LinkStateAck(((1, 2),)), instance=8100, sender=7)


def check(receiver, sealed, now=0.0, sender=7):
    _h, _m, trailer = w.decode(sealed)
    return receiver.check(sender, sealed, trailer, now)


def test_sealed_packet_verifies_and_decodes():
    a, b = ring(), ring()
    sealed = a.seal(pkt())
    assert len(sealed) == len(pkt()) + TRAILER_LEN
    assert check(b, sealed) is None


def test_wrong_key_tampering_and_missing_trailer():
    sealed = ring({1: K1}).seal(pkt())
    assert check(ring({1: K2}), sealed) == "auth_mac"
    assert check(ring({2: K2}, 2), sealed) == "auth_key"
    tampered = bytearray(sealed)
    tampered[20] ^= 1
    assert check(ring(), bytes(tampered)) == "auth_mac"
    assert ring().check(7, pkt(), b"", 0) == "auth_missing"


def test_replays_are_dropped_within_and_below_the_window():
    a, b = ring(), ring()
    packets = [a.seal(pkt()) for _ in range(WINDOW + 5)]
    assert check(b, packets[3]) is None
    assert check(b, packets[3]) == "auth_replay"  # the same packet again
    assert check(b, packets[1]) is None  # reordered, within the window
    assert check(b, packets[-1]) is None
    assert check(b, packets[2]) == "auth_replay"  # now below the window


def test_a_new_boot_is_accepted_an_old_one_not():
    b = ring()
    old, new = ring(boot=5), ring(boot=6)
    old_pkt = old.seal(pkt())
    assert check(b, new.seal(pkt())) is None
    assert check(b, old_pkt) == "auth_replay"
    assert check(b, old_pkt, now=400) is None  # state of a long-silent sender is forgotten


def test_rotation_two_keys_accepted():
    sender_old, sender_new = ring({1: K1}, 1), ring({2: K2}, 2, boot=1)
    receiver = ring({1: K1, 2: K2})
    assert check(receiver, sender_old.seal(pkt()), sender=7) is None
    assert check(receiver, sender_new.seal(pkt()), sender=8) is None


def test_overlay_with_keys_converges_and_a_keyless_or_wrong_key_node_gets_no_adjacency():
    sim = Sim(3, [(1, 2), (2, 3)])
    for i, node in sim.nodes.items():
        node.auth = ring({1: K1 if i != 3 else K2}, boot=i)
    sim.run(2)
    assert any(l.up for l in sim.nodes[1].links.values())  # 1 and 2 share the key
    assert not any(l.up for l in sim.nodes[3].links.values())
    assert sim.nodes[2].counters["dropped.auth_mac"] > 0
    assert sim.ids[3] not in sim.nodes[1].lsdb.lsas  # node 3 injected nothing
    sim.nodes[3].auth = None  # no key at all
    sim.run(1)
    assert sim.nodes[2].counters["dropped.auth_missing"] > 0
    assert not any(l.up for l in sim.nodes[3].links.values())


def _lsu(origin, seq=1, sender=0x0A640002, **kw):  # from n2 (10.100.0.2), over its link
    return w.encode(w.LinkStateUpdate((w.LSA.make(origin, seq, **kw),)), instance=8100,
                    sender=sender)


def test_state_stays_bounded_when_a_neighbor_floods_valid_looking_updates():
    sim = Sim(2, [(1, 2)], max_nodes=50, max_prefixes_per_node=4, max_packets_per_s=400)
    sim.run(1)
    n1 = sim.nodes[1]
    link = next(iter(n1.links.values()))
    for i in range(2000):  # 2,000 invented origins, then oversized LSAs
        n1.receive(link.ifindex, link.peer_addr, _lsu(0x0B000000 + i), sim.now + i * 0.01)
    assert len(n1.lsdb) <= 50
    assert n1.counters["dropped.limit_nodes"] > 1000
    n1.receive(link.ifindex, link.peer_addr,
               _lsu(0x0B000000, seq=2, prefixes=[(0x0A000000 + (i << 8), 24, 0) for i in range(10)]),
               sim.now + 30)
    assert n1.counters["dropped.limit_prefixes_per_node"] == 1


def test_packet_rate_per_neighbor_is_limited():
    sim = Sim(2, [(1, 2)], max_packets_per_s=100)
    sim.run(1)
    n1 = sim.nodes[1]
    link = next(iter(n1.links.values()))
    for _ in range(1000):  # a burst far above 100/s at one instant
        n1.receive(link.ifindex, link.peer_addr, _lsu(0x0B000001), sim.now)
    assert n1.counters["dropped.limit_rate"] >= 890


@given(key=st.binary(min_size=0, max_size=200), data=st.binary(max_size=3000))
def test_our_hmac_is_the_standard_librarys(key, data):
    import hashlib
    import hmac

    from spines_kr.wire.auth import hmac_sha256

    assert hmac_sha256(key, data) == hmac.digest(key, data, hashlib.sha256)
