"""Stage 1, preflight (read-only): the VM is reachable, bound right, and fit to be patched."""

import pytest
from pvepatch.cycle import questions
from pvepatch.proxmox.cluster import HA_HANDS_OFF

pytestmark = [pytest.mark.stage("preflight"), pytest.mark.verify, pytest.mark.patch]


@pytest.fixture(autouse=True)
def asked_ahead(record, cycle, target):
    """The stage's questions, asked in one round trip per host before the VM's first check;
    each check takes its answer once (or asks again when it is gone or 10 s old)."""
    record.once("preflight questions", lambda: cycle.ask_ahead(*questions.preflight(target)))


@pytest.fixture
def binding(record, cycle):
    """The binding as Proxmox and the guest report it (observed once per VM, read-only)."""
    record.binding = record.once("binding", cycle.observe_binding)
    return record.binding


@pytest.fixture
def seen(cycle):
    """What the cluster says of the VM: node, HA, quorum, pending changes, backups (observed
    once per VM, read-only)."""
    return cycle.cluster_facts()


def test_vm_is_on_its_inventory_node(seen):
    """/cluster/resources puts the VM on the node of its inventory proxmox_host."""
    assert "node" not in seen.problems, seen.problems.get("node")


@pytest.fixture
def cluster(seen):
    """The cluster facts of a VM on its node (elsewhere, its node's qm cannot answer for it)."""
    if "node" in seen.problems:
        pytest.skip("not on its inventory node (test_vm_is_on_its_inventory_node)")
    return seen


def test_cluster_is_quorate(cluster):
    assert "quorum" not in cluster.problems, cluster.problems.get("quorum")


def test_ha_state_lets_pvepatch_act(cluster):
    """HA is not busy with the VM (error, fence, recovery, freeze, migrate, relocate), and an
    HA-managed VM is requested started (HA restarts it; pvepatch asks HA to)."""
    assert cluster.hastate not in HA_HANDS_OFF, cluster.problems.get("ha")
    assert "ha" not in cluster.problems, cluster.problems.get("ha")


def test_no_pending_config_changes(cluster):
    """No pending config change a restart would apply unannounced (--apply-pending allows
    them; the restart's record lists them)."""
    assert "pending" not in cluster.problems, cluster.problems.get("pending")


def test_cloud_init_instance_id_stays(cluster):
    """A VM with a cloud-init drive gets the instance-id its guest has at its next start (a new
    one would make cloud-init replace the SSH host keys)."""
    assert "cloudinit" not in cluster.problems, cluster.problems.get("cloudinit")


def test_newest_backup_is_recent(cluster, options):
    if options.max_backup_age is None:
        pytest.skip("no --max-backup-age given")
    assert cluster.backup_checked
    assert "backup" not in cluster.problems, cluster.problems.get("backup")


def test_ssh_answers_with_verified_host_key(cycle):
    assert cycle.guest().answers().ok
    assert cycle.guest().host_key(), "the SSH connection verified no host key"


def test_proxmox_host_answers(cycle, target):
    status = cycle.qm().status()
    assert status, f"{target.proxmox.name} gave no status for VM {target.vmid}"


def test_vm_is_running(cycle, target):
    status = cycle.qm().status()
    assert status == "running", (
        f"VM {target.vmid} on {target.proxmox.name} is {status}; pvepatch starts only VMs it stopped "
        f"itself: if it should run, start it (qm start {target.vmid}) and run again"
    )


def test_vmid_binding_by_mac(binding, target):
    """The NIC MACs Proxmox configured for this vmid are the guest's own MACs."""
    assert set(binding.macs) & set(binding.guest_macs), (
        f"wrong binding: VM {target.vmid} on {target.proxmox.name} has NIC MAC(s) {binding.macs}, "
        f"but the guest reached at {target.ssh} has {binding.guest_macs}"
    )


def test_vmid_binding_by_agent_hostname(binding, target):
    """The host name the guest agent of this vmid reports is the one SSH reports."""
    if not binding.agent_answers:
        pytest.skip(f"guest agent of VM {target.vmid} does not answer yet; binding checked by MAC")
    assert binding.agent_hostname == binding.ssh_hostname, (
        f"wrong binding: VM {target.vmid} on {target.proxmox.name} is '{binding.agent_hostname}', "
        f"but SSH to {target.ssh} reaches '{binding.ssh_hostname}'"
    )


def test_free_space_on_root(cycle, options):
    free = cycle.guest().free_mb("/")
    assert free >= options.min_free_root_mb, (
        f"only {free} MB free on /, need {options.min_free_root_mb}"
    )


def test_free_space_on_boot(cycle, options):
    free = cycle.guest().free_mb("/boot")
    assert free >= options.min_free_boot_mb, (
        f"only {free} MB free on /boot, need {options.min_free_boot_mb}"
    )


def test_dpkg_audit_clean(cycle):
    audit = cycle.guest().dpkg_audit()
    assert audit == "", f"dpkg --audit reports problems (fix with dpkg --configure -a):\n{audit}"
