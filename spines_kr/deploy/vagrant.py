"""A Vagrant multi-VM lab from a lab topology file: the plan ``vagrant/Vagrantfile`` builds.

The same topology file as ``spines-kr lab`` (``spines_kr.lab.topology``), one VM per node and per
host instead of one network namespace each, one private network per link (and per LAN of a node
with hosts).  ``plan(topology, lab=..., box=...)`` computes everything the Vagrantfile needs and
returns it as a JSON-able dict; ``python3 -m spines_kr.deploy.vagrant TOPOLOGY.toml`` prints it
(the Vagrantfile runs that at parse time).  Pure: no I/O except reading the topology file in
``main``.

Plan::

    {"version": 1, "lab": "ring", "box": "debian/bookworm64", "source_dir": "/srv/spines-kr",
     "metric", "port", "multipath", "unit": "spines-kr@overlay",
     "config_path": "/etc/spines-kr/overlay.toml", "control_socket": "/run/spines-kr/overlay.sock",
     "networks": [{"name": "spkr-ring-l0", "kind": "link" | "lan", "subnet": "10.200.0.0/30",
                   "members": ["n1", "n2"], "link": 0 | null}],
     "vms": [{"name": "n1", "role": "node" | "host", "hostname": "n1", "box",
              "logical_id": "10.100.0.1" | null (hosts),
              "interfaces": [{"network": "spkr-ring-l0", "ifname": "to-n2",
                              "mac": "02:73:6b:00:00:00", "address": "10.200.0.1/30",
                              "link": 0 | null, "peer": "n2" | null, "peer_address": ... | null}],
              "neighbors": [...], "prefixes": [...],     (what the daemon is told)
              "config": daemon TOML text | null (hosts),
              "files": [{"path", "mode": "0644", "content"}],   (written before provisioning)
              "provision_env": {"SPINES_KR_ROLE", "SPINES_KR_IFACES", "SPINES_KR_UNIT",
                                "SPINES_KR_SRC"}}]}

Networks.  Each segment (a link; a node's LAN with its hosts) gets one network name, used by both
providers: VirtualBox attaches the NICs to an *internal network* of that name
(``virtualbox__intnet``: a switch only those VMs see, no host interface, none of the address
restrictions of host-only networks), libvirt to an isolated network of that name
(``libvirt__forward_mode = "veryisolated"``, no DHCP, no address on the host).  Vagrant does not
configure these NICs (``auto_config: false``); each has a fixed MAC from the plan, and the VM's
systemd-networkd names it (a ``.link`` file matching the MAC: ``to-<peer>`` as in the namespace
lab, ``lan0`` for a LAN) and gives it its address (a ``.network`` file), at every boot, whatever
order the provider numbers NICs in.  The box's own first NIC (Vagrant's NAT or management
network) stays with the box's ifupdown.

MACs: ``02:73:6b:SS:SS:MM`` (locally administered), SS:SS the segment number (links in file order,
then LANs in node order), MM the member (link end a = 0, b = 1; on a LAN the node 0, its hosts
1, 2, ...).

What a node VM gets (``files``), the namespace lab's choices carried over:
    /etc/spines-kr/overlay.toml       daemon config: logical_id, port, metric, local_addresses (its
                                      link addresses), neighbors (the peers' link addresses),
                                      prefixes (``Node.advertised``), kernel_levels (the
                                      topology's, else [0]), multipath, groups, anypath,
                                      accept_link_commands = true, keep_routes = true (a
                                      ``systemctl restart`` keeps forwarding)
    /etc/systemd/network/10-spines-kr-<ifname>.link/.network   NIC name and address
    /etc/systemd/system/spines-kr-logical-id.service           oneshot: logical ID /32 on lo
    /etc/sysctl.d/60-spines-kr.conf   ip_forward=1, rp_filter=0, multipath hash by ports
    /etc/systemd/system/spines-kr@overlay.service.d/vagrant-lab.conf   ordering after the above;
                                      with link emulation in the topology, ExecStartPost runs
    /etc/spines-kr/link-emulation.sh  (setlink for each emulated link, both ends, as ``lab up``)
A host VM: its LAN NIC (``lan0``, the host's address) with routes via its node to every logical
ID, the link subnet and every other node's prefixes (the VM keeps its own default route, the
provider's NAT, so ``vagrant ssh`` and apt keep working).
The underlay (``[[router]]``, ``[[underlay]]``, ``[[link]]`` with ``tunnel``): a router VM
(role ``router``, no daemon: forwarding on, its NICs ``u-<peer>`` with their addresses and
static routes to every underlay subnet, as the namespace lab's); one network per underlay link
(kind ``underlay``, segments numbered after the links and LANs); a node's underlay NIC gets
routes to every underlay subnet via its first underlay neighbor (not a default route: the VM
keeps the provider's), and its daemon configuration the tunnels of its links (``neighbor =
["KIND:ADDRESS", ...]``, the peers' underlay addresses) with its own WireGuard key
(``/etc/spines-kr/wireguard.key``, 0600, made with the plan): the daemons make the tunnels.
``vagrant/provision.sh`` does the rest (packages, the venv, the unit, starting it).
"""

