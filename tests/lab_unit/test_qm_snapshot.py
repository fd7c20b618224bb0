"""`qm snapshot|listsnapshot|rollback|delsnapshot` and `qm config --snapshot`: real qcow2 internal
snapshots taken by a real QEMU (QMP) or qemu-img, proven with the data on the disk; the agent
freeze and the pause around a running snapshot against scripted QMP/QGA peers."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from pvelab.paths import LabPaths
from pvelab.pve import vmconf, vmstate
from pvelab.pve.qm import cli as qm
from pvelab.pve.qm import formats
from pvelab.pve.qm.context import Context
from pvelab.pve.qmp import QMPClient
from test_qm import NO_AGENT, Qm, lab  # noqa: F401 - the stand-in qm and its lab fixture

DISK_LINE = "virtio0: local:vm-900-disk-0,size=16M\n"
CONF = NO_AGENT + DISK_LINE
SORTED_CONF = "cores: 1\nmemory: 64\nname: t900\n" + DISK_LINE  # as PVE writes CONF back
AGENT_CONF = CONF + "agent: 1\n"
SNAPSHOTTING = "snapshotting 'drive-virtio0' (local:vm-900-disk-0)\n"


def disk(paths: LabPaths) -> Path:
    return paths.disks_dir / "vm-900-disk-0.qcow2"


def qemu_io(paths: LabPaths, command: str) -> int:
    """Run one qemu-io command on the stopped VM's disk; rc 1 when a `read -P` pattern differs."""
    cmd = ["qemu-io", "-f", "qcow2", "-c", command, str(disk(paths))]
    return subprocess.run(cmd, capture_output=True, check=False).returncode


def disk_snapshots(paths: LabPaths) -> list[str]:
    """The internal snapshots in the qcow2 (`-U`: also while QEMU holds the image)."""
    cmd = ["qemu-img", "info", "-U", "--output=json", str(disk(paths))]
    info = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)
    return [s["name"] for s in info.get("snapshots", [])]


def hmp_write(paths: LabPaths, pattern: str) -> None:
    """Write 4 KiB through the running QEMU (the image is locked against qemu-io then)."""
    line = f'qemu-io drive-virtio0 "write -P {pattern} 0 4k"'
    QMPClient(paths.qmp_socket(900), 900).command("human-monitor-command", {"command-line": line})


@pytest.fixture
def vm(lab: Qm) -> Qm:  # noqa: F811 - the fixture imported above
    """VM 900 (stopped) with a real 16 MiB qcow2 disk holding 0xab in its first 4 KiB."""
    lab.paths.disks_dir.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(disk(lab.paths)), "16M"], check=True
    )
    assert qemu_io(lab.paths, "write -P 0xab 0 4k") == 0
    lab.write_conf(900, CONF)
    return lab


@pytest.fixture
def running_vm(vm: Qm) -> Qm:
    """The same VM, started with `qm start` (QEMU holds and locks its image)."""
    result = vm("start", 900)
    assert result.returncode == 0, result.stderr
    return vm


def conf_text(q: Qm) -> str:
    return q.paths.conf(900).read_text()


# --- stopped VM: qemu-img -------------------------------------------------------------------


def test_snapshot_of_stopped_vm_is_a_qcow2_internal_snapshot(vm: Qm) -> None:
    result = vm("snapshot", 900, "pre")
    assert (result.returncode, result.stdout, result.stderr) == (0, SNAPSHOTTING, "")
    assert disk_snapshots(vm.paths) == ["pre"]


def test_rollback_of_stopped_vm_restores_the_disk(vm: Qm) -> None:
    assert vm("snapshot", 900, "pre").returncode == 0
    assert qemu_io(vm.paths, "write -P 0xcd 0 4k") == 0
    result = vm("rollback", 900, "pre")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert qemu_io(vm.paths, "read -P 0xab 0 4k") == 0
    assert vm("status", 900).stdout == "status: stopped\n"


