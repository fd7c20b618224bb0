"""Stage 4, restart (patch): one restart through Proxmox, and the VM seen coming back."""

import pytest

pytestmark = [pytest.mark.stage("restart"), pytest.mark.patch]


@pytest.fixture
def restart(record, cycle):
    """Shuts the VM down through qm, starts it, waits for it (once per VM)."""
    record.restart = record.once("restart", cycle.restart)
    if record.restart.skipped:
        pytest.skip(record.restart.skipped)  # --reboot if-required/never, with its reason
    return record.restart


@pytest.fixture
def reached(restart, record):
    """`reached(step)`: the outcome, once the steps before `step` completed; else skip (or fail
    with the refusal, when no test of this VM has reported it yet, e.g. under -k or a node id)."""

    def check(step):
        __tracebackhide__ = True
        why = restart.not_reached(step)
        if why and restart.refused and record.failure is None:
            pytest.fail(f"refused: {restart.refused}")
        if why:
            pytest.skip(why)
        return restart

    return check


def test_restart_allowed(restart):
    assert restart.refused is None, restart.refused


def test_vm_shut_down(restart, reached):
    assert reached("stopped").stopped, restart.reason("shutdown", "stop", "stopped")


def test_vm_started_by_proxmox(restart, reached):
    assert reached("started").started, restart.reason("start")


@pytest.mark.update_check
def test_ssh_back_with_new_boot(restart, reached):
    assert reached("ssh_back").ssh_back, restart.reason("ssh_back")


@pytest.mark.update_check
def test_virtio_port_back(restart, reached):
    assert reached("port_back").port_back, restart.reason("port_back")


@pytest.mark.update_check
def test_guest_agent_back(restart, reached):
    assert reached("agent_back").agent_back, restart.reason("agent_back")
