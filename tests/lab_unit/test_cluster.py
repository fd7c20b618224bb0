"""The two-node cluster: .vmlist ownership, qm on the wrong node, `qm migrate`, quorum, pvecm."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from pvelab.paths import LabPaths
from pvelab.pve import cluster, pvecm, vmconf, vmstate
from pvelab.pve.qm import cli, migrate
from pvelab.pve.qm.context import Context

CONF = "name: pbs\nmemory: 384\ncores: 1\nagent: 1\nvirtio0: local:vm-101-disk-0,size=2G\n"


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabPaths:
    """A lab with VM 101 (stopped) provisioned on node `pve`."""
    lab = LabPaths(tmp_path / "lab")
    lab.pve_conf_dir.mkdir(parents=True)
    lab.conf(101).write_text(CONF)
    cluster.register(lab, 101)
    monkeypatch.setattr(migrate, "HOLD_SECONDS", 0.0)
    return lab


def qm(paths: LabPaths, node: str, *argv: str | int) -> tuple[int, str, str]:
    ctx = Context(paths, node, stdout=StringIO(), stderr=StringIO())
    rc = cli.run(ctx, [str(a) for a in argv])
    return rc, ctx.stdout.getvalue(), ctx.stderr.getvalue()  # type: ignore[attr-defined]


@pytest.fixture
def running(paths: LabPaths) -> Iterator[int]:
    """A process vmstate takes for VM 101's QEMU (argv0 `qemu-…`, `-pidfile <its pidfile>`)."""
    pidfile = paths.pidfile(101)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    argv = ["qemu-system-x86_64", "-c", "/bin/sleep 30; true", "-pidfile", str(pidfile)]
    proc = subprocess.Popen(argv, executable="/bin/sh")
    pidfile.write_text(f"{proc.pid}\n")
    wait_seen(paths, proc.pid)
    yield proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_seen(paths: LabPaths, pid: int) -> None:
    """/proc/<pid>/cmdline is empty for a moment after exec: wait until vmstate sees the VM."""
    deadline = time.monotonic() + 5
    while vmstate.running_pid(paths, 101) != pid:
        assert time.monotonic() < deadline, f"fake QEMU {pid} not seen as running"
        time.sleep(0.02)


# --- .vmlist ---------------------------------------------------------------------------------


def test_vmlist_is_written_in_pmxcfs_layout(paths: LabPaths) -> None:
    # PCL src/pmxcfs/status.c cfs_create_vmlist_msg
    cluster.register(paths, 102)
    assert paths.vmlist.read_text() == (
        '{\n"version": 2,\n"ids": {\n'
        '"101": { "node": "pve", "type": "qemu", "version": 1 },\n'
        '"102": { "node": "pve", "type": "qemu", "version": 2 }}\n\n}\n'
    )


def test_register_keeps_a_listed_vm_where_it_is(paths: LabPaths) -> None:
    cluster.move(paths, 101, "pve2")
    assert cluster.register(paths, 101) == "pve2"
    assert cluster.register(paths, 101, keep=False) == "pve"
    assert cluster.vm_node(paths, 101) == "pve"


def test_move_to_unknown_node_is_refused(paths: LabPaths) -> None:
    with pytest.raises(KeyError):
        cluster.move(paths, 101, "pve3")


def test_without_vmlist_every_conf_is_local(tmp_path: Path) -> None:
    lab = LabPaths(tmp_path)
    lab.pve_conf_dir.mkdir(parents=True)
    lab.conf(900).write_text("name: t\n")
    assert cluster.on_node(lab, 900, "myhost")
    assert not cluster.on_node(lab, 901, "myhost")


# --- qm sees only its own node (reference §2.2) -------------------------------------------------


@pytest.mark.parametrize("cmd", ["status", "config", "start", "listsnapshot"])
def test_other_node_load_config_fails(paths: LabPaths, cmd: str) -> None:
    # PGC AbstractConfig.pm load_config; the node in the text is the one qm ran on
    rc, _, err = qm(paths, "pve2", cmd, 101)
    assert err == "Configuration file 'nodes/pve2/qemu-server/101.conf' does not exist\n"
    assert rc in (2, 255)


@pytest.mark.parametrize(("cmd", "times"), [("stop", 1), ("shutdown", 2)])
def test_other_node_stop_shutdown_fail(paths: LabPaths, cmd: str, times: int) -> None:
    # shutdown: QS8 vm_is_paused warns "$@\n" of its assert_config_exists_on_node first
    rc, _, err = qm(paths, "pve2", cmd, 101)
    line = "unable to find configuration file for VM 101 on node 'pve2'\n"
    assert (rc, err) == (255, "\n".join([line] * times))


def test_owner_node_sees_the_vm(paths: LabPaths) -> None:
    assert qm(paths, "pve", "status", 101) == (0, "status: stopped\n", "")


