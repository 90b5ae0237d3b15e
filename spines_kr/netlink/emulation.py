"""Link emulation on the egress of a link device: bandwidth, latency, loss and loss burstiness.

Data model:
    Capabilities(tbf, netem, nft, detail)
        what this kernel and host can do.  ``tbf``/``netem``: the kernel knows that qdisc kind;
        ``nft``: the ``nft`` binary is on PATH; ``detail`` says why a probe could not tell.
    Applied(ifname, outcome, daemon_covered, errors, requested)
        what ``apply`` did, one outcome per parameter ("bandwidth", "latency", "loss", "burst"),
        each one of
            "kernel:tbf" · "kernel:netem" · "kernel:nft-drop"   applied to the kernel's traffic
            "daemon-only (<why>)"   not applied to the kernel's traffic (unsupported, refused,
                                    nft missing...): only the daemon's own emulation acts
            "off"                   not requested
            "cleared"               nothing requested on the device: all of ours removed
        ``daemon_covered`` names the parameters whose kernel emulation also acts on the daemon's
        own overlay packets (tbf and netem act on every packet of the device), so user space must
        not emulate them a second time; ``summary`` is one line for logs and setlink replies.

Entry points: ``probe(netns)``, ``apply(ifindex, ifname, ..., instance, netns)``,
``clear_all(instance, netns)``.  All are blocking (a few netlink round trips, and one or two
``nft`` processes when loss is involved): call them from an executor, not the event loop.
``apply`` never raises because the kernel refused something: refusals are in ``Applied``; it
raises ValueError for parameters out of range.

What is installed, on the egress of the device (``instance`` is the overlay's UDP port):
  * a root qdisc with handle ``<instance>:`` (hex major = the port, e.g. 1fa4: for 8100; 65535
    uses fffe:, as ffff: is the ingress handle), through rtnetlink:
      - netem, when the kernel has it and latency or loss is asked: delay, loss, loss correlation
        (= burst) and rate (= bandwidth) in one qdisc;
      - otherwise tbf for bandwidth: rate, a bucket of max(10 ms of rate, 2 frames of the device
        MTU), a queue of 50 ms at that rate.
    A root qdisc is *ours* when its handle is ours and its kind is tbf or netem; only ours is
    changed or deleted.  A root qdisc of someone else (any other handle but 0, the kernel's
    default) is left alone and the parameter reported "daemon-only (root qdisc ... not ours)".
  * without netem, loss: an nftables table ``inet spines_kr_<instance>`` with one base chain per
    device (``loss_<ifname>``, postrouting hook: forwarded and locally sent packets alike) that
    accepts UDP from or to port ``instance`` -- the daemon's own packets, on which it emulates
    loss itself -- and drops ``numgen random mod 10000 < loss*100``.  At postrouting a locally
    sent datagram is still whole (IP fragmentation comes after the hook), so the port match sees
    every packet of the daemon.  nftables is not rtnetlink: the ``nft`` binary applies a script
    (``nft -f -``), which is one atomic transaction.
    An nft drop at postrouting is silent for forwarded packets; a local sender on the router
    gets EPERM from send() (kernel 6.18: NF_DROP without an errno is -EPERM to the socket;
    TCP retransmits).  The daemon's own packets are excluded, so it never sees that.
  * without netem, latency and burst cannot act on the kernel's traffic: reported daemon-only.
  * with netem, delay and loss act on every packet of the device, the daemon's own included:
    ``Applied.daemon_covered`` says so, and the daemon must skip its own emulation of those.
    netem's burst is its loss correlation (pyroute2 0.9.7 encodes no Gilbert-Elliott model).
Re-applying replaces: a tbf or netem of ours is changed in place (NLM_F_REPLACE on our handle),
the device's chain is flushed and refilled in the same nft transaction.  Asking for nothing
(all None or 0) removes our qdisc and chain of that device, and the table once it is empty.

Codec: requests are pyroute2's ``tcmsg`` with its tbf/netem option encoders (rate tables,
psched ticks), sent on our own socket (``netlink.core.Netlink``).  Not
``IPRoute().tc()``: in 0.9.7 the synchronous IPRoute runs its own asyncio loop and fails inside
the daemon's ("This event loop is already running"), and it opens namespace sockets through a
forked helper with O_CREAT.

Capability detection (``probe``), without side effects, in the daemon's own namespace:
  * qdisc kinds: the kernel is asked to create a root qdisc of that kind on ``lo`` (ifindex 1 in
    every namespace) with a handle no one uses, flags CREATE|REPLACE|EXCL and an empty
    TCA_OPTIONS.  In tc_modify_qdisc the kind is looked up (and its module auto-loaded) before the
    options are parsed, so an unknown kind fails with ENOENT "Specified qdisc kind is unknown"
    and a known one with EINVAL from its init (tbf, netem and htb all refuse missing options);
    nothing is grafted, lo keeps its qdisc.  Kernel 6.18 without sch_netem, reproducer:
        tc qdisc add dev lo root netem delay 1ms   # Error: Specified qdisc kind is unknown.
    The answer is kept per process and namespace (the set of qdisc kinds is the kernel's, and
    with modules it only grows).  Module files are no help: boards and VMs often have a kernel
    with everything built in and no /lib/modules.
  * nft: the binary is looked up on PATH at each apply (cheap); a kernel without nf_tables shows
    as an nft error in the outcome.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import struct
from dataclasses import dataclass, field

from spines_kr.log import get_logger
from spines_kr.netlink.core import (NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLMSGHDR, Netlink,
                                    parse_attrs)
from spines_kr.netlink.kernel import IFINFOMSG, RTM_GETLINK, RTM_NEWLINK
from spines_kr.netlink import messages  # pyroute2's tc codecs, loaded at the first setlink
from spines_kr.netlink.nsenter import NETNS_RUN_DIR, setns, which

log = get_logger(__name__)

# linux/rtnetlink.h, linux/pkt_sched.h, linux/if_link.h
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
TC_H_ROOT = 0xFFFFFFFF
TCA_KIND, TCA_OPTIONS = 1, 2
IFLA_MTU = 4
LOOPBACK_IFINDEX = 1
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info

PARAMETERS = ("bandwidth", "latency", "loss", "burst")
KERNEL_TBF, KERNEL_NETEM, KERNEL_NFT_DROP = "kernel:tbf", "kernel:netem", "kernel:nft-drop"
OFF, CLEARED = "off", "cleared"
OUR_KINDS = ("tbf", "netem")
PROBE_HANDLE = 0xFFFD0000  # never grafted: the probe's request always fails
ACK_TIMEOUT = 10.0
NFT_TIMEOUT = 15.0
TBF_QUEUE_S = 0.05  # tbf queue: 50 ms at the emulated rate
TBF_BUCKET_S = 0.01  # tbf bucket: at least 10 ms at the emulated rate (and two frames)
LOSS_SCALE = 10000  # nft drops "numgen random mod 10000 < loss_pct * 100": 0.01 % steps
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def daemon_only(why: str) -> str:
    return f"daemon-only ({why})"


@dataclass(frozen=True, slots=True)
class Capabilities:
    tbf: bool
    netem: bool
    nft: bool
    detail: str = ""  # why a qdisc probe could not tell, if it could not


@dataclass(frozen=True, slots=True)
class Applied:
    ifname: str
    outcome: dict[str, str]  # parameter -> "kernel:..." | "daemon-only (...)" | "off" | "cleared"
    daemon_covered: frozenset[str] = frozenset()  # kernel emulation also hits our own packets
    errors: tuple[str, ...] = ()  # kernel or nft refusals, also described in ``outcome``
    requested: dict[str, float] = field(default_factory=dict)  # the non-zero parameters

    @property
    def summary(self) -> str:
        if all(v == CLEARED for v in self.outcome.values()):
            return f"{self.ifname}: emulation cleared"
        units = {"bandwidth": " kbit/s", "latency": " ms", "loss": " %", "burst": " %"}
        parts = []
        for p in PARAMETERS:
            if p in self.requested:
                parts.append(f"{p} {self.requested[p]:g}{units[p]} {self.outcome[p]}")
        return f"{self.ifname}: " + "; ".join(parts)


# --- rtnetlink: qdiscs ------------------------------------------------------------------------


def our_handle(instance: int) -> int:
    """The root qdisc handle of overlay ``instance`` (its UDP port): major = port."""
    if not 1 <= instance <= 0xFFFF:
        raise ValueError(f"instance {instance} is not a UDP port (1..65535)")
    return min(instance, 0xFFFE) << 16


class _Tc:
    """One NETLINK_ROUTE socket for qdisc requests, one at a time."""

    def __init__(self, netns: str | None) -> None:
        self._nl = Netlink(netns, timeout=ACK_TIMEOUT)

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> _Tc:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, mtype: int, flags: int, body: bytes) -> tuple[int, str]:
        """(errno, message) of one acknowledged request; errno 0 is success."""
        return self._nl.request(mtype, flags, body)

    def root_qdiscs(self) -> dict[int, tuple[str, int]]:
        """ifindex -> (kind, handle) of every root qdisc in the namespace."""
        roots = {}
        try:
            answers = list(self._nl.dump(RTM_GETQDISC, TCMSG.pack(0, 0, 0, 0, 0)))
        except OSError as e:
            raise OSError(e.errno, f"qdisc dump: {e.strerror}") from None
        for _mtype, payload in answers:
            if len(payload) < TCMSG.size:
                continue
            _family, ifindex, handle, parent, _info = TCMSG.unpack_from(payload)
            if parent == TC_H_ROOT:
                kind = parse_attrs(payload, TCMSG.size).get(TCA_KIND, b"")
                roots[ifindex] = (kind.split(b"\0")[0].decode(errors="replace"), handle)
        return roots

    def mtu(self, ifindex: int) -> int | None:
        try:
            answers = self._nl.get(RTM_GETLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0))
        except OSError:
            return None
        for mtype, payload in answers:
            if mtype == RTM_NEWLINK and len(payload) >= IFINFOMSG.size:
                value = parse_attrs(payload, IFINFOMSG.size).get(IFLA_MTU)
                return struct.unpack("=I", value)[0] if value and len(value) == 4 else None
        return None

    def probe_kind(self, kind: str) -> tuple[bool | None, str]:
        """Does the kernel know qdisc ``kind``?  (None, why) when the answer says neither."""
        body = (TCMSG.pack(socket.AF_UNSPEC, LOOPBACK_IFINDEX, PROBE_HANDLE, TC_H_ROOT, 0)
                + _nlattr(TCA_KIND, kind.encode() + b"\0") + _nlattr(TCA_OPTIONS, b""))
        code, message = self.request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE | NLM_F_EXCL, body)
        if code == errno.ENOENT:
            return False, ""
        if code == errno.EINVAL:
            return True, ""
        if code == 0:  # a kernel that accepts empty options: take the probe's qdisc away again
            self.delete_root(LOOPBACK_IFINDEX, PROBE_HANDLE)
            log.warning("netlink.emulation.probe_installed", kind=kind,
                        note="kernel accepted an empty qdisc; removed it from lo")
            return True, ""
        return None, f"probe of {kind}: {message}"

    def replace_root(self, ifindex: int, handle: int, kind: str, options: dict) -> tuple[int, str]:
        msg = messages.tcmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = ifindex
        msg["handle"] = handle
        msg["parent"] = TC_H_ROOT
        msg["attrs"] = [("TCA_KIND", kind), ("TCA_OPTIONS", options)]
        msg.encode()
        body = bytes(msg.data)[NLMSGHDR.size:]
        return self.request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, body)

    def delete_root(self, ifindex: int, handle: int) -> tuple[int, str]:
        code, message = self.request(RTM_DELQDISC, 0,
                                     TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, TC_H_ROOT, 0))
        return (0, "") if code in (errno.ENOENT, errno.ENODEV) else (code, message)


def _nlattr(atype: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, atype) + value + b"\0" * (-length % 4)


def _tbf_options(rate_bytes: int, mtu: int | None) -> dict:
    frame = (mtu or 1500) + 14
    bucket = max(int(rate_bytes * TBF_BUCKET_S), 2 * frame)
    return messages.sched_tbf.get_parameters({"rate": rate_bytes, "burst": bucket,
                                     "limit": int(rate_bytes * TBF_QUEUE_S) + bucket})


def _netem_options(rate_bytes: int | None, latency_ms: float, loss_pct: float,
                   burst_pct: float) -> dict:
    params: dict = {"delay": int(round(latency_ms * 1000)), "loss": loss_pct, "limit": 1000}
    if loss_pct and burst_pct:
        params["loss_corr"] = burst_pct
    if rate_bytes:
        params["rate"] = rate_bytes
    return messages.sched_netem.get_parameters(params)


# --- capabilities -----------------------------------------------------------------------------

_kinds_cache: dict[str | None, tuple[bool, bool, str]] = {}


def probe(netns: str | None = None, refresh: bool = False) -> Capabilities:
    """What this kernel and host support; see the module docstring.  Never raises."""
    if refresh or netns not in _kinds_cache:
        try:
            with _Tc(netns) as tc:
                tbf, why_tbf = tc.probe_kind("tbf")
                netem, why_netem = tc.probe_kind("netem")
            detail = "; ".join(w for w in (why_tbf, why_netem) if w)
            result = (bool(tbf), bool(netem), detail)
            if tbf is not None and netem is not None:
                _kinds_cache[netns] = result
        except OSError as e:  # includes NetnsError and a timeout
            result = (False, False, f"qdisc probe failed: {e}")
        log.info("netlink.emulation.probed", netns=netns, tbf=result[0], netem=result[1],
                 detail=result[2])
    else:
        result = _kinds_cache[netns]
    return Capabilities(result[0], result[1], which("nft") is not None, result[2])


# --- nftables ---------------------------------------------------------------------------------



class _NftError(Exception):
    pass


def _nft(args: list[str], netns: str | None, script: str | None = None) -> str:
    """Run ``nft args`` (in ``netns``), feeding ``script``; stdout, or _NftError with why."""
    exe = which("nft")
    if exe is None:
        raise _NftError("nft missing")
    fd = None
    preexec = None
    if netns is not None:
        try:
            fd = os.open(os.path.join(NETNS_RUN_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise _NftError(f"network namespace {netns!r}: {e.strerror}") from None

        def preexec() -> None:  # in the child, before exec: only that process moves
            err = setns(fd)
            if err:
                raise OSError(err, "setns")
    import subprocess  # only when setlink asks nftables for something

    try:
        proc = subprocess.run([exe, *args], input=script, capture_output=True, text=True,
                              timeout=NFT_TIMEOUT, preexec_fn=preexec,
                              pass_fds=(fd,) if fd is not None else ())
    except (OSError, subprocess.SubprocessError) as e:
        raise _NftError(f"nft: {e}") from None
    finally:
        if fd is not None:
            os.close(fd)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        raise _NftError("nft: " + (lines[0] if lines else f"exit status {proc.returncode}"))
    return proc.stdout


def table_name(instance: int) -> str:
    return f"spines_kr_{instance}"


def chain_name(ifname: str, ingress: bool = False) -> str:
    """The device's chain: ``loss_<ifname>`` (egress) or ``lossin_<ifname>`` (ingress), with
    ``x_<hex>`` for names nft can't spell."""
    prefix = "lossin" if ingress else "loss"
    if _SAFE_NAME.fullmatch(ifname):
        return f"{prefix}_{ifname}"
    return f"{prefix}x_{ifname.encode().hex()}"


