"""Stage 3, patch (patch): apt-get update, dist-upgrade, autoremove, non-interactive."""

import pytest

pytestmark = [pytest.mark.stage("patch"), pytest.mark.patch]


@pytest.fixture
def upgrade(record, cycle):
    """Runs the upgrade once per VM and records what changed."""
    record.apt = record.once("apt", cycle.patch)
    return record.apt


def test_apt_update_succeeded(upgrade):
    assert upgrade.update.ok


@pytest.mark.update_check
def test_dist_upgrade_succeeded(upgrade):
    assert upgrade.upgrade.ok


@pytest.mark.update_check
def test_autoremove_succeeded(upgrade):
    assert upgrade.autoremove.ok


def test_nothing_left_to_upgrade(upgrade, cycle):
    pending = cycle.apt().pending_upgrades()
    assert pending == [], f"still upgradable after dist-upgrade: {pending}"


def test_planned_versions_installed(upgrade, cycle):
    """Every version apt planned before the upgrade (apt-get -s) is the one installed now."""
    installed = cycle.apt().installed()
    wrong = {
        name: (version, installed.get(name))
        for name, version in upgrade.planned.items()
        if installed.get(name) != version
    }
    assert not wrong, f"planned versions not installed (planned, installed): {wrong}"


@pytest.mark.update_check
def test_dpkg_consistent_after_upgrade(upgrade, cycle):
    assert cycle.guest().dpkg_audit() == ""


def test_guest_did_not_reboot_itself(upgrade):
    assert upgrade.boot_id_after == upgrade.boot_id_before, "the guest rebooted during the upgrade"


@pytest.mark.update_check
def test_guest_agent_still_answers(upgrade, cycle, record, target):
    """The update left the mandatory guest agent working (it may restart during the upgrade:
    given up to 30 s)."""
    if record.agent is not None and record.agent.deferred_to_restart:
        pytest.skip("agent enabled in the VM config by this run: it starts after the restart")
    assert cycle.agent_answers_after_update(), (
        f"the guest agent of VM {target.vmid} stopped answering after the update "
        f"(qm guest cmd {target.vmid} ping)"
    )
