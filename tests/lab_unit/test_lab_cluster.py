"""The lab side of the cluster: node pve2's sshd on 127.0.0.2, wrappers, known_hosts, the
cluster faults (no-quorum, migrated) and what `reset` undoes."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pvelab.fleet import faults, roster, seed
from pvelab.fleet.lab import Lab
from pvelab.paths import LabPaths
from pvelab.pve import cluster, node
from pvelab.sshcmd import LabError, ssh_run

CONF = "name: pbs\nmemory: 384\ncores: 1\nagent: 1\nvirtio0: local:vm-101-disk-0,size=2G\n"


def free_port_on_both() -> int:
    """A port free on 127.0.0.1 and 127.0.0.2 (both nodes listen on the same port)."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.2", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both loopback addresses")


def test_pve2_sshd_listens_on_127_0_0_2_only(tmp_path: Path) -> None:
    lines = node.sshd_config_text(LabPaths(tmp_path), 24000, "pve2").splitlines()
    assert [line for line in lines if line.startswith(("ListenAddress", "Port"))] == [
        "ListenAddress 127.0.0.2:24000"
    ]
    assert f"HostKey {tmp_path}/nodes/pve2/ssh_host_ed25519_key" in lines
    assert f"PidFile {tmp_path}/nodes/pve2/sshd.pid" in lines
    path = f"{tmp_path}/nodes/pve2/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert f"SetEnv PATH={path} PVELAB_DIR={tmp_path} PVELAB_NODE=pve2" in lines


@pytest.mark.parametrize("command", ["qm", "pvesh", "pvecm"])
def test_each_node_has_its_wrappers(tmp_path: Path, command: str) -> None:
    paths = LabPaths(tmp_path)
    seed.ensure_operator_key(paths)
    for name in ("pve", "pve2"):
        node.write_files(paths, 24000, name)
    first = (paths.bin_dir / command).read_text()
    second = (tmp_path / "nodes" / "pve2" / "bin" / command).read_text()
    assert "PVELAB_NODE=pve\n" in first and "PVELAB_NODE=pve2\n" in second
    assert f"-m {node.COMMANDS[command]} --lab {tmp_path}" in second


def test_known_hosts_pins_pve2_on_its_address(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path)
    seed.ensure_operator_key(paths)
    node.write_files(paths, 22000, "pve2")
    pub = node.host_key(paths, "pve2").with_suffix(".pub")
    [line] = seed.known_hosts_text([(22000, pub, "127.0.0.2")]).splitlines()
    assert line.startswith("[127.0.0.2]:22000 ssh-ed25519 AAAA")
    assert line.split()[2] == pub.read_text().split()[1]


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[LabPaths, int]]:
    """Both nodes' real sshds on a private port (PVELAB_PORT_BASE-style), VM 101 on pve."""
    paths = LabPaths(tmp_path)
    port = free_port_on_both()
    seed.ensure_operator_key(paths)
    for n in cluster.NODES:
        node.start(paths, port, n.name)
    seed.write_known_hosts(
        paths, [(port, node.host_key(paths, n.name).with_suffix(".pub"), n.address)
                for n in cluster.NODES],
    )  # fmt: skip
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(101).write_text(CONF)
    cluster.register(paths, 101)
    yield paths, port
    for n in cluster.NODES:
        node.stop(paths, n.name)


def test_both_nodes_answer_as_themselves(two_nodes: tuple[LabPaths, int]) -> None:
    paths, port = two_nodes
    first = ssh_run(paths, port, "pvecm status", host="pve", timeout=30)
    second = ssh_run(paths, port, "pvecm status", host="pve2", timeout=30, address="127.0.0.2")
    assert (first.rc, second.rc) == (0, 0), second
    assert "Node ID:          0x00000001" in first.stdout
    assert "Node ID:          0x00000002" in second.stdout
    assert "127.0.0.2 (local)" in second.stdout


def test_migrate_over_ssh_and_qm_on_the_old_node(two_nodes: tuple[LabPaths, int]) -> None:
    paths, port = two_nodes
    moved = ssh_run(paths, port, "PVELAB_MIGRATE_SECONDS=0 qm migrate 101 pve2", host="pve")
    assert moved.rc == 0, moved
    assert moved.stdout.splitlines()[-1].endswith(
        "migration finished successfully (duration 00:00:00)"
    )
    old = ssh_run(paths, port, "qm status 101", host="pve")
    new = ssh_run(paths, port, "qm status 101", host="pve2", address="127.0.0.2")
    assert old.stderr == "Configuration file 'nodes/pve/qemu-server/101.conf' does not exist\n"
    assert (new.rc, new.stdout) == (0, "status: stopped\n")
    listing = ssh_run(
        paths, port, "pvesh get /cluster/resources --type vm --output-format json", host="pve"
    )
    assert json.loads(listing.stdout)[0]["node"] == "pve2"


# --- faults -------------------------------------------------------------------------------------


def test_migrated_fault_runs_the_stand_in_qm_migrate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PVELAB_MIGRATE_SECONDS", "0")
    paths = LabPaths(tmp_path)
    seed.ensure_operator_key(paths)
    node.write_files(paths, 24000, "pve")
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(101).write_text(CONF)
    cluster.register(paths, 101)
    faults.get("migrated").host(paths, roster.by_name("pbs"))  # type: ignore[misc]
    assert cluster.vm_node(paths, 101) == "pve2"
    calls = [json.loads(line) for line in paths.qm_log.read_text().splitlines()]
    assert [c["argv"] for c in calls] == [["migrate", "101", "pve2"]]  # stopped: no shutdown
    with pytest.raises(LabError, match="already on pve2"):
        faults.get("migrated").host(paths, roster.by_name("pbs"))  # type: ignore[misc]


def test_no_quorum_is_a_cluster_fault(tmp_path: Path) -> None:
    lab = Lab(LabPaths(tmp_path), base=24000)
    logged: list[str] = []
    assert lab.fault("no-quorum", None, log=logged.append) is None
    assert not cluster.quorate(lab.paths)
    assert logged == [f"cluster: fault no-quorum applied ({faults.get('no-quorum').summary})"]


def test_reset_restores_quorum_and_brings_vms_back_to_pve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(LabPaths(tmp_path), base=24000)
    seed.ensure_operator_key(lab.paths)
    lab.paths.pve_conf_dir.mkdir(parents=True)
    lab.paths.conf(101).write_text(CONF)
    cluster.register(lab.paths, 101)
    cluster.move(lab.paths, 101, "pve2")
    cluster.set_quorum(lab.paths, False)
    lab.paths.dump_dir.mkdir()
    kept = lab.paths.dump_dir / "vzdump-qemu-101-2026_01_10-02_00_03.vma.zst"
    kept.write_text("x")
    ups: list[Any] = []
    monkeypatch.setattr(Lab, "stop_vm", lambda self, vm: "not running")
    monkeypatch.setattr(Lab, "up", lambda self, vms, log, timeout: ups.append(vms) or {})
    lab.reset(["pbs"], log=lambda line: None)
    assert ups == [["pbs"]]
    assert cluster.quorate(lab.paths)
    assert cluster.read_vmlist(lab.paths)["ids"]["101"]["node"] == "pve"  # type: ignore[index]
    assert kept.exists()  # backups survive reset
