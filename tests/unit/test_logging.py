from spines_kr.daemon.logging import RateLimiter


def test_a_flapping_link_logs_a_burst_then_one_summary():
    r = RateLimiter(burst=3, window=10)
    key = ("neighbor.down", "eth0:10.0.0.2")
    assert [r.allow(key, t) for t in range(6)] == [True, True, True, False, False, False]
    assert r.allow(("neighbor.down", "eth1:10.0.0.6"), 5)  # other links are not affected
    assert r.summaries(9) == []
    assert r.summaries(10) == [(key, 3)]
    assert r.allow(key, 10.5)  # a new window
