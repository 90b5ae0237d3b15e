"""The pure parts of the Vagrant lab on this machine (spines_kr.vagrantlab): the box recipe and its
digest, the box store layout, the lab's state file, the accelerator choice, pid files, the
before/after network comparison.  Nothing here boots, mounts or starts anything
(tests/vagrant/test_vagrant_lab.py, opt-in, does)."""

from __future__ import annotations

import json

import pytest

from spines_kr.vagrantlab import box, lab, safety
from spines_kr.vagrantlab.cli import main as vagrant_main

KEYS = ["ssh-ed25519 AAAAtest vagrant insecure public key"]


def test_recipe_digest_is_stable_and_follows_the_recipe(monkeypatch):
    r = box.recipe(KEYS)
    assert box.digest(r) == box.digest(box.recipe(list(KEYS)))
    assert len(box.digest(r)) == 16
    assert {"linux-image-cloud-amd64", "systemd", "openssh-server", "python3",
            "python3-venv", "sudo", "rsync", "iproute2"} <= set(r["packages"])
    assert r["vagrant_keys"] == KEYS and r["suite"] == box.SUITE
    # every part of the recipe moves the digest: a changed package list, file, key, version
    for change in (dict(packages=[*r["packages"], "tcpdump"]),
                   dict(files={**r["files"], "etc/motd": "hi\n"}),
                   dict(vagrant_keys=["ssh-rsa other"]), dict(version=r["version"] + 1),
                   dict(cmdline=r["cmdline"] + " debug")):
        assert box.digest({**r, **change}) != box.digest(r)
    monkeypatch.setattr(box, "PACKAGES", (*box.PACKAGES, "tcpdump"))
    assert box.digest(box.recipe(KEYS)) != box.digest(r)


def test_box_store_layout_and_up_to_date(tmp_path, monkeypatch):
    monkeypatch.setattr(box, "vagrant_public_keys", lambda: KEYS)
    d = box.box_dir(tmp_path)
    assert d == tmp_path / "boxes" / "spines-kr-VAGRANTSLASH-debian12" / "0" / "libvirt"
    assert box.cached(tmp_path) is None and not box.up_to_date(tmp_path)
    d.mkdir(parents=True)
    (d / "recipe.json").write_text(json.dumps({"digest": box.digest(box.recipe())}))
    assert not box.up_to_date(tmp_path)             # no image yet
    (d / "box.img").write_bytes(b"qcow2")
    assert box.up_to_date(tmp_path)
    (d / "recipe.json").write_text(json.dumps({"digest": "0" * 16}))
    assert not box.up_to_date(tmp_path)             # another recipe: rebuilt
    (d / "recipe.json").write_text("{broken")
    assert box.cached(tmp_path) is None and not box.up_to_date(tmp_path)
    # build() returns the cached box without needing root or tools when it is current
    (d / "recipe.json").write_text(json.dumps({"digest": box.digest(box.recipe()), "x": 1}))
    assert box.build(tmp_path, log=lambda m: None) == {"digest": box.digest(box.recipe()),
                                                       "x": 1}


def test_box_vagrantfile_boots_the_kernel_beside_the_image():
    text = box.BOX_VAGRANTFILE.replace("{cmdline}", box.CMDLINE)
    assert 'lv.kernel = File.join(__dir__, "vmlinuz")' in text
    assert 'lv.initrd = File.join(__dir__, "initrd.img")' in text
    assert f"root=LABEL={box.LABEL}" in text
    assert box.python_version("bookworm") == "3.11"


def test_remove_tree_refuses_nothing_without_mounts(tmp_path):
    t = tmp_path / "work" / "root"
    (t / "etc").mkdir(parents=True)
    (t / "etc" / "hostname").write_text("x\n")
    assert box.mounts_under(tmp_path / "work") == []
    box.remove_tree(tmp_path / "work")
    assert not (tmp_path / "work").exists()
    box.remove_tree(tmp_path / "absent")           # nothing to do


def test_state_file_round_trip_and_lab_listing(tmp_path, monkeypatch):
    monkeypatch.setattr(lab, "STATE", tmp_path)
    assert lab.read_state("ring3") == {}
    lab.lab_dir("ring3").mkdir()
    lab._write_state("ring3", {"lab": "ring3", "made_dirs": ["/run/libvirt"]})
    assert lab.read_state("ring3") == {"lab": "ring3", "made_dirs": ["/run/libvirt"]}
    assert not (lab.lab_dir("ring3") / "state.tmp").exists()
    (lab.lab_dir("ring3") / "state.json").write_text("{truncated by a crash")
    assert lab.read_state("ring3") == {}            # down still works from nothing
    assert "ring3" in lab.labs()
    assert lab.netns("ring3") == "skvag-ring3"


@pytest.mark.parametrize("name", ["", "Ring", "a_b", "-x", "x" * 33, "../etc"])
def test_lab_names_are_checked(name):
    with pytest.raises(lab.LabError):
        lab._check_name(name)