from __future__ import annotations

import argparse
import os
import json
import re
import sys
from ipaddress import IPv4Network
from pathlib import Path

from spines_kr.config import FIELDS as CONFIG_FIELDS
from spines_kr.deploy import toml_text
from spines_kr.keys import new_key_file_text, new_wireguard_key
from spines_kr.lab.topology import Topology, TopologyError, load

PLAN_VERSION = 1
DEFAULT_BOX = "debian/bookworm64"
CONFIG_NAME = "overlay"                       # -> /etc/spines-kr/overlay.toml, spines-kr@overlay
CONFIG_PATH = f"/etc/spines-kr/{CONFIG_NAME}.toml"
UNIT = f"spines-kr@{CONFIG_NAME}"
CONTROL_SOCKET = f"/run/spines-kr/{CONFIG_NAME}.sock"  # as systemd/spines-kr@.service says
VENV = "/opt/spines-kr"                       # linked as /usr/local/bin/spines-kr (the unit's)
SOURCE_DIR = "/srv/spines-kr"                 # where the repository is synced in each VM
LAN_IFNAME = "lan0"
MAC_PREFIX = (0x02, 0x73, 0x6B)               # locally administered; "sk"
LAB_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
KERNEL_LEVELS = (0,)                          # when the topology does not say


class PlanError(ValueError):
    """A topology that cannot become a Vagrant lab; the message says why."""


def mac(segment: int, member: int) -> str:
    if not 0 <= segment <= 0xFFFF:
        raise PlanError(f"segment {segment}: more than 65536 networks")
    if not 0 <= member <= 0xFF:
        raise PlanError(f"segment {segment}: more than 256 VMs on one network")
    octets = (*MAC_PREFIX, segment >> 8, segment & 0xFF, member)
    return ":".join(f"{o:02x}" for o in octets)


def hostname(name: str) -> str:
    """A valid host name for a topology name ([a-z0-9_-]): '_' becomes '-', no '-' at the ends."""
    return name.replace("_", "-").strip("-") or "vm"


def lab_name(path: str) -> str:
    """The default lab name for a topology file: its stem, lower case, [a-z0-9-] only."""
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(path).stem.lower()).strip("-")[:32]
    return stem or "lab"


def node_config(topology: Topology, name: str) -> dict:
    """The daemon's configuration values for node ``name`` (keys of ``spines_kr.config``), the
    same the namespace lab passes as flags (``spines_kr.lab.netns.daemon_argv``)."""
    node = topology.node(name)
    ends = [ln.end(name) for ln in topology.links_of(name)]
    values: dict = {
        "logical_id": str(node.logical_id),
        "port": topology.port,
        "metric": topology.metric,
        "local_addresses": [str(e[1].ip) for e in ends],
        "neighbors": [str(e[3].ip) for e in ends],
        "prefixes": [str(p) for p in node.advertised],
        "kernel_levels": list(getattr(topology, "kernel_levels", KERNEL_LEVELS)),
        "multipath": topology.multipath,
        "accept_link_commands": True,
        "keep_routes": True,          # `systemctl restart` keeps forwarding (graceful restart)
        "key_file": KEY_PATH,
    }
    if node.groups and "groups" in CONFIG_FIELDS:
        values["groups"] = [str(g) for g in node.groups]
    if getattr(topology, "anypath", False) and "anypath" in CONFIG_FIELDS:
        values["anypath"] = True
    tunnels = [(t.b if t.a == name else t.a, t.kind) for t in getattr(topology, "tunnels", ())
               if name in (t.a, t.b)]
    if tunnels:
        values["neighbor"] = [f"{kind}:{topology.endpoint(peer)}" for peer, kind in tunnels]
        if any(kind == "wireguard" for _p, kind in tunnels):
            values["wireguard_key_file"] = WIREGUARD_KEY_PATH
    return values


