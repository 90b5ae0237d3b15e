"""A small Debian box for Vagrant's libvirt provider, built here from Debian's packages.

Recipe (``recipe()``): Debian ``SUITE`` (minbase) with the cloud kernel, systemd, an SSH server,
sudo, Python 3 with venv, iproute2, iputils-ping, nftables and rsync; the ``vagrant`` user with
Vagrant's insecure public key (Vagrant replaces it at the first ``up``), passwordless sudo;
systemd-networkd with DHCP on ``eth0`` only (the management NIC; the lab's NICs are named and
addressed by the plan's files); SSH host keys made at first boot and an empty machine-id (every
VM its own identity, its own DHCP lease); documentation, manuals, locales and apt lists left out.

Build (``build()``, root): ``mmdebstrap`` into a directory, the customisation above, an ext4
file system made from that directory (``mkfs.ext4 -d``: no loop device, no mount) and converted
to a compressed qcow2, and the kernel and initrd beside it: the box boots them directly
(libvirt's kernel/initrd/cmdline, set by the box's own Vagrantfile), so the image needs no
partition table and no boot loader.  The result is laid out as Vagrant's box store wants it,
``<cache>/boxes/spines-kr-VAGRANTSLASH-<name>/0/libvirt/`` (``metadata.json``, ``box.img``,
``vmlinuz``, ``initrd.img``, ``Vagrantfile``, ``recipe.json``), and replaced only when the
recipe's digest changes.  Python's version in the box (``python_version``) is the suite's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

BOX_NAME = "spines-kr/debian12"
SUITE = "bookworm"
PYTHON = {"bookworm": "3.11", "trixie": "3.13"}     # the suite's python3, for the wheelhouse
DISK_GB = 2                                         # virtual size of the root file system
LABEL = "skvag-root"
RECIPE_VERSION = 1                                  # bump when build() changes what it makes
CACHE = Path(os.environ.get("SPINES_KR_VAGRANT_CACHE", "/var/cache/spines-kr/vagrant"))
MIRROR = os.environ.get("SPINES_KR_BOX_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("SPINES_KR_BOX_SECURITY_MIRROR",
                                 "http://deb.debian.org/debian-security")
CMDLINE = f"root=LABEL={LABEL} ro console=ttyS0 net.ifnames=0 quiet"

PACKAGES = (
    "linux-image-cloud-amd64", "initramfs-tools", "systemd", "systemd-sysv", "udev", "dbus",
    "openssh-server", "sudo", "rsync", "python3", "python3-venv", "iproute2", "iputils-ping",
    "nftables", "procps", "kmod", "netbase",
)

# Keep the image small: no documentation, manuals or translations.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                 "/usr/share/locale/*", "/usr/share/lintian/*")

FILES = {
    "etc/hostname": "debian\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n",
    "etc/fstab": f"LABEL={LABEL}\t/\text4\tdefaults,noatime\t0\t1\n",
    "etc/sudoers.d/vagrant": "vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n",
    # The management NIC (the provider's first): DHCP, by MAC so that the lease is per VM.
    "etc/systemd/network/99-skvag-mgmt.network": (
        "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n\n"
        "[DHCPv4]\nClientIdentifier=mac\nUseDNS=no\nUseNTP=no\n"),
    # Host keys made at first boot (a box is cloned: no two VMs share keys).
    "etc/systemd/system/ssh.service.d/skvag-hostkeys.conf": (
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"
        "ExecStartPre=/usr/sbin/sshd -t\n"),
    "etc/ssh/sshd_config.d/skvag.conf": "UseDNS no\nPasswordAuthentication no\n",
    "etc/systemd/journald.conf.d/skvag.conf": "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n",
}
ENABLE = ("systemd-networkd.service", "ssh.service")
MASK = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
        "systemd-networkd-wait-online.service")


class BoxError(RuntimeError):
    """The box cannot be built; the message says which step and why."""


def vagrant_public_keys() -> list[str]:
    """Vagrant's insecure public key(s), from the installed Vagrant (Debian's package or
    HashiCorp's)."""
    out = subprocess.run(["gem", "contents", "vagrant"], capture_output=True, text=True,
                         check=False).stdout.split() if shutil.which("gem") else []
    candidates = [Path(p) for p in out if p.endswith(".pub") and "/keys/" in p]
    candidates += sorted(Path("/usr/share/rubygems-integration/all/gems").glob(
        "vagrant-*/keys/*.pub"))
    candidates += sorted(Path("/opt/vagrant/embedded/gems").glob("gems/vagrant-*/keys/*.pub"))
    keys = []
    for p in candidates:
        try:
            text = p.read_text().strip()
        except OSError:
            continue
        if text and text not in keys:
            keys.append(text)
    if not keys:
        raise BoxError("Vagrant's insecure public key (keys/vagrant.pub) not found: "
                       "is vagrant installed?")
    return keys


def recipe(keys: list[str] | None = None) -> dict:
    """Everything the box is made of; its digest names the build."""
    return {"version": RECIPE_VERSION, "name": BOX_NAME, "suite": SUITE,
            "packages": list(PACKAGES), "dpkg_excludes": list(DPKG_EXCLUDES),
            "files": FILES, "enable": list(ENABLE), "mask": list(MASK),
            "cmdline": CMDLINE, "disk_gb": DISK_GB,
            "vagrant_keys": keys if keys is not None else vagrant_public_keys()}


def digest(r: dict) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:16]


def box_dir(cache: Path = CACHE, name: str = BOX_NAME) -> Path:
    return cache / "boxes" / name.replace("/", "-VAGRANTSLASH-") / "0" / "libvirt"


def python_version(suite: str = SUITE) -> str:
    return PYTHON[suite]


