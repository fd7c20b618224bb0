"""The preconditions of every mutating qm command: each refusal, and a proof cannot be forged."""

from __future__ import annotations

import dataclasses
import time

import pytest
from proofs import FakeGuest, FakeQm, running_proof, stopped_proof
from pvepatch.errors import SafetyRefusal, TransportError
from pvepatch.proxmox import preconditions
from pvepatch.proxmox.preconditions import (
    Proof,
    prove_running,
    prove_same_process,
    prove_stopped_by_us,
)


def test_a_bound_running_vm_is_proven_by_mac_and_agent_host_name():
    proof = prove_running(FakeQm(), "pve", FakeGuest())
    assert (proof.vmid, proof.status, proof.pid) == (101, "running", 4242)
    assert proof.binding == "MAC bc:24:11:00:00:01 and agent host name 'pbs'"
    assert proof.host_key == "ssh-ed25519 SHA256:abc"
    proof.admit(101, "qm shutdown")  # allowed


@pytest.mark.parametrize(
    "qm, guest, reason",
    [
        (FakeQm(mac="bc:24:11:00:00:02"), FakeGuest(), "wrong binding: VM 101 on pve has NIC MAC"),
        (
            FakeQm(agent_name="pihole"),
            FakeGuest(),
            "reports host name 'pihole', but SSH reaches 'pbs'",
        ),
        (
            FakeQm(agent_answers=False),
            FakeGuest(),
            "does not answer, so the binding cannot be proven",
        ),
        (FakeQm(status="stopped"), FakeGuest(), "VM 101 on pve is stopped, expected running"),
        (FakeQm(), FakeGuest(key=None), "host key was not verified"),
        (FakeQm(), TransportError("pbs", "Connection refused"), "cannot be reached over SSH"),
    ],
    ids=["mac", "agent-name", "agent-silent", "stopped", "no-host-key", "unreachable"],
)
def test_refused_with_the_reason(qm, guest, reason):
    with pytest.raises(SafetyRefusal, match=reason.replace("(", r"\(").replace(")", r"\)")):
        prove_running(qm, "pve", guest)


def test_without_the_agent_in_the_running_vm_the_mac_alone_binds_and_says_so():
    proof = prove_running(FakeQm(agent=False), "pve", FakeGuest())
    assert "only (the agent is not enabled in the running VM yet)" in proof.binding
    assert proof.agent_hostname is None


def test_a_lock_refuses_unless_skiplock():
    proof = prove_running(FakeQm(lock="backup"), "pve", FakeGuest())
    with pytest.raises(SafetyRefusal, match=r"VM is locked \(backup\)"):
        proof.admit(101, "qm shutdown")
    proof.admit(101, "qm shutdown", skiplock=True)


def test_a_proof_is_for_one_vm_one_state_and_a_short_time(monkeypatch):
    proof = running_proof(101)
    with pytest.raises(SafetyRefusal, match="the proof is for VM 101, not VM 102"):
        proof.admit(102, "qm shutdown")
    with pytest.raises(SafetyRefusal, match="qm start needs the VM stopped"):
        proof.admit(101, "qm start")
    later = time.monotonic() + preconditions.MAX_PROOF_AGE + 1
    monkeypatch.setattr(preconditions.time, "monotonic", lambda: later)
    with pytest.raises(SafetyRefusal, match="old; prove it again"):
        proof.admit(101, "qm shutdown")


def test_start_only_for_the_vm_this_run_took_down():
    before = running_proof(101)
    with pytest.raises(SafetyRefusal, match="VM 102 was not taken down by this run"):
        prove_stopped_by_us(FakeQm(vmid=102, status="stopped"), "pve", before)
    with pytest.raises(SafetyRefusal, match="is running, expected stopped"):
        prove_stopped_by_us(FakeQm(status="running"), "pve", before)
    stopped_proof(101).admit(101, "qm start")


def test_hard_stop_needs_the_same_qemu_process():
    before = running_proof(101)
    prove_same_process(FakeQm(), "pve", before).admit(101, "qm stop")
    with pytest.raises(SafetyRefusal, match="no longer the process proven"):
        prove_same_process(FakeQm(pid=5000), "pve", before)


def test_a_proof_cannot_be_made_or_copied_outside_the_module():
    with pytest.raises(TypeError, match="made only by"):
        Proof(
            101, "pve", "running", 1, None, (), None, None, None, "forged", None, False, True, 0.0
        )
    with pytest.raises(TypeError, match="made only by"):
        dataclasses.replace(running_proof(101), vmid=102)


def test_a_change_inside_the_guest_accepts_a_silent_agent_and_says_so():
    proof = prove_running(FakeQm(agent_answers=False), "pve", FakeGuest(), agent_required=False)
    assert proof.binding == "MAC bc:24:11:00:00:01 only (the agent is enabled but does not answer)"
    with pytest.raises(SafetyRefusal, match="reports host name 'x'"):
        prove_running(FakeQm(agent_name="x"), "pve", FakeGuest(), agent_required=False)


def test_no_quorum_refuses_every_action():
    proof = prove_running(FakeQm(quorate=False), "pve", FakeGuest())
    for action in ("qm shutdown", "qm set", "patch", "qm snapshot"):
        with pytest.raises(SafetyRefusal, match="has no quorum"):
            proof.admit(101, action)


def test_a_vm_on_another_node_cannot_be_proven():
    with pytest.raises(SafetyRefusal, match="VM 101 is on node 'pve2', not on 'pve'"):
        prove_running(FakeQm(node="pve2"), "pve", FakeGuest())


def test_ha_managed_vms_take_ha_requests_only():
    proof = prove_running(FakeQm(hastate="started"), "pve", FakeGuest())
    for action in ("qm shutdown", "qm stop", "qm rollback"):
        with pytest.raises(SafetyRefusal, match="would only queue a request"):
            proof.admit(101, action)
    proof.admit(101, "ha stop")
    proof.admit(101, "qm snapshot")  # not a power action: qm does it itself
    plain = prove_running(FakeQm(hastate="ignored"), "pve", FakeGuest())
    plain.admit(101, "qm shutdown")
    with pytest.raises(SafetyRefusal, match="not HA-managed"):
        plain.admit(101, "ha stop")


@pytest.mark.parametrize("state", ["error", "fence", "recovery", "freeze", "migrate", "relocate"])
def test_ha_hands_off_states_refuse_everything(state):
    proof = prove_running(FakeQm(hastate=state), "pve", FakeGuest())
    with pytest.raises(SafetyRefusal, match=f"HA has VM 101 in state '{state}'"):
        proof.admit(101, "patch")
