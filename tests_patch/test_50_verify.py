"""Stage 5, verify (read-only): the VM is healthy now; in a patch run, it really restarted once."""

import pytest
from pvepatch.cycle import questions
from pvepatch.guest import dns
from pvepatch.proxmox.parse import AGENT_PORT

pytestmark = [pytest.mark.stage("verify"), pytest.mark.verify, pytest.mark.patch]


@pytest.fixture(autouse=True)
def asked_ahead(record, cycle, target):
    """The stage's questions, asked in one round trip per host before the VM's first check;
    each check takes its answer once (or asks again when it is gone or 10 s old)."""
    asked = questions.verify(target, cycle.patching)
    record.once("verify questions", lambda: cycle.ask_ahead(*asked))


@pytest.mark.update_check
def test_ssh_answers(cycle):
    assert cycle.guest().answers().ok


@pytest.mark.update_check
def test_virtio_port_is_character_device(cycle):
    assert cycle.guest().virtio_port_is_chardev(), (
        f"{AGENT_PORT} is missing or not a character device"
    )


@pytest.mark.update_check
def test_guest_agent_service_active(cycle):
    assert cycle.guest().host.service("qemu-guest-agent").is_running


@pytest.mark.update_check
def test_guest_agent_ping(cycle, target):
    result = cycle.qm().agent_ping()
    assert result.ok, f"qm guest cmd {target.vmid} ping: {result.stderr.strip()}"


@pytest.mark.update_check
def test_vm_status_running(cycle):
    assert cycle.qm().status() == "running"


@pytest.mark.update_check
@pytest.mark.pihole
def test_dns_resolves(target):
    spec = target.pihole
    answer = dns.query(spec.server, spec.port, spec.resolve_name, spec.protocol)
    assert answer.resolved, f"{spec.server}:{spec.port} did not resolve {answer}"


@pytest.mark.update_check
@pytest.mark.pihole
def test_dns_blocks(target, record):
    spec = target.pihole
    if spec.blocked_name is None:
        why = "no pihole_blocked_name in the inventory: the block check was not run"
        if why not in record.notes:
            record.notes.append(why)
        pytest.skip(why)
    answer = dns.query(spec.server, spec.port, spec.blocked_name, spec.protocol)
    assert answer.blocked, f"{spec.server}:{spec.port} did not block {answer}"


@pytest.mark.update_check
@pytest.mark.pihole
def test_dns_service_active(target, cycle):
    assert cycle.guest().host.service(target.pihole.service).is_running


def test_pvepatch_snapshots_listed(cycle, record, target):
    """pvepatch's snapshots of the VM and their ages; a warning for ones older than
    --snapshot-max-age (forgotten snapshots fill the storage)."""
    seen = cycle.list_snapshots()
    taken = record.snapshot.name if record.snapshot and record.snapshot.taken else None
    if taken:
        assert taken in [name for name, _ in seen], (
            f"this run's snapshot {taken} of VM {target.vmid} is not listed by Proxmox"
        )
