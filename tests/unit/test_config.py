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
    d = Daemon(config.build({"logical_id": "10.0.0.1", "auth": "none"}))
    with pytest.raises(ValueError, match="-m"):
        d.setlink({"bandwidth_kbps": 0, "latency_ms": 10, "loss_pct": 0, "burst_pct": 0,
                   "source": "10.0.0.1", "dest": "10.0.0.2"})


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
