"""Keys and per-VM seeds: operator key, host keys, the fw_cfg seed tar, the pinned known_hosts."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from pvelab.fleet.roster import VM, seed_tar
from pvelab.paths import LabPaths
from pvelab.sshcmd import ensure_keypair, host_key_line

SEED_FILES = (
    "hostname",
    "ssh_host_ed25519_key",
    "ssh_host_ed25519_key.pub",
    "authorized_keys",
    "role",
)


def ensure_operator_key(paths: LabPaths) -> Path:
    return ensure_keypair(paths.operator_key, "pvelab-operator")


def host_key(paths: LabPaths, vm: VM) -> Path:
    return paths.seed_dir / str(vm.vmid) / "ssh_host_ed25519_key"


def write_seed(paths: LabPaths, vm: VM) -> Path:
    """seed/<vmid>/{hostname,host key,authorized_keys,role} and seed.tar packed from them."""
    vmdir = paths.seed_dir / str(vm.vmid)
    vmdir.mkdir(parents=True, exist_ok=True)
    ensure_keypair(host_key(paths, vm), f"root@{vm.name}")
    (vmdir / "hostname").write_text(vm.name + "\n")
    (vmdir / "role").write_text(vm.role + "\n")
    pub = paths.operator_key.with_name(paths.operator_key.name + ".pub")
    (vmdir / "authorized_keys").write_text(pub.read_text())
    tar = seed_tar(paths, vm)
    tmp = tar.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as out:
        for name in SEED_FILES:
            info = out.gettarinfo(str(vmdir / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o600 if name == "ssh_host_ed25519_key" else 0o644
            with open(vmdir / name, "rb") as data:
                out.addfile(info, data)
    os.replace(tmp, tar)
    return tar


def read_seed(tar: Path) -> dict[str, bytes]:
    """Members of a seed tar by name (for tests and `status`)."""
    with tarfile.open(tar) as src:
        result = {}
        for member in src.getmembers():
            data = src.extractfile(member)
            result[member.name] = data.read() if data else b""
        return result


KnownHost = tuple[int, Path] | tuple[int, Path, str]


def known_hosts_text(entries: Iterable[KnownHost]) -> str:
    """One pinned line per (port, public key file[, address]): each PVE node's and each VM's
    (address 127.0.0.1 unless given: pve2 listens on 127.0.0.2)."""
    lines = []
    for entry in entries:
        port, pub = entry[0], entry[1]
        address = entry[2] if len(entry) > 2 else "127.0.0.1"  # type: ignore[misc]
        lines.append(host_key_line(port, pub, address) + "\n")
    return "".join(lines)


def write_known_hosts(paths: LabPaths, entries: Iterable[KnownHost]) -> Path:
    paths.known_hosts.write_text(known_hosts_text(entries))
    return paths.known_hosts
