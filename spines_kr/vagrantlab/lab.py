"""The Vagrant lab inside a network namespace of its own: up, down (also after a crash), exec.

Layout of a lab ``LAB`` (``STATE/LAB``, STATE = ``/var/lib/spines-kr/vagrant``):

    state.json        what down needs: namespace, libvirtd pid, directories made, topology
    net-before.json   the machine's own network before up (``safety.snapshot``)
    libvirt/{etc,lib,run,cache,log}   bind-mounted, in libvirtd's private mount namespace, over
                      /etc/libvirt, /var/lib/libvirt, /run/libvirt, /var/cache/libvirt,
                      /var/log/libvirt: its configuration, domains, networks, storage pool
                      (the VMs' disks), sockets and pid files live here and nowhere else
    vagrant.d/        VAGRANT_HOME (boxes -> the cache's boxes), dotvagrant/ (.vagrant)
    key.toml          the lab's overlay key; ssh_config: `vagrant ssh-config` of every VM
    *.log             libvirtd's and vagrant's output

Everything that carries a packet lives in the namespace ``skvag-LAB``: libvirtd (started there,
so its bridges, taps, dnsmasq and firewall rules are the namespace's), Vagrant (its SSH reaches
the VMs over the namespace's management bridge), every VM.  The namespace has no link to the
outside: the VMs reach nothing but each other and the namespace, which is why their Python
dependencies come from a wheelhouse (``ensure_wheels``) made on the host with pip.

``down`` stops, by pid and only after checking that the process runs in the lab's namespace,
the qemus and dnsmasqs whose pid files are in the lab's run directory, the lab's libvirtd, and
any process left in the namespace; then deletes the namespace, the directories it made and the
lab's directory (the disks with it).  The cached box and wheelhouse stay.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from spines_kr.deploy.vagrant import LAB_RE, lab_name
from spines_kr.vagrantlab import box as boxmod
from spines_kr.vagrantlab import safety

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
STATE = Path(os.environ.get("SPINES_KR_VAGRANT_STATE", "/var/lib/spines-kr/vagrant"))
NETNS_PREFIX = "skvag-"
QUIET_FILE = Path("/tmp/spines-kr-quiet")   # someone is measuring: no box build, no boots
MEMORY_MB = int(os.environ.get("SPINES_KR_MEMORY", "384"))
NICE = ["nice", "-n", "19", "ionice", "-c3"]
# Directories libvirtd (privileged) insists on; bind-mounted from the lab's in its own mount
# namespace.  Those missing on the machine are made (empty mount points) and removed by down.
LIBVIRT_DIRS = {"etc": "/etc/libvirt", "lib": "/var/lib/libvirt", "run": "/run/libvirt",
                "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}

LIBVIRTD_CONF = """\
# libvirtd of one spines-kr Vagrant lab (spines_kr/vagrantlab/lab.py), inside its namespace
unix_sock_dir = "/run/libvirt"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""
QEMU_CONF = """\
# qemu driver of one spines-kr Vagrant lab: root-owned files of the lab, no sandbox add-ons
# that reach outside the lab's directories (no cgroups, no security driver, no virtlogd)
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"""


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why."""


def log(msg: str) -> None:
    print(f"spines-kr vagrant: {msg}", flush=True)


def netns(lab: str) -> str:
    return f"{NETNS_PREFIX}{lab}"


def lab_dir(lab: str) -> Path:
    return STATE / lab


def _check_name(lab: str) -> str:
    if not LAB_RE.fullmatch(lab):
        raise LabError(f"lab name {lab!r}: 1-32 characters [a-z0-9-]")
    return lab


def read_state(lab: str) -> dict:
    try:
        return json.loads((lab_dir(lab) / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_state(lab: str, state: dict) -> None:
    p = lab_dir(lab) / "state.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(p)


def wait_quiet(what: str) -> None:
    """Someone measuring benchmarks asked for a quiet machine: wait (poll every 30 s)."""
    first = True
    while QUIET_FILE.exists():
        if first:
            log(f"{QUIET_FILE} exists (benchmarks running): waiting before {what}")
            first = False
        time.sleep(30)


# -- the accelerator --------------------------------------------------------------------------

def accelerator(sys_module: Path = Path("/sys/module")) -> tuple[str, str]:
    """("kvm" | "qemu", why): libvirt's domain type for the VMs.

    KVM when the machine has hardware virtualisation (kvm_intel or kvm_amd loaded).  A machine
    that is itself a VM may instead offer PVM (kvm_pvm: KVM without VMX/SVM, for a nested
    guest): it runs only guest kernels built for PVM (CONFIG_PVM_GUEST), and a stock Debian
    kernel hangs before its first message.  Then, and without any KVM, the VMs run in qemu's
    software emulation (TCG): slower, same lab.  SPINES_KR_ACCEL=kvm|qemu overrides."""
    forced = os.environ.get("SPINES_KR_ACCEL", "")
    if forced in ("kvm", "qemu"):
        return forced, "SPINES_KR_ACCEL"
    if (sys_module / "kvm_intel").is_dir() or (sys_module / "kvm_amd").is_dir():
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "kvm", "hardware virtualisation (kvm_intel/kvm_amd)"
        return "qemu", "/dev/kvm is not usable: software emulation (TCG)"
    if (sys_module / "kvm_pvm").is_dir():
        return "qemu", ("KVM here is PVM (kvm_pvm: this machine is itself a VM), which boots "
                        "only PVM guest kernels, not Debian's: software emulation (TCG)")
    return "qemu", "no KVM: software emulation (TCG)"


# -- the wheelhouse: the daemon's dependencies for a VM without network ------------------------

def requirements() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"]) + ["setuptools>=61", "wheel"]


def ensure_wheels(cache: Path = boxmod.CACHE) -> Path:
    """Wheels of spines-kr's dependencies for the box's Python (downloaded once with this
    machine's pip from its package index; the VMs install from them with --no-index)."""
    reqs = requirements()
    py = boxmod.python_version()
    import hashlib
    key = hashlib.sha256(json.dumps([reqs, py]).encode()).hexdigest()[:12]
    dest = cache / f"wheels-{key}"
    if (dest / ".complete").exists():
        return dest
    tmp = cache / f"wheels-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    argv = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(tmp),
            "--only-binary=:all:", "--python-version", py, "--implementation", "cp",
            "--abi", f"cp{py.replace('.', '')}", "--platform", "manylinux2014_x86_64",
            "--platform", "manylinux_2_17_x86_64", "--platform", "linux_x86_64", *reqs]
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabError(f"wheelhouse: pip download failed: {r.stderr.strip()[-800:]}")
    (tmp / ".complete").write_text("\n".join(reqs) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


RSYNC_EXCLUDES = (".git/", ".venv/", "vagrant/.vagrant/", "build/", "*.egg-info/",
                  "__pycache__/", ".pytest_cache/", ".hypothesis/", ".ruff_cache/")


def lab_wheels(lab: str, deps: Path) -> Path:
    """The lab's wheelhouse: the cached dependency wheels (hard links) and a wheel of this
    checkout, built here once (from a copy, so the checkout gets no build/ or egg-info) instead
    of twice in every VM, where it is slow without KVM."""
    dest = lab_dir(lab) / "wheels"
    src = lab_dir(lab) / "src"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for w in deps.glob("*.whl"):
        try:
            os.link(w, dest / w.name)
        except OSError:
            shutil.copy2(w, dest / w.name)
    r = subprocess.run(["rsync", "-a", "--delete", *[f"--exclude={x}" for x in RSYNC_EXCLUDES],
                        f"{REPO}/", f"{src}/"], capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"copying the checkout failed: {r.stderr.strip()[-500:]}")
    r = subprocess.run([*NICE, sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-index", "--find-links", str(deps), "-w", str(dest), str(src)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    shutil.rmtree(src, ignore_errors=True)
    if r.returncode != 0:
        raise LabError(f"building the spines-kr wheel failed: {r.stderr.strip()[-800:]}")
    return dest


# -- processes of the lab -------------------------------------------------------------------------

def _ns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def _in_ns(pid: int, inode: int | None) -> bool:
    try:
        return inode is not None and os.stat(f"/proc/{pid}/ns/net").st_ino == inode
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(pids: list[int], what: str, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only the pids given."""
    pids = [p for p in pids if _alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for p in pids:
        if _alive(p):
            log(f"{what} {p} did not stop on SIGTERM: SIGKILL")
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in pids:
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass


def _pidfiles(d: Path) -> list[int]:
    pids = []
    for f in sorted(d.glob("**/*.pid")) if d.is_dir() else []:
        if f.name == "driver.pid":      # libvirtd's own (one per driver): stopped after these
            continue
        try:
            pids.append(int(f.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def start_libvirtd(lab: str) -> int:
    """libvirtd in the lab's namespace, its directories bind-mounted from the lab's in a private
    mount namespace; returns its pid once its socket answers."""
    d = lab_dir(lab) / "libvirt"
    for sub in LIBVIRT_DIRS:
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
    (d / "etc" / "qemu.conf").write_text(QEMU_CONF)
    state = read_state(lab)
    made = state.setdefault("made_dirs", [])
    for target in LIBVIRT_DIRS.values():
        if not os.path.isdir(target):
            os.makedirs(target)
            made.append(target)
    _write_state(lab, state)
    pairs = [(d / sub, target) for sub, target in LIBVIRT_DIRS.items()]
    pairs += _private_accounts(d)
    binds = " && ".join(f"mount --bind {shlex.quote(str(src))} {target}"
                        for src, target in pairs)
    script = (f"mount --make-rprivate / && {binds} && "
              f"exec libvirtd --config /etc/libvirt/libvirtd.conf")
    out = open(lab_dir(lab) / "libvirtd.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", netns(lab), *NICE, "unshare", "--mount",
                             "--propagation", "private", "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True)
    out.close()
    state["libvirtd_pid"] = proc.pid     # nice/ionice/unshare/sh exec: the pid stays libvirtd's
    _write_state(lab, state)
    sock = d / "run" / "libvirt-sock"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"libvirtd exited ({proc.returncode}): see "
                           f"{lab_dir(lab) / 'libvirtd.log'}")
        if sock.exists() and _virsh(lab, "version").returncode == 0:
            return proc.pid
        time.sleep(0.3)
    raise LabError(f"libvirtd did not answer on {sock} within 30 s")


def _private_accounts(d: Path) -> list[tuple[Path, str]]:
    """/etc/passwd and /etc/group as libvirtd (privileged) needs them, for its eyes only: the
    machine's, plus the accounts libvirt's own packages would add (libvirt-qemu, libvirt-dnsmasq)
    when they are missing.  Bind-mounted in libvirtd's mount namespace; the machine's stay."""
    import grp
    import pwd
    need = [n for n in ("libvirt-qemu", "libvirt-dnsmasq") if not _has_user(pwd, n)]
    if not need:
        return []
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    taken = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    free = (i for i in range(64900, 60000, -1) if i not in taken)
    for name in need:
        i = next(free)
        passwd += f"{name}:x:{i}:{i}:spines-kr vagrant lab:/nonexistent:/usr/sbin/nologin\n"
        group += f"{name}:x:{i}:\n"
    (d / "passwd").write_text(passwd)
    (d / "group").write_text(group)
    return [(d / "passwd", "/etc/passwd"), (d / "group", "/etc/group")]


def _has_user(pwd, name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def libvirt_uri(lab: str) -> str:
    return f"qemu:///system?socket={lab_dir(lab) / 'libvirt' / 'run' / 'libvirt-sock'}"


def _virsh(lab: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", "-c", libvirt_uri(lab), *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)


# -- vagrant ------------------------------------------------------------------------------------

def vagrant_env(lab: str, state: dict) -> dict[str, str]:
    d = lab_dir(lab)
    env = dict(os.environ)
    env.update({
        "VAGRANT_HOME": str(d / "vagrant.d"),
        "VAGRANT_DOTFILE_PATH": str(d / "dotvagrant"),
        "VAGRANT_CWD": str(VAGRANT_DIR),
        "VAGRANT_DEFAULT_PROVIDER": "libvirt",
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        "SPINES_KR_TOPOLOGY": state["topology"],
        "SPINES_KR_LAB": lab,
        "SPINES_KR_BOX": boxmod.BOX_NAME,
        "SPINES_KR_MEMORY": str(state.get("memory_mb", MEMORY_MB)),
        "SPINES_KR_CPUS": "1",
        "SPINES_KR_PYTHON": sys.executable,
        "SPINES_KR_KEY_FILE": str(d / "key.toml"),
        "SPINES_KR_LIBVIRT_URI": libvirt_uri(lab),
        "SPINES_KR_WHEELS": state["wheels"],
        "SPINES_KR_LIBVIRT_DRIVER": state.get("accel", "kvm"),
    })
    return env


def vagrant(lab: str, *args: str, capture: bool = False, timeout: float | None = None,
            logfile: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``vagrant ARGS`` for the lab, inside its namespace, niced."""
    state = read_state(lab)
    if not state:
        raise LabError(f"no Vagrant lab {lab!r} (no {lab_dir(lab) / 'state.json'})")
    argv = ["ip", "netns", "exec", netns(lab), *NICE, "vagrant", *args]
    env = vagrant_env(lab, state)
    if capture:
        return subprocess.run(argv, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)
    if logfile is None:
        return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=timeout)
    with open(logfile, "a") as lf:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Progress:" in line:     # vagrant-libvirt's upload bar: one line per percent
                continue
            lf.write(line)
            lf.flush()
            sys.stdout.write(line)
            sys.stdout.flush()
        rc = proc.wait(timeout=timeout)
    return subprocess.CompletedProcess(argv, rc)


def ssh_argv(lab: str, vm: str, command: list[str] | None = None, *, tty: bool = False
             ) -> list[str]:
    cfg = lab_dir(lab) / "ssh_config"
    argv = ["ip", "netns", "exec", netns(lab), "ssh", "-F", str(cfg), "-o", "LogLevel=ERROR"]
    if tty:
        argv.append("-t")
    argv.append(vm)
    if command:
        argv += ["--", shlex.join(command)]
    return argv


def exec_(lab: str, vm: str, command: list[str], *, timeout: float = 60, check: bool = False
          ) -> subprocess.CompletedProcess:
    """Run ``command`` on VM ``vm`` (over SSH in the lab's namespace) and capture its output."""
    r = subprocess.run(ssh_argv(lab, vm, command), capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    if check and r.returncode != 0:
        raise LabError(f"{vm}: {shlex.join(command)}: exit {r.returncode}: "
                       f"{(r.stderr or r.stdout).strip()[-500:]}")
    return r


def plan(lab: str) -> dict:
    return json.loads((lab_dir(lab) / "plan.json").read_text())


def routes(lab: str, vm: str) -> list[dict]:
    r = exec_(lab, vm, ["ip", "-j", "route", "show", "proto", "spines"], check=True)
    return json.loads(r.stdout or "[]")


def converged(lab: str) -> dict[str, list[str]]:
    """Node -> the other nodes' logical IDs it has no spines route to (empty when converged)."""
    p = plan(lab)
    nodes = {vm["name"]: vm["logical_id"] for vm in p["vms"] if vm["role"] == "node"}
    missing = {}
    for name in nodes:
        have = {r["dst"] for r in routes(lab, name)}
        missing[name] = sorted(lid for other, lid in nodes.items()
                               if other != name and lid not in have)
    return missing


def wait_converged(lab: str, timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    last = {}
    while time.monotonic() - t0 < timeout:
        try:
            last = converged(lab)
        except (LabError, subprocess.TimeoutExpired) as e:
            last = {"error": [str(e)]}
        if not any(last.values()):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise LabError(f"routes not converged after {timeout:.0f} s: missing {last}")


# -- up / down ----------------------------------------------------------------------------------

def up(topology: str, *, name: str | None = None, memory_mb: int = MEMORY_MB,
       rebuild_box: bool = False) -> dict:
    """Build (or reuse) the box, start the lab's namespace and libvirtd, ``vagrant up`` every VM
    of ``topology``; returns figures (seconds) and what was compared."""
    if os.geteuid() != 0:
        raise LabError("needs root (network namespace, libvirtd)")
    for tool in ("vagrant", "libvirtd", "virsh", "qemu-system-x86_64", "dnsmasq", "rsync",
                 "ssh", "ip", "unshare", "mmdebstrap"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is not installed: scripts/run vagrant installs what is needed")
    topo_path = str(Path(topology).resolve())
    from spines_kr.lab.topology import load
    load(topo_path)                                   # a topology error before anything is made
    lab = _check_name(name or lab_name(topo_path))
    d = lab_dir(lab)
    if d.exists() or _ns_inode(netns(lab)) is not None:
        raise LabError(f"lab {lab!r} exists ({d}, namespace {netns(lab)}): "
                       f"spines-kr vagrant down --name {lab} first")
    figures: dict = {"lab": lab, "topology": topo_path}
    before = safety.snapshot()

    wait_quiet("building the box")
    t = time.monotonic()
    info = boxmod.build(force=rebuild_box, log=lambda m: log(m))
    figures["box_seconds_here"] = round(time.monotonic() - t, 1)
    figures["box_build_seconds"] = info["build_seconds"]
    figures["box_size_mib"] = round(info["size_bytes"] / 2**20, 1)
    wheels = ensure_wheels()

    d.mkdir(parents=True)
    safety.save(d / "net-before.json", before)
    accel, why = accelerator()
    log(f"VMs run with {accel}: {why}")
    figures["accel"] = accel
    wheels = lab_wheels(lab, wheels)
    state = {"lab": lab, "netns": netns(lab), "topology": topo_path, "wheels": str(wheels),
             "memory_mb": memory_mb, "accel": accel, "created": time.time(), "made_dirs": []}
    _write_state(lab, state)
    (d / "vagrant.d").mkdir()
    (d / "vagrant.d" / "boxes").symlink_to(boxmod.CACHE / "boxes")
    subprocess.run(["ip", "netns", "add", netns(lab)], check=True)
    subprocess.run(["ip", "-n", netns(lab), "link", "set", "lo", "up"], check=True)
    wait_quiet("booting VMs")
    start_libvirtd(lab)
    t = time.monotonic()
    r = vagrant(lab, "up", "--provider=libvirt", logfile=d / "vagrant-up.log")
    figures["vagrant_up_seconds"] = round(time.monotonic() - t, 1)
    if r.returncode != 0:
        raise LabError(f"vagrant up failed (exit {r.returncode}): see {d / 'vagrant-up.log'}; "
                       f"spines-kr vagrant down --name {lab} removes what was made")
    cfg = vagrant(lab, "ssh-config", capture=True, timeout=300)
    if cfg.returncode != 0:
        raise LabError(f"vagrant ssh-config failed: {cfg.stderr.strip()[-500:]}")
    (d / "ssh_config").write_text(cfg.stdout)
    _write_plan(lab)
    figures["converged_after_up_seconds"] = round(wait_converged(lab), 1)
    figures["vms"] = len(plan(lab)["vms"])
    changed = safety.diff(before, safety.snapshot())
    figures["root_network_unchanged"] = not changed
    if changed:
        log("THE MACHINE'S OWN NETWORK CHANGED during up:\n" + "\n".join(changed[:60]))
    state = read_state(lab)
    state["figures"] = figures
    _write_state(lab, state)
    return figures


def _write_plan(lab: str) -> None:
    from spines_kr.deploy.vagrant import main as plan_main
    import contextlib
    import io
    state = read_state(lab)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        plan_main([state["topology"], "--lab", lab, "--box", boxmod.BOX_NAME,
                   "--key", str(lab_dir(lab) / "key.toml")])
    (lab_dir(lab) / "plan.json").write_text(buf.getvalue())


def down(lab: str) -> list[str]:
    """Remove the lab: VMs, networks, processes, namespace, disks, files.  Works from whatever a
    crash left; returns what it did."""
    _check_name(lab)
    d = lab_dir(lab)
    state = read_state(lab)
    ns = state.get("netns", netns(lab))
    inode = _ns_inode(ns)
    done = []
    run = d / "libvirt" / "run"
    # The VMs and dnsmasqs first (their pid files are libvirtd's, in the lab's run directory),
    # then libvirtd, then whatever else still runs in the namespace (vagrant, ssh).
    for what, pids in (("qemu", _pidfiles(run / "qemu")), ("dnsmasq", _pidfiles(run / "network"))):
        mine = [p for p in pids if _in_ns(p, inode)]
        if mine:
            _stop(mine, what)
            done.append(f"stopped {what} {' '.join(map(str, mine))}")
    pid = state.get("libvirtd_pid")
    if pid and _in_ns(pid, inode):
        _stop([pid], "libvirtd")
        done.append(f"stopped libvirtd {pid}")
    if inode is not None:
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        rest = [int(p) for p in r.stdout.split() if p.isdigit() and _in_ns(int(p), inode)]
        if rest:
            _stop(rest, "process in the lab's namespace", timeout=5)
            done.append(f"stopped {len(rest)} other process(es) in {ns}")
        subprocess.run(["ip", "netns", "del", ns], check=False)
        done.append(f"deleted namespace {ns}")
    before = safety.load(d / "net-before.json")
    for target in reversed(state.get("made_dirs", [])):
        try:
            os.rmdir(target)
            done.append(f"removed {target}")
        except OSError:
            pass
    if d.exists():
        boxmod.remove_tree(d)
        done.append(f"removed {d}")
    if before is not None:
        changed = safety.diff(before, safety.snapshot())
        if changed:
            done.append("THE MACHINE'S OWN NETWORK DIFFERS from before up:\n"
                        + "\n".join(changed[:60]))
        else:
            done.append("the machine's own network (links, routes, rules, nftables) is as "
                        "before up")
    return done


def labs() -> list[str]:
    """Labs with a directory or a namespace on this machine."""
    names = {p.name for p in STATE.iterdir() if p.is_dir()} if STATE.is_dir() else set()
    try:
        names |= {n[len(NETNS_PREFIX):] for n in os.listdir("/run/netns")
                  if n.startswith(NETNS_PREFIX)}
    except OSError:
        pass
    return sorted(names)


# -- checks on the booted lab --------------------------------------------------------------------

def _nodes(p: dict) -> dict[str, str]:
    return {vm["name"]: vm["logical_id"] for vm in p["vms"] if vm["role"] == "node"}


def hops(p: dict) -> dict[str, dict[str, int]]:
    """Hop counts between the plan's nodes over its link networks (breadth first)."""
    nodes = _nodes(p)
    adj: dict[str, set[str]] = {n: set() for n in nodes}
    for net in p["networks"]:
        members = [m for m in net["members"] if m in nodes]
        if net.get("kind") == "link":
            for a in members:
                adj[a] |= set(members) - {a}
    out = {}
    for src in nodes:
        dist, frontier = {src: 0}, [src]
        while frontier:
            nxt = []
            for a in frontier:
                for b in sorted(adj[a]):
                    if b not in dist:
                        dist[b] = dist[a] + 1
                        nxt.append(b)
            frontier = nxt
        out[src] = dist
    return out


def farthest(p: dict) -> tuple[str, str, int]:
    """The pair of nodes farthest apart (first in plan order among equals) and their hops."""
    h = hops(p)
    best = ("", "", -1)
    for a in _nodes(p):
        for b, d in h[a].items():
            if d > best[2]:
                best = (a, b, d)
    return best


def owner_of(p: dict, address: str) -> str | None:
    """The VM whose NIC (or logical ID) has ``address``."""
    for vm in p["vms"]:
        if vm.get("logical_id") == address:
            return vm["name"]
        for nic in vm["interfaces"]:
            if nic["address"].split("/")[0] == address:
                return vm["name"]
    return None


def _ping_counts(text: str) -> tuple[int, int]:
    import re
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check(lab: str, *, restart: bool = True, say=log) -> dict:
    """Part 3 of issue 15 on a booted lab; returns what was seen (``ok`` per check)."""
    p = plan(lab)
    unit = p["unit"]
    nodes = _nodes(p)
    res: dict = {"lab": lab}
    # 1. the unit is active everywhere
    active = {n: exec_(lab, n, ["systemctl", "is-active", f"{unit}.service"]).stdout.strip()
              for n in nodes}
    res["active"] = {"ok": all(v == "active" for v in active.values()), "units": active}
    say(f"systemctl is-active {unit}: {active}")
    # 2. routes to every other node
    shown = {}
    for n in nodes:
        shown[n] = exec_(lab, n, ["ip", "route", "show", "proto", "spines"]).stdout.strip()
        say(f"{n}: ip route show proto spines\n" +
            "\n".join("    " + line for line in shown[n].splitlines()))
    missing = converged(lab)
    res["routes"] = {"ok": not any(missing.values()), "missing": missing, "shown": shown}
    # 3. a ping between the farthest nodes, from logical ID to logical ID
    a, b, d = farthest(p)
    r = exec_(lab, a, ["ping", "-c", "3", "-W", "2", "-I", nodes[a], nodes[b]], timeout=30)
    sent, got = _ping_counts(r.stdout)
    res["ping"] = {"ok": got == sent > 0, "from": a, "to": b, "hops": d, "sent": sent,
                   "received": got}
    say(f"ping {a} -> {b} ({d} hops, {nodes[a]} -> {nodes[b]}): {got}/{sent} answered")
    # 4. a restart on a transit node loses no probe (routes kept across the restart)
    if restart:
        res["restart"] = restart_check(lab, p, a, b, say=say)
    # 5. systemd-analyze security inside a VM, as the offline check rates the unit file
    r = exec_(lab, a, ["sudo", "systemd-analyze", "security", "--no-pager", f"{unit}.service"])
    import re
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    vm_level = float(m.group(1)) if m else None
    offline = _offline_exposure()
    res["security"] = {"ok": vm_level is not None and vm_level <= 2.5, "vm": vm_level,
                       "vm_rating": m.group(2) if m else None, "offline": offline}
    say(f"systemd-analyze security {unit}: {vm_level} in {a} (offline check of the unit "
        f"file: {offline})")
    # 6. the daemon's structured events in the journal
    r = exec_(lab, a, ["sudo", "journalctl", "-u", f"{unit}.service", "-o", "json",
                       "--no-pager"], timeout=60)
    events = {}
    for line in r.stdout.splitlines():
        try:
            msg = json.loads(json.loads(line).get("MESSAGE") or "")
        except (ValueError, TypeError, AttributeError):
            continue
        if isinstance(msg, dict) and "event" in msg:
            events[msg["event"]] = events.get(msg["event"], 0) + 1
    res["journal"] = {"ok": bool(events), "vm": a, "events": events}
    say(f"journalctl -u {unit} -o json on {a}: {sum(events.values())} structured events "
        f"({', '.join(sorted(events)[:12])})")
    res["ok"] = all(v["ok"] for v in res.values() if isinstance(v, dict) and "ok" in v)
    return res


def _offline_exposure() -> float | None:
    import re
    unit = REPO / "systemd" / "spines-kr@.service"
    if shutil.which("systemd-analyze") is None or not unit.exists():
        return None
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, check=False)
    m = re.search(r"Overall exposure level for .*: (\d+\.\d+)", r.stdout)
    return float(m.group(1)) if m else None


def restart_check(lab: str, p: dict, a: str, b: str, *, seconds: float = 30.0,
                  interval: float = 0.05, say=log) -> dict:
    """Ping ``b`` from ``a`` every ``interval`` s while the transit node on the way (the next
    hop of ``a``'s route, if it is not ``b``) restarts its daemon; every probe must come back."""
    nodes = _nodes(p)
    r = exec_(lab, a, ["ip", "-j", "route", "get", nodes[b], "from", nodes[a]], check=True)
    via = (json.loads(r.stdout or "[{}]")[0] or {}).get("gateway")
    transit = owner_of(p, via) if via else None
    if transit in (None, b):
        say(f"restart: no transit node between {a} and {b} (adjacent): not checked")
        return {"ok": True, "checked": False, "why": f"{a} and {b} are adjacent"}
    count = int(seconds / interval)
    ping = subprocess.Popen(
        ssh_argv(lab, a, ["sudo", "ping", "-q", "-c", str(count), "-i", str(interval), "-W", "1",
                          "-I", nodes[a], nodes[b]]),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(min(3.0, seconds / 4))
    t0 = time.monotonic()
    rr = exec_(lab, transit, ["sudo", "systemctl", "restart", f"{p['unit']}.service"],
               timeout=120)
    restart_s = time.monotonic() - t0
    out, _ = ping.communicate(timeout=seconds + 120)
    sent, got = _ping_counts(out)
    say(f"restart of {p['unit']} on transit {transit} ({restart_s:.1f} s, exit {rr.returncode}) "
        f"while {a} pings {b} every {interval * 1000:.0f} ms: {got}/{sent} answered")
    return {"ok": rr.returncode == 0 and sent > 0 and got == sent, "checked": True,
            "transit": transit, "sent": sent, "received": got,
            "restart_seconds": round(restart_s, 1)}
