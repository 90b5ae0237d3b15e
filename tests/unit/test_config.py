import pytest

from spines_kr import cli, config


def test_defaults_follow_spines():
    cfg = config.build({}, {"logical_id": "10.0.0.1", "auth": "none"})
    assert cfg.port == 8100 and cfg.metric == "distance" and cfg.ipc_path == "/tmp/spines8100"
    assert cfg.kernel_levels == () and not cfg.accept_link_commands


def test_flags_win_over_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('port = 9000\nlogical_id = "10.0.0.1"\nneighbors = ["10.1.0.2"]\nauth = "none"\n')
    cfg = config.build(config.load_file(str(f)), {"port": 9100})
    assert cfg.port == 9100 and cfg.neighbors == ("10.1.0.2",)


def test_logical_id_defaults_to_first_local_address():
    assert config.build({}, {"local_addresses": ["10.9.0.1"], "auth": "none"}).logical_id == "10.9.0.1"


@pytest.mark.parametrize("values, field", [
    ({"port": 70000}, "port"),
    ({"logical_id": "nope"}, "logical_id"),
    ({"neighbors": ["10.0.0.300"]}, "neighbors"),
    ({"metric": "bogus"}, "metric"),
    ({"kernel_levels": [7]}, "kernel_levels"),
    ({"table": 255}, "table"),
    ({"hello_interval_ms": 100, "dead_interval_ms": 150}, "dead_interval_ms"),
    ({"surprise": 1}, "surprise"),
    ({"prefsrc": "yes"}, "prefsrc"),
])
def test_errors_name_the_field(values, field):
    with pytest.raises(config.ConfigError, match=field):
        config.build({"logical_id": "10.0.0.1", "auth": "none", **values})


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("colour = 'blue'\n")
    with pytest.raises(config.ConfigError, match="colour"):
        config.load_file(str(f))


