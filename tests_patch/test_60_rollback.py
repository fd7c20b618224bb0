"""Stage 7, rollback (patch): a VM whose checks failed after its update is rolled back to the
snapshot taken before it (--rollback-on-failure), started and checked again; a VM that passed
keeps only its newest pvepatch snapshots (--snapshot-keep). Runs after an earlier failure."""

import pytest

pytestmark = [pytest.mark.stage("rollback"), pytest.mark.patch]


@pytest.fixture
def rollback(record, cycle):
    """`qm rollback`, `qm start` and the checks after the boot, once per VM, when due."""
    record.rollback = record.once("rollback", cycle.rollback)
    if record.rollback.skipped:
        pytest.skip(record.rollback.skipped)
    return record.rollback


@pytest.fixture
def reached(rollback):
    def check(step):
        __tracebackhide__ = True
        why = rollback.not_reached(step)
        if why:
            pytest.skip(why)
        return rollback

    return check


def test_rollback_allowed(rollback):
    assert rollback.refused is None, rollback.refused


def test_rolled_back_to_the_snapshot(rollback, reached):
    assert reached("stopped").rolled_back, rollback.reason("rollback", "stopped")


def test_started_after_rollback(rollback, reached):
    assert reached("started").started, rollback.reason("start")


def test_ssh_back_after_rollback(rollback, reached):
    assert reached("ssh_back").ssh_back, rollback.reason("ssh_back")


def test_agent_back_after_rollback(rollback, reached):
    assert reached("agent_back").agent_back, rollback.reason("agent_back")


def test_healthy_after_rollback(rollback, reached):
    """Every check after the boot passed: the virtio port, the agent, DNS for a Pi-hole."""
    assert "healthy" in reached("agent_back").times, rollback.reason(
        "port_back", "agent_back", "dns_back"
    )


def test_packages_as_before_the_update(rollback, reached, cycle, record):
    """Every package is installed in the version it had right before the update."""
    reached("ssh_back")
    before = record.packages_before_update
    assert before is not None, "the packages before the update were not recorded"
    now = cycle.apt().installed()
    wrong = {n: (before.get(n), now.get(n)) for n in {*before, *now} if before.get(n) != now.get(n)}
    assert not wrong, f"not as before the update (before, now): {wrong}"


@pytest.fixture
def pruned(record, cycle):
    """pvepatch's snapshots beyond --snapshot-keep deleted, once per VM, after a good update."""
    record.pruned = record.once("prune", cycle.prune_snapshots)
    if record.pruned.skipped:
        pytest.skip(record.pruned.skipped)
    return record.pruned


def test_older_pvepatch_snapshots_deleted(pruned, record, cycle):
    assert not pruned.errors, pruned.errors
    listed = [s.name for s in cycle.qm().snapshots()]
    assert record.snapshot.name in listed
    assert not set(pruned.deleted) & set(listed), f"still listed: {listed}"
