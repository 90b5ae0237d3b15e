"""``spines-kr vagrant ...``: the Vagrant lab on this machine (see ``spines_kr.vagrantlab``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from spines_kr.vagrantlab import box as boxmod
from spines_kr.vagrantlab import lab as labmod


def _name(args) -> str:
    if args.name:
        return args.name
    found = labmod.labs()
    if len(found) == 1:
        return found[0]
    if not found:
        raise labmod.LabError("no Vagrant lab on this machine")
    raise labmod.LabError(f"several labs ({', '.join(found)}): say which with --name")


def cmd_box(args) -> int:
    if args.status:
        info = boxmod.cached()
        ok = boxmod.up_to_date()
        print(json.dumps({"box": boxmod.BOX_NAME, "dir": str(boxmod.box_dir()),
                          "up_to_date": ok, "digest_wanted": boxmod.digest(boxmod.recipe()),
                          **({k: info[k] for k in ("digest", "kernel", "build_seconds",
                                                   "size_bytes", "built")} if info else {})},
                         indent=1))
        return 0 if ok else 1
    labmod.wait_quiet("building the box")
    info = boxmod.build(force=args.rebuild, log=labmod.log)
    print(f"box {boxmod.BOX_NAME}: {info['size_bytes'] / 2**20:.0f} MiB, built in "
          f"{info['build_seconds']} s ({info['built']}), kernel {info['kernel']}, "
          f"{boxmod.box_dir()}")
    return 0


def cmd_up(args) -> int:
    name = args.name or labmod.lab_name(args.topology)
    existed = name in labmod.labs()
    try:
        figures = labmod.up(args.topology, name=args.name, memory_mb=args.memory,
                            rebuild_box=args.rebuild_box)
    except BaseException:
        if not existed and not args.keep_on_failure and name in labmod.labs():
            labmod.log("up failed: removing what it made (--keep-on-failure keeps it)")
            for line in labmod.down(name):
                labmod.log(line)
        raise
    print(json.dumps(figures, indent=1))
    lab = figures["lab"]
    print(f"lab {lab!r} is up: spines-kr vagrant exec --name {lab} n1 -- ip route show proto "
          f"spines; spines-kr vagrant down --name {lab}")
    return 0 if figures.get("root_network_unchanged") else 1


def cmd_down(args) -> int:
    names = labmod.labs() if args.all else [_name(args)]
    for name in names:
        for line in labmod.down(name):
            labmod.log(f"{name}: {line}")
    return 0


def cmd_exec(args) -> int:
    name = _name(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        return subprocess.call(labmod.ssh_argv(name, args.vm, tty=True))
    return subprocess.call(labmod.ssh_argv(name, args.vm, command))


def cmd_cmd(args) -> int:
    name = _name(args)
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return labmod.vagrant(name, *rest).returncode


def cmd_status(args) -> int:
    out = []
    for name in ([args.name] if args.name else labmod.labs()):
        state = labmod.read_state(name)
        entry = {"lab": name, "dir": str(labmod.lab_dir(name)), "netns": labmod.netns(name),
                 "netns_exists": labmod._ns_inode(labmod.netns(name)) is not None,
                 "libvirtd_pid": state.get("libvirtd_pid"),
                 "libvirtd_running": bool(state.get("libvirtd_pid")) and labmod._in_ns(
                     state["libvirtd_pid"], labmod._ns_inode(labmod.netns(name))),
                 "topology": state.get("topology"), "figures": state.get("figures")}
        if entry["libvirtd_running"]:
            r = labmod._virsh(name, "list", "--all", "--name")
            entry["domains"] = [x for x in r.stdout.split() if x]
        if args.routes and (labmod.lab_dir(name) / "ssh_config").exists():
            try:
                entry["missing_routes"] = labmod.converged(name)
            except Exception as e:   # noqa: BLE001 - a status never fails on a broken VM
                entry["missing_routes"] = str(e)
        out.append(entry)
    print(json.dumps(out, indent=1))
    return 0


def cmd_check(args) -> int:
    """The checks on a booted lab: units active, routes, a ping across, a restart on a transit
    node, systemd-analyze security, the journal's structured events."""
    res = labmod.check(_name(args), restart=not args.no_restart)
    if args.json:
        print(json.dumps(res, indent=1))
    failed = [k for k, v in res.items() if isinstance(v, dict) and not v.get("ok", True)]
    labmod.log("all checks passed" if res["ok"] else f"FAILED: {', '.join(failed)}")
    return 0 if res["ok"] else 1


