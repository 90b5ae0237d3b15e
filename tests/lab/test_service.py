"""The daemon as a service: systemd notify messages and SIGHUP reload, with real daemons in
network namespaces the tests create."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from spines_kr.daemon.control import request
from spines_kr.lab import netns, ops, topology

pytestmark = pytest.mark.timeout(240)


def test_notify_ready_status_watchdog_stopping(tmp_path):
    ns = f"sktest-{os.urandom(3).hex()}"
    sock_path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(10)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        env = dict(netns.child_env(), NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "spines_kr",
                                 "daemon", "-l", "10.77.0.1", "-p", "8177", "-k", "0", "-x", "3",
                                 "--auth", "none",
                                 "--control-socket", str(tmp_path / "ctl"), "-ud",
                                 str(tmp_path / "ipc"), "-lf", str(tmp_path / "log")], env=env)
        got = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("STOPPING=1" in m for m in got):
            try:
                got.append(s.recv(4096).decode())
            except TimeoutError:
                break
        text = "\n".join(got)
        assert "READY=1" in got[0] and "STATUS=0/0 neighbors up" in got[0]
        assert "WATCHDOG=1" in text and "STOPPING=1" in text
        assert proc.wait(timeout=10) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns])
        s.close()


@pytest.mark.needs("veth")  # the lab's links
def test_reload_changes_neighbors_without_dropping_unrelated_routes(tmp_path):
    name = f"sktest{os.urandom(3).hex()}"
    proc = None
    try:
        st = netns.up(topology.demo(), name)
        assert ops.wait_converged(st, 15) is not None
        n1 = next(n for n in st["nodes"] if n["name"] == "n1")
        with open(os.path.join(st["state_dir"], "state.json")) as f:
            n1["neighbors"] = next(n for n in json.load(f)["nodes"] if n["name"] == "n1")["neighbors"]
        os.kill(n1["pid"], signal.SIGTERM)  # the lab's daemon makes way for one with a file
        assert ops.wait(lambda: not netns.status(name)["nodes"][0]["alive"], 10) is not None
        cfg = tmp_path / "n1.toml"
        base = (f'logical_id = "{n1["logical_id"]}"\nkernel_levels = [0]\n'
                f'accept_link_commands = true\n'
                f'key_file = "{os.path.join(st["state_dir"], "key.toml")}"\n')
        cfg.write_text(base + f"neighbors = {json.dumps(n1['neighbors'])}\n")
        ctl = str(tmp_path / "ctl")
        proc = subprocess.Popen(["ip", "netns", "exec", n1["netns"], sys.executable, "-m",
                                 "spines_kr", "daemon", "-c", str(cfg), "--control-socket", ctl,
                                 "-lf", str(tmp_path / "log"), "-ud", str(tmp_path / "ipc")],
                                env=netns.child_env())
        n1["control_socket"] = ctl  # convergence asks every daemon, this one at its new socket
        assert ops.wait(lambda: ops.converged(st), 15) is not None
        n2 = next(n for n in st["nodes"] if n["name"] == "n2")["logical_id"] + "/32"
        before = ops.kernel_routes(n1["netns"])[n2]
        # drop the neighbor on n4's side: routes to n4 and n5 must now go round via n2
        l14 = next(l for l in st["links"] if {l["a"], l["b"]} == {"n1", "n4"})
        n4_end = (l14["a_address"] if l14["a"] == "n4" else l14["b_address"]).split("/")[0]
        keep = [a for a in n1["neighbors"] if a != n4_end]
        cfg.write_text(base + f"neighbors = {json.dumps(keep)}\n")
        proc.send_signal(signal.SIGHUP)
        assert ops.wait(lambda: ops.path(st, "n1", "n4") == ["n1", "n2", "n3", "n5", "n4"], 10) \
            is not None
        assert ops.kernel_routes(n1["netns"])[n2] == before
        status = request(ctl, {"cmd": "show", "what": "status"})["data"]
        assert status["counters"]["routes_deleted"] == 0  # nothing withdrawn, only replaced
        assert len(request(ctl, {"cmd": "show", "what": "links"})["data"]) == 1
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        netns.down(name)


@pytest.mark.needs("veth")
def test_show_topology_png_draws_the_overlay(tmp_path):
    import shutil
    if shutil.which("dot") is None:
        pytest.skip("Graphviz not installed")
    name = f"sktest{os.urandom(3).hex()}"
    try:
        st = netns.up(topology.demo(), name)
        assert ops.wait_converged(st, 15) is not None
        png = tmp_path / "overlay.png"
        argv, env = netns.exec_argv(name, "n1", [sys.executable, "-m", "spines_kr", "show",
                                                 "topology", "--png", str(png), "--dot"])
        env["PYTHONPATH"] = netns.child_env()["PYTHONPATH"]
        out = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert all(f'"{n["logical_id"]}"' in out.stdout for n in st["nodes"])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        netns.down(name)


@pytest.mark.needs("veth")
def test_prometheus_endpoint_serves_the_status_counters(tmp_path):
    name = f"sktest{os.urandom(3).hex()}"
    proc = None
    try:
        st = netns.up(topology.demo(), name)
        assert ops.wait_converged(st, 15) is not None
        n1 = st["nodes"][0]
        os.kill(n1["pid"], signal.SIGTERM)
        assert ops.wait(lambda: not netns.status(name)["nodes"][0]["alive"], 10) is not None
        with open(os.path.join(st["state_dir"], "state.json")) as f:
            argv = next(n for n in json.load(f)["nodes"] if n["name"] == "n1")["argv"]
        argv = [a if a != n1["control_socket"] else str(tmp_path / "ctl") for a in argv]
        proc = subprocess.Popen(["ip", "netns", "exec", n1["netns"], *argv,
                                 "--metrics-listen", "127.0.0.1:9181"], env=netns.child_env())
        n1["control_socket"] = str(tmp_path / "ctl")
        assert ops.wait(lambda: ops.converged(st), 15) is not None
        script = ("import urllib.request;print(urllib.request.urlopen("
                  "'http://127.0.0.1:9181/metrics', timeout=5).read().decode())")
        out = ""
        def scrape():
            nonlocal out
            r = subprocess.run(["ip", "netns", "exec", n1["netns"], sys.executable, "-c", script],
                               capture_output=True, text=True)
            out = r.stdout
            return "spines_kr_neighbors_up 2" in out
        assert ops.wait(scrape, 10, interval=0.2) is not None, out
        assert "# TYPE spines_kr_packets_received_total counter" in out
        assert 'spines_kr_link_rtt_seconds{neighbor="' in out
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        netns.down(name)