def test_snapshot_config_sections(vm: Qm) -> None:
    before = int(time.time())
    assert vm("snapshot", 900, "pre", "--description", "line one\nline: two").returncode == 0
    after = int(time.time())
    main, section = conf_text(vm).split("\n[pre]\n")
    assert main.splitlines() == sorted([*CONF.splitlines(), "parent: pre"])
    lines = section.splitlines()
    assert lines[:2] == ["#line one", "#line%3A two"]
    snaptime = next(int(line.split(": ")[1]) for line in lines if line.startswith("snaptime:"))
    assert before <= snaptime <= after
    assert [line for line in lines[2:] if not line.startswith("snaptime:")] == sorted(
        CONF.splitlines()
    )


def test_second_snapshot_has_the_first_as_parent_and_becomes_latest(vm: Qm) -> None:
    vm("snapshot", 900, "one")
    vm("snapshot", 900, "two")
    assert "parent: two\n" in vm("config", 900).stdout
    two = vm("config", 900, "--snapshot", "two").stdout.splitlines()
    assert "parent: one" in two and all(not line.startswith("digest") for line in two)
    assert "parent" not in vm("config", 900, "--snapshot", "one").stdout


def test_config_snapshot_shows_the_section_with_encoded_description(vm: Qm) -> None:
    vm("snapshot", 900, "pre", "--description", "a: b")
    out = vm("config", 900, "--snapshot", "pre").stdout
    keys = [line.split(":")[0] for line in out.splitlines()]
    assert keys == ["cores", "description", "memory", "name", "snaptime", "virtio0"]
    assert "description: a%3A b\n" in out


def test_config_snapshot_missing_and_with_current(vm: Qm) -> None:
    missing = vm("config", 900, "--snapshot", "nosuch")
    assert (missing.returncode, missing.stderr) == (255, "snapshot 'nosuch' does not exist\n")
    both = vm("config", 900, "--snapshot", "pre", "--current", "1")
    assert both.stderr == (
        "400 Parameter verification failed.\n"
        "current: cannot use 'snapshot' parameter with 'current'\n"
        "snapshot: cannot use 'snapshot' parameter with 'current'\n"
        "qm config <vmid> [OPTIONS]\n"
    )


def test_rollback_copies_snapshot_config_keeps_description_drops_pending(vm: Qm) -> None:
    vm("snapshot", 900, "pre")
    section = conf_text(vm).split("\n[pre]\n")[1]
    changed = CONF.replace("memory: 64", "memory: 128")
    vm.write_conf(900, f"#notes\n{changed}parent: pre\n\n[PENDING]\ncores: 2\n\n[pre]\n{section}")
    assert vm("rollback", 900, "pre").returncode == 0
    assert vm("config", 900).stdout == (
        "cores: 1\ndescription: notes\nmemory: 64\nname: t900\nparent: pre\n" + DISK_LINE
    )
    assert "[PENDING]" not in conf_text(vm) and "[pre]" in conf_text(vm)


# --- running VM: QMP ------------------------------------------------------------------------


def test_running_snapshot_via_qmp_then_rollback_stops_vm_and_restores_disk(running_vm: Qm) -> None:
    result = running_vm("snapshot", 900, "pre")
    assert (result.returncode, result.stdout, result.stderr) == (0, SNAPSHOTTING, "")
    assert disk_snapshots(running_vm.paths) == ["pre"]
    assert "qmpstatus: running" in running_vm("status", 900, "--verbose").stdout  # resumed
    hmp_write(running_vm.paths, "0xcd")
    result = running_vm("rollback", 900, "pre")
    assert (result.returncode, result.stderr) == (0, "")
    assert running_vm("status", 900).stdout == "status: stopped\n"
    assert qemu_io(running_vm.paths, "read -P 0xab 0 4k") == 0
    assert "lock" not in conf_text(running_vm)


def test_rollback_start_1_starts_the_vm_again(running_vm: Qm) -> None:
    running_vm("snapshot", 900, "pre")
    pid = vmstate.running_pid(running_vm.paths, 900)
    assert running_vm("rollback", 900, "pre", "--start", "1").returncode == 0
    new_pid = vmstate.running_pid(running_vm.paths, 900)
    assert new_pid is not None and new_pid != pid


def test_delsnapshot_of_running_vm_uses_qmp(running_vm: Qm) -> None:
    running_vm("snapshot", 900, "pre")
    result = running_vm("delsnapshot", 900, "pre")  # qemu-img could not open the locked image
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert disk_snapshots(running_vm.paths) == []
    assert "[pre]" not in conf_text(running_vm) and "parent:" not in conf_text(running_vm)


