"""The HMAC trailer and replay protection (pure), and the engine refusing what fails them."""

import random

from spines_kr.daemon.node import Node, Params
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
