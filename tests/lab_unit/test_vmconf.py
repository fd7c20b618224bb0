"""PVE config parsing/formatting, the agent property string, the config flock, QEMU argv."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from pvelab.paths import LabPaths
from pvelab.pve import vmconf
from pvelab.pve.qemu import qemu_command

CONF = """\
#lab VM%3A pbs
#second line
name: pbs
memory: 384
cores: 1
agent: 1
net0: virtio=BC:24:11:00:01:01,bridge=vmbr0
virtio0: local:vm-101-disk-0,size=2G
args: -kernel /c/vmlinuz -append 'root=/dev/vda rw console=ttyS0 quiet'

[PENDING]
memory: 512
delete: agent

[snap1]
name: pbs
memory: 256
"""


def test_parse_main_section_keys() -> None:
    conf = vmconf.parse_conf(CONF)
    assert conf.main["memory"] == "384"
    assert conf.main["virtio0"] == "local:vm-101-disk-0,size=2G"


def test_parse_description_from_comment_lines() -> None:
    assert vmconf.parse_conf(CONF).main["description"] == "lab VM: pbs\nsecond line"


def test_parse_pending_and_snapshot_sections_kept_apart() -> None:
    conf = vmconf.parse_conf(CONF)
    assert conf.pending == {"memory": "512", "delete": "agent"}
    assert conf.sections["snap1"]["memory"] == "256"


# The shape of QS9 src/test/snapshot-expected/create/qemu-server/301.conf (PD qm.adoc).
SNAPSHOTS = """\
#main%3A notes
name: pbs
parent: second

[first]
#before apt upgrade
#second line
name: pbs
snaptime: 1767225600

