"""The Python client's pure helpers and the command-line tools (``spines_kr.tools``) against the
session server of ``test_session_server`` (real Unix sockets, the daemon's loop in a thread, a
one-node overlay).  Tools that wait (recv, ping --echo, flood recv) run in a thread of the test;
their output is captured; conditions are awaited with timeouts."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from spines_kr import cli, client, tools
from spines_kr.wire import session as w
from tests.unit.test_session_server import Server, wait

# --- pure helpers ---------------------------------------------------------------------------------


def test_constants_are_spines_values():
    assert (client.UDP_LINKS, client.RELIABLE_LINKS, client.SOFT_REALTIME_LINKS,
            client.INTRUSION_TOL_LINKS, client.UDP_CONNECT) == (0, 1, 2, 8, 0x10)
    assert (client.MIN_WEIGHT_ROUTING, client.IT_PRIORITY_ROUTING, client.IT_RELIABLE_ROUTING,
            client.SOURCE_BASED_ROUTING) == (0, 0x100, 0x200, 0x300)
    assert (client.RELIABLE_STREAM_SESSION, client.RELIABLE_DGRAM_SESSION_NO_BACKPRESSURE,
            client.RELIABLE_DGRAM_SESSION_WITH_BACKPRESSURE) == (0, 0x1000, 0x2000)
    assert client.SPINES_ADD_MEMBERSHIP == client.ADD_MEMBERSHIP == socket.IP_ADD_MEMBERSHIP
    assert client.SPINES_DROP_MEMBERSHIP == socket.IP_DROP_MEMBERSHIP
    assert client.SPINES_MULTICAST_LOOP == client.MULTICAST_LOOP == socket.IP_MULTICAST_LOOP
    assert (client.SPINES_ADD_NEIGHBOR, client.SPINES_TRACEROUTE, client.SPINES_EDISTANCE,
            client.SPINES_MEMBERSHIP, client.SPINES_SET_DELIVERY, client.SPINES_SET_PRIORITY,
            client.SPINES_SET_EXPIRATION, client.SPINES_DISJOINT_PATHS) == (
        51, 61, 62, 63, 64, 71, 72, 73)
    assert client.MAX_SPINES_CLIENT_MSG == 50_000 and client.DEFAULT_SPINES_PORT == 8100


@pytest.mark.parametrize("daemon, expect", [
    (None, (socket.AF_UNIX, "/tmp/spines8100", "/tmp/spines8100data")),
    (8200, (socket.AF_UNIX, "/tmp/spines8200", "/tmp/spines8200data")),
    ("/run/x.ipc", (socket.AF_UNIX, "/run/x.ipc", "/run/x.ipcdata")),
    (("127.0.0.1", 8100), (socket.AF_INET, ("127.0.0.1", 8109), ("127.0.0.1", 8107))),
])
def test_daemon_endpoints(daemon, expect):
    assert client.endpoints(daemon)[:3] == expect


@pytest.mark.parametrize("bad", [("h", 65530), ("h", 0), True, 1.5, ""])
def test_bad_daemon_addresses(bad):
    with pytest.raises(ValueError):
        client.endpoints(bad)


def test_addresses_and_options():
    assert client.address("10.0.0.1") == 0x0A000001 == client.address(0x0A000001)
    mreq = socket.inet_aton("225.1.1.1") + socket.inet_aton("0.0.0.0")  # struct ip_mreq
    assert client.address(mreq) == 0xE1010101
    assert client.option_command(client.SPINES_ADD_MEMBERSHIP, mreq) == w.Join(0xE1010101)
    assert client.option_command(client.SPINES_MULTICAST_LOOP, True) == w.Loop(1)
    assert client.option_command(client.SPINES_SET_EXPIRATION, (5, 7)) == w.Expiration(5, 7)
    with pytest.raises(ValueError):
        client.option_command(99, 1)
    with pytest.raises(ValueError):
        client.destination(("10.0.0.1", 0))  # libspines cannot send to port 0
    with pytest.raises(ValueError):
        client.links_frame(client.UDP_CONNECT)
    with pytest.raises(ValueError):
        client.links_frame(client.IT_PRIORITY_ROUTING)  # needs INTRUSION_TOL_LINKS (libspines)


def test_daemon_address_of_the_tools():
    ns = lambda **kw: type("A", (), {"ipc": None, "host": None, "port": None, **kw})()
    assert tools.daemon_address(ns(), {}) == "/tmp/spines8100"
    assert tools.daemon_address(ns(), {"SPINES_KR_IPC": "/run/a.ipc"}) == "/run/a.ipc"
    assert tools.daemon_address(ns(), {"SPINES_KR_PORT": "8200"}) == "/tmp/spines8200"
    assert tools.daemon_address(ns(port=8300), {"SPINES_KR_IPC": "/run/a.ipc"}) == "/tmp/spines8300"
    assert tools.daemon_address(ns(host="127.0.0.1"), {"SPINES_KR_PORT": "8200"}) == (
        "127.0.0.1", 8200)
    assert tools.daemon_address(ns(ipc="/x", port=1), {}) == "/x"
    with pytest.raises(cli.UsageError):
        tools.daemon_address(ns(), {"SPINES_KR_PORT": "lots"})


# --- the tools against a session server ----------------------------------------------------------


def run(argv: list[str]) -> int:
    """``spines-kr`` with the tools' subcommands, as cli.main runs them (usage errors: 2)."""
    parser = cli.Parser(prog="spines-kr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
    tools.add_tool_parsers(sub)
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except cli.UsageError as e:
        print(f"spines-kr: error: {str(e).removeprefix('spines-kr: ')}", file=__import__("sys").stderr)
        return cli.USAGE_ERROR


class Background:
    """A tool running in a thread: its exit status once done."""

    def __init__(self, argv: list[str]) -> None:
        self.code = None
        self.thread = threading.Thread(target=self._run, args=(argv,), daemon=True)
        self.thread.start()

    def _run(self, argv):
        self.code = run(argv)

    def join(self, timeout: float = 20.0) -> int:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the tool did not finish"
        return self.code


@pytest.fixture
def srv(tmp_path):
    s = Server(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def bound(srv, port: int) -> bool:
    return srv.call(lambda: port in srv.sessions._by_port)


def test_send_one_message_and_stdin_lines(srv, capsys, monkeypatch):
    with client.socket(srv.path) as r:
        r.bind(8400)
        assert run(["send", "--ipc", srv.path, "10.0.0.1", "8400", "hello", "there"]) == 0
        assert r.recv() == b"hello there"
        assert "sent 1 message (11 bytes) to 10.0.0.1:8400" in capsys.readouterr().out
        import io

        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n")))
        assert run(["send", "--ipc", srv.path, "--end", "10.0.0.1", "8400"]) == 0
        assert [r.recv(), r.recv(), r.recv()] == [b"one", b"two", b""]


def test_recv_prints_messages_and_stops_at_count(srv, capsys):
    bg = Background(["recv", "--ipc", srv.path, "8400", "-g", "225.1.1.1", "--count", "2",
                     "--json"])
    assert wait(lambda: bound(srv, 8400) and srv.call(srv.sessions.groups))
    with client.socket(srv.path) as s:
        s.sendto(b"first", ("10.0.0.1", 8400))
        s.sendto(b"\x00\x01", ("225.1.1.1", 9))
        assert bg.join() == 0
        port = s.port
    out = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert out[0] == {"from": "10.0.0.1", "from_port": port, "to": "10.0.0.1", "to_port": 8400,
                      "bytes": 5, "ttl": 255, "data": "first"}
    assert out[1]["to"] == "225.1.1.1" and out[1]["data"] == "0x0001"


def test_recv_times_out_with_one_line(srv, capsys):
    assert run(["recv", "--ipc", srv.path, "0", "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "spines-kr: error: no message within 0.3 s"


def test_ping_and_its_echo(srv, capsys):
    echo = Background(["ping", "--echo", "--ipc", srv.path, "--count", "3"])
    assert wait(lambda: bound(srv, 8400))
    assert run(["ping", "--ipc", srv.path, "10.0.0.1", "-c", "3", "-i", "0", "-s", "100",
                "--json"]) == 0
    assert echo.join() == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sent"] == 3 and summary["received"] == 3 and summary["loss_pct"] == 0
    assert summary["rtt_us_min"] >= 0


def test_ping_without_an_echoer_reports_loss(srv, capsys):
    assert run(["ping", "--ipc", srv.path, "10.0.0.1", "-c", "1", "-W", "0.2"]) == 1
    assert "1 sent, 0 answered, 100% lost" in capsys.readouterr().out


def test_traceroute_members_edistance(srv, capsys):
    assert run(["traceroute", "--ipc", srv.path, "10.0.0.3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "overlay path from 10.0.0.1 to 10.0.0.3"
    assert [l.split() for l in out[1:]] == [["0", "10.0.0.1", "cost", "0"],
                                           ["1", "10.0.0.2", "cost", "4"],
                                           ["2", "10.0.0.3", "cost", "9"]]
    assert run(["traceroute", "--ipc", srv.path, "--members", "225.1.1.1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["node"] for m in data["members"]] == ["10.0.0.1", "10.0.0.3"]
    assert run(["traceroute", "--ipc", srv.path, "10.0.0.99"]) == 1
    assert capsys.readouterr().err.strip() == ("spines-kr: error: 10.0.0.99: unreachable from "
                                               "10.0.0.1")


def test_flood_send_and_recv(srv, capsys):
    rcv = Background(["flood", "recv", "--ipc", srv.path, "8600", "--json", "-t", "10"])
    assert wait(lambda: bound(srv, 8600))
    assert run(["flood", "send", "--ipc", srv.path, "10.0.0.1", "8600", "-n", "3000", "-s",
                "200", "--json"]) == 0
    assert rcv.join() == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    sent = next(l for l in lines if "sent" in l)
    got = next(l for l in lines if "received" in l)
    assert sent["sent"] == 3000 and sent["size"] == 200
    assert got["received"] == 3000 and got["expected"] == 3000 and got["ended"]
    assert got["loss_pct"] == 0 and got["duplicates"] == 0 and got["corrupted"] == 0


@pytest.mark.parametrize("argv, words", [
    (["send", "nohost.invalid.", "8400", "x"], "DEST"),
    (["send", "10.0.0.1", "70000", "x"], "PORT"),
    (["send", "10.0.0.1", "8400", "--size", "50001"], "--size"),
    (["recv", "8400", "-g", "10.0.0.1"], "not a multicast"),
    (["ping"], "DEST is required"),
    (["ping", "10.0.0.1", "-s", "10"], "--size"),
    (["traceroute", "--members", "10.0.0.1"], "not a group"),
    (["flood", "send", "10.0.0.1", "1", "-s", "4"], "--size"),
    (["flood"], "required"),
    (["send", "--port", "70000", "10.0.0.1", "1", "x"], "--port"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, words, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spines-kr: error:") and words in err[0]


def test_no_daemon_is_one_line_and_exit_1(tmp_path, capsys):
    path = str(tmp_path / "nothing")
    assert run(["send", "--ipc", path, "10.0.0.1", "1", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"spines-kr: error: no spines daemon at {path} (No such file or directory)"]


def test_a_refused_bind_is_one_line(srv, capsys):
    with client.socket(srv.path) as holder:
        holder.bind(8400)
        assert run(["recv", "--ipc", srv.path, "8400", "--timeout", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bind to virtual port 8400" in err[0] and "refused" in err[0]