def _our_chains(instance: int, netns: str | None) -> set[str] | None:
    """Chains of our table, or None when the table does not exist."""
    try:
        out = _nft(["-j", "list", "table", "inet", table_name(instance)], netns)
    except _NftError as e:
        if "No such file or directory" in str(e):
            return None
        raise
    return {item["chain"]["name"] for item in json.loads(out).get("nftables", [])
            if "chain" in item}


def _set_drop(instance: int, ifname: str, share: int, netns: str | None,
              ingress: bool = False) -> None:
    """Install or replace the device's drop chain: ``share`` of 10000 packets dropped, of
    those it sends (postrouting) or, ``ingress``, of those it receives (prerouting)."""
    if '"' in ifname or "\\" in ifname or not ifname.isprintable():
        raise _NftError("interface name not usable in nftables")
    t, c = f"inet {table_name(instance)}", chain_name(ifname, ingress)
    match = f'{"iif" if ingress else "oif"}name "{ifname}"'
    hook = "prerouting" if ingress else "postrouting"
    # nft takes the numgen comparison's value within the modulus: 100 % is a plain drop.
    chance = f"numgen random mod {LOSS_SCALE} < {share}" if share < LOSS_SCALE else ""
    def script(data_rule: str | None) -> str:
        return "\n".join([
            f"add table {t}",
            f"add chain {t} {c} {{ type filter hook {hook} priority filter; policy accept; }}",
            f"flush chain {t} {c}",
            f'add rule {t} {c} {match} udp sport {instance} accept comment "spines-kr overlay"',
            f'add rule {t} {c} {match} udp dport {instance} accept comment "spines-kr overlay"',
            *([f'add rule {t} {c} {match} {data_rule} accept comment "spines-kr data"']
              if data_rule else []),
            f"add rule {t} {c} {match} {chance} counter drop comment \"spines-kr emulated loss\"",
            "",
        ])

    if not ingress:
        _nft(["-f", "-"], netns, script(None))
        return
    # Received: the daemon's data packets addressed to this host (the data port, overlay port
    # + 1) are the daemon's to emulate on receipt, as its control packets; data in transit
    # through this node (the kernel forwards it) is the kernel's traffic and takes the drop.
    # Without nftables' fib expression, the data port is spared whatever its destination.
    try:
        _nft(["-f", "-"], netns, script(f"udp dport {instance + 1} fib daddr type local"))
    except _NftError:
        _nft(["-f", "-"], netns, script(f"udp dport {instance + 1}"))


