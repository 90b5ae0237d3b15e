"""Topology files: parsing, defaults, address and interface-name allocation, hosts and their LANs,
and errors that name their field."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from spines_kr.lab import topology
from spines_kr.lab.topology import TopologyError, parse

RING = [("n1", "n2"), ("n2", "n3"), ("n3", "n5"), ("n5", "n4"), ("n4", "n1")]


def nodes(*names: str) -> str:
    return "".join(f'[[node]]\nname = "{n}"\n' for n in names)


def links(*pairs: tuple[str, str]) -> str:
    return "".join(f'[[link]]\na = "{a}"\nb = "{b}"\n' for a, b in pairs)


def test_demo_is_the_five_node_ring_with_defaults():
    t = topology.demo()
    assert (t.metric, t.port, t.link_subnet) == ("distance", 8100, IPv4Network("10.200.0.0/16"))
    assert [n.name for n in t.nodes] == ["n1", "n2", "n3", "n4", "n5"]
    assert [n.logical_id for n in t.nodes] == [IPv4Address(f"10.100.0.{i}") for i in range(1, 6)]
    assert [(ln.a, ln.b) for ln in t.links] == RING
    assert t.hosts == ()
    assert all(n.lan is None and n.advertised == () for n in t.nodes)
    # Each link gets the next /30, a = .1, b = .2.
    for i, ln in enumerate(t.links):
        assert ln.subnet == IPv4Network(f"10.200.0.{4 * i}/30")
        assert ln.a_address == IPv4Interface(f"10.200.0.{4 * i + 1}/30")
        assert ln.b_address == IPv4Interface(f"10.200.0.{4 * i + 2}/30")
        assert (ln.a_ifname, ln.b_ifname) == (f"to-{ln.b}", f"to-{ln.a}")
        assert (ln.latency_ms, ln.loss_pct, ln.bandwidth_kbps) == (None, None, None)
    assert [ln.index for ln in t.links_of("n1")] == [0, 4]
    assert t.links[4].end("n1") == ("to-n4", IPv4Interface("10.200.0.18/30"), "n4",
                                    IPv4Interface("10.200.0.17/30"))


def test_everything_optional_is_stored():
    t = parse('metric = "latency"\nport = 8200\nlink_subnet = "172.30.0.0/24"\n'
              '[[node]]\nname = "a"\nlogical_id = "192.0.2.1"\nprefixes = ["198.51.100.0/24"]\n'
              'groups = ["247.0.0.1", "227.1.1.1"]\n' + nodes("b") +
              '[[link]]\na = "a"\nb = "b"\nlatency_ms = 12.5\nloss_pct = 1\nbandwidth_kbps = 1000\n'
              '[[host]]\nname = "h1"\nattach = "b"\n')
    assert (t.metric, t.port, t.link_subnet) == ("latency", 8200, IPv4Network("172.30.0.0/24"))
    a = t.node("a")
    assert a.logical_id == IPv4Address("192.0.2.1")
    assert a.prefixes == (IPv4Network("198.51.100.0/24"),)
    assert a.groups == (IPv4Address("247.0.0.1"), IPv4Address("227.1.1.1"))
    ln = t.links[0]
    assert (ln.latency_ms, ln.loss_pct, ln.bandwidth_kbps) == (12.5, 1, 1000)
    assert ln.a_address == IPv4Interface("172.30.0.1/30")
    assert t.hosts == (topology.Host("h1", "b", IPv4Interface("10.210.0.2/24"),
                                     IPv4Address("10.210.0.1"), "lan-h1"),)
    assert a.advertised == (IPv4Network("198.51.100.0/24"),) and a.lan is None
    assert t.node("b").lan == IPv4Interface("10.210.0.1/24")
    assert t.node("b").advertised == (IPv4Network("10.210.0.0/24"),)


def test_default_logical_ids_skip_explicit_ones():
    t = parse(nodes("a") + '[[node]]\nname = "b"\nlogical_id = "10.100.0.1"\n' + nodes("c", "d"))
    assert [str(n.logical_id) for n in t.nodes] == ["10.100.0.2", "10.100.0.1", "10.100.0.3",
                                                    "10.100.0.4"]


def test_parallel_links_and_long_names_get_unique_interface_names():
    long1, long2 = "abcdefghijklmn1", "abcdefghijklmn2"
    t = parse(nodes("x", "y", long1, long2) +
              links(("x", "y"), ("y", "x"), ("x", long1), ("x", long2)))
    names = [ln.end("x")[0] for ln in t.links]
    assert names == ["to-y-1", "to-y-2", "to-abcdefghij-1", "to-abcdefghij-2"]
    assert [ln.end("y")[0] for ln in t.links[:2]] == ["to-x-1", "to-x-2"]
    assert t.links[2].end(long1)[0] == "to-x"
    # A suffixed name never collides with a peer whose plain name looks like it.
    t = parse(nodes("x", "y", "y-1") + links(("x", "y"), ("x", "y"), ("x", "y-1")))
    names = [ln.end("x")[0] for ln in t.links]
    assert len(set(names)) == 3 and names[2] == "to-y-1"
    assert all(len(n) <= 15 for n in names)


def test_links_use_the_link_subnet_in_order_until_it_runs_out():
    text = 'link_subnet = "10.9.0.0/29"\n' + nodes("a", "b", "c")
    t = parse(text + links(("a", "b"), ("b", "c")))
    assert [str(ln.subnet) for ln in t.links] == ["10.9.0.0/30", "10.9.0.4/30"]
    with pytest.raises(TopologyError, match=r"^link\[2\]: link_subnet 10.9.0.0/29 has no /30 left"):
        parse(text + links(("a", "b"), ("b", "c"), ("c", "a")))


def hosts(*pairs: tuple[str, str]) -> str:
    return "".join(f'[[host]]\nname = "{h}"\nattach = "{n}"\n' for h, n in pairs)


def test_hosts_share_their_nodes_lan_and_picked_prefixes_follow_node_order():
    t = parse(nodes("n1", "n2", "n3", "n4") + links(("n1", "n2"), ("n3", "n4")) +
              hosts(("h1", "n4"), ("h2", "n1"), ("h3", "n4"), ("h4", "n4")))
    # Picked in node order (n1 before n4), whatever the order of the hosts.
    assert t.node("n1").lan == IPv4Interface("10.210.0.1/24")
    assert t.node("n4").lan == IPv4Interface("10.210.1.1/24")
    assert [n.advertised for n in t.nodes] == [(IPv4Network("10.210.0.0/24"),), (), (),
                                               (IPv4Network("10.210.1.0/24"),)]
    assert t.node("n2").lan is None and t.node("n2").prefixes == ()
    # Hosts keep their file order; a node's hosts get .2, .3, ... in that order.
    assert [(h.name, h.attach, str(h.address), str(h.gateway), h.ifname) for h in t.hosts] == [
        ("h1", "n4", "10.210.1.2/24", "10.210.1.1", "lan-h1"),
        ("h2", "n1", "10.210.0.2/24", "10.210.0.1", "lan-h2"),
        ("h3", "n4", "10.210.1.3/24", "10.210.1.1", "lan-h3"),
        ("h4", "n4", "10.210.1.4/24", "10.210.1.1", "lan-h4")]
    assert [h.name for h in t.hosts_of("n4")] == ["h1", "h3", "h4"]
    # Picking is deterministic.
    assert parse(nodes("n1", "n2", "n3", "n4") + links(("n1", "n2"), ("n3", "n4")) +
                 hosts(("h1", "n4"), ("h2", "n1"), ("h3", "n4"), ("h4", "n4"))) == t


def test_a_node_with_prefixes_puts_its_hosts_in_the_first_one():
    t = parse('[[node]]\nname = "a"\nprefixes = ["192.168.8.0/22", "172.16.0.0/16"]\n' +
              nodes("b") + hosts(("x", "a"), ("y", "b")))
    a = t.node("a")
    assert a.lan == IPv4Interface("192.168.8.1/22")
    assert a.advertised == (IPv4Network("192.168.8.0/22"), IPv4Network("172.16.0.0/16"))
    assert [str(h.address) for h in t.hosts] == ["192.168.8.2/22", "10.210.0.2/24"]
    # A prefix without hosts is advertised but gets no LAN.
    t = parse('[[node]]\nname = "a"\nprefixes = ["192.168.8.0/24"]\n')
    assert t.node("a").lan is None and t.hosts == ()
    assert t.node("a").advertised == (IPv4Network("192.168.8.0/24"),)


def test_picked_prefixes_avoid_link_subnet_logical_ids_and_other_prefixes():
    # link_subnet covers 10.210.0.0/16: the pick moves on to 10.211.0.0/24.
    t = parse('link_subnet = "10.210.0.0/16"\n' + nodes("a") + hosts(("h", "a")))
    assert t.node("a").lan == IPv4Interface("10.211.0.1/24")
    # Another node's prefix, and a logical ID, are skipped too.
    t = parse('[[node]]\nname = "a"\nprefixes = ["10.210.0.0/23"]\n'
              '[[node]]\nname = "b"\nlogical_id = "10.210.2.9"\n' + nodes("c", "d") +
              hosts(("h1", "c"), ("h2", "d")))
    assert t.node("c").lan == IPv4Interface("10.210.3.1/24")
    assert t.node("d").lan == IPv4Interface("10.210.4.1/24")
    assert t.node("a").lan is None  # has prefixes, but no hosts
    # Nothing free at all: the error tells what to do.
    with pytest.raises(TopologyError, match=r"^node\[0\]\.prefixes: the node has hosts but no "
                                            r"prefixes, and no /24 .* give it prefixes$"):
        parse('link_subnet = "10.0.0.0/8"\n' + nodes("a") + hosts(("h", "a")))


def test_default_logical_ids_skip_prefixes():
    t = parse('[[node]]\nname = "a"\nprefixes = ["10.100.0.0/30"]\n' + nodes("b"))
    assert [str(n.logical_id) for n in t.nodes] == ["10.100.0.4", "10.100.0.5"]


def test_a_lan_holds_as_many_hosts_as_its_prefix_has_room_for():
    text = '[[node]]\nname = "a"\nprefixes = ["192.168.0.0/29"]\n'
    t = parse(text + hosts(*[(f"h{i}", "a") for i in range(5)]))
    assert [str(h.address.ip) for h in t.hosts] == [f"192.168.0.{i}" for i in range(2, 7)]
    with pytest.raises(TopologyError, match=r"^host\[5\]\.attach: the LAN 192.168.0.0/29 of node "
                                            r"'a' has no address left for host 'h5' \(room for 5 "
                                            r"hosts besides the node\)$"):
        parse(text + hosts(*[(f"h{i}", "a") for i in range(6)]))


def test_host_interface_names_are_unique_within_a_node():
    long1, long2 = "hostwithalongname1", "hostwithalongname2"
    t = parse(nodes("a") + hosts((long1, "a"), (long2, "a"), ("h", "a")))
    assert [h.ifname for h in t.hosts] == ["lan-hostwitha-1", "lan-hostwitha-2", "lan-h"]
    assert all(len(h.ifname) <= 15 for h in t.hosts)


@pytest.mark.parametrize("text, message", [
    ("", "node: a topology needs at least one [[node]]"),
    ('colour = "red"\n' + nodes("a"), "colour: unknown key"),
    ('metric = "hops"\n' + nodes("a"), "metric: 'hops' is not one of"),
    ('port = "8100"\n' + nodes("a"), "port: expected an integer"),
    ("port = 0\n" + nodes("a"), "port: 0 is out of range"),
    ('link_subnet = "10.200.0.1/16"\n' + nodes("a"), "link_subnet: '10.200.0.1/16' is not"),
    ('link_subnet = "10.0.0.0/31"\n' + nodes("a"), "link_subnet: 10.0.0.0/31 is smaller"),
    ('node = "a"', "node: expected a list"),
    ("[[node]]\nlogical_id = \"10.1.1.1\"\n", "node[0].name: missing"),
    ('[[node]]\nname = "A!"\n', "node[0].name: 'A!' is not a name"),
    ('[[node]]\nname = 7\n', "node[0].name: 7 is not a name"),
    (nodes("a") + '[[node]]\nname = "b"\ncolour = 1\n', "node[1].colour: unknown key"),
    (nodes("a", "b", "a"), "node[2].name: duplicate name 'a' (also node[0])"),
    ('[[node]]\nname = "a"\nlogical_id = "10.1.1.300"\n',
     "node[0].logical_id: '10.1.1.300' is not"),
    ('[[node]]\nname = "a"\nlogical_id = "10.1.1.1"\n'
     '[[node]]\nname = "b"\nlogical_id = "10.1.1.1"\n',
     "node[1].logical_id: duplicate logical ID 10.1.1.1 (also node[0])"),
    ('[[node]]\nname = "a"\nlogical_id = "10.200.3.3"\n',
     "node[0].logical_id: 10.200.3.3 lies inside"),
    ('[[node]]\nname = "a"\nprefixes = "10.0.0.0/8"\n', "node[0].prefixes: expected a list"),
    ('[[node]]\nname = "a"\nprefixes = ["10.0.0.1/8"]\n', "node[0].prefixes[0]: '10.0.0.1/8'"),
    ('[[node]]\nname = "a"\ngroups = ["x"]\n', "node[0].groups[0]: 'x' is not an IPv4 address"),
    (nodes("a", "b") + '[[link]]\na = "a"\n', "link[0].b: missing"),
    (nodes("n1", "n2") + links(("n1", "n2"), ("n2", "n1"), ("n1", "n9")),
     "link[2].b: unknown node 'n9'"),
    (nodes("a") + links(("z", "a")), "link[0].a: unknown node 'z'"),
    (nodes("a") + links(("a", "a")), "link[0].b: a link needs two different nodes"),
    (nodes("a", "b") + '[[link]]\na = "a"\nb = "b"\nmtu = 1\n', "link[0].mtu: unknown key"),
    (nodes("a", "b") + '[[link]]\na = "a"\nb = "b"\nloss_pct = 101\n',
     "link[0].loss_pct: 101 is out of range 0..100"),
    (nodes("a", "b") + '[[link]]\na = "a"\nb = "b"\nlatency_ms = -1\n',
     "link[0].latency_ms: -1 is out of range"),
    (nodes("a", "b") + '[[link]]\na = "a"\nb = "b"\nlatency_ms = true\n',
     "link[0].latency_ms: expected a number"),
    (nodes("a", "b") + '[[link]]\na = "a"\nb = "b"\nbandwidth_kbps = 1.5\n',
     "link[0].bandwidth_kbps: expected an integer"),
    (nodes("a") + '[[host]]\nname = "a"\nattach = "a"\n', "host[0].name: duplicate name 'a'"),
    (nodes("a") + '[[host]]\nname = "h"\nattach = "b"\n', "host[0].attach: unknown node 'b'"),
    (nodes("a") + '[[host]]\nname = "h"\n', "host[0].attach: missing"),
    (nodes("a") + '[[host]]\nname = "h"\nattach = "a"\nip = 1\n', "host[0].ip: unknown key"),
    (nodes("a") + hosts(("h", "a"), ("h", "a")), "host[1].name: duplicate name 'h' (also host[0])"),
    (nodes("a") + hosts(("h", "a"), ("a", "a")), "host[1].name: duplicate name 'a' (also node[0])"),
    (nodes("a") + '[[host]]\nname = "H"\nattach = "a"\n', "host[0].name: 'H' is not a name"),
    (nodes("a") + '[[host]]\nname = "h"\nattach = 1\n', "host[0].attach: unknown node 1"),
    ('host = "h"\n' + nodes("a"), "host: expected a list"),
    ('[[node]]\nname = "a"\nprefixes = ["10.200.4.0/24"]\n',
     "node[0].prefixes[0]: 10.200.4.0/24 overlaps link_subnet 10.200.0.0/16"),
    ('[[node]]\nname = "a"\nprefixes = ["10.1.0.0/16"]\n'
     '[[node]]\nname = "b"\nprefixes = ["10.2.0.0/16", "10.1.2.0/24"]\n',
     "node[1].prefixes[1]: 10.1.2.0/24 overlaps 10.1.0.0/16 (node[0].prefixes[0])"),
    ('[[node]]\nname = "a"\nprefixes = ["10.1.0.0/16", "10.1.0.0/16"]\n',
     "node[0].prefixes[1]: 10.1.0.0/16 overlaps 10.1.0.0/16 (node[0].prefixes[0])"),
    ('[[node]]\nname = "a"\nprefixes = ["10.1.0.0/16"]\n'
     '[[node]]\nname = "b"\nlogical_id = "10.1.0.1"\n',
     "node[0].prefixes[0]: 10.1.0.0/16 contains the logical ID 10.1.0.1 of node[1]"),
    ('[[node]]\nname = "a"\nprefixes = ["10.1.0.0/31"]\n' + hosts(("h", "a")),
     "host[0].attach: the LAN 10.1.0.0/31 of node 'a' has no address left for host 'h' "
     "(room for 0 hosts"),
    ('[[node]]\nname = "a"\nprefixes = ["10.1.0.0/30"]\n' + hosts(("h", "a"), ("i", "a")),
     "host[1].attach: the LAN 10.1.0.0/30 of node 'a' has no address left for host 'i' "
     "(room for 1 host besides"),
    ("[[node]\n", "topology: invalid TOML"),
])
def test_every_error_names_its_field(text, message):
    with pytest.raises(TopologyError) as err:
        parse(text)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_load_reads_a_file_and_reports_unreadable_ones(tmp_path):
    path = tmp_path / "ring.toml"
    path.write_text(topology.DEMO_TOPOLOGY)
    assert topology.load(path) == topology.demo()
    with pytest.raises(TopologyError, match=r"^topology file .*nope.toml: No such file"):
        topology.load(tmp_path / "nope.toml")
    path.write_text("x = [")
    with pytest.raises(TopologyError, match=r"^topology file .*ring.toml: invalid TOML"):
        topology.load(path)


# -- overlay slots (lab up --join) ---------------------------------------------------------------

def test_a_slot_moves_the_default_logical_ids_link_subnet_and_interface_names():
    text = nodes("n1", "n2", "n3") + links(("n1", "n2"), ("n2", "n3"))
    base, second, ninth = parse(text), parse(text, slot=1), parse(text, slot=9)
    assert (base.slot, second.slot, ninth.slot) == (0, 1, 9)
    assert [str(n.logical_id) for n in second.nodes] == ["10.101.0.1", "10.101.0.2", "10.101.0.3"]
    assert [str(n.logical_id) for n in ninth.nodes] == ["10.109.0.1", "10.109.0.2", "10.109.0.3"]
    assert second.link_subnet == IPv4Network("10.201.0.0/16")
    assert ninth.link_subnet == IPv4Network("10.209.0.0/16")
    assert [(str(ln.a_address), str(ln.b_address)) for ln in second.links] == [
        ("10.201.0.1/30", "10.201.0.2/30"), ("10.201.0.5/30", "10.201.0.6/30")]
    assert [(ln.a_ifname, ln.b_ifname) for ln in second.links] == [("o1-n2", "o1-n1"),
                                                                   ("o1-n3", "o1-n2")]
    # every slot's defaults are clear of every other slot's and of the LAN pool
    pools = [topology.slot_defaults(k) for k in range(topology.MAX_SLOT + 1)]
    nets = [IPv4Network((lid, 16)) for lid, _s, _p in pools] + [s for _l, s, _p in pools]
    nets.append(IPv4Network("10.210.0.0/15"))
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    assert len({p for _l, _s, p in pools}) == len(pools)


def test_a_slot_keeps_explicit_values_and_cuts_long_names():
    t = parse('link_subnet = "172.31.0.0/24"\n[[node]]\nname = "a"\nlogical_id = "192.0.2.7"\n'
              + nodes("b", "a-very-long-node-name") + links(("a", "b"), ("a", "a-very-long-node-name"),
                                                           ("a", "a-very-long-node-name")),
              slot=3)
    assert t.node("a").logical_id == IPv4Address("192.0.2.7")
    assert t.node("b").logical_id == IPv4Address("10.103.0.1")
    assert t.link_subnet == IPv4Network("172.31.0.0/24")
    assert [ln.a_ifname for ln in t.links] == ["o3-b", "o3-a-very-lon-1", "o3-a-very-lon-2"]
    assert all(len(ln.b_ifname) <= topology.IFNAMSIZ for ln in t.links)


def test_a_slot_refuses_hosts_and_out_of_range_slots():
    with pytest.raises(TopologyError, match=r"^host\[0\]: a topology joined to another lab's "):
        parse(nodes("n1") + '[[host]]\nname = "h1"\nattach = "n1"\n', slot=1)
    for bad in (-1, 10, True, "1"):
        with pytest.raises(TopologyError, match="^slot: .* is not an overlay slot 0..9"):
            parse(nodes("n1"), slot=bad)
