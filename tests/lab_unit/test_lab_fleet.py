"""Fleet selection and the PVE-format VM configs the lab writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pvelab.fleet import roster
from pvelab.paths import LabPaths
from pvelab.pve import vmconf
from pvelab.sshcmd import LabError

KERNEL, INITRD = Path("/cache/abc/vmlinuz"), Path("/cache/abc/initrd.img")


def test_select_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVELAB_VMS", "pihole, pbs")
    assert [vm.name for vm in roster.select()] == ["pbs", "pihole"]


def test_select_unknown_vm_names_the_fleet() -> None:
    with pytest.raises(LabError, match="unknown VM.*nope.*the fleet is pbs"):
        roster.select("pbs,nope")


def test_conf_of_plain_vm() -> None:
    paths = LabPaths(Path("/lab"))
    text = roster.render_conf(paths, roster.by_name("pbs"), KERNEL, INITRD)
    assert text.splitlines() == [
        "name: pbs",
        "memory: 384",
        "cores: 1",
        "ostype: l26",
        "agent: 1",
        "net0: virtio=BC:24:11:00:01:01,bridge=vmbr0",
        "virtio0: local:vm-101-disk-0,size=2G",
        "args: -kernel /cache/abc/vmlinuz -initrd /cache/abc/initrd.img"
        " -append 'root=/dev/vda rw console=ttyS0 quiet'"
        " -fw_cfg name=opt/pvelab/seed,file=/lab/seed/101/seed.tar",
    ]


def test_pihole_vms_carry_the_dns_tag() -> None:
    paths = LabPaths(Path("/lab"))
    for name in ("pihole", "pihole-backup"):
        text = roster.render_conf(paths, roster.by_name(name), KERNEL, INITRD)
        assert "tags: pvelab-dns" in text.splitlines()
    assert "tags:" not in roster.render_conf(paths, roster.by_name("ca"), KERNEL, INITRD)


def test_edited_conf_adds_replaces_and_deletes_in_main_section() -> None:
    text = "name: x\nagent: 1\n\n[snap]\nagent: 1\n"
    text = vmconf.edited_conf(text, "lock", "backup")
    text = vmconf.edited_conf(text, "agent", None)
    assert text == "lock: backup\nname: x\n\n[snap]\nagent: 1\n"
    assert vmconf.parse_conf(text).get("lock") == "backup"
    assert vmconf.parse_conf(text).get("agent") is None