def _remove_drop(instance: int, ifname: str, netns: str | None, ingress: bool = False) -> bool:
    """Remove the device's chain (and the table once empty); whether there was one."""
    try:
        chains = _our_chains(instance, netns)
    except _NftError:  # no nft, or no nf_tables in the kernel: nothing of ours can be there
        return False
    c = chain_name(ifname, ingress)
    if chains is None or c not in chains:
        return False
    t = f"inet {table_name(instance)}"
    if chains == {c}:
        script = f"delete table {t}\n"
    else:
        script = f"flush chain {t} {c}\ndelete chain {t} {c}\n"
    _nft(["-f", "-"], netns, script)
    return True


# --- apply ------------------------------------------------------------------------------------


def _check(name: str, value: float | None, high: float | None = None) -> float:
    if value is None:
        return 0.0
    if value < 0 or (high is not None and value > high):
        raise ValueError(f"{name} {value} out of range" + (f" (0..{high})" if high else ""))
    return float(value)


@dataclass(frozen=True, slots=True)
class _Want:
    """The root qdisc wanted on the device and the parameters it carries."""
    kind: str  # "tbf" | "netem"
    carried: tuple[str, ...]
    rate_bytes: int
    latency_ms: float = 0.0
    loss_pct: float = 0.0
    burst_pct: float = 0.0

    def options(self, mtu: int | None) -> dict:
        if self.kind == "tbf":
            return _tbf_options(self.rate_bytes, mtu)
        return _netem_options(self.rate_bytes, self.latency_ms, self.loss_pct, self.burst_pct)


