"""A thin client for `qm` on a Proxmox host: commands built from validated values, outputs parsed."""

from __future__ import annotations

import re
from typing import Any

from pvepatch.errors import QmError, last_line
from pvepatch.proxmox import cluster
from pvepatch.proxmox.cluster import Backup, PendingChange, Quorum, VMResource
from pvepatch.proxmox.parse import (
    RunStatus,
    SnapshotEntry,
    parse_agent_output,
    parse_key_values,
    parse_listsnapshot,
    parse_qm_status,
)
from pvepatch.proxmox.preconditions import Proof
from pvepatch.transport.command import CommandResult, Transport, quote

# Timeout of the SSH command around a `qm` task, beyond the task's own --timeout.
TASK_SLACK = 60.0
# The read-only questions, by name: `Qm.asked` gives their command lines, so a caller can ask
# several in one round trip (VMCycle.asked_together) before asking them one by one.
QUESTIONS = {
    "status": "qm status %s",
    "run_status": "qm status %s --verbose",
    "config": "qm config %s",
    "config_current": "qm config %s --current",
    "agent_ping": "qm guest cmd %s ping",
    "agent_host_name": "qm guest cmd %s get-host-name",
    "snapshots": "qm listsnapshot %s",
    "pending": "qm pending %s",
    "cloudinit_meta": "qm cloudinit dump %s meta",
    # the cluster's answers (any node answers for the whole cluster): not per VM
    "resources": cluster.RESOURCES,
    "quorum": cluster.QUORUM,
}
# PVE's snapshot names (pve-configid, maxLength 40; `current` and `pending` are reserved).
SNAPSHOT_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]{1,39}")
# How long a snapshot or a rollback may take (freezing the guest file systems included).
SNAPSHOT_TIMEOUT = 600.0


