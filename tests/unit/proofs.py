"""Fakes of Proxmox and the guest as the precondition proofs see them, and proofs made from them."""

from __future__ import annotations

from dataclasses import dataclass, field

from pvepatch.errors import QmError
from pvepatch.proxmox.cluster import Quorum, VMResource
from pvepatch.proxmox.parse import RunStatus
from pvepatch.proxmox.preconditions import Proof, prove_running, prove_stopped_by_us
from pvepatch.transport.command import CommandResult


@dataclass
class FakeQm:
    vmid: int = 101
    status: str = "running"
    pid: int | None = 4242
    mac: str = "bc:24:11:00:00:01"
    agent: bool = True  # enabled in the running VM
    agent_answers: bool = True
    agent_name: str = "pbs"
    lock: str | None = None
    node: str = "pve"  # where /cluster/resources says the VM is
    hastate: str | None = None
    quorate: bool = True
    asked: list[str] = field(default_factory=list)

    def resource(self) -> VMResource | None:
        self.asked.append("resources")
        return VMResource(self.vmid, self.node, self.status, hastate=self.hastate)

    def quorum(self) -> Quorum:
        self.asked.append("quorum")
        return Quorum(self.quorate)

    def run_status(self) -> RunStatus:
        self.asked.append("status")
        return RunStatus(self.status, self.pid if self.status == "running" else None, 10, None)

    def config(self, current: bool = False) -> dict[str, str]:
        self.asked.append("config --current" if current else "config")
        conf = {"net0": f"virtio={self.mac.upper()},bridge=vmbr0"}
        if self.agent:
            conf["agent"] = "1"
        if self.lock:
            conf["lock"] = self.lock
        return conf

    def agent_host_name(self) -> str:
        self.asked.append("get-host-name")
        if not self.agent_answers:
            result = CommandResult(
                "pve", "qm guest cmd", 255, "", "QEMU guest agent is not running", 0
            )
            raise QmError(result, self.vmid, "qm failed: QEMU guest agent is not running")
        return self.agent_name


@dataclass
class FakeGuest:
    name: str = "pbs"
    mac: str = "bc:24:11:00:00:01"
    key: str | None = "ssh-ed25519 SHA256:abc"

    def macs(self) -> set[str]:
        return {self.mac}

    def hostname(self) -> str:
        return self.name

    def host_key(self) -> str | None:
        return self.key


def running_proof(vmid: int = 101) -> Proof:
    return prove_running(FakeQm(vmid=vmid), "pve", FakeGuest())


def stopped_proof(vmid: int = 101) -> Proof:
    return prove_stopped_by_us(FakeQm(vmid=vmid, status="stopped"), "pve", running_proof(vmid))