def test_snapshot_with_dead_agent_warns_like_pve8(vm: Qm) -> None:
    vm.write_conf(900, AGENT_CONF)
    assert vm("start", 900).returncode == 0
    result = vm("snapshot", 900, "pre")
    assert result.returncode == 0
    # QS8 QMPClient.pm: "VM $vmid qmp command '$cmd->{execute}' failed - ..." for the agent too
    assert result.stdout == (
        "QEMU Guest Agent is not running - VM 900 qmp command 'guest-ping' failed - got timeout\n"
        + SNAPSHOTTING
    )


# --- delsnapshot ----------------------------------------------------------------------------


def test_delsnapshot_reparents_children(vm: Qm) -> None:
    for name in ("s1", "s2", "s3"):
        assert vm("snapshot", 900, name).returncode == 0
    assert vm("delsnapshot", 900, "s2").returncode == 0
    assert disk_snapshots(vm.paths) == ["s1", "s3"]
    assert "parent: s1\n" in vm("config", 900, "--snapshot", "s3").stdout
    assert "parent: s3\n" in vm("config", 900).stdout
    assert vm("delsnapshot", 900, "s3").returncode == 0
    assert "parent: s1\n" in vm("config", 900).stdout
    assert vm("delsnapshot", 900, "s1").returncode == 0
    assert conf_text(vm) == SORTED_CONF


def test_delsnapshot_of_a_missing_disk_snapshot_needs_force(vm: Qm) -> None:
    vm("snapshot", 900, "pre")
    subprocess.run(["qemu-img", "snapshot", "-d", "pre", str(disk(vm.paths))], check=True)
    failed = vm("delsnapshot", 900, "pre")
    assert failed.returncode == 255
    assert failed.stdout == "qemu-img: Could not delete snapshot 'pre': snapshot not found\n"
    assert failed.stderr.startswith("command '") and failed.stderr.endswith(
        f"snapshot -d pre {disk(vm.paths)}' failed: exit code 1\n"
    )
    assert "lock: snapshot-delete" in conf_text(vm) and "snapstate: delete" in conf_text(vm)
    assert vm("delsnapshot", 900, "pre", "--force", "1").returncode == 255  # locked now
    vm("unlock", 900)
    forced = vm("delsnapshot", 900, "pre", "--force", "1")
    assert (forced.returncode, forced.stderr) == (0, "")
    assert forced.stdout.startswith("qemu-img: Could not delete snapshot 'pre'")
    assert conf_text(vm) == SORTED_CONF


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("1x", "snapname: invalid format - invalid configuration ID '1x'\n\n"),
        ("a", "snapname: invalid format - invalid configuration ID 'a'\n\n"),
        ("pre.patch", "snapname: invalid format - invalid configuration ID 'pre.patch'\n\n"),
        ("a" * 41, "snapname: value may only be 40 characters long\n"),
    ],
)
def test_bad_snapshot_names_fail_parameter_verification(vm: Qm, name: str, error: str) -> None:
    result = vm("snapshot", 900, name)
    assert (result.returncode, result.stderr) == (
        255,
        f"400 Parameter verification failed.\n{error}qm snapshot <vmid> <snapname> [OPTIONS]\n",
    )
    assert disk_snapshots(vm.paths) == []


def test_forty_characters_and_mixed_case_are_fine(vm: Qm) -> None:
    assert vm("snapshot", 900, "Pre_Patch-" + "x" * 30).returncode == 0


@pytest.mark.parametrize(("name", "shown"), [("current", "current"), ("PENDING", "pending")])
def test_reserved_names(vm: Qm, name: str, shown: str) -> None:
    result = vm("snapshot", 900, name)
    assert (result.returncode, result.stderr) == (
        255, f"unable to use snapshot name '{shown}' (reserved name)\n",
    )  # fmt: skip


def test_duplicate_name_is_refused_by_the_config(vm: Qm) -> None:
    vm("snapshot", 900, "pre")
    result = vm("snapshot", 900, "pre")
    assert (result.returncode, result.stdout, result.stderr) == (
        255, "", "snapshot name 'pre' already used\n",
    )  # fmt: skip
    assert disk_snapshots(vm.paths) == ["pre"]