class Qm:
    """`qm` for one VM, run on its Proxmox host through a Transport."""

    def __init__(self, transport: Transport, vmid: int):
        if not isinstance(vmid, int) or isinstance(vmid, bool):
            raise TypeError(f"vmid must be an int, got {vmid!r}")
        self.transport = transport
        self.vmid = vmid

    @staticmethod
    def asked(vmid: int, *names: str) -> list[str]:
        """The command lines of the named questions (QUESTIONS) for VM `vmid`."""
        return [
            quote(QUESTIONS[name], vmid) if "%s" in QUESTIONS[name] else QUESTIONS[name]
            for name in names
        ]

    def _run(
        self,
        command: str,
        *args: object,
        timeout: float = 30.0,
        mutating: bool = False,  # the read-only questions; each action says mutating=True
        check: bool = True,
    ) -> CommandResult:
        result = self.transport.run(command, *args, timeout=timeout, mutating=mutating)
        if check and not result.ok:
            raise QmError(
                result,
                self.vmid,
                f"qm failed for VM {self.vmid}: {last_line(result.stderr) or '(no error text)'}",
            )
        return result

    def _parsed(self, result: CommandResult, parser: Any) -> Any:
        try:
            return parser(result.stdout)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            why = exc if isinstance(exc, ValueError) else "nested too deeply"
            raise QmError(result, self.vmid, f"cannot understand qm output: {why}") from exc

    # --- read-only -------------------------------------------------------------------------
    def status(self) -> str:
        return self._parsed(self._run(QUESTIONS["status"], self.vmid), parse_qm_status)  # type: ignore[no-any-return]

    def run_status(self) -> RunStatus:
        return self._parsed(self._run(QUESTIONS["run_status"], self.vmid), RunStatus.parse)  # type: ignore[no-any-return]

    def config(self, current: bool = False) -> dict[str, str]:
        """`qm config`: pending changes applied, as the next start will use them; with
        `current=True`, the values the running VM uses (`--current`, pending changes left out)."""
        command = QUESTIONS["config_current" if current else "config"]
        return self._parsed(self._run(command, self.vmid), parse_key_values)  # type: ignore[no-any-return]

    def snapshots(self) -> list[SnapshotEntry]:
        """`qm listsnapshot`: the VM's snapshots, in PVE's tree order."""
        return self._parsed(self._run(QUESTIONS["snapshots"], self.vmid), parse_listsnapshot)  # type: ignore[no-any-return]

    def pending(self) -> list[PendingChange]:
        """`qm pending`: the changes the next stop (or start) applies; [] when none."""
        return self._parsed(self._run(QUESTIONS["pending"], self.vmid), cluster.parse_pending)  # type: ignore[no-any-return]

    def cloudinit_instance_id(self) -> str:
        """The cloud-init instance-id the VM's next start gives its guest."""
        result = self._run(QUESTIONS["cloudinit_meta"], self.vmid)
        return self._parsed(result, cluster.parse_cloudinit_meta)  # type: ignore[no-any-return]

    def resource(self) -> VMResource | None:
        """This VM in the cluster's resources (where it lives, its HA state); None when the
        cluster does not list it."""
        result = self._run(QUESTIONS["resources"])
        return self._parsed(result, cluster.parse_resources).get(self.vmid)  # type: ignore[no-any-return]

    def quorum(self) -> Quorum:
        """`pvecm status` of this host's cluster: only its text is read (corosync's exit codes
        changed over the years)."""
        result = self._run(QUESTIONS["quorum"], check=False)
        if not result.answered:
            raise QmError(result, self.vmid, "pvecm status gave no answer")
        return self._parsed(result, lambda out: cluster.parse_pvecm_status(out, result.stderr))  # type: ignore[no-any-return]

    def backups(self, node: str) -> list[Backup]:
        """This VM's backups in every backup storage of `node`, newest first."""
        if not cluster.NODE_NAME.fullmatch(node):
            raise ValueError(f"not a Proxmox node name: {node!r}")
        storages = self._parsed(
            self._run(cluster.BACKUP_STORAGES, node), cluster.parse_backup_storages
        )
        found: list[Backup] = []
        for storage in storages:
            result = self._run(cluster.BACKUPS, node, storage, self.vmid)
            found += self._parsed(result, lambda out: cluster.parse_backups(out, self.vmid))
        return sorted(found, key=lambda b: b.ctime, reverse=True)

    def agent(self, command: str, check: bool = True) -> CommandResult:
        """`qm guest cmd <vmid> <command>` (read-only commands only)."""
        if command not in {
            "ping",
            "get-host-name",
            "get-osinfo",
            "info",
            "network-get-interfaces",
            "get-time",
            "get-fsinfo",
            "fsfreeze-status",
        }:
            raise ValueError(f"not a read-only guest agent command: {command}")
        return self._run("qm guest cmd %s %s", self.vmid, command, timeout=30.0, check=check)

    def agent_ping(self) -> CommandResult:
        return self.agent("ping", check=False)

    def agent_host_name(self) -> str:
        data = self._parsed(self.agent("get-host-name"), parse_agent_output)
        if not isinstance(data, dict) or "host-name" not in data:
            raise QmError(
                self.agent("get-host-name", check=False), self.vmid, "no host-name in agent reply"
            )
        return str(data["host-name"])

    # --- mutating: each takes the Proof made right before it (proxmox.preconditions) ------
    def set_agent(self, proof: Proof, enabled: bool = True) -> CommandResult:
        proof.admit(self.vmid, "qm set", node=self.transport.host)
        return self._run(
            "qm set %s --agent %s", self.vmid, f"enabled={int(enabled)}", mutating=True
        )

    def shutdown(
        self, proof: Proof, timeout: int, skiplock: bool = False, force_stop: bool = False
    ) -> CommandResult:
        """Clean shutdown through the agent (or ACPI); returns the result, never raises on rc."""
        proof.admit(self.vmid, "qm shutdown", skiplock, node=self.transport.host)
        command = "qm shutdown %s --timeout %s" + (" --skiplock 1" if skiplock else "")
        command += " --forceStop 1" if force_stop else ""
        return self._run(
            command,
            self.vmid,
            int(timeout),
            timeout=timeout + TASK_SLACK,
            mutating=True,
            check=False,
        )

    def stop(self, proof: Proof, timeout: int = 60, skiplock: bool = False) -> CommandResult:
        """Power-off (`qm stop`): allowed on a proof of the running VM (the hard-stop fallback
        reuses the proof made before its failed shutdown: the VM is still running)."""
        proof.admit(self.vmid, "qm stop", skiplock, node=self.transport.host)
        command = "qm stop %s --timeout %s" + (" --skiplock 1" if skiplock else "")
        return self._run(
            command,
            self.vmid,
            int(timeout),
            timeout=timeout + TASK_SLACK + 20,
            mutating=True,
            check=False,
        )

    def start(self, proof: Proof, skiplock: bool = False) -> CommandResult:
        """`qm start`, only for a VM this run proved stopped (`prove_stopped_by_us`)."""
        proof.admit(self.vmid, "qm start", skiplock, node=self.transport.host)
        command = "qm start %s" + (" --skiplock 1" if skiplock else "")
        return self._run(command, self.vmid, timeout=120.0 + TASK_SLACK, mutating=True, check=False)

    def ha_stop(self, proof: Proof, timeout: int, hard: bool = False) -> CommandResult:
        """For an HA-managed VM: `qm shutdown` only queues `ha-manager crm-command stop
        vm:<vmid> <timeout>` and returns (`Requesting HA stop for VM <vmid>`); HA shuts it down
        rounds later and powers it off after the timeout. `hard`: `qm stop`, queued as a stop
        with timeout 0 (an immediate power-off). The result, never raising on rc."""
        proof.admit(self.vmid, "ha stop", node=self.transport.host)
        if hard:
            return self._run(
                "qm stop %s", self.vmid, timeout=TASK_SLACK + 20, mutating=True, check=False
            )
        # qm returns once the request is queued; the SSH timeout still allows a qm that acts
        # itself (PVE 9's disarmed HA in `ignore` mode runs the shutdown directly)
        command = "qm shutdown %s --timeout %s"
        return self._run(
            command,
            self.vmid,
            int(timeout),
            timeout=timeout + TASK_SLACK,
            mutating=True,
            check=False,
        )

    def ha_start(self, proof: Proof) -> CommandResult:
        """For an HA-managed VM: `qm start` only sets its HA state to started (`Requesting HA
        start for VM <vmid>`); HA starts it rounds later. The result, never raising on rc."""
        proof.admit(self.vmid, "ha start", node=self.transport.host)
        return self._run(
            "qm start %s", self.vmid, timeout=120.0 + TASK_SLACK, mutating=True, check=False
        )

    def snapshot(self, proof: Proof, name: str, description: str) -> CommandResult:
        """`qm snapshot` (disk only; PVE freezes the guest file systems through the agent)."""
        return self._snapshot_task(proof, "snapshot", name, "--description %s", description)

    def rollback(self, proof: Proof, name: str) -> CommandResult:
        """`qm rollback`: PVE hard-stops a running VM first and leaves it stopped."""
        return self._snapshot_task(proof, "rollback", name)

    def delsnapshot(self, proof: Proof, name: str) -> CommandResult:
        """`qm delsnapshot`, never `--force` (a disk snapshot that cannot go stays listed)."""
        return self._snapshot_task(proof, "delsnapshot", name)

    def _snapshot_task(
        self, proof: Proof, verb: str, name: str, options: str = "", *values: str
    ) -> CommandResult:
        """`qm <verb> <vmid> <name> [options]` on `proof`; the result, never raising on rc."""
        proof.admit(self.vmid, f"qm {verb}", node=self.transport.host)
        return self._run(
            f"qm {verb} %s %s {options}".rstrip(),
            self.vmid,
            _snapshot_name(name),
            *values,
            timeout=SNAPSHOT_TIMEOUT + TASK_SLACK,
            mutating=True,
            check=False,
        )


def _snapshot_name(name: str) -> str:
    if not SNAPSHOT_NAME.fullmatch(name) or name.lower() in {"current", "pending"}:
        raise ValueError(f"not a Proxmox snapshot name: {name!r}")
    return name
