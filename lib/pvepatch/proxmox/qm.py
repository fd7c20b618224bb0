"""A thin client for `qm` on a Proxmox host: commands built from validated values, outputs parsed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pvepatch.errors import QmError
from pvepatch.transport.command import CommandResult, Transport

AGENT_PORT = "/dev/virtio-ports/org.qemu.guest_agent.0"
# Timeout of the SSH command around a `qm` task, beyond the task's own --timeout.
TASK_SLACK = 60.0


def parse_qm_status(text: str) -> str:
    """`status: running` -> 'running'. Raise ValueError on anything else."""
    match = re.fullmatch(r"status: (\S+)\s*", text)
    if not match:
        raise ValueError(f"unexpected 'qm status' output: {text.strip()[:200]!r}")
    return match.group(1)


def parse_key_values(text: str) -> dict[str, str]:
    """`key: value` lines (qm config, qm status --verbose top level); nested lines are skipped."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(("\t", " ")):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"unexpected line in qm output: {line[:200]!r}")
        result[key.strip()] = value.strip()
    return result


def parse_agent_option(value: str | None) -> dict[str, str]:
    """PVE's `agent` property string: '1', 'enabled=1,type=virtio', '1,freeze-fs=1'."""
    result: dict[str, str] = {"enabled": "0"}
    if not value:
        return result
    for i, part in enumerate(value.split(",")):
        key, sep, val = part.partition("=")
        if not sep:
            if i != 0:
                raise ValueError(f"bad agent option {value!r}")
            result["enabled"] = key.strip()
        else:
            result[key.strip()] = val.strip()
    return result


def agent_enabled(config: dict[str, str]) -> bool:
    return parse_agent_option(config.get("agent")).get("enabled") in {"1", "true", "yes", "on"}


def net_macs(config: dict[str, str]) -> set[str]:
    """MAC addresses of the VM's NICs (`net0: virtio=BC:24:11:..,bridge=vmbr0`)."""
    macs = set()
    for key, value in config.items():
        if re.fullmatch(r"net\d+", key):
            match = re.search(r"=([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})", value)
            if match:
                macs.add(match.group(1).lower())
    return macs


def parse_agent_output(text: str) -> Any:
    """Output of `qm guest cmd`: empty for {}, a bare scalar, or Perl-pretty JSON."""
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped[0] in "{[":
        data = json.loads(stripped)
        if isinstance(data, dict) and set(data) == {"error"}:
            raise ValueError(f"guest agent error: {data['error']}")
        return data
    return stripped


@dataclass(frozen=True)
class RunStatus:
    """`qm status --verbose`: what the hypervisor says about the VM's QEMU process."""

    status: str
    pid: int | None
    uptime: int | None
    lock: str | None

    @classmethod
    def parse(cls, text: str) -> RunStatus:
        kv = parse_key_values(text)
        if "status" not in kv:
            raise ValueError(f"no 'status' in 'qm status --verbose' output: {text.strip()[:200]!r}")

        def number(key: str) -> int | None:
            return int(kv[key]) if kv.get(key, "").isdigit() else None

        return cls(
            kv.get("qmpstatus") or kv["status"], number("pid"), number("uptime"), kv.get("lock")
        )


class Qm:
    """`qm` for one VM, run on its Proxmox host through a Transport."""

    def __init__(self, transport: Transport, vmid: int):
        if not isinstance(vmid, int) or isinstance(vmid, bool):
            raise TypeError(f"vmid must be an int, got {vmid!r}")
        self.transport = transport
        self.vmid = vmid

    def _run(
        self,
        command: str,
        *args: object,
        timeout: float = 30.0,
        mutating: bool = False,
        check: bool = True,
    ) -> CommandResult:
        result = self.transport.run(command, *args, timeout=timeout, mutating=mutating)
        if check and not result.ok:
            raise QmError(
                result, self.vmid, f"qm failed for VM {self.vmid}: {_first_line(result.stderr)}"
            )
        return result

    def _parsed(self, result: CommandResult, parser: Any) -> Any:
        try:
            return parser(result.stdout)
        except ValueError as exc:
            raise QmError(result, self.vmid, f"cannot understand qm output: {exc}") from exc

    # --- read-only -------------------------------------------------------------------------
    def status(self) -> str:
        return self._parsed(self._run("qm status %s", self.vmid), parse_qm_status)  # type: ignore[no-any-return]

    def run_status(self) -> RunStatus:
        return self._parsed(self._run("qm status %s --verbose", self.vmid), RunStatus.parse)  # type: ignore[no-any-return]

    def config(self) -> dict[str, str]:
        return self._parsed(self._run("qm config %s", self.vmid), parse_key_values)  # type: ignore[no-any-return]

    def pending_config(self) -> dict[str, str]:
        """The configuration the running QEMU was started with (`--current`)."""
        return self._parsed(self._run("qm config %s --current", self.vmid), parse_key_values)  # type: ignore[no-any-return]

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

    # --- mutating --------------------------------------------------------------------------
    def set_agent(self, enabled: bool = True) -> CommandResult:
        return self._run(
            "qm set %s --agent %s", self.vmid, f"enabled={int(enabled)}", mutating=True
        )

    def shutdown(
        self, timeout: int, skiplock: bool = False, force_stop: bool = False
    ) -> CommandResult:
        """Clean shutdown through the agent (or ACPI); returns the result, never raises on rc."""
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

    def stop(self, timeout: int = 60, skiplock: bool = False) -> CommandResult:
        command = "qm stop %s --timeout %s" + (" --skiplock 1" if skiplock else "")
        return self._run(
            command,
            self.vmid,
            int(timeout),
            timeout=timeout + TASK_SLACK + 20,
            mutating=True,
            check=False,
        )

    def start(self, skiplock: bool = False) -> CommandResult:
        command = "qm start %s" + (" --skiplock 1" if skiplock else "")
        return self._run(command, self.vmid, timeout=120.0 + TASK_SLACK, mutating=True, check=False)


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no error text)"
