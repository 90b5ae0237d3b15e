"""Topology files: parsing, defaults, address and interface-name allocation, and errors that
name their field."""

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
    assert t.hosts == (topology.Host("h1", "b"),)


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