@pytest.mark.parametrize("command", ["rollback", "delsnapshot"])
def test_missing_snapshot(vm: Qm, command: str) -> None:
    result = vm(command, 900, "nosuch")
    assert (result.returncode, result.stderr) == (255, "snapshot 'nosuch' does not exist\n")


@pytest.mark.parametrize("command", ["snapshot", "rollback", "delsnapshot"])
def test_locked_vm_refuses(vm: Qm, command: str) -> None:
    vm("snapshot", 900, "pre")
    locked = conf_text(vm).replace("parent: pre\n", "lock: backup\nparent: pre\n")
    vm.write_conf(900, locked)
    result = vm(command, 900, "pre" if command != "snapshot" else "other")
    assert (result.returncode, result.stderr) == (255, "VM is locked (backup)\n")
    assert conf_text(vm) == locked


def test_raw_disk_has_no_snapshot_feature(vm: Qm) -> None:
    (vm.paths.disks_dir / "vm-900-disk-1.raw").write_bytes(b"\0" * 4096)
    vm.write_conf(900, CONF + "virtio1: local:vm-900-disk-1.raw,size=8M\n")
    before = conf_text(vm)
    result = vm("snapshot", 900, "pre")
    assert (result.returncode, result.stdout, result.stderr) == (
        255, "", "snapshot feature is not available\n",
    )  # fmt: skip
    assert conf_text(vm) == before and disk_snapshots(vm.paths) == []


def test_missing_config_before_the_task_exits_2(lab: Qm) -> None:  # noqa: F811
    result = lab("snapshot", 999, "pre")
    assert result.returncode == 2 and "999.conf' does not exist" in result.stderr


def test_every_snapshot_call_is_logged(vm: Qm) -> None:
    vm("snapshot", 900, "pre")
    vm("listsnapshot", 900)
    vm("snapshot", 900, "pre")
    records = [json.loads(line) for line in vm.paths.qm_log.read_text().splitlines()]
    assert [(r["argv"][0], r["rc"]) for r in records] == [
        ("snapshot", 0), ("listsnapshot", 0), ("snapshot", 255),
    ]  # fmt: skip


# --- listsnapshot ---------------------------------------------------------------------------

# The reference's transcript (print_snapshot_tree run by perl, TZ=UTC).
TREE = (
    "`-> pre-patch                   2026-01-01 00:00:00     before apt upgrade\n"
    " `-> second                     2026-01-01 01:00:00     no-description\n"
    "  `-> current                                           You are here!\n"
)


def test_listsnapshot_prints_pves_tree(vm: Qm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    vm.write_conf(900, CONF + "parent: second\n\n[pre-patch]\n#before apt upgrade\n#more\n"
                  + CONF + "snaptime: 1767225600\n\n[second]\n" + CONF
                  + "parent: pre-patch\nsnaptime: 1767229200\n")  # fmt: skip
    result = vm("listsnapshot", 900)
    assert (result.returncode, result.stdout) == (0, TREE)


def test_listsnapshot_of_two_real_snapshots(vm: Qm) -> None:
    vm("snapshot", 900, "one", "--description", "first")
    vm("snapshot", 900, "two")
    lines = vm("listsnapshot", 900).stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["`->", "one"],
        ["`->", "two"],
        ["`->", "current"],
    ]
    assert [len(line) - len(line.lstrip()) for line in lines] == [0, 1, 2]
    assert lines[0].endswith(" first") and lines[1].endswith(" no-description")


def test_listsnapshot_without_snapshots(vm: Qm) -> None:
    assert vm("listsnapshot", 900).stdout == f"`-> current{' ' * 45}You are here!\n"


def test_snapshot_tree_branches_sorted_by_snaptime() -> None:
    items = [
        formats.SnapshotItem("b", 20, "", "a"),
        formats.SnapshotItem("c", 10, "x\ny", "a"),
        formats.SnapshotItem("a", 5, "0", None),
        formats.SnapshotItem("current", None, "You are here!", "b"),
        formats.SnapshotItem("orphan", 1, "", "gone"),
    ]
    lines = formats.snapshot_tree(items).splitlines()
    assert [line.split("`-> ")[0] + line.split()[1] for line in lines] == [
        "orphan", "a", " c", " b", "  current",
    ]  # fmt: skip
    assert lines[1].endswith(" no-description")  # Perl: "0" is false
    assert lines[2].endswith(" x")  # the first line of the description