def _link_files(ifname: str, mac_addr: str, address: str, routes=(), gateway=None) -> list[dict]:
    link = (f"[Match]\nMACAddress={mac_addr}\n\n"
            f"[Link]\nName={ifname}\n")
    network = (f"[Match]\nMACAddress={mac_addr}\n\n"
               f"[Link]\nRequiredForOnline=no\n\n"
               f"[Network]\nAddress={address}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    for dest in routes:
        network += f"\n[Route]\nDestination={dest}\nGateway={gateway}\n"
    base = f"/etc/systemd/network/10-spines-kr-{ifname}"
    return [_file(f"{base}.link", link), _file(f"{base}.network", network)]


def _file(path: str, content: str, mode: str = "0644") -> dict:
    return {"path": path, "mode": mode, "content": content}


SYSCTL = """\
# spines-kr Vagrant lab: forward, accept asymmetric paths, spread multipath flows by ports
net.ipv4.ip_forward = 1
net.ipv4.conf.all.rp_filter = 0
net.ipv4.conf.default.rp_filter = 0
net.ipv4.conf.*.rp_filter = 0
net.ipv4.fib_multipath_hash_policy = 1
"""


def _logical_id_unit(logical_id: str) -> str:
    return f"""\
[Unit]
Description=spines-kr logical ID {logical_id} on lo
Before={UNIT}.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip address replace {logical_id}/32 dev lo
ExecStop=/sbin/ip address del {logical_id}/32 dev lo

[Install]
WantedBy=multi-user.target
"""


def _emulation_script(lines: list[str]) -> str:
    return ("#!/bin/sh\n"
            "# Link emulation of the topology (as `spines-kr lab up`) through this node's daemon,\n"
            f"# run by {UNIT}.service (ExecStartPost); the daemon clears it at exit.\n"
            "set -e\n"
            "setlink() {\n"
            "    n=0\n"
            f"    until {VENV}/bin/spines-kr setlink --socket {CONTROL_SOCKET} \"$@\" "
            ">/dev/null; do\n"
            "        n=$((n + 1)); [ \"$n\" -lt 50 ] || return 1; sleep 0.2\n"
            "    done\n"
            "}\n"
            + "".join(f"setlink {line}\n" for line in lines))


def _dropin(emulation: bool) -> str:
    text = ("[Unit]\n"
            "Wants=spines-kr-logical-id.service systemd-networkd.service\n"
            "After=spines-kr-logical-id.service systemd-networkd.service\n")
    if emulation:
        text += "\n[Service]\nExecStartPost=/bin/sh /etc/spines-kr/link-emulation.sh\n"
    return text


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def plan(topology: Topology, *, lab: str = "lab", box: str = DEFAULT_BOX,
         source: str | None = None, key_text: str | None = None) -> dict:
    """The Vagrant lab for ``topology`` (see the module doc); ``source`` (the topology file's
    name) only goes into comments of the generated files; ``key_text`` is the overlay key file
    every node gets (mode 0600; a new key when not given)."""
    key_text = key_text if key_text is not None else new_key_file_text()
    if not LAB_RE.fullmatch(lab):
        raise PlanError(f"lab: {lab!r} is not a name of 1-32 characters [a-z0-9-] "
                        f"(starting with a letter or digit)")
    origin = f"{source} " if source else ""
    networks: list[dict] = []
    ifaces: dict[str, list[dict]] = {n.name: [] for n in topology.nodes}
    ifaces.update({h.name: [] for h in topology.hosts})
    ifaces.update({r.name: [] for r in getattr(topology, "routers", ())})
    for ln in topology.links:
        net = f"spkr-{lab}-l{ln.index}"
        networks.append({"name": net, "kind": "link", "subnet": str(ln.subnet),
                         "members": [ln.a, ln.b], "link": ln.index})
        for member, (mine, peer) in enumerate(((ln.a, ln.b), (ln.b, ln.a))):
            ifname, addr, _peer, peer_addr = ln.end(mine)
            ifaces[mine].append({"network": net, "ifname": ifname,
                                 "mac": mac(ln.index, member), "address": str(addr),
                                 "link": ln.index, "peer": peer, "peer_address": str(peer_addr.ip)})
    segment = len(topology.links)
    for node in topology.nodes:
        hosts = topology.hosts_of(node.name)
        if not hosts or node.lan is None:
            continue
        net = f"spkr-{lab}-lan-{node.name}"
        networks.append({"name": net, "kind": "lan", "subnet": str(node.lan.network),
                         "members": [node.name] + [h.name for h in hosts], "link": None})
        for member, (who, addr) in enumerate([(node.name, node.lan)]
                                             + [(h.name, h.address) for h in hosts]):
            ifaces[who].append({"network": net, "ifname": LAN_IFNAME, "mac": mac(segment, member),
                                "address": str(addr), "link": None, "peer": None,
                                "peer_address": None})
        segment += 1
    for u in getattr(topology, "underlay", ()):
        net = f"spkr-{lab}-u{u.index}"
        networks.append({"name": net, "kind": "underlay", "subnet": str(u.subnet),
                         "members": [u.a, u.b], "link": None})
        for member, mine in enumerate((u.a, u.b)):
            ifname, addr, peer, peer_addr = u.end(mine)
            ifaces[mine].append({"network": net, "ifname": ifname, "mac": mac(segment, member),
                                 "address": str(addr), "link": None, "peer": peer,
                                 "peer_address": str(peer_addr.ip)})
        segment += 1
    underlay_routes = _underlay_routes(topology, ifaces)

    vms = []
    for node in topology.nodes:
        values = node_config(topology, node.name)
        config = toml_text(values, header=(
            f"spines-kr daemon configuration of node {node.name} of Vagrant lab {lab!r},\n"
            f"generated from the topology {origin}by spines_kr.deploy.vagrant: edit the "
            f"topology, not this."))
        files = [_file(CONFIG_PATH, config), _file(KEY_PATH, key_text, mode="0600")]
        if "wireguard_key_file" in values:
            files.append(_file(WIREGUARD_KEY_PATH, new_wireguard_key()[0], mode="0600"))
        for nic in ifaces[node.name]:
            files += _link_files(nic["ifname"], nic["mac"], nic["address"],
                                 *underlay_routes.get((node.name, nic["ifname"]), ((), None)))
        files.append(_file("/etc/systemd/system/spines-kr-logical-id.service",
                           _logical_id_unit(str(node.logical_id))))
        files.append(_file("/etc/sysctl.d/60-spines-kr.conf", SYSCTL))
        emulation = []
        for ln in topology.links_of(node.name):
            chars = [ln.bandwidth_kbps or 0, ln.latency_ms or 0, ln.loss_pct or 0]
            if any(chars):
                _ifn, addr, _peer, peer_addr = ln.end(node.name)
                emulation.append(" ".join([*map(_num, chars), "0", str(addr.ip),
                                           str(peer_addr.ip), str(topology.port)]))
        if emulation:
            files.append(_file("/etc/spines-kr/link-emulation.sh", _emulation_script(emulation),
                               mode="0755"))
        files.append(_file(f"/etc/systemd/system/{UNIT}.service.d/vagrant-lab.conf",
                           _dropin(bool(emulation))))
        vms.append(_vm(node.name, "node", box, ifaces[node.name], files, UNIT,
                       logical_id=str(node.logical_id), neighbors=values["neighbors"],
                       prefixes=values["prefixes"], config=config))
    overlay = ([topology.link_subnet] + [IPv4Network(f"{n.logical_id}/32") for n in topology.nodes])
    for host in topology.hosts:
        nic = ifaces[host.name][0]
        routes = [str(d) for d in overlay]
        routes += [str(p) for n in topology.nodes if n.name != host.attach for p in n.advertised]
        files = _link_files(nic["ifname"], nic["mac"], nic["address"], routes, host.gateway)
        vms.append(_vm(host.name, "host", box, ifaces[host.name], files, ""))
    for router in getattr(topology, "routers", ()):
        files = [_file("/etc/sysctl.d/60-spines-kr.conf", SYSCTL)]
        for nic in ifaces[router.name]:
            files += _link_files(nic["ifname"], nic["mac"], nic["address"],
                                 *underlay_routes.get((router.name, nic["ifname"]), ((), None)))
        vms.append(_vm(router.name, "router", box, ifaces[router.name], files, ""))

    return {"version": PLAN_VERSION, "lab": lab, "box": box, "source_dir": SOURCE_DIR,
            "metric": topology.metric, "port": topology.port, "multipath": topology.multipath,
            "unit": UNIT, "config_path": CONFIG_PATH, "control_socket": CONTROL_SOCKET,
            "networks": networks, "vms": vms}


def _underlay_routes(topology, ifaces: dict[str, list[dict]]
                     ) -> dict[tuple[str, str], tuple[list[str], str]]:
    """(VM, NIC) -> (destinations, gateway): the underlay's static routes (``Topology.
    underlay_routes``) on the NIC whose peer is the gateway; a node's default route becomes one
    route per underlay subnet it is not on (its VM keeps the provider's default route)."""
    out: dict[tuple[str, str], tuple[list[str], str]] = {}
    if not getattr(topology, "underlay", ()):
        return out
    subnets = [str(u.subnet) for u in topology.underlay]
    for name, routes in topology.underlay_routes().items():
        for dst, gw in routes:
            nic = next(n for n in ifaces[name] if n["peer_address"] == gw)
            mine = {str(IPv4Network(n["address"], strict=False)) for n in ifaces[name]}
            dsts = [s for s in subnets if s not in mine] if dst == "default" else [dst]
            out.setdefault((name, nic["ifname"]), ([], gw))[0].extend(dsts)
    return out


def _vm(name: str, role: str, box: str, nics: list[dict], files: list[dict], unit: str, *,
        logical_id: str | None = None, neighbors=(), prefixes=(),
        config: str | None = None) -> dict:
    return {"name": name, "role": role, "hostname": hostname(name), "box": box,
            "logical_id": logical_id, "interfaces": nics, "neighbors": list(neighbors),
            "prefixes": list(prefixes), "config": config, "files": files,
            "provision_env": {"SPINES_KR_ROLE": role, "SPINES_KR_UNIT": unit,
                              "SPINES_KR_SRC": SOURCE_DIR,
                              "SPINES_KR_IFACES": " ".join(f"{n['mac']}={n['ifname']}"
                                                           for n in nics)}}


KEY_PATH = "/etc/spines-kr/overlay.key"
WIREGUARD_KEY_PATH = "/etc/spines-kr/wireguard.key"


def lab_key(path: Path) -> str:
    """The lab's key, kept beside the Vagrantfile (``.spines-kr-key.toml``, mode 0600, not in
    git) so that every parse of the Vagrantfile gives every VM the same one."""
    try:
        return path.read_text()
    except FileNotFoundError:
        text = new_key_file_text()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m spines_kr.deploy.vagrant",
        description="Print the Vagrant lab plan (JSON) of a lab topology file; "
                    "vagrant/Vagrantfile runs this.")
    p.add_argument("topology", help="lab topology file (TOML, as for spines-kr lab up)")
    p.add_argument("--lab", help="lab name, prefix of the network names (default: the file's stem)")
    p.add_argument("--box", default=DEFAULT_BOX, help=f"Vagrant box (default {DEFAULT_BOX})")
    p.add_argument("--config", metavar="NODE", help="print only this node's daemon TOML")
    p.add_argument("--key", default=".spines-kr-key.toml",
                   help="the lab's key file, created when missing (default .spines-kr-key.toml)")
    args = p.parse_args(argv)
    try:
        topo = load(args.topology)
        result = plan(topo, lab=args.lab or lab_name(args.topology), box=args.box,
                      source=Path(args.topology).name, key_text=lab_key(Path(args.key)))
    except (TopologyError, PlanError) as e:
        print(f"spines-kr: {e}", file=sys.stderr)
        return 2
    if args.config:
        for vm in result["vms"]:
            if vm["name"] == args.config and vm["config"]:
                sys.stdout.write(vm["config"])
                return 0
        print(f"spines-kr: --config: no node {args.config!r} in {args.topology}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