def test_bad_toml_is_one_line(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("port = = 3\n")
    with pytest.raises(config.ConfigError, match="c.toml"):
        config.load_file(str(f))


@pytest.mark.parametrize("argv, words", [
    (["daemon", "-p", "x"], "invalid int"),
    (["daemon", "-l", "1.2.3"], "logical_id"),
    (["daemon", "-l", "10.0.0.1", "-rl", "lots"], "invalid int"),
    (["daemon", "-l", "10.0.0.1", "-pc"], "-pc"),
    (["daemon", "-l", "10.0.0.1", "--auth", "none", "-d", "10.1.1.1"], "discovery"),
    (["daemon", "-l", "10.0.0.1", "-W"], "-W"),
    (["daemon", "-l", "10.0.0.1", "-k", "7"], "kernel_levels"),
    (["daemon", "-c", "/nonexistent.toml"], "nonexistent"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_usage_errors_exit_2_with_one_line(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_setlink_is_refused_without_m():
    from spines_kr.daemon.features import Plan
    from spines_kr.daemon.main import Daemon
    from spines_kr.netlink.capabilities import Capabilities

    d = Daemon(config.build({"logical_id": "10.0.0.1", "auth": "none"}), Capabilities({}), Plan())
    try:
        with pytest.raises(ValueError, match="-m"):
            d.commands.setlink({"bandwidth_kbps": 0, "latency_ms": 10, "loss_pct": 0,
                                "burst_pct": 0, "source": "10.0.0.1", "dest": "10.0.0.2"})
    finally:
        d.loop.close()


def test_no_key_means_no_start_unless_auth_none_is_explicit(capsys):
    with pytest.raises(config.ConfigError, match="key_file"):
        config.build({"logical_id": "10.0.0.1"})
    assert cli.main(["daemon", "-l", "10.0.0.1"]) == 2
    assert "key_file" in capsys.readouterr().err


def test_key_file_mode_and_format_are_checked(tmp_path, capsys):
    key = tmp_path / "k.toml"
    assert cli.main(["keygen", str(key)]) == 0
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert cli.main(["keygen", str(key)]) == 2  # never overwrites a key
    key.chmod(0o644)
    assert cli.main(["daemon", "-l", "10.0.0.1", "--key-file", str(key)]) == 2
    assert "chmod 600" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[[key]]\nid = 1\nsecret = "abcd"\n')
    bad.chmod(0o600)
    assert cli.main(["daemon", "-l", "10.0.0.1", "--key-file", str(bad)]) == 2
    assert "at least 16 bytes" in capsys.readouterr().err


# --- issue 10: bad input, tried as a new user would --------------------------------------------


@pytest.mark.parametrize("values, words", [
    ({"logical_id": 5}, "as a string"),  # never read as 0.0.0.5
    ({"logical_id": "127.0.0.1"}, "loopback"),
    ({"logical_id": "0.0.0.5"}, "cannot identify a node"),
    ({"logical_id": "239.1.1.1"}, "cannot identify a node"),
    ({"neighbors": [167772162]}, "as a string"),
    ({"auth": "none", "key_file": "/etc/spines-kr/k.key"}, "contradicts key_file"),
    ({"groups": ["224.0.0.1"]}, "link-local"),
    ({"groups": ["10.0.0.9"]}, "neither a multicast"),
    ({"max_own_groups": 2, "groups": ["239.1.1.1", "239.1.1.2", "239.1.1.3"]}, "max_own_groups"),
    ({"max_own_prefixes": 1, "prefixes": ["10.5.0.0/16", "10.6.0.0/16"]}, "max_own_prefixes"),
    ({"max_own_groups": 70000}, "max_own_groups"),
    ({"multipath": "yes"}, "multipath"),
    ({"hello_interval_ms": float("nan")}, "hello_interval_ms"),
])
def test_bad_values_are_refused_naming_the_problem(values, words):
    base = {"logical_id": "10.0.0.1"} if "logical_id" not in values else {}
    if "key_file" not in values:
        base["auth"] = "none"
    with pytest.raises(config.ConfigError, match=words):
        config.build({**base, **values})


def test_multipath_is_on_unless_switched_off(capsys):
    assert config.build({"logical_id": "10.0.0.1", "auth": "none"}).multipath is True
    assert config.build({"logical_id": "10.0.0.1", "auth": "none",
                         "multipath": False}).multipath is False
    parser = cli.build_parser(with_lab=False)
    args = parser.parse_args(["daemon", "-l", "10.0.0.1", "--no-multipath"])
    assert config.flag_values(args)["multipath"] is False


def test_every_setting_is_described_once():
    """One declaration per setting feeds the TOML keys, the flags, the engine and reload."""
    from spines_kr.daemon.node import Params

    flags = [f for s in config.SETTINGS.values() for f in s.flags]
    assert len(flags) == len(set(flags))
    assert {"port", "logical_id", "table", "kernel_levels"} <= set(config.RESTART_ONLY)
    assert "neighbors" not in config.RESTART_ONLY and "metric" not in config.RESTART_ONLY
    cfg = config.build({"logical_id": "10.0.0.1", "auth": "none", "max_own_groups": 7,
                        "hello_interval_ms": 80, "dead_interval_ms": 400})
    p = Params.from_config(cfg)
    assert p.max_own_groups == 7 and p.hello_interval == 0.08 and p.dead_interval == 0.4
    for name in config.ENGINE:  # every engine setting reaches the engine
        assert any(name.startswith(f.name.split("_ms")[0].split("_s")[0])
                   for f in __import__("dataclasses").fields(Params)), name


@pytest.mark.parametrize("path, words", [
    ("/proc/version", "/proc/version"),
    ("/", "/"),
    ("/nonexistent-dir/x.log", "/nonexistent-dir/x.log"),
])
def test_unusable_log_file_is_a_usage_error_naming_it(path, words, capsys):
    assert cli.main(["daemon", "-l", "10.0.0.1", "--auth", "none", "-lf", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "log_file" in err
    assert "internal error" not in err


def test_setlink_port_out_of_range_is_a_usage_error(capsys):
    argv = ["setlink", "0", "10", "0", "0", "10.0.0.1", "10.0.0.2", "99999"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "99999" in err and "1..65535" in err


def test_joins_are_checked_and_bounded():
    """Own groups: routable ones only, at most max_own_groups; refusals counted, logged once."""
    from collections import Counter

    from spines_kr.daemon.logging import RateLimiter
    from spines_kr.daemon.membership import Membership
    from spines_kr.daemon.node import Node, Params

    cfg = config.build({"logical_id": "10.0.0.1", "auth": "none", "max_own_groups": 2})
    node = Node(Params.from_config(cfg), 0.0)
    logged = []

    class Log:
        def __getattr__(self, level):
            return lambda event, **f: logged.append(event)

    counters = Counter()
    m = Membership(cfg, node, None, Log(), RateLimiter(), counters)
    with pytest.raises(ValueError, match="link-local"):
        m.join("224.0.0.1", True, 0.0)
    with pytest.raises(ValueError, match="not an IPv4 address"):
        m.join("nope", True, 0.0)
    assert m.join("239.1.1.1", True, 0.0)["changed"]
    assert m.join("240.1.1.1", True, 0.0)["changed"]
    assert not m.join("239.1.1.1", True, 0.0)["changed"]  # already: no limit involved
    for i in range(50):
        with pytest.raises(ValueError, match="max_own_groups = 2"):
            m.join(f"239.2.0.{i + 1}", True, 0.0)
    assert counters["refused.own_groups"] == 50 and logged.count("groups.refused") <= 5
    assert len(node.groups) == 2
    assert m.join("239.1.1.1", False, 0.0)["changed"]  # a leave makes room
    assert m.join("239.2.0.1", True, 0.0)["changed"]


def test_unreachable_daemon_is_told_apart_from_a_refused_one(tmp_path):
    import errno

    from spines_kr.ctl import unreachable

    path = str(tmp_path / "s.sock")
    assert "permission denied" in unreachable(path, PermissionError(errno.EACCES, "Permission denied"))
    assert "no daemon" not in unreachable(path, PermissionError(errno.EACCES, "Permission denied"))
    assert "no daemon" in unreachable(path, FileNotFoundError(errno.ENOENT, "No such file"))


def test_groups_are_held_by_origin_and_the_operator_overrides_the_config():
    from collections import Counter

    from spines_kr.daemon.logging import RateLimiter
    from spines_kr.daemon.membership import Membership
    from spines_kr.daemon.node import Node, Params

    cfg = config.build({"logical_id": "10.0.0.1", "auth": "none"})
    node = Node(Params.from_config(cfg), 0.0)

    class Log:
        def __getattr__(self, level):
            return lambda event, **f: None

    m = Membership(cfg, node, None, Log(), RateLimiter(), Counter())
    m.join("239.1.1.1", True, 0.0, origin="config")
    m.join("239.1.1.1", True, 0.0, origin="session:7")
    r = m.join("239.1.1.1", False, 0.0, origin="session:7")  # a session leaving: still held
    assert r == {"group": "239.1.1.1", "member": True, "changed": False, "held_by": ["config"]}
    m.join("239.1.1.1", True, 0.0, origin="igmp")
    r = m.join("239.1.1.1", False, 0.0, origin="control")  # the operator: the config's hold goes
    assert r["member"] and r["held_by"] == ["igmp"]  # hosts on our LAN still want it
    r = m.join("239.1.1.1", False, 0.0, origin="igmp")
    assert r["changed"] and not r["member"] and 0xEF010101 not in node.groups


def test_data_link_flags_are_spines_meaning():
    flags = config.flag_values(cli.build_parser().parse_args(
        ["daemon", "-l", "10.0.0.1", "-rl", "100000", "-sf", "-tf"]))
    cfg = config.build({"auth": "none"}, flags)
    assert (cfg.rate_limit_kbps, cfg.stream_fairness, cfg.tcp_fairness) == (100000, True, True)
    default = config.build({"logical_id": "10.0.0.1", "auth": "none"})
    assert default.rate_limit_kbps == 500_000 and default.realtime_history_ms == 100