def cached(cache: Path = CACHE) -> dict | None:
    """The cached box's recipe.json (with its digest, build time and size), or None."""
    try:
        return json.loads((box_dir(cache) / "recipe.json").read_text())
    except (OSError, ValueError):
        return None


def up_to_date(cache: Path = CACHE) -> bool:
    have = cached(cache)
    return bool(have) and have.get("digest") == digest(recipe()) and \
        (box_dir(cache) / "box.img").exists()


BOX_VAGRANTFILE = """\
# spines-kr's locally built Debian box (spines_kr/vagrantlab/box.py): the kernel and initrd
# beside the image are booted directly, the image is one ext4 file system (no boot loader).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.driver = "kvm"
    lv.kernel = File.join(__dir__, "vmlinuz")
    lv.initrd = File.join(__dir__, "initrd.img")
    lv.cmd_line = "{cmdline}"
    lv.disk_bus = "virtio"
    lv.nic_model_type = "virtio"
    lv.graphics_type = "none"
    lv.video_type = "none"
  end
end
"""


def _run(argv: list[str], step: str, log, **kw) -> None:
    log(f"box: {step}: {' '.join(argv[:3])}{' ...' if len(argv) > 3 else ''}")
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise BoxError(f"box: {step} failed (exit {r.returncode}):\n{tail}")


def _chroot(root: Path, *argv: str, step: str, log) -> None:
    _run(["chroot", str(root), *argv], step, log)


def build(cache: Path = CACHE, *, force: bool = False, log=print) -> dict:
    """Build the box unless the cached one has the current recipe; returns its recipe.json."""
    r = recipe()
    d = digest(r)
    if not force and up_to_date(cache):
        return cached(cache)
    if os.geteuid() != 0:
        raise BoxError("box: building the box needs root (mmdebstrap, chroot)")
    for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img"):
        if shutil.which(tool) is None:
            raise BoxError(f"box: {tool} is not installed (scripts/run vagrant installs it)")
    t0 = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"build-{d}"
    remove_tree(work)
    root = work / "root"
    out = work / "box"
    out.mkdir(parents=True)
    try:
        argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
                f"--include={','.join(PACKAGES)}",
                "--aptopt=Acquire::Languages \"none\"",
                *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                SUITE, str(root),
                f"deb {MIRROR} {SUITE} main", f"deb {MIRROR} {SUITE}-updates main",
                f"deb {SECURITY_MIRROR} {SUITE}-security main"]
        _run(argv, "mmdebstrap", log)
        for rel, text in FILES.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        (root / "etc/sudoers.d/vagrant").chmod(0o440)
        _chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "--user-group",
                "vagrant", step="vagrant user", log=log)
        ssh = root / "home/vagrant/.ssh"
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text("\n".join(r["vagrant_keys"]) + "\n")
        (ssh / "authorized_keys").chmod(0o600)
        _chroot(root, "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh",
                step="vagrant key", log=log)
        _chroot(root, "systemctl", "enable", *ENABLE, step="enable units", log=log)
        _chroot(root, "systemctl", "mask", *MASK, step="mask units", log=log)
        for p in root.glob("etc/ssh/ssh_host_*"):
            p.unlink()
        (root / "etc/machine-id").write_text("")
        (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
        for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin",
                        "var/cache/apt/archives/*.deb", "var/log/*.log", "var/log/apt/*",
                        "tmp/*"):
            for p in root.glob(pattern):
                if p.is_file() or p.is_symlink():
                    p.unlink()
                elif p.is_dir():
                    shutil.rmtree(p)
        kernels = sorted(root.glob("boot/vmlinuz-*"))
        initrds = sorted(root.glob("boot/initrd.img-*"))
        if not kernels or not initrds:
            raise BoxError("box: no kernel or initrd in the image")
        shutil.copyfile(kernels[-1], out / "vmlinuz")
        shutil.copyfile(initrds[-1], out / "initrd.img")
        raw = work / "root.raw"
        with open(raw, "wb") as f:
            f.truncate(DISK_GB << 30)
        _run(["mkfs.ext4", "-q", "-L", LABEL, "-d", str(root), "-E",
              "lazy_itable_init=1,lazy_journal_init=1", str(raw)], "mkfs.ext4", log)
        remove_tree(root)
        _run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(out / "box.img")],
             "qemu-img convert", log)
        raw.unlink()
        (out / "metadata.json").write_text(json.dumps(
            {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GB}) + "\n")
        (out / "Vagrantfile").write_text(BOX_VAGRANTFILE.replace("{cmdline}", CMDLINE))
        size = sum(p.stat().st_size for p in out.iterdir())
        kernel = re.sub(r"^vmlinuz-", "", kernels[-1].name)
        info = {"digest": d, "recipe": r, "kernel": kernel,
                "build_seconds": round(time.monotonic() - t0, 1), "size_bytes": size,
                "image_bytes": (out / "box.img").stat().st_size,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (out / "recipe.json").write_text(json.dumps(info, indent=1) + "\n")
        final = box_dir(cache)
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            final.rename(old)
        out.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        log(f"box: {BOX_NAME} built in {info['build_seconds']} s, "
            f"{size / 2**20:.0f} MiB ({final})")
        return info
    finally:
        remove_tree(work)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    base = str(path.resolve())
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        point = line.split()[4].replace("\\040", " ")
        if point == base or point.startswith(base + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf ``path``, never through a mount point left below it (a crashed mmdebstrap's
    /proc, /sys or /dev): those are unmounted first, and the tree is kept if one stays."""
    if not path.exists():
        return
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if mounts_under(path):
        raise BoxError(f"box: {path} still has mount points below it; not removing it")
    shutil.rmtree(path, ignore_errors=True)