# --- freeze and pause around a running snapshot (scripted QMP and QGA) ----------------------


@dataclass
class Peers:
    """QEMU's monitor and the guest agent as scripted servers; `log` is every command in order."""

    conf: Path
    answers: dict[str, Any] = field(default_factory=dict)
    log: list[tuple[str, Any]] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)  # the VM config when a command came

    def reply(self, request: dict[str, Any]) -> dict[str, Any] | None:
        execute = request["execute"]
        if execute != "qmp_capabilities":
            self.log.append((execute, request.get("arguments")))
            self.seen[execute] = self.conf.read_text()
        answer = self.answers.get(execute, {"return": {}})
        return None if answer is None else {**answer, "id": request.get("id")}


def _serve(server: socket.socket, peers: Peers, greeting: bytes) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as reader:
            conn.sendall(greeting)
            for raw in reader:
                request = json.loads(raw.lstrip(b"\xff"))
                if request["execute"] == "guest-sync-delimited":
                    ident = request["arguments"]["id"]
                    conn.sendall(b"\xff" + json.dumps({"return": ident}).encode() + b"\n")
                elif (answer := peers.reply(request)) is not None:
                    conn.sendall(json.dumps(answer).encode() + b"\n")


@pytest.fixture
def peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Context, Peers]]]:
    """VM 900 'running' with agent: 1; its .qmp and .qga sockets are scripted peers."""
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(900).write_text(AGENT_CONF)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(vmstate, "running_pid", lambda _paths, _vmid: 4242)
    state = Peers(
        paths.conf(900), {"query-status": {"return": {"status": "running", "running": True}}}
    )
    servers = []
    for path, greeting in ((paths.qmp_socket(900), b'{"QMP": {}}\n'), (paths.qga_socket(900), b"")):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(4)
        servers.append(server)
        threading.Thread(target=_serve, args=(server, state, greeting), daemon=True).start()

    def make(**answers: Any) -> tuple[Context, Peers]:
        state.answers.update(answers)
        return Context(paths, "pve", stdout=StringIO(), stderr=StringIO()), state

    yield make
    for server in servers:
        server.close()


def _run(ctx: Context, *argv: str) -> tuple[int, str, str]:
    rc = qm.run(ctx, list(argv))
    return rc, ctx.stdout.getvalue(), ctx.stderr.getvalue()  # type: ignore[attr-defined]


def test_running_snapshot_freezes_then_pauses_in_pves_order(
    peers: Callable[..., tuple[Context, Peers]],
) -> None:
    ctx, state = peers()
    assert _run(ctx, "snapshot", "900", "pre") == (0, SNAPSHOTTING, "")
    assert state.log == [
        ("guest-ping", None),
        ("guest-fsfreeze-freeze", None),
        ("query-status", None),
        ("stop", None),
        ("blockdev-snapshot-internal-sync", {"device": "drive-virtio0", "name": "pre"}),
        ("cont", None),
        ("guest-fsfreeze-thaw", None),
    ]


def test_running_snapshot_holds_the_snapshot_lock_while_it_runs(
    peers: Callable[..., tuple[Context, Peers]],
) -> None:
    ctx, state = peers()
    assert _run(ctx, "snapshot", "900", "pre")[0] == 0
    during = vmconf.parse_conf(state.seen["blockdev-snapshot-internal-sync"])
    assert during.lock == "snapshot" and during.sections["pre"]["snapstate"] == "prepare"
    after = vmconf.parse_conf(ctx.paths.conf(900).read_text())
    assert (after.lock, after.main["parent"], "snapstate" in after.sections["pre"]) == (
        None, "pre", False,
    )  # fmt: skip