def test_accelerator_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("SPINES_KR_ACCEL", raising=False)
    assert lab.accelerator(tmp_path)[0] == "qemu"                   # no KVM at all
    (tmp_path / "kvm_pvm").mkdir()
    accel, why = lab.accelerator(tmp_path)
    assert accel == "qemu" and "PVM" in why                         # PVM boots no Debian kernel
    (tmp_path / "kvm_amd").mkdir()
    monkeypatch.setattr(lab.os, "access", lambda p, m: True)
    assert lab.accelerator(tmp_path)[0] == "kvm"
    monkeypatch.setenv("SPINES_KR_ACCEL", "qemu")
    assert lab.accelerator(tmp_path) == ("qemu", "SPINES_KR_ACCEL")


def test_pidfiles_leave_out_libvirtds_own(tmp_path):
    (tmp_path / "qemu").mkdir()
    (tmp_path / "qemu" / "vagrant_n1.pid").write_text("4242\n")
    (tmp_path / "qemu" / "driver.pid").write_text("17\n")          # libvirtd itself
    (tmp_path / "qemu" / "junk.pid").write_text("not a pid\n")
    assert lab._pidfiles(tmp_path) == [4242]
    assert lab._pidfiles(tmp_path / "absent") == []


def test_vagrant_env_points_everything_at_the_lab(tmp_path, monkeypatch):
    monkeypatch.setattr(lab, "STATE", tmp_path)
    state = {"topology": "/x/ring3.toml", "wheels": "/cache/wheels-1", "memory_mb": 384,
             "accel": "qemu"}
    env = lab.vagrant_env("ring3", state)
    d = tmp_path / "ring3"
    assert env["VAGRANT_HOME"] == str(d / "vagrant.d")
    assert env["VAGRANT_DOTFILE_PATH"] == str(d / "dotvagrant")
    assert env["SPINES_KR_LIBVIRT_URI"] == \
        f"qemu:///system?socket={d / 'libvirt' / 'run' / 'libvirt-sock'}"
    assert env["SPINES_KR_LIBVIRT_DRIVER"] == "qemu"
    assert env["SPINES_KR_MEMORY"] == "384" and env["SPINES_KR_LAB"] == "ring3"
    assert env["SPINES_KR_WHEELS"] == "/cache/wheels-1"
    assert env["SPINES_KR_KEY_FILE"] == str(d / "key.toml")


def test_requirements_are_the_projects_plus_build_tools():
    reqs = lab.requirements()
    assert any(r.startswith("pyroute2") for r in reqs)
    assert "wheel" in reqs and any(r.startswith("setuptools") for r in reqs)


def test_safety_diff_names_what_changed(tmp_path):
    before = {"link": "[1: lo]", "route": "default via 10.0.0.1", "nft": ""}
    assert safety.diff(before, dict(before)) == []
    after = {**before, "route": "default via 10.0.0.1\n10.9.0.0/24 dev virbr0"}
    lines = safety.diff(before, after)
    assert any("route before" in x for x in lines) and "+10.9.0.0/24 dev virbr0" in lines
    assert safety.diff(before, {**before, "rule": "x"})       # a new part counts
    p = tmp_path / "net.json"
    safety.save(p, before)
    assert safety.load(p) == before
    assert safety.load(tmp_path / "absent.json") is None
    snap = safety.snapshot()                                   # reads only; any user may
    assert {"link", "route", "route6", "rule", "nft"} <= set(snap)


def test_down_of_an_unknown_lab_does_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lab, "STATE", tmp_path)
    assert lab.down("nolab") == []
    assert vagrant_main(["status", "--name", "nolab"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["netns_exists"] is False


def test_farthest_pair_and_address_owner():
    from spines_kr.deploy.vagrant import plan
    from spines_kr.lab.topology import load
    from pathlib import Path
    vagrant_dir = Path(lab.__file__).resolve().parents[2] / "vagrant"
    p5 = plan(load(vagrant_dir / "ring5.toml"), lab="ring5")
    assert lab.hops(p5)["n1"] == {"n1": 0, "n2": 1, "n5": 1, "n3": 2, "n4": 2}
    assert lab.farthest(p5) == ("n1", "n3", 2)
    p3 = plan(load(vagrant_dir / "ring3.toml"), lab="ring3")
    assert lab.farthest(p3)[2] == 1                       # a triangle: no transit node
    n2 = next(vm for vm in p3["vms"] if vm["name"] == "n2")
    assert lab.owner_of(p3, n2["interfaces"][0]["address"].split("/")[0]) == "n2"
    assert lab.owner_of(p3, n2["logical_id"]) == "n2"
    assert lab.owner_of(p3, "192.0.2.1") is None


def test_ping_counts():
    out = "--- 10.100.0.3 ping statistics ---\n240 packets transmitted, 238 received, 0.8% loss"
    assert lab._ping_counts(out) == (240, 238)
    assert lab._ping_counts("ping: connect: Network is unreachable") == (0, 0)
