"""The fake hosts answer a batch (pvepatch.transport.batch) as a real `sh` does."""

from __future__ import annotations

import subprocess

import fakes
import pytest
from pvepatch.cycle import questions
from pvepatch.transport import batch
from pvepatch.transport.command import CommandResult

PARTS = ["echo one; echo oops >&2", "printf 'no newline'", "exit 3", "cat /nonexistent-pvepatch"]


def sh(command: str) -> tuple[int, str, str]:
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    return done.returncode, done.stdout, done.stderr


class ShellFleet:
    """A fake fleet whose every host answers with the local sh."""

    def run(self, host, command):
        return sh(command)


def test_the_fake_hosts_answer_a_batch_as_sh_does():
    token = batch.new_token()
    text = batch.script(PARTS, token)
    fake = fakes.FakeTransport(ShellFleet(), "local")  # type: ignore[arg-type]
    from_fake = batch.split(fake.run(text, timeout=10, mutating=False), PARTS, token)
    from_sh = batch.split(CommandResult("local", text, *sh(text), 0.0), PARTS, token)
    answers = [(r.rc, r.stdout, r.stderr) for r in from_sh]
    assert [(r.rc, r.stdout, r.stderr) for r in from_fake] == answers
    assert answers == [sh(part) for part in PARTS]


# --- VMCycle: questions asked together, on the fake fleet ------------------------------------
def a_cycle(tmp_path, fleet=None):
    """pbs's VMCycle on the standard fake fleet, as the plugin builds it."""
    from pvepatch.cycle.actions import VMCycle
    from pvepatch.cycle.options import Fleet, Options
    from pvepatch.cycle.record import VMRecord
    from pvepatch.inventory import load_inventory
    from pvepatch.transport.command import ReadOnlyGuard
    from pvepatch.transport.connections import Connections

    fleet = fleet or fakes.standard_fleet()
    path = tmp_path / "inventory.yaml"
    path.write_text(fakes.STANDARD_INVENTORY)
    target = load_inventory(path, resolve=lambda name: "127.0.0.1").targets[0]
    connections = Connections(fleet.factory, ReadOnlyGuard(allow_mutating=True))
    return VMCycle(VMRecord(target), connections, Options(), Fleet()), fleet


def round_trips(commands) -> int:
    return len({c.batch for c in commands if c.batch}) + sum(1 for c in commands if not c.batch)


def test_a_proof_asks_each_host_once_and_records_every_question(tmp_path):
    cycle, fleet = a_cycle(tmp_path)
    proof = cycle.prove_fit_for_changes("patch")
    assert proof.binding.startswith("MAC bc:24:11:00:00:01 and agent host name 'pbs'")
    record = cycle.record
    assert round_trips(record.qm_commands) == 1 and round_trips(record.guest_commands) == 1
    assert [c.command for c in record.qm_commands] == [
        "pvesh get /cluster/resources --type vm --output-format json", "pvecm status",
        "qm status 101 --verbose", "qm config 101", "qm config 101 --current",
        "qm guest cmd 101 get-host-name",
    ]  # fmt: skip
    asked = [c.command for c in record.guest_commands]
    assert asked == ["cat /sys/class/net/*/address", "hostname", "df -Pm /", "df -Pm /boot",
                     "dpkg --audit"]  # fmt: skip
    assert [cmd for host, cmd in fleet.commands if host == "pbs"] == asked  # each sent once


def test_a_proof_never_uses_an_answer_asked_before_it(tmp_path):
    """What the preflight asked ahead is not what a proof sees: a lock Proxmox set since then
    refuses the change."""
    from pvepatch.errors import SafetyRefusal

    cycle, fleet = a_cycle(tmp_path)
    cycle.ask_ahead(*questions.preflight(cycle.target))
    vm = next(v for v in fleet.vms.values() if v.vmid == 101)
    vm.lock = "backup"  # a backup began after the preflight asked
    with pytest.raises(SafetyRefusal, match="locked"):
        cycle.prove_running("qm shutdown")


def test_an_answer_asked_ahead_is_dropped_by_a_change_and_by_a_new_connection(tmp_path):
    cycle, fleet = a_cycle(tmp_path)
    cycle.ask_ahead(guest=["hostname", "uname -r"], qm=["qm status 101"])
    sent = len(fleet.commands)
    cycle.guest().hostname()
    assert len(fleet.commands) == sent  # answered from the batch
    cycle.guest().transport.run("true", mutating=True)  # a change in the guest
    cycle.qm().status()
    assert fleet.commands[-1] == ("pve", "qm status 101")  # asked again after the change
    cycle.ask_ahead(guest=["uname -r"])
    cycle.connections.forget("pbs")  # the connection is gone (a restart): a new one
    cycle.guest().kernel()
    assert fleet.commands[-1] == ("pbs", "uname -r")  # not the old connection's answer