def test_running_delsnapshot_holds_the_delete_lock(
    peers: Callable[..., tuple[Context, Peers]],
) -> None:
    ctx, state = peers()
    assert _run(ctx, "snapshot", "900", "pre")[0] == 0
    ctx.stdout = StringIO()
    assert _run(ctx, "delsnapshot", "900", "pre") == (0, "", "")
    assert state.log[-1] == (
        "blockdev-snapshot-delete-internal-sync", {"device": "drive-virtio0", "name": "pre"},
    )  # fmt: skip
    during = vmconf.parse_conf(state.seen["blockdev-snapshot-delete-internal-sync"])
    assert during.lock == "snapshot-delete" and during.sections["pre"]["snapstate"] == "delete"
    after = ctx.paths.conf(900).read_text()
    assert after == vmconf.format_conf(vmconf.parse_conf(AGENT_CONF))


def test_paused_vm_is_not_resumed_by_a_snapshot(
    peers: Callable[..., tuple[Context, Peers]],
) -> None:
    ctx, state = peers(**{"query-status": {"return": {"status": "paused", "running": False}}})
    assert _run(ctx, "snapshot", "900", "pre")[0] == 0
    assert [c for c, _ in state.log if c in ("stop", "cont")] == []


def test_freeze_agent_error_is_silent_in_pve8(peers: Callable[..., tuple[Context, Peers]]) -> None:
    # QS8 __snapshot_freeze: a bare mon_cmd, and QMPClient.pm hands an agent's error reply back
    # as `{error => ...}` instead of dying, so nothing is warned.
    ctx, _ = peers(
        **{"guest-fsfreeze-freeze": {"error": {"class": "GenericError", "desc": "busy"}}}
    )
    rc, out, _err = _run(ctx, "snapshot", "900", "pre")
    assert (rc, out) == (0, SNAPSHOTTING)


def test_freeze_agent_error_warns_in_pve9(
    peers: Callable[..., tuple[Context, Peers]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # QS9 Agent.pm guest_fs_freeze: die "unable to freeze guest fs - $error\n" (warned), and
    # QS9 qemu_volume_snapshot prints "internal qemu snapshot" for a running qcow2.
    monkeypatch.setenv("PVELAB_PVE_VERSION", "9")
    ctx, _ = peers(
        **{
            "guest-fsfreeze-status": {"return": "thawed"},
            "guest-fsfreeze-freeze": {"error": {"class": "GenericError", "desc": "busy"}},
        }
    )
    rc, out, _err = _run(ctx, "snapshot", "900", "pre")
    assert (rc, out) == (
        0, "unable to freeze guest fs - busy\n" + SNAPSHOTTING + "internal qemu snapshot\n"
    )  # fmt: skip


def test_pve9_skips_freeze_when_freeze_fs_is_off(
    peers: Callable[..., tuple[Context, Peers]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # QS9 Agent.pm guest_fs_freeze_applicable: "skipping guest filesystem freeze - disabled in
    # VM options"; PVE 8 has no `freeze-fs` key (it would freeze).
    monkeypatch.setenv("PVELAB_PVE_VERSION", "9")
    ctx, state = peers()
    conf = ctx.paths.conf(900)
    conf.write_text(conf.read_text().replace("agent: 1\n", "agent: 1,freeze-fs=0\n"))
    rc, out, _err = _run(ctx, "snapshot", "900", "pre")
    assert (rc, out) == (
        0,
        "skipping guest filesystem freeze - disabled in VM options\n"
        + SNAPSHOTTING
        + "internal qemu snapshot\n",
    )
    assert not [c for c, _ in state.log if c.startswith("guest-fsfreeze")]


def test_failed_disk_snapshot_cleans_up_resumes_and_thaws(
    peers: Callable[..., tuple[Context, Peers]],
) -> None:
    desc = "Snapshot with name 'pre' already exists on device 'drive-virtio0'"
    ctx, state = peers(
        **{"blockdev-snapshot-internal-sync": {"error": {"class": "GenericError", "desc": desc}}}
    )
    rc, out, err = _run(ctx, "snapshot", "900", "pre")
    assert (rc, out) == (255, SNAPSHOTTING + "snapshot create failed: starting cleanup\n")
    assert err == f"VM 900 qmp command 'blockdev-snapshot-internal-sync' failed - {desc}\n"
    assert [c for c, _ in state.log][-2:] == ["cont", "guest-fsfreeze-thaw"]
    assert ctx.paths.conf(900).read_text() == vmconf.format_conf(vmconf.parse_conf(AGENT_CONF))
