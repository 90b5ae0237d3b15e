"""Pure routing core: a topology snapshot in, a desired route set out.

No sockets, no clock, no kernel: every function takes values (and ``now`` where time matters)
and returns values, so it is tested directly and in simulated time.

    model    Route / NextHop value types shared with netlink
    lsdb     the link-state database: LSAs by origin, newer-wins install, ageing
    spf      Dijkstra from one source with equal-cost first-hop sets
    metrics  link cost from measurements, one function per Spines metric
    routes   SPF result + neighbor next hops -> desired kernel route set
"""