def apply(ifindex: int, ifname: str, *, bandwidth_kbps: int | None, latency_ms: float | None,
          loss_pct: float | None, burst_pct: float | None, instance: int,
          netns: str | None = None) -> Applied:
    """Make the egress emulation of device ``ifindex``/``ifname`` exactly this; report how.

    None and 0 mean "off" for each parameter; all off removes ours from the device.  Raises
    ValueError for a parameter out of range, never for what the kernel refuses.
    """
    bandwidth = _check("bandwidth_kbps", bandwidth_kbps)
    latency = _check("latency_ms", latency_ms)
    loss = _check("loss_pct", loss_pct, 100)
    burst = _check("burst_pct", burst_pct, 100)
    handle = our_handle(instance)
    rate_bytes = int(bandwidth * 1000 / 8)
    if rate_bytes >= 1 << 32:
        raise ValueError(f"bandwidth_kbps {bandwidth_kbps} is above what tbf and netem encode "
                         "(34 Gbit/s)")
    requested = {p: v for p, v in zip(PARAMETERS, (bandwidth, latency, loss, burst)) if v}
    outcome = dict.fromkeys(PARAMETERS, OFF)
    covered: set[str] = set()
    errors: list[str] = []

    caps = probe(netns)
    want: _Want | None = None
    drop = 0  # of LOSS_SCALE, by nftables
    if caps.netem and (latency or loss):
        carried = tuple(p for p in PARAMETERS if p in requested and (p != "burst" or loss))
        want = _Want("netem", carried, rate_bytes, latency, loss, burst)
    else:
        if bandwidth and caps.tbf:
            want = _Want("tbf", ("bandwidth",), rate_bytes)
        elif bandwidth:
            outcome["bandwidth"] = daemon_only(
                "no tbf in this kernel" + (f"; {caps.detail}" if caps.detail else ""))
        if latency:
            outcome["latency"] = daemon_only("no netem in this kernel")
        if loss:
            drop = max(1, round(loss * LOSS_SCALE / 100))
        if burst and loss:
            outcome["burst"] = daemon_only("burst not applied to kernel traffic")
    if burst and not loss:
        outcome["burst"] = daemon_only("burst without loss")

    _apply_qdisc(ifindex, ifname, handle, want, netns, outcome, covered, errors)
    _apply_drop(ifname, instance, drop, netns, outcome, errors)

    if not requested and not errors:
        outcome = dict.fromkeys(PARAMETERS, CLEARED)
    result = Applied(ifname, outcome, frozenset(covered), tuple(errors), requested)
    partial = errors or any(v.startswith("daemon-only") for v in outcome.values())
    (log.warning if partial else log.info)(
        "netlink.emulation.applied", ifname=ifname, ifindex=ifindex, instance=instance,
        summary=result.summary, errors=list(errors))
    return result


