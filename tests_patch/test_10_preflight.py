"""Stage 1, preflight (read-only): the VM is reachable, bound right, and fit to be patched."""

import pytest
from pvepatch.proxmox.qm import net_macs

pytestmark = [pytest.mark.stage("preflight"), pytest.mark.verify, pytest.mark.patch]


def test_ssh_answers_with_verified_host_key(cycle):
    assert cycle.guest().answers().ok


def test_proxmox_host_answers(cycle, target):
    status = cycle.qm().status()
    assert status, f"{target.proxmox.name} gave no status for VM {target.vmid}"


def test_vm_is_running(cycle, target):
    status = cycle.qm().status()
    assert status == "running", (
        f"VM {target.vmid} on {target.proxmox.name} is {status}; pvepatch starts only VMs it stopped "
        f"itself: if it should run, start it (qm start {target.vmid}) and run again"
    )


def test_vmid_binding_by_mac(cycle, target, record):
    """The NIC MACs Proxmox configured for this vmid are the guest's own MACs."""
    configured = net_macs(cycle.qm().config())
    seen = cycle.guest().macs()
    record.facts["binding_macs"] = sorted(configured & seen)
    assert configured & seen, (
        f"wrong binding: VM {target.vmid} on {target.proxmox.name} has NIC MAC(s) {sorted(configured)}, "
        f"but the guest reached at {target.ssh} has {sorted(seen)}"
    )


def test_vmid_binding_by_agent_hostname(cycle, target, record):
    """The host name the guest agent of this vmid reports is the one SSH reports."""
    qm = cycle.qm()
    if not qm.agent_ping().ok:
        pytest.skip(f"guest agent of VM {target.vmid} does not answer yet; binding checked by MAC")
    via_agent = qm.agent_host_name()
    via_ssh = cycle.guest().hostname()
    record.facts["hostname"] = via_ssh
    assert via_agent == via_ssh, (
        f"wrong binding: VM {target.vmid} on {target.proxmox.name} is '{via_agent}', "
        f"but SSH to {target.ssh} reaches '{via_ssh}'"
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
