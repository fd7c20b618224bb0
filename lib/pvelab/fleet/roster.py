"""The lab's fleet of VMs, their ports and their PVE-format configs (DESIGN.md "VM config")."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pvelab.paths import LabPaths
from pvelab.sshcmd import LabError

MEMORY_MB = 384
DNS_TAG = "pvelab-dns"
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 quiet"


@dataclass(frozen=True)
class VM:
    name: str
    vmid: int
    role: str = "plain"  # or "pihole": serves DNS (dnsmasq configured like a Pi-hole)

    def ssh_port(self, base: int) -> int:
        return base + self.vmid

    def dns_port(self, base: int) -> int | None:
        return base + 1000 + self.vmid if self.role == "pihole" else None

    @property
    def mac(self) -> str:
        return f"BC:24:11:00:{self.vmid // 100:02X}:{self.vmid % 100:02X}"


FLEET: tuple[VM, ...] = (
    VM("pbs", 101),
    VM("pihole", 102, "pihole"),
    VM("pihole-backup", 103, "pihole"),
    VM("ca", 104),
    VM("grafana", 105),
)


def select(names: Iterable[str] | str | None = None) -> list[VM]:
    """VMs by name (list, or comma-separated string); None means $PVELAB_VMS, else all."""
    if names is None:
        names = os.environ.get("PVELAB_VMS") or None
    if names is None:
        return list(FLEET)
    if isinstance(names, str):
        names = [n for n in (p.strip() for p in names.split(",")) if n]
    by_name = {vm.name: vm for vm in FLEET}
    wanted = list(names)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise LabError(f"unknown VM(s) {', '.join(unknown)}; the fleet is {', '.join(by_name)}")
    return [vm for vm in FLEET if vm.name in wanted]


def by_name(name: str) -> VM:
    return select([name])[0]


def seed_tar(paths: LabPaths, vm: VM) -> Path:
    return paths.seed_dir / str(vm.vmid) / "seed.tar"


def qemu_args(paths: LabPaths, vm: VM, kernel: Path, initrd: Path) -> str:
    """The conf's `args:` value: direct kernel boot plus the seed handed over by fw_cfg."""
    return " ".join(
        [
            "-kernel", shlex.quote(str(kernel)),
            "-initrd", shlex.quote(str(initrd)),
            "-append", shlex.quote(KERNEL_CMDLINE),
            "-fw_cfg", shlex.quote(f"name=opt/pvelab/seed,file={seed_tar(paths, vm)}"),
        ]
    )  # fmt: skip


def render_conf(paths: LabPaths, vm: VM, kernel: Path, initrd: Path) -> str:
    """A fresh PVE config for `vm` (agent on, no lock, no pending changes)."""
    lines = [
        f"name: {vm.name}",
        f"memory: {MEMORY_MB}",
        "cores: 1",
        "ostype: l26",
        "agent: 1",
        f"net0: virtio={vm.mac},bridge=vmbr0",
        f"virtio0: local:vm-{vm.vmid}-disk-0,size=2G",
        f"args: {qemu_args(paths, vm, kernel, initrd)}",
    ]
    if vm.role == "pihole":
        lines.append(f"tags: {DNS_TAG}")
    return "\n".join(lines) + "\n"