def _apply_qdisc(ifindex: int, ifname: str, handle: int, want: _Want | None, netns: str | None,
                 outcome: dict[str, str], covered: set[str], errors: list[str]) -> None:
    """Converge the device's root qdisc on ``want`` (None: none of ours)."""
    def refuse(why: str) -> None:
        for p in want.carried if want else ():
            outcome[p] = daemon_only(why)

    try:
        with _Tc(netns) as tc:
            kind, current = tc.root_qdiscs().get(ifindex, ("", 0))
            ours = current == handle and kind in OUR_KINDS
            if want is None:
                if ours:
                    code, message = tc.delete_root(ifindex, handle)
                    if code:
                        errors.append(f"delete {kind} on {ifname}: {message}")
                return
            if current and not ours:  # handle 0 is the kernel's default qdisc: replaced
                refuse(f"root qdisc {kind} {current >> 16:x}: on {ifname} is not ours; left alone")
                return
            if ours and kind != want.kind:
                # The kernel cannot change a qdisc's kind in place ("Invalid qdisc name").
                code, message = tc.delete_root(ifindex, handle)
                if code:
                    errors.append(f"delete {kind} on {ifname}: {message}")
                    refuse(f"kernel refused to delete our {kind}: {message}")
                    return
            code, message = tc.replace_root(ifindex, handle, want.kind,
                                            want.options(tc.mtu(ifindex)))
    except OSError as e:  # the namespace is gone, no permission, no answer...
        errors.append(f"netlink: {e}")
        refuse(f"netlink: {e}")
        return
    if code:
        errors.append(f"{want.kind} on {ifname}: {message}")
        refuse(f"kernel refused {want.kind}: {message}")
        return
    for p in want.carried:
        outcome[p] = KERNEL_NETEM if want.kind == "netem" else KERNEL_TBF
        covered.add(p)