def cmd_converge(args) -> int:
    """Stop every node's daemon, flush its routes, start them all at once and time until every
    node routes to every other (a restart alone keeps the routes: keep_routes)."""
    name = _name(args)
    p = labmod.plan(name)
    nodes = [vm["name"] for vm in p["vms"] if vm["role"] == "node"]
    unit = p["unit"] + ".service"

    def on_all(command: str) -> None:
        procs = [subprocess.Popen(labmod.ssh_argv(name, vm, ["sudo", "sh", "-c", command]),
                                  stdin=subprocess.DEVNULL) for vm in nodes]
        for proc in procs:
            proc.wait(timeout=180)

    on_all(f"systemctl stop {unit} && ip route flush proto spines")
    left = {vm: labmod.routes(name, vm) for vm in nodes}
    if any(left.values()):
        raise labmod.LabError(f"routes left after stop and flush: {left}")
    # Timed inside each VM (no SSH round trips in the figure): start the unit, then poll the
    # kernel every 50 ms until it holds a spines route to every other node.
    want = len(nodes) - 1
    script = (f"t0=$(date +%s.%N); systemctl start {unit}; t1=$(date +%s.%N); "
              f"until [ $(ip -o route show proto spines | wc -l) -ge {want} ]; do sleep 0.05; "
              f"t=$(date +%s); [ $((t - ${{t0%.*}})) -gt {int(args.timeout)} ] && break; done; "
              f"t2=$(date +%s.%N); echo $t0 $t1 $t2 $(ip -o route show proto spines | wc -l)")
    t0 = time.monotonic()
    procs = {vm: subprocess.Popen(labmod.ssh_argv(name, vm, ["sudo", "sh", "-c", script]),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
             for vm in nodes}
    per_vm = {}
    for vm, proc in procs.items():
        out, _ = proc.communicate(timeout=args.timeout + 180)
        try:
            a, b, c, n = out.split()[-4:]
            per_vm[vm] = {"start_s": round(float(b) - float(a), 2),
                          "converged_after_start_issued_s": round(float(c) - float(a), 2),
                          "converged_after_started_s": round(float(c) - float(b), 2),
                          "routes": int(n)}
        except ValueError:
            per_vm[vm] = {"error": out.strip()[-200:]}
    ok = all(v.get("routes", 0) >= want for v in per_vm.values())
    worst = max((v.get("converged_after_start_issued_s", 0) for v in per_vm.values()),
                default=0)
    print(json.dumps({"lab": name, "nodes": len(nodes), "converged": ok,
                      "slowest_vm_converged_after_start_issued_s": worst,
                      "wall_s": round(time.monotonic() - t0, 2), "per_vm": per_vm}))
    if not ok:
        return 1
    return 0


def _guarded(func):
    """A lab or box error is one line for the user and exit status 1, not a traceback."""
    def run(args) -> int:
        try:
            return func(args)
        except (labmod.LabError, boxmod.BoxError) as e:
            print(f"spines-kr vagrant: error: {e}", file=sys.stderr)
            return 1
    run.__name__ = func.__name__
    return run


def add_vagrant_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "vagrant", help="Vagrant multi-VM lab on this machine, inside its own namespace",
        description="A Vagrant lab of one VM per node of a topology file (the same TOML as "
                    "spines-kr lab), booted with a libvirtd of its own inside the network "
                    "namespace skvag-LAB: nothing of the machine's own network changes.")
    sub = p.add_subparsers(dest="vagrant_command", required=True)

    b = sub.add_parser("box", help="build the Debian box (cached; rebuilt when its recipe "
                                   "changes)")
    b.add_argument("--rebuild", action="store_true", help="build even if the cached box is "
                                                          "current")
    b.add_argument("--status", action="store_true", help="say whether the cached box is current")
    b.set_defaults(func=_guarded(cmd_box))

    u = sub.add_parser("up", help="box, namespace, libvirtd, vagrant up; waits for routes")
    u.add_argument("topology", help="topology file (TOML), as for spines-kr lab up")
    u.add_argument("--name", help="lab name (default: the file's stem)")
    u.add_argument("--memory", type=int, default=labmod.MEMORY_MB, help="MB per VM (default "
                                                                      f"{labmod.MEMORY_MB})")
    u.add_argument("--rebuild-box", action="store_true")
    u.add_argument("--keep-on-failure", action="store_true",
                   help="leave a failed lab for inspection (down removes it)")
    u.set_defaults(func=_guarded(cmd_up))

    d = sub.add_parser("down", help="remove the lab entirely, also after a crash")
    d.add_argument("--name")
    d.add_argument("--all", action="store_true", help="every lab on this machine")
    d.set_defaults(func=_guarded(cmd_down))

    s = sub.add_parser("status", help="labs, their libvirtd and VMs (JSON)")
    s.add_argument("--name")
    s.add_argument("--routes", action="store_true", help="also the routes each node misses")
    s.set_defaults(func=_guarded(cmd_status))

    e = sub.add_parser("exec", help="run a command on a VM (SSH inside the lab's namespace)")
    e.add_argument("--name")
    e.add_argument("vm")
    e.add_argument("command", nargs=argparse.REMAINDER)
    e.set_defaults(func=_guarded(cmd_exec))

    c = sub.add_parser("cmd", help="run vagrant with the lab's environment, e.g. "
                                   "cmd -- provision n2")
    c.add_argument("--name")
    c.add_argument("args", nargs=argparse.REMAINDER)
    c.set_defaults(func=_guarded(cmd_cmd))

    k = sub.add_parser("check", help="units active, routes on every VM, a ping across, a "
                                     "restart on a transit VM, security rating, journal")
    k.add_argument("--name")
    k.add_argument("--no-restart", action="store_true", help="skip the transit restart check")
    k.add_argument("--json", action="store_true", help="also print the results as JSON")
    k.set_defaults(func=_guarded(cmd_check))

    v = sub.add_parser("converge", help="stop every daemon, flush its routes, start them all "
                                        "at once; time to full routes")
    v.add_argument("--name")
    v.add_argument("--timeout", type=float, default=120.0)
    v.set_defaults(func=_guarded(cmd_converge))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m spines_kr.vagrantlab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_vagrant_parser(sub)
    args = parser.parse_args(["vagrant", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
