"""The route encoder (templates patched per route) against pyroute2's own encoding."""


def test_template_encoder_matches_pyroute2_message_for_message():
    """The patched templates are byte for byte what pyroute2 encodes for each route."""
    import ipaddress
    import socket as _s

    from hypothesis import given, settings, strategies as st
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    from spines_kr.netlink import kernel as k
    from spines_kr.routing.model import NextHop, Route

    def reference(msg_type, seq, route, table, protocol, priority):
        net = ipaddress.IPv4Network(route.dst)
        m = rtmsg()
        m["family"], m["dst_len"], m["proto"], m["type"] = _s.AF_INET, net.prefixlen, protocol, 1
        m["table"] = table if table < 256 else 0
        attrs = [("RTA_DST", str(net.network_address)), ("RTA_TABLE", table),
                 ("RTA_PRIORITY", priority)]
        if msg_type == k.RTM_NEWROUTE:
            flags = k.NLM_F_REQUEST | k.NLM_F_ACK | k.NLM_F_CREATE | k.NLM_F_REPLACE
            if route.prefsrc:
                attrs.append(("RTA_PREFSRC", route.prefsrc))
            if route.multipath:
                attrs.append(("RTA_MULTIPATH", [{"oif": h.ifindex, "hops": h.weight - 1,
                                                 "attrs": [("RTA_GATEWAY", h.gateway)]}
                                                for h in route.nexthops]))
            else:
                attrs += [("RTA_GATEWAY", route.nexthops[0].gateway),
                          ("RTA_OIF", route.nexthops[0].ifindex)]
        else:
            m["scope"], flags = 255, k.NLM_F_REQUEST | k.NLM_F_ACK
        m["attrs"] = attrs
        m["header"].update(type=msg_type, flags=flags, sequence_number=seq)
        m.encode()
        return bytes(m.data)

    addr = st.integers(1, 2**32 - 2).map(lambda n: str(ipaddress.IPv4Address(n)))
    hop = st.builds(NextHop, addr, st.integers(1, 2**31 - 1), st.integers(1, 256))
    route = st.builds(lambda a, p, hs, src: Route(f"{a}/{p}", tuple(hs), src), addr,
                      st.integers(0, 32), st.lists(hop, min_size=1, max_size=4, unique_by=lambda h: h.gateway),
                      st.one_of(st.none(), addr))

    @settings(max_examples=300, deadline=None)
    @given(route, st.sampled_from([k.RTM_NEWROUTE, k.RTM_DELROUTE]), st.integers(0, 2**32 - 1),
           st.sampled_from([254, 1000]))
    def check(r, msg_type, seq, table):
        assert k.encode_route(msg_type, seq, r, table, 81, 20) == reference(msg_type, seq, r, table, 81, 20)

    check()
