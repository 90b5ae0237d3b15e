"""WireGuard devices: the kernel module over generic netlink, or wireguard-go over its UAPI socket.

Data model:
    PeerConfig(public_key, endpoint, keepalive)   the one peer of a point-to-point tunnel: its
        public key (32 bytes), its underlay endpoint ((address, port), or None to learn it from
        the peer's first authenticated packet -- WireGuard's roaming, how a node behind NAT is
        reached), the persistent keepalive in seconds (0: off); allowed IPs are always
        0.0.0.0/0: one peer per interface, the overlay's routes choose the interface.
    Device state: ``listen_port()`` and ``peer_status()`` -> {public key: PeerStatus(endpoint,
        last_handshake, rx_bytes, tx_bytes)}.

Entry points:
    KernelWireGuard(ifname, netns)  ``configure(private_key, peer, listen_port=0)``,
        ``listen_port()``, ``peer_status()``: WG_CMD_SET_DEVICE / WG_CMD_GET_DEVICE of the
        generic netlink family "wireguard" (linux/wireguard.h, the kernel's UAPI), one request
        each.  The device itself is an RTM_NEWLINK of kind "wireguard" (``netlink.tunnels``).
    UapiWireGuard(ifname)           the same three over wireguard-go's control socket
        ``/var/run/wireguard/<ifname>.sock`` ("Cross-platform Userspace Interface" of
        wireguard.com/xplatform: ``set=1`` / ``get=1``, key=value lines, a blank line, the
        answer ending in ``errno=N``), one connection per call.
    start_wireguard_go(ifname, timeout) -> subprocess.Popen   runs ``wireguard-go -f IFNAME``
        (foreground: it stays our child; it makes the TUN device in the caller's namespace) and
        waits until its control socket answers.  The socket directory is the host's, whatever
        the namespace, so interface names must be unique on the host (``daemon.tunnels``
        derives them from the overlay port and both logical IDs).

Listen port 0 lets the kernel (or wireguard-go) pick a free UDP port; the daemon reads it back
and tells its peer.  Nothing here shells out to ``wg``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

from spines_kr.netlink.core import (NETLINK_GENERIC, NLA_F_NESTED, NLM_F_DUMP, U16, U32, Netlink,
                                    attr, parse_attrs)
from spines_kr.netlink.nsenter import which

SOCKET_DIR = "/var/run/wireguard"
# linux/genetlink.h, linux/wireguard.h
GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 16, 3, 1, 2
GENLMSGHDR = struct.Struct("=BBH")
WG_CMD_GET_DEVICE, WG_CMD_SET_DEVICE = 0, 1
WG_GENL_VERSION = 1
WGDEVICE_A_IFNAME, WGDEVICE_A_PRIVATE_KEY, WGDEVICE_A_FLAGS = 2, 3, 5
WGDEVICE_A_LISTEN_PORT, WGDEVICE_A_PEERS = 6, 8
WGDEVICE_F_REPLACE_PEERS = 1
WGPEER_A_PUBLIC_KEY, WGPEER_A_FLAGS, WGPEER_A_ENDPOINT = 1, 3, 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, WGPEER_A_LAST_HANDSHAKE_TIME = 5, 6
WGPEER_A_RX_BYTES, WGPEER_A_TX_BYTES, WGPEER_A_ALLOWEDIPS = 7, 8, 9
WGPEER_F_REPLACE_ALLOWEDIPS, WGPEER_F_UPDATE_ONLY = 2, 4
WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK = 1, 2, 3
SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family (host order), port and address (network order)
U64 = struct.Struct("=Q")


@dataclass(frozen=True, slots=True)
class PeerConfig:
    public_key: bytes
    endpoint: tuple[str, int] | None = None
    keepalive: int = 0


@dataclass(frozen=True, slots=True)
class PeerStatus:
    endpoint: tuple[str, int] | None
    last_handshake: float  # seconds since the epoch (0: never)
    rx_bytes: int
    tx_bytes: int


# --- the kernel module ----------------------------------------------------------------------


def _family_id(nl: Netlink) -> int:
    body = GENLMSGHDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr(CTRL_ATTR_FAMILY_NAME, b"wireguard\0")
    for mtype, payload in nl.get(GENL_ID_CTRL, body):
        if mtype == GENL_ID_CTRL:
            raw = parse_attrs(payload, GENLMSGHDR.size).get(CTRL_ATTR_FAMILY_ID)
            if raw is not None:
                return U16.unpack(raw[:2])[0]
    raise OSError(errno.ENOENT, "no generic netlink family 'wireguard' (CONFIG_WIREGUARD)")


def set_device_request(ifname: str, private_key: bytes, peer: PeerConfig,
                       listen_port: int | None = 0, replace: bool = True) -> bytes:
    """The WG_CMD_SET_DEVICE body (genl header and attributes) that makes ``ifname`` exactly
    one peer's tunnel: our private key, the listen port, the peer replacing any other; with
    ``replace=False`` only the existing peer's endpoint and keepalive change, in place (its
    handshake and session survive: replacing a peer whose handshake is under way costs a
    retry, 5 s in WireGuard)."""
    allowed = attr(0 | NLA_F_NESTED, attr(WGALLOWEDIP_A_FAMILY, U16.pack(socket.AF_INET))
                   + attr(WGALLOWEDIP_A_IPADDR, bytes(4)) + attr(WGALLOWEDIP_A_CIDR_MASK, b"\0"))
    p = (attr(WGPEER_A_PUBLIC_KEY, peer.public_key)
         + attr(WGPEER_A_FLAGS, U32.pack(WGPEER_F_REPLACE_ALLOWEDIPS
                                         | (0 if replace else WGPEER_F_UPDATE_ONLY)))
         + attr(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, U16.pack(peer.keepalive))
         + attr(WGPEER_A_ALLOWEDIPS | NLA_F_NESTED, allowed))
    if peer.endpoint is not None:
        host, port = peer.endpoint
        p += attr(WGPEER_A_ENDPOINT, SOCKADDR_IN.pack(socket.AF_INET, struct.pack("!H", port),
                                                      socket.inet_aton(host)))
    body = (GENLMSGHDR.pack(WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0)
            + attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0"))
    if replace:
        body += (attr(WGDEVICE_A_PRIVATE_KEY, private_key)
                 + attr(WGDEVICE_A_FLAGS, U32.pack(WGDEVICE_F_REPLACE_PEERS)))
    body += attr(WGDEVICE_A_PEERS | NLA_F_NESTED, attr(0 | NLA_F_NESTED, p))
    if listen_port is not None:
        body += attr(WGDEVICE_A_LISTEN_PORT, U16.pack(listen_port))
    return body


def decode_device(payloads: list[bytes]) -> tuple[int, dict[bytes, PeerStatus]]:
    """(listen port, peers) of WG_CMD_GET_DEVICE answers (a device may span several)."""
    port, peers = 0, {}
    for payload in payloads:
        attrs = parse_attrs(payload, GENLMSGHDR.size)
        if WGDEVICE_A_LISTEN_PORT in attrs:
            port = U16.unpack(attrs[WGDEVICE_A_LISTEN_PORT][:2])[0]
        for raw in parse_attrs(attrs.get(WGDEVICE_A_PEERS, b"")).values():
            pa = parse_attrs(raw)
            key = pa.get(WGPEER_A_PUBLIC_KEY)
            if key is None:
                continue
            endpoint = None
            ep = pa.get(WGPEER_A_ENDPOINT, b"")
            if len(ep) >= SOCKADDR_IN.size:
                family, port_be, addr4 = SOCKADDR_IN.unpack_from(ep)
                if family == socket.AF_INET:
                    endpoint = (socket.inet_ntoa(addr4), struct.unpack("!H", port_be)[0])
            hs = pa.get(WGPEER_A_LAST_HANDSHAKE_TIME, b"")
            last = (struct.unpack_from("=qq", hs)[0] + struct.unpack_from("=qq", hs)[1] * 1e-9
                    if len(hs) >= 16 else 0.0)
            peers[key] = PeerStatus(endpoint, last,
                                    U64.unpack(pa[WGPEER_A_RX_BYTES])[0] if len(pa.get(WGPEER_A_RX_BYTES, b"")) == 8 else 0,
                                    U64.unpack(pa[WGPEER_A_TX_BYTES])[0] if len(pa.get(WGPEER_A_TX_BYTES, b"")) == 8 else 0)
    return port, peers


class KernelWireGuard:
    def __init__(self, ifname: str, netns: str | None = None) -> None:
        self.ifname = ifname
        self._netns = netns

    def _nl(self) -> tuple[Netlink, int]:
        nl = Netlink(self._netns, NETLINK_GENERIC)
        try:
            return nl, _family_id(nl)
        except BaseException:
            nl.close()
            raise

    def configure(self, private_key: bytes, peer: PeerConfig, listen_port: int | None = 0,
                  replace: bool = True) -> None:
        nl, family = self._nl()
        with nl:
            code, text = nl.request(family, 0, set_device_request(self.ifname, private_key, peer,
                                                                   listen_port, replace))
        if code:
            raise OSError(code, f"wireguard {self.ifname}: {text}")

    def _get(self) -> tuple[int, dict[bytes, PeerStatus]]:
        nl, family = self._nl()
        body = (GENLMSGHDR.pack(WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0)
                + attr(WGDEVICE_A_IFNAME, self.ifname.encode() + b"\0"))
        with nl:
            answers = nl.get(family, body, flags=NLM_F_DUMP)
        return decode_device([p for t, p in answers if t == family])

    def listen_port(self) -> int:
        return self._get()[0]

    def peer_status(self) -> dict[bytes, PeerStatus]:
        return self._get()[1]


# --- wireguard-go ---------------------------------------------------------------------------


def socket_path(ifname: str) -> str:
    return os.path.join(SOCKET_DIR, f"{ifname}.sock")


def uapi_set_text(private_key: bytes, peer: PeerConfig, listen_port: int | None = 0,
                  replace: bool = True) -> str:
    """A ``set=1`` request: as ``set_device_request`` (``replace=False``: the peer in place)."""
    lines = ["set=1"]
    if replace:
        lines.append(f"private_key={private_key.hex()}")
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    if replace:
        lines.append("replace_peers=true")
    lines.append(f"public_key={peer.public_key.hex()}")
    if not replace:
        lines.append("update_only=true")
    if peer.endpoint is not None:
        lines.append(f"endpoint={peer.endpoint[0]}:{peer.endpoint[1]}")
    lines += [f"persistent_keepalive_interval={peer.keepalive}", "replace_allowed_ips=true",
              "allowed_ip=0.0.0.0/0"]
    return "\n".join(lines) + "\n\n"


def parse_uapi_get(text: str) -> tuple[int, int, dict[bytes, PeerStatus]]:
    """(errno, listen port, peers) of a ``get=1`` answer."""
    port, peers, code = 0, {}, 0
    key, fields = None, {}

    def done():
        if key is not None:
            ep = fields.get("endpoint")
            endpoint = None
            if ep and ":" in ep and not ep.startswith("["):
                host, _, p = ep.rpartition(":")
                endpoint = (host, int(p))
            last = int(fields.get("last_handshake_time_sec", 0)) + int(
                fields.get("last_handshake_time_nsec", 0)) * 1e-9
            peers[key] = PeerStatus(endpoint, last, int(fields.get("rx_bytes", 0)),
                                    int(fields.get("tx_bytes", 0)))

    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name == "listen_port":
            port = int(value)
        elif name == "public_key":
            done()
            key, fields = bytes.fromhex(value), {}
        elif name == "errno":
            code = int(value)
        elif key is not None:
            fields[name] = value
    done()
    return code, port, peers


class UapiWireGuard:
    def __init__(self, ifname: str, timeout: float = 5.0) -> None:
        self.ifname = ifname
        self.timeout = timeout

    def _call(self, request: str) -> str:
        path = socket_path(self.ifname)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(self.timeout)
            s.connect(path)
            s.sendall(request.encode())
            buf = b""
            while not buf.endswith(b"\n\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return buf.decode(errors="replace")

    def configure(self, private_key: bytes, peer: PeerConfig, listen_port: int | None = 0,
                  replace: bool = True) -> None:
        answer = self._call(uapi_set_text(private_key, peer, listen_port, replace))
        code = parse_uapi_get(answer)[0] if "errno=" in answer else errno.EPROTO
        if code:
            raise OSError(code, f"wireguard-go {self.ifname}: set failed ({answer.strip()!r})")

    def _get(self) -> tuple[int, dict[bytes, PeerStatus]]:
        code, port, peers = parse_uapi_get(self._call("get=1\n\n"))
        if code:
            raise OSError(code, f"wireguard-go {self.ifname}: get failed")
        return port, peers

    def listen_port(self) -> int:
        return self._get()[0]

    def peer_status(self) -> dict[bytes, PeerStatus]:
        return self._get()[1]


def start_wireguard_go(ifname: str, timeout: float = 5.0,
                       netns: str | None = None) -> subprocess.Popen:
    """Start ``wireguard-go -f IFNAME`` (our child, in our namespace, or in the named namespace
    ``netns`` through ``ip netns exec``, which execs) and wait until its control socket answers;
    OSError naming what went wrong (and the process stopped) otherwise."""
    program = which("wireguard-go")
    if program is None:
        raise OSError(errno.ENOENT, "wireguard-go is not installed (Debian: wireguard-go)")
    env = {"PATH": os.environ.get("PATH", os.defpath), "WG_PROCESS_FOREGROUND": "1",
           "LOG_LEVEL": "error"}
    argv = [program, "-f", ifname]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    path = socket_path(ifname)
    while True:
        if proc.poll() is not None:
            raise OSError(errno.EIO, f"wireguard-go {ifname} exited with status {proc.returncode}"
                                     f" (run 'wireguard-go -f {ifname}' by hand to see why)")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(path)
            return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise OSError(errno.ETIMEDOUT, f"wireguard-go {ifname}: no control socket {path} "
                                           f"within {timeout:g} s")
        time.sleep(0.01)
