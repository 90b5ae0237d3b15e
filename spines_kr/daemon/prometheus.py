"""An optional Prometheus text endpoint (``metrics_listen = "127.0.0.1:9181"``; off by default).

Serves ``GET /metrics`` in the text exposition format 0.0.4 with the counters and gauges of
``show status``: names follow Prometheus conventions (``spines_kr_`` prefix, ``_total`` for
counters, base units: seconds, bytes, ratios), labels for per-link and per-reason series.
Anything but a GET of /metrics gets 404; the server reads at most one request line and headers
(8 KiB), on the daemon's loop (``daemon.server.RequestServer``).  Entry points:
``serve(loop, commands, listen) -> RequestServer``, ``render(status, links)``.
"""

from __future__ import annotations

import socket

from spines_kr.daemon.server import RequestServer

COUNTERS = {  # status counter -> (metric, help)
    "packets_in": ("spines_kr_packets_received_total", "Overlay packets received."),
    "packets_out": ("spines_kr_packets_sent_total", "Overlay packets sent."),
    "lsa_in": ("spines_kr_lsas_received_total", "Link-state advertisements received."),
    "lsa_out": ("spines_kr_lsas_sent_total", "Link-state advertisements sent."),
    "lsa_retransmitted": ("spines_kr_lsas_retransmitted_total", "LSAs sent again for lack of an ack."),
    "reconciles": ("spines_kr_reconciles_total", "Kernel reconciliations run."),
    "routes_added": ("spines_kr_routes_added_total", "Kernel routes added."),
    "routes_replaced": ("spines_kr_routes_replaced_total", "Kernel routes replaced."),
    "routes_deleted": ("spines_kr_routes_removed_total", "Kernel routes removed."),
    "route_errors": ("spines_kr_route_errors_total", "Kernel route writes that failed."),
    "send_errors": ("spines_kr_send_errors_total", "Overlay packets the kernel refused to send."),
    "emulated_drops": ("spines_kr_emulated_drops_total", "Own packets dropped by link emulation."),
}


def _esc(v) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(status: dict, links: list[dict]) -> str:
    out: list[str] = []

    def metric(name, kind, help_, samples):
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    c = status["counters"]
    for key, (name, help_) in COUNTERS.items():
        metric(name, "counter", help_, [({}, c.get(key, 0))])
    drops = [({"reason": k.split(".", 1)[1]}, v) for k, v in sorted(c.items()) if k.startswith("dropped.")]
    metric("spines_kr_packets_dropped_total", "counter", "Overlay packets dropped, by reason.",
           drops or [({"reason": "none"}, 0)])
    metric("spines_kr_neighbors_up", "gauge", "Links that are up.", [({}, status["neighbors_up"])])
    metric("spines_kr_links", "gauge", "Links configured or discovered.", [({}, status["links"])])
    metric("spines_kr_nodes", "gauge", "Nodes in the link-state database.", [({}, status["nodes"])])
    metric("spines_kr_routes", "gauge", "Routes the overlay wants in the kernel.", [({}, status["routes"])])
    metric("spines_kr_restart_hold", "gauge", "1 while stale routes are held after a restart.",
           [({}, int(status["restart_hold"]))])
    metric("spines_kr_uptime_seconds", "gauge", "Seconds since the daemon started.", [({}, status["uptime_s"])])
    metric("process_resident_memory_bytes", "gauge", "Resident memory.", [({}, status["rss_bytes"])])
    metric("process_cpu_seconds_total", "counter", "User and system CPU time.", [({}, status["cpu_s"])])
    per = lambda key, scale=1: [({"neighbor": l["neighbor_address"], "dev": l["ifname"]},
                                 l[key] * scale) for l in links if l.get(key) is not None]
    metric("spines_kr_link_up", "gauge", "1 when the link is up.",
           [({"neighbor": l["neighbor_address"], "dev": l["ifname"]}, int(l["state"] == "up")) for l in links])
    metric("spines_kr_link_rtt_seconds", "gauge", "Smoothed round-trip time.", per("rtt_ms", 0.001))
    metric("spines_kr_link_loss_ratio", "gauge", "Hello loss over the last 64 hellos.", per("loss"))
    metric("spines_kr_link_cost", "gauge", "Advertised cost under the active metric.", per("cost"))
    return "\n".join(out) + "\n"


def serve(loop, commands, listen: str) -> RequestServer:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(16)
    except BaseException:
        sock.close()
        raise

    def handle(request: bytes, _conn) -> bytes:
        parts = request.split(b"\n", 1)[0].decode("latin-1").split()
        if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
            body = render(commands.status(), commands.neighbors()).encode()
            head = ("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; "
                    f"charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n")
        else:
            body = b"not found: try /metrics\n"
            head = f"HTTP/1.0 404 Not Found\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    return RequestServer(loop, sock, handle, terminator=b"\r\n\r\n", max_request=8192,
                         timeout=5.0)
