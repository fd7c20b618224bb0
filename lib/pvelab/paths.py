"""Where the lab keeps its files: one object every lab module shares."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_lab_dir() -> Path:
    """The lab's state directory: $PVELAB_DIR, else `.lab/` in the project root."""
    return Path(os.environ.get("PVELAB_DIR", PROJECT_ROOT / ".lab")).resolve()


def default_cache_dir() -> Path:
    """The image cache: $PVELAB_CACHE, else ~/.cache/pvelab (kept across CI runs)."""
    base = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(os.environ.get("PVELAB_CACHE", Path(base) / "pvelab")).resolve()


def port_base() -> int:
    """First TCP port of the lab's loopback port range ($PVELAB_PORT_BASE, default 22000)."""
    return int(os.environ.get("PVELAB_PORT_BASE", "22000"))


@dataclass(frozen=True)
class LabPaths:
    """The lab directory tree, laid out like the parts of a PVE node it stands in for."""

    root: Path

    @classmethod
    def default(cls) -> LabPaths:
        return cls(default_lab_dir())

    @property
    def pve_conf_dir(self) -> Path:  # /etc/pve/qemu-server
        return self.root / "etc" / "pve" / "qemu-server"

    def conf(self, vmid: int) -> Path:
        return self.pve_conf_dir / f"{vmid}.conf"

    @property
    def run_dir(self) -> Path:
        """/var/run/qemu-server; moved under /run when the lab path is too long for sockets."""
        candidate = self.root / "run" / "qemu-server"
        if len(str(candidate)) + len("/999999999.qmp") < 100:
            return candidate
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path("/run") / f"pvelab-{digest}" / "qemu-server"

    def pidfile(self, vmid: int) -> Path:
        return self.run_dir / f"{vmid}.pid"

    def qmp_socket(self, vmid: int) -> Path:
        return self.run_dir / f"{vmid}.qmp"

    def qga_socket(self, vmid: int) -> Path:
        return self.run_dir / f"{vmid}.qga"

    @property
    def lock_dir(self) -> Path:  # /var/lock/qemu-server
        return self.root / "var" / "lock" / "qemu-server"

    def lockfile(self, vmid: int) -> Path:
        return self.lock_dir / f"lock-{vmid}.conf"

    @property
    def disks_dir(self) -> Path:
        return self.root / "disks"

    def disk(self, vmid: int) -> Path:
        return self.disks_dir / f"vm-{vmid}-disk-0.qcow2"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def qm_log(self) -> Path:
        """JSON lines, one per qm call: time, end time, argv, rc."""
        return self.log_dir / "qm.log"

    def serial_log(self, vmid: int) -> Path:
        return self.log_dir / f"serial-{vmid}.log"

    @property
    def bin_dir(self) -> Path:  # holds the stand-in `qm` on the PVE host's PATH
        return self.root / "bin"

    @property
    def pve_dir(self) -> Path:  # the PVE host's sshd: config, host key, authorized_keys
        return self.root / "pve"

    @property
    def keys_dir(self) -> Path:  # operator key, per-VM host keys
        return self.root / "keys"

    @property
    def operator_key(self) -> Path:
        return self.keys_dir / "id_ed25519"

    @property
    def seed_dir(self) -> Path:  # per-VM seed files handed to the guest through fw_cfg
        return self.root / "seed"

    @property
    def repo_dir(self) -> Path:  # the local apt repository served on loopback
        return self.root / "repo"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.yaml"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def state_file(self) -> Path:  # pids of the lab's daemons, ports, acceleration used
        return self.root / "lab.json"

    # -- the cluster (DESIGN.md "Cluster") ---------------------------------------------------
    @property
    def pve_etc(self) -> Path:  # /etc/pve: the cluster file system every node shares
        return self.root / "etc" / "pve"

    @property
    def vmlist(self) -> Path:
        """/etc/pve/.vmlist: which node holds each VM (pmxcfs format)."""
        return self.pve_etc / ".vmlist"

    @property
    def no_quorum_flag(self) -> Path:  # present while the lab's cluster has lost quorum
        return self.root / "cluster" / "no-quorum"

    @property
    def dump_dir(self) -> Path:  # storage `local`'s backup directory (/var/lib/vz/dump)
        return self.root / "dump"

    def node_dir(self, node: str) -> Path:
        """A PVE node's sshd files (config, host key, pidfile); the first node keeps `pve/`."""
        return self.pve_dir if node == "pve" else self.root / "nodes" / node

    def node_bin_dir(self, node: str) -> Path:
        """A PVE node's own bin dir (qm, pvesh, pvecm wrappers) first on its PATH."""
        return self.bin_dir if node == "pve" else self.node_dir(node) / "bin"