def _apply_drop(ifname: str, instance: int, drop: int, netns: str | None,
                outcome: dict[str, str], errors: list[str], ingress: bool = False) -> None:
    """Converge the device's nftables drop chain on ``drop`` of LOSS_SCALE (0: none)."""
    try:
        if drop:
            _set_drop(instance, ifname, drop, netns, ingress)
            outcome["loss"] = KERNEL_NFT_DROP
        else:
            _remove_drop(instance, ifname, netns, ingress)
    except _NftError as e:
        if drop:
            outcome["loss"] = daemon_only(str(e))
        if str(e) != "nft missing":
            errors.append(str(e))


def apply_ingress(ifindex: int, ifname: str, *, bandwidth_kbps: int | None,
                  latency_ms: float | None, loss_pct: float | None, burst_pct: float | None,
                  instance: int, netns: str | None = None) -> Applied:
    """Emulate the leg *received* on the device (Spines' setlink told to the receiving end):
    loss on the kernel's traffic with an nftables drop at prerouting (sparing the overlay's
    control port and the data port's packets for this host: the daemon emulates its own
    packets on receipt); bandwidth, latency and
    burst cannot act on received kernel traffic without an ifb device: daemon-only.  All off
    removes our ingress chain."""
    bandwidth = _check("bandwidth_kbps", bandwidth_kbps)
    latency = _check("latency_ms", latency_ms)
    loss = _check("loss_pct", loss_pct, 100)
    burst = _check("burst_pct", burst_pct, 100)
    requested = {p: v for p, v in zip(PARAMETERS, (bandwidth, latency, loss, burst)) if v}
    outcome = dict.fromkeys(PARAMETERS, OFF)
    errors: list[str] = []
    for p in ("bandwidth", "latency", "burst"):
        if p in requested:
            outcome[p] = daemon_only("no ingress shaping of the kernel's traffic")
    drop = max(1, round(loss * LOSS_SCALE / 100)) if loss else 0
    _apply_drop(ifname, instance, drop, netns, outcome, errors, ingress=True)
    if not requested and not errors:
        outcome = dict.fromkeys(PARAMETERS, CLEARED)
    result = Applied(ifname, outcome, frozenset(), tuple(errors), requested)
    log.info("netlink.emulation.applied", ifname=ifname, ifindex=ifindex, instance=instance,
             direction="ingress", summary=result.summary, errors=list(errors))
    return result


def clear_all(instance: int, netns: str | None = None) -> list[str]:
    """Remove every qdisc and nftables table of ours in the namespace; what was removed (and
    what could not be, as "failed: ...").  Never raises for the kernel's refusals."""
    handle = our_handle(instance)
    done: list[str] = []
    try:
        with _Tc(netns) as tc:
            for ifindex, (kind, current) in sorted(tc.root_qdiscs().items()):
                if current == handle and kind in OUR_KINDS:
                    code, message = tc.delete_root(ifindex, handle)
                    done.append(f"failed: delete {kind} on ifindex {ifindex}: {message}" if code
                                else f"{kind} on ifindex {ifindex}")
    except OSError as e:
        done.append(f"failed: netlink: {e}")
    if which("nft") is not None:
        try:
            if _our_chains(instance, netns) is not None:
                _nft(["delete", "table", "inet", table_name(instance)], netns)
                done.append(f"nft table inet {table_name(instance)}")
        except _NftError as e:
            done.append(f"failed: {e}")
    log.info("netlink.emulation.cleared", instance=instance, removed=done)
    return done
