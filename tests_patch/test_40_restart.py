"""Stage 4, restart (patch): one restart through Proxmox, and the VM seen coming back."""

import pytest

pytestmark = [pytest.mark.stage("restart"), pytest.mark.patch]


@pytest.fixture
def restart(record, cycle):
    """Shuts the VM down through qm, starts it, waits for it (once per VM)."""
    record.restart = record.once("restart", cycle.restart)
    return record.restart


def reached(restart, step):
    __tracebackhide__ = True
    why = restart.not_reached(step)
    if why:
        pytest.skip(why)
    return restart


def test_restart_allowed(restart):
    assert restart.refused is None, restart.refused


def test_vm_shut_down(restart):
    assert reached(restart, "stopped").stopped, restart.reason("shutdown", "stop", "stopped")


def test_vm_started_by_proxmox(restart):
    assert reached(restart, "started").started, restart.reason("start")


def test_ssh_back_with_new_boot(restart):
    assert reached(restart, "ssh_back").ssh_back, restart.reason("ssh_back")


def test_virtio_port_back(restart):
    assert reached(restart, "port_back").port_back, restart.reason("port_back")


def test_guest_agent_back(restart):
    assert reached(restart, "agent_back").agent_back, restart.reason("agent_back")