def test_list_shows_only_local_vms(paths: LabPaths) -> None:
    paths.conf(102).write_text("name: pihole\nmemory: 384\n")
    cluster.register(paths, 102)
    cluster.move(paths, 102, "pve2")
    on_pve = qm(paths, "pve", "list")[1]
    on_pve2 = qm(paths, "pve2", "list")[1]
    assert re.search(r"^\s+101 pbs ", on_pve, re.M) and " 102 " not in on_pve
    assert re.search(r"^\s+102 pihole ", on_pve2, re.M) and " 101 " not in on_pve2


# --- qm migrate ---------------------------------------------------------------------------------

LOG_LINE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


def test_offline_migration_moves_the_vm(paths: LabPaths) -> None:
    rc, out, err = qm(paths, "pve", "migrate", 101, "pve2")
    assert (rc, err) == (0, "")
    # QS8 QemuMigrate.pm phase1, PGC AbstractMigrate.pm migrate
    assert re.fullmatch(
        f"{LOG_LINE}starting migration of VM 101 to node 'pve2' \\(127\\.0\\.0\\.2\\)\n"
        f"{LOG_LINE}migration finished successfully \\(duration 00:00:0\\d\\)\n",
        out,
    ), out
    assert cluster.vm_node(paths, 101) == "pve2"
    assert cluster.read_vmlist(paths)["ids"]["101"]["node"] == "pve2"  # type: ignore[index]
    conf = vmconf.load_conf(paths.conf(101))
    assert conf is not None and conf.lock is None  # the target's `qm unlock`
    assert qm(paths, "pve2", "status", 101) == (0, "status: stopped\n", "")
    assert qm(paths, "pve", "status", 101)[2] == (
        "Configuration file 'nodes/pve/qemu-server/101.conf' does not exist\n"
    )


def test_migration_holds_lock_migrate(paths: LabPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate, "HOLD_SECONDS", 1.0)
    seen: list[str | None] = []

    def watch() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "migrate" not in seen:
            conf = vmconf.load_conf(paths.conf(101))
            seen.append(conf.lock if conf else None)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert qm(paths, "pve", "migrate", 101, "pve2")[0] == 0
    watcher.join()
    assert "migrate" in seen


def test_migrate_to_local_node_is_a_parameter_error(paths: LabPaths) -> None:
    # QS8 API2/Qemu.pm migrate_vm: raise_param_exc({ target => "target is local node." })
    rc, _, err = qm(paths, "pve", "migrate", 101, "pve")
    assert (rc, err) == (
        255,
        "400 Parameter verification failed.\ntarget: target is local node.\n"
        "qm migrate <vmid> <target> [OPTIONS]\n",
    )


def test_migrate_to_unknown_node(paths: LabPaths) -> None:
    # PCL Cluster.pm check_node_exists
    assert qm(paths, "pve", "migrate", 101, "pve9")[1:] == ("", "no such cluster node 'pve9'\n")
    assert cluster.vm_node(paths, 101) == "pve"


def test_migrate_running_vm_needs_online(paths: LabPaths, running: int) -> None:
    # QS8 API2/Qemu.pm migrate_vm
    rc, out, err = qm(paths, "pve", "migrate", 101, "pve2")
    assert (rc, out, err) == (255, "", "can't migrate running VM without --online\n")
    assert cluster.vm_node(paths, 101) == "pve"


def test_migrate_locked_vm(paths: LabPaths) -> None:
    paths.conf(101).write_text(CONF + "lock: backup\n")
    assert qm(paths, "pve", "migrate", 101, "pve2")[1:] == ("", "VM is locked (backup)\n")
    assert cluster.vm_node(paths, 101) == "pve"


def test_migrate_stopped_vm_with_online_warns(paths: LabPaths) -> None:
    rc, _, err = qm(paths, "pve", "migrate", 101, "pve2", "--online")
    assert (rc, err) == (0, "VM isn't running. Doing offline migration instead.\n")


def test_migrate_from_the_wrong_node(paths: LabPaths) -> None:
    rc, _, err = qm(paths, "pve2", "migrate", 101, "pve2")
    assert err.startswith("400 Parameter verification failed.\ntarget: target is local node.")
    rc, _, err = qm(paths, "pve2", "migrate", 101, "pve")
    assert err == "Configuration file 'nodes/pve2/qemu-server/101.conf' does not exist\n"


# --- quorum (reference §2.3) --------------------------------------------------------------------


@pytest.fixture
def no_quorum(paths: LabPaths) -> LabPaths:
    cluster.set_quorum(paths, False)
    return paths


def test_set_quorum_round_trip(paths: LabPaths) -> None:
    assert cluster.quorate(paths)
    cluster.set_quorum(paths, False)
    assert not cluster.quorate(paths)
    cluster.set_quorum(paths, True)
    assert cluster.quorate(paths)


@pytest.mark.parametrize("argv", [("start", 101), ("migrate", 101, "pve2")])
def test_no_quorum_start_migrate_fail(no_quorum: LabPaths, argv: tuple) -> None:
    # PCL Cluster.pm check_cfs_quorum, called first by QS8 vm_start / migrate_vm
    assert qm(no_quorum, "pve", *argv) == (255, "", "cluster not ready - no quorum?\n")
    assert cluster.vm_node(no_quorum, 101) == "pve"


