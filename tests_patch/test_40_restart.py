"""Stage 4, restart (patch): one restart through Proxmox, and the VM seen coming back."""

import pytest

pytestmark = [pytest.mark.stage("restart"), pytest.mark.patch]


@pytest.fixture
def restart(record, cycle):
    """Shuts the VM down through qm, starts it, waits for it (once per VM)."""
    record.restart = record.once("restart", cycle.restart)
    return record.restart


def test_restart_allowed(restart):
    assert restart.refused is None, restart.refused


def test_vm_shut_down(restart):
    assert restart.stopped, restart.reason("shutdown", "stop", "stopped")


def test_vm_started_by_proxmox(restart):
    assert restart.started, restart.reason("start", "shutdown", "stop", "stopped")


def test_ssh_back_with_new_boot(restart):
    assert restart.ssh_back, restart.reason("ssh_back", "start")


def test_virtio_port_back(restart):
    assert restart.port_back, restart.reason("port_back", "ssh_back", "start")


def test_guest_agent_back(restart):
    assert restart.agent_back, restart.reason("agent_back", "ssh_back", "start")