[second]
name: pbs
parent: first
snaptime: 1767229200
snapstate: prepare
"""


def test_parse_description_comments_of_each_snapshot_section() -> None:
    conf = vmconf.parse_conf(SNAPSHOTS)
    assert conf.main["description"] == "main: notes"
    assert conf.sections["first"]["description"] == "before apt upgrade\nsecond line"
    assert "description" not in conf.sections["second"]
    assert conf.sections["second"] == {
        "name": "pbs", "parent": "first", "snaptime": "1767229200", "snapstate": "prepare",
    }  # fmt: skip


def test_snapshot_description_round_trips_as_comments_first() -> None:
    conf = vmconf.parse_conf(SNAPSHOTS)
    text = vmconf.format_conf(conf)
    assert "\n[first]\n#before apt upgrade\n#second line\nname: pbs\n" in text
    assert vmconf.parse_conf(text) == conf


def test_snapshots_are_the_sections_without_special_ones() -> None:
    conf = vmconf.parse_conf(SNAPSHOTS + "\n[special:cloudinit]\nname: x\n")
    assert sorted(conf.snapshots) == ["first", "second"]


def test_special_sections_are_written_before_snapshots() -> None:
    conf = vmconf.parse_conf(SNAPSHOTS + "\n[special:cloudinit]\nname: x\n")
    text = vmconf.format_conf(conf)
    assert text.index("[special:cloudinit]") < text.index("[first]")


def test_current_applies_pending_unless_asked_not_to() -> None:
    conf = vmconf.parse_conf(CONF)
    assert conf.current(apply_pending=True)["memory"] == "512"
    assert "agent" not in conf.current(apply_pending=True)
    assert conf.current(apply_pending=False)["agent"] == "1"


def test_format_round_trips() -> None:
    conf = vmconf.parse_conf(CONF)
    assert vmconf.parse_conf(vmconf.format_conf(conf)) == conf


def test_format_writes_sorted_keys_after_description() -> None:
    text = vmconf.format_conf(vmconf.VMConf(main={"name": "a", "agent": "1", "description": "x"}))
    assert text == "#x\nagent: 1\nname: a\n"


def test_lock_property() -> None:
    assert vmconf.parse_conf("name: a\nlock: backup\n").lock == "backup"


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        (None, False),
        ("0", False),
        ("1", True),
        ("1,freeze-fs=1", True),
        ("enabled=1,freeze-fs-on-backup=0", True),
        ("enabled=0,type=isa", False),
        ("enabled=1,fstrim_cloned_disks=1,type=virtio", True),
    ],
)
def test_parse_agent_enabled(value: str | None, enabled: bool) -> None:
    assert vmconf.parse_agent(value).enabled is enabled


def test_parse_agent_alias_sets_freeze_fs() -> None:
    assert vmconf.parse_agent("enabled=1,freeze-fs-on-backup=0").freeze_fs is False


@pytest.mark.parametrize("bad", ["maybe", "1,type=usb", "1,bogus=1", "1,enabled=1"])
def test_parse_agent_rejects(bad: str) -> None:
    with pytest.raises(vmconf.ConfError):
        vmconf.parse_agent(bad)


@pytest.mark.parametrize(("text", "size"), [("2G", 2 << 30), ("512M", 512 << 20), ("10", 10)])
def test_parse_size(text: str, size: int) -> None:
    assert vmconf.parse_size(text) == size


def test_encode_text_escapes_colon_and_newline() -> None:
    assert vmconf.encode_text("a: b\nc") == "a%3A b%0Ac"


def test_config_lock_times_out_with_pve_message(tmp_path: Path) -> None:
    lockfile = tmp_path / "lock-100.conf"
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    notes: list[str] = []
    try:
        with pytest.raises(vmconf.LockTimeout) as info:
            with vmconf.config_lock(lockfile, timeout=0.3, notify=notes.append):
                pass
    finally:
        os.close(fd)
    assert str(info.value) == f"can't lock file '{lockfile}' - got timeout"
    assert notes[0] == "trying to acquire lock..."


def test_config_lock_uncontended_is_silent(tmp_path: Path) -> None:
    notes: list[str] = []
    with vmconf.config_lock(tmp_path / "lock-100.conf", notify=notes.append):
        pass
    assert notes == []


# --- QEMU argv (pvelab.qemu) ----------------------------------------------------------


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabPaths:
    monkeypatch.setenv("PVELAB_PORT_BASE", "22000")
    return LabPaths(tmp_path)


def _argv(paths: LabPaths, text: str, accel: str = "tcg") -> list[str]:
    return qemu_command(vmconf.parse_conf(text).main, 101, paths, accel)


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    return list(zip(argv, argv[1:], strict=False))


def test_qemu_argv_pve_core(paths: LabPaths) -> None:
    argv = _argv(paths, CONF)
    assert argv[:3] == ["qemu-system-x86_64", "-name", "pbs"]
    pairs = _pairs(argv)
    assert ("-chardev", f"socket,id=qmp,path={paths.qmp_socket(101)},server=on,wait=off") in pairs
    assert ("-mon", "chardev=qmp,mode=control") in pairs
    assert ("-pidfile", str(paths.pidfile(101))) in pairs
    assert ("-serial", f"file:{paths.serial_log(101)}") in pairs
    assert ("-m", "384") in pairs and ("-accel", "tcg,tb-size=64") in pairs


def test_qemu_argv_has_no_pve_only_or_noshutdown_flags(paths: LabPaths) -> None:
    argv = _argv(paths, CONF)
    assert "-id" not in argv and "-no-shutdown" not in argv
    assert "-daemonize" in argv


def test_qemu_argv_agent_devices_exactly_as_pve(paths: LabPaths) -> None:
    argv = _argv(paths, "agent: 1,freeze-fs=1\n")
    chardev = f"socket,path={paths.qga_socket(101)},server=on,wait=off,id=qga0"
    assert argv[-6:] == [
        "-chardev", chardev,
        "-device", "virtio-serial,id=qga0",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ]  # fmt: skip


@pytest.mark.parametrize("agent", ["", "agent: 0\n", "agent: enabled=0\n"])
def test_qemu_argv_no_agent_devices_when_disabled(paths: LabPaths, agent: str) -> None:
    assert "qga0" not in " ".join(_argv(paths, "name: x\n" + agent))


def test_qemu_argv_disk_maps_to_overlay_with_pve_ids(paths: LabPaths) -> None:
    argv = _argv(paths, CONF)
    i = argv.index("-drive")
    assert argv[i : i + 4] == [
        "-drive", f"file={paths.disk(101)},if=none,id=drive-virtio0,format=qcow2",
        "-device", "virtio-blk-pci,drive=drive-virtio0,id=virtio0",
    ]  # fmt: skip


def test_qemu_argv_raw_volume_and_drive_order(paths: LabPaths) -> None:
    argv = _argv(paths, "virtio1: local:vm-101-disk-1.raw,size=8M\n" + CONF)
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
    assert drives == [
        f"file={paths.disk(101)},if=none,id=drive-virtio0,format=qcow2",
        f"file={paths.disks_dir / 'vm-101-disk-1.raw'},if=none,id=drive-virtio1,format=raw",
    ]
    assert ("-device", "virtio-blk-pci,drive=drive-virtio1,id=virtio1") in _pairs(argv)


def test_qemu_argv_network_restricted_with_forwards(paths: LabPaths) -> None:
    pairs = _pairs(_argv(paths, CONF))
    netdev = next(v for k, v in pairs if k == "-netdev")
    assert netdev.startswith("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:22101-:22,")
    assert netdev.endswith(" 127.0.0.1 22001")
    assert ",guestfwd=tcp:10.0.2.100:80-cmd:" in netdev and "guestfwd.py" in netdev
    assert ("-device", "virtio-net-pci,netdev=net0,mac=BC:24:11:00:01:01") in pairs


def test_qemu_argv_dns_tag_adds_port_53_forwards(paths: LabPaths) -> None:
    argv = _argv(paths, "tags: pvelab-dns;other\n" + CONF)
    netdev = argv[argv.index("-netdev") + 1]
    assert "hostfwd=udp:127.0.0.1:23101-:53,hostfwd=tcp:127.0.0.1:23101-:53" in netdev


def test_qemu_argv_appends_args_shell_split(paths: LabPaths) -> None:
    argv = _argv(paths, CONF)
    assert argv[-4:] == ["-kernel", "/c/vmlinuz", "-append", "root=/dev/vda rw console=ttyS0 quiet"]


def test_qemu_argv_kvm_uses_host_cpu(paths: LabPaths) -> None:
    assert ("-accel", "kvm") in _pairs(_argv(paths, CONF, accel="kvm"))
    assert ("-cpu", "host") in _pairs(_argv(paths, CONF, accel="kvm"))


def test_qemu_argv_rejects_foreign_volume(paths: LabPaths) -> None:
    with pytest.raises(vmconf.ConfError):
        _argv(paths, "virtio0: local:vm-999-disk-0,size=2G\n")


def test_guestfwd_relay_serves_each_connection(tmp_path: Path) -> None:
    """The `cmd:` relay QEMU spawns per guest connection, with the guest socket on fd 0."""
    import socket
    import subprocess
    import sys
    import threading

    from pvelab.pve import guestfwd

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"pong:" + conn.makefile("rb").read())

    threading.Thread(target=answer, daemon=True).start()
    for n in range(2):  # two sequential connections, as apt makes them
        guest, child = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, guestfwd.__file__, "127.0.0.1", str(port)], stdin=child, stdout=child
        )
        child.close()
        guest.sendall(b"ping%d" % n)
        guest.shutdown(socket.SHUT_WR)
        assert guest.makefile("rb").read() == b"pong:ping%d" % n
        assert proc.wait(timeout=10) == 0
        guest.close()
    server.close()
