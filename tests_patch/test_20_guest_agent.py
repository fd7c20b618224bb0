"""Stage 2, guest agent (patch): qemu-guest-agent installed, enabled in the VM config, running."""

import pytest
from pvepatch.proxmox.parse import agent_enabled

pytestmark = [pytest.mark.stage("guest_agent"), pytest.mark.patch]


@pytest.fixture
def agent(record, cycle):
    """Installs the agent if missing and enables it in the VM config (once per VM)."""
    record.agent = record.once("agent", cycle.ensure_agent)
    return record.agent


def test_agent_package_installed(agent, cycle):
    assert cycle.guest().host.package("qemu-guest-agent").is_installed


def test_agent_enabled_in_vm_config(agent, cycle):
    assert agent_enabled(cycle.qm().config())


def test_virtio_port_present(agent, cycle):
    if agent.deferred_to_restart:
        pytest.skip(
            "agent enabled in the VM config by this run: the port appears after the restart"
        )
    assert cycle.guest().virtio_port_is_chardev()


def test_agent_service_running(agent, cycle):
    if agent.deferred_to_restart:
        pytest.skip("agent enabled in the VM config by this run: it starts after the restart")
    assert cycle.guest().host.service("qemu-guest-agent").is_running
