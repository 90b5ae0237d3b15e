import pytest

from spines_kr import cli, config


def test_defaults_follow_spines():
    cfg = config.build({}, {"logical_id": "10.0.0.1"})
    assert cfg.port == 8100 and cfg.metric == "distance" and cfg.ipc_path == "/tmp/spines8100"
    assert cfg.kernel_levels == () and not cfg.accept_link_commands


def test_flags_win_over_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('port = 9000\nlogical_id = "10.0.0.1"\nneighbors = ["10.1.0.2"]\n')
    cfg = config.build(config.load_file(str(f)), {"port": 9100})
    assert cfg.port == 9100 and cfg.neighbors == ("10.1.0.2",)


def test_logical_id_defaults_to_first_local_address():
    assert config.build({}, {"local_addresses": ["10.9.0.1"]}).logical_id == "10.9.0.1"


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
        config.build({"logical_id": "10.0.0.1", **values})


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
    (["daemon", "-l", "10.0.0.1", "-d", "239.1.1.1"], "-d"),
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
    from spines_kr.daemon.main import Daemon
    d = Daemon(config.build({"logical_id": "10.0.0.1"}))
    with pytest.raises(ValueError, match="-m"):
        d.setlink({"bandwidth_kbps": 0, "latency_ms": 10, "loss_pct": 0, "burst_pct": 0,
                   "source": "10.0.0.1", "dest": "10.0.0.2"})