def test_no_quorum_set_fails_writing_the_config(no_quorum: LabPaths) -> None:
    rc, _, err = qm(no_quorum, "pve", "set", 101, "--name", "renamed")
    assert rc != 0
    assert re.fullmatch(
        r"unable to open file '/etc/pve/nodes/pve/qemu-server/101\.conf\.tmp\.\d+'"
        r" - Permission denied\n",
        err,
    ), err
    assert "name: pbs" in no_quorum.conf(101).read_text()


def test_no_quorum_snapshot_fails_writing_the_config(no_quorum: LabPaths) -> None:
    rc, _, err = qm(no_quorum, "pve", "snapshot", 101, "pre-patch")
    assert rc == 255
    assert "unable to open file '/etc/pve/nodes/pve/qemu-server/101.conf.tmp." in err
    assert "pre-patch" not in no_quorum.conf(101).read_text()


@pytest.mark.parametrize("cmd", ["stop", "shutdown"])
def test_no_quorum_stop_shutdown_still_work(no_quorum: LabPaths, cmd: str) -> None:
    assert qm(no_quorum, "pve", cmd, 101)[0] == 0


def test_no_quorum_stop_of_a_running_vm_stops_it(no_quorum: LabPaths, running: int) -> None:
    # No quorum check in stop: it reaches the QEMU (a fake one without QMP: the SIGTERM path)
    rc, out, _ = qm(no_quorum, "pve", "stop", 101, "--timeout", 1)
    assert rc == 0, out
    assert vmstate.running_pid(no_quorum, 101) is None


# --- pvecm status (PCL pvecm.pm status + corosync-quorumtool -siH) --------------------------

QUORATE = """\
Cluster information
-------------------
Name:             pvelab
Config Version:   2
Transport:        knet
Secure auth:      on

Quorum information
------------------
Date:             Thu Jan  1 00:00:00 1970
Quorum provider:  corosync_votequorum
Nodes:            2
Node ID:          0x00000001
Ring ID:          1.35
Quorate:          Yes

Votequorum information
----------------------
Expected votes:   2
Highest expected: 2
Total votes:      2
Quorum:           2<SP><SP>
Flags:            Quorate<SP>

Membership information
----------------------
    Nodeid      Votes Name
0x00000001          1 127.0.0.1 (local)
0x00000002          1 127.0.0.2
""".replace("<SP>", " ")  # corosync prints trailing blanks there


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_pvecm_status_quorate_text(paths: LabPaths, utc: None) -> None:
    assert pvecm.status_text(paths, "pve", now=0) == QUORATE


def test_pvecm_status_without_quorum_text(no_quorum: LabPaths, utc: None) -> None:
    text = pvecm.status_text(no_quorum, "pve2", now=0)
    assert "Nodes:            1\nNode ID:          0x00000002\nRing ID:          2.36\n" in text
    assert "Quorate:          No\n" in text
    assert "Total votes:      1\nQuorum:           2 Activity blocked\nFlags:            \n" in text
    assert text.endswith("    Nodeid      Votes Name\n0x00000002          1 127.0.0.2 (local)\n")


def test_pvecm_status_exit_codes(paths: LabPaths) -> None:
    # corosync-quorumtool.c show_status (v3.1.9): EXIT_SUCCESS if quorate, else EXIT_NOT_QUORATE
    out, err = StringIO(), StringIO()
    assert pvecm.run(paths, "pve", ["status"], out, err) == 0
    cluster.set_quorum(paths, False)
    assert pvecm.run(paths, "pve", ["status"], out, err) == 2


def test_pvecm_nodes(paths: LabPaths) -> None:
    out = StringIO()
    assert pvecm.run(paths, "pve2", ["nodes"], out, StringIO()) == 0
    assert out.getvalue() == (
        "\nMembership information\n----------------------\n"
        "    Nodeid      Votes Name\n"
        "         1          1 pve\n"
        "         2          1 pve2 (local)\n"
    )


def test_pvecm_unknown_command(paths: LabPaths) -> None:
    err = StringIO()
    assert pvecm.run(paths, "pve", ["frob"], StringIO(), err) == 255
    assert err.getvalue().startswith(  # PC CLIHandler.pm print_usage_short
        "ERROR: unknown command 'pvecm frob'\nUSAGE: pvecm <COMMAND> [ARGS] [OPTIONS]\n\n"
    )


# --- HA-managed VMs (pvelab.pve.ha) -------------------------------------------------------------


def test_migrate_of_ha_vm_is_queued_for_the_ha_manager_not_done_directly(
    paths: LabPaths,
) -> None:
    """qemu-server's migrate_vm HA branch: `Requesting HA migration ...`, a crm command queued;
    nothing moves until the CRM acts."""
    ha_config = pytest.importorskip("pvelab.pve.ha.config")
    path = ha_config.resources_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("vm: 101\n\tstate started\n")
    rc, out, err = qm(paths, "pve", "migrate", 101, "pve2")
    assert (rc, out, err) == (0, "Requesting HA migration for VM 101 to node pve2\n", "")
    assert ha_config.crm_commands_path(paths).read_text() == "migrate vm:101 pve2\n"
    assert cluster.vm_node(paths, 101) == "pve"
