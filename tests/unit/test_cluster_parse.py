"""Parsers of the cluster's answers, with PVE's real texts
(../shared/reference/proxmox-ha-cluster-snapshot.md §1-3, §5)."""

from __future__ import annotations

import pytest
from pvepatch.proxmox.cluster import (
    Backup,
    PendingChange,
    parse_backup_storages,
    parse_backups,
    parse_pending,
    parse_pvecm_status,
    parse_resources,
)

# One line of canonical JSON (CLIFormatter.pm: canonical => 1), PVE 8 fields (§2.1).
RESOURCES = (
    '[{"cpu":0.0123,"disk":0,"diskread":1234,"diskwrite":5678,"hastate":"started",'
    '"id":"qemu/101","maxcpu":1,"maxdisk":2147483648,"maxmem":402653184,"mem":201326592,'
    '"name":"pbs","netin":1,"netout":2,"node":"pve2","status":"running","template":0,'
    '"type":"qemu","uptime":55,"vmid":101},'
    '{"id":"qemu/102","name":"pihole","node":"pve","status":"stopped","type":"qemu",'
    '"vmid":102,"lock":"backup"},'
    '{"id":"lxc/200","node":"pve","status":"running","type":"lxc","vmid":200},'
    '{"hastate":"ignored","id":"qemu/103","node":"pve","status":"running","type":"qemu",'
    '"vmid":103}]\n'
)

# pvecm status (PCL pvecm.pm + corosync-quorumtool -siH, §2.3), trimmed of the member table.
PVECM_QUORATE = """Cluster information
-------------------
Name:             pvelab
Config Version:   2
Transport:        knet
Secure auth:      on

Quorum information
------------------
Date:             Sat Nov 28 01:00:00 2026
Quorum provider:  corosync_votequorum
Nodes:            2
Node ID:          0x00000001
Ring ID:          1.8
Quorate:          Yes

Votequorum information
----------------------
Expected votes:   2
Highest expected: 2
Total votes:      2
Quorum:           2
Flags:            Quorate
"""


def test_resources_give_node_ha_state_and_lock_of_qemu_vms_only():
    vms = parse_resources(RESOURCES)
    assert sorted(vms) == [101, 102, 103]  # the container is left out
    assert vms[101].node == "pve2" and vms[101].hastate == "started" and vms[101].ha_managed
    assert vms[102].hastate is None and not vms[102].ha_managed and vms[102].lock == "backup"
    assert vms[103].hastate == "ignored" and not vms[103].ha_managed  # qm acts directly


# PVE 9's answer for the same VM (§2.1: `memhost` is PVE 9 only), right after a move: pvestatd
# has no RRD data yet, so `status` is `unknown`.
RESOURCES_PVE9 = (
    '[{"cpu":0,"disk":0,"diskread":0,"diskwrite":0,"hastate":"started","id":"qemu/101",'
    '"maxcpu":1,"maxdisk":2147483648,"maxmem":402653184,"mem":0,"memhost":0,"name":"pbs",'
    '"netin":0,"netout":0,"node":"pve2","status":"unknown","template":0,"type":"qemu",'
    '"uptime":0,"vmid":101}]\n'
)


def test_resources_of_pve_9_read_the_same():
    vm = parse_resources(RESOURCES_PVE9)[101]
    assert (vm.node, vm.hastate, vm.ha_managed) == ("pve2", "started", True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ipcc_send_rec[1] failed: Unknown error -1",
        '{"vmid": 101}',
        '[{"type": "qemu", "vmid": "101", "node": "pve"}]',
        '[{"type": "qemu", "vmid": 101}]',
        '[{"type": "qemu", "vmid": 101, "node": "pve; rm -rf /"}]',
    ],
)
def test_resources_that_are_not_pves_answer_are_refused(text):
    with pytest.raises(ValueError):
        parse_resources(text)


def test_pvecm_status_is_read_from_its_text_not_its_exit_code():
    assert parse_pvecm_status(PVECM_QUORATE, "").quorate
    lost = PVECM_QUORATE.replace("Quorate:          Yes", "Quorate:          No")
    lost = lost.replace("Flags:            Quorate", "Flags:            ")
    assert not parse_pvecm_status(lost, "").quorate


def test_a_node_without_a_cluster_is_quorate_and_says_so():
    err = (
        "Error: Corosync config '/etc/pve/corosync.conf' does not exist - is this node part of "
        "a cluster?\n"
    )
    quorum = parse_pvecm_status("", err)
    assert quorum.quorate and quorum.standalone
    assert "not in a cluster" in str(quorum)


def test_pvecm_nonsense_is_refused():
    with pytest.raises(ValueError, match="no 'Quorate:' line"):
        parse_pvecm_status("", "bash: pvecm: command not found\n")


def test_pending_lists_only_new_and_deleted_keys():
    # format_pending (§3.1): every current key is `cur`; `new`/`del` are the pending ones
    text = (
        "cur agent: 1\n"
        "cur cipassword: **********\n"
        "cur cores: 2\n"
        "new cores: 4\n"
        "cur memory: 384\n"
        "cur name: pbs\n"
        "del net1: virtio=BC:24:11:00:01:02,bridge=vmbr0\n"
        "new onboot: 1\n"
    )
    assert parse_pending(text) == [
        PendingChange("cores", "2", "4"),
        PendingChange("net1", "virtio=BC:24:11:00:01:02,bridge=vmbr0", None, delete=True),
        PendingChange("onboot", None, "1"),
    ]
    assert [str(c) for c in parse_pending(text)] == [
        "cores: 2 -> 4",
        "net1: delete (now virtio=BC:24:11:00:01:02,bridge=vmbr0)",
        "onboot: add 1",
    ]
    assert parse_pending("cur name: pbs\ncur memory: 384\n") == []


def test_pending_nonsense_is_refused():
    with pytest.raises(ValueError, match="unexpected line"):
        parse_pending("Configuration file 'nodes/pve/qemu-server/101.conf' does not exist\n")


def test_backups_of_this_vm_newest_known_by_ctime():
    storages = (
        '[{"active":1,"content":"backup,iso,vztmpl","enabled":1,"storage":"local","type":"dir"},'
        '{"active":0,"content":"backup","enabled":1,"storage":"nfs-off","type":"nfs"},'
        '{"active":1,"content":"backup","storage":"pbs_store.2","type":"pbs"}]'
    )
    assert parse_backup_storages(storages) == ["local", "pbs_store.2"]
    content = (
        '[{"content":"backup","ctime":1767996003,"format":"vma.zst","size":123,'
        '"subtype":"qemu","vmid":101,'
        '"volid":"local:backup/vzdump-qemu-101-2026_01_10-02_00_03.vma.zst"},'
        '{"content":"backup","ctime":1767996999,"format":"vma.zst","vmid":1010,'
        '"volid":"local:backup/vzdump-qemu-1010-2026_01_10-02_16_39.vma.zst"}]'
    )
    assert parse_backups(content, 101) == [
        Backup("local:backup/vzdump-qemu-101-2026_01_10-02_00_03.vma.zst", 1767996003)
    ]
    with pytest.raises(ValueError):
        parse_backups('[{"content":"backup","vmid":101,"volid":"x","ctime":"soon"}]', 101)
    with pytest.raises(ValueError):
        parse_backup_storages('[{"storage":"../etc"}]')
