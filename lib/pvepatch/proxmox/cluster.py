"""Parsers of the cluster-wide answers: where a VM lives, HA, quorum, pending changes, backups.

Pure functions over captured text, tested with real PVE strings
(`../shared/reference/proxmox-ha-cluster-snapshot.md` §1-3 and §5).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# `/cluster/resources` answers for the whole cluster from any node (pmxcfs): `node` is where the
# VM's config is now, `hastate` is there only for HA resources (§2.1).
RESOURCES = "pvesh get /cluster/resources --type vm --output-format json"
QUORUM = "pvecm status"
BACKUP_STORAGES = "pvesh get /nodes/%s/storage --content backup --output-format json"
BACKUPS = "pvesh get /nodes/%s/storage/%s/content --content backup --vmid %s --output-format json"
# A PVE node name (pve-node format: a host name label) and a storage id (pve-storage-id).
NODE_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
STORAGE_ID = re.compile(r"[a-zA-Z][a-zA-Z0-9._-]*[a-zA-Z0-9]")
# `ignored` HA resources are left to qm: "All API calls ... bypassing the HA stack" (§1.3).
HA_UNMANAGED = {"ignored"}
# HA states in which pvepatch does not touch a VM: HA needs an admin, or is moving it (§1.3).
HA_HANDS_OFF = {"error", "fence", "recovery", "freeze", "migrate", "relocate"}


@dataclass(frozen=True)
class VMResource:
    """One VM in `pvesh get /cluster/resources --type vm`."""

    vmid: int
    node: str
    status: str
    name: str = ""
    hastate: str | None = None  # only for HA resources: the CRM state, else the requested one
    lock: str | None = None

    @property
    def ha_managed(self) -> bool:
        return self.hastate is not None and self.hastate not in HA_UNMANAGED


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not JSON ({exc.msg}): {text.strip()[:200]!r}") from exc


def _list_of_dicts(text: str, what: str) -> list[dict[str, Any]]:
    data = _json(text, what)
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ValueError(f"{what} is not a JSON list of objects: {text.strip()[:200]!r}")
    return data


def parse_resources(text: str) -> dict[int, VMResource]:
    """`pvesh get /cluster/resources --type vm --output-format json`: the QEMU VMs by vmid
    (containers are left out). Raise ValueError on anything that is not PVE's answer."""
    what = "pvesh get /cluster/resources"
    result: dict[int, VMResource] = {}
    for entry in _list_of_dicts(text, what):
        if entry.get("type") != "qemu":
            continue
        vmid, node = entry.get("vmid"), entry.get("node")
        if not isinstance(vmid, int) or isinstance(vmid, bool) or not isinstance(node, str):
            raise ValueError(f"{what}: an entry without an integer vmid and a node: {entry!r:.200}")
        if vmid in result:
            raise ValueError(f"{what}: VM {vmid} is listed twice")
        if not NODE_NAME.fullmatch(node):
            raise ValueError(f"{what}: VM {vmid} has a node name PVE never gives: {node!r:.80}")
        hastate, lock = entry.get("hastate"), entry.get("lock")
        result[vmid] = VMResource(
            vmid=vmid,
            node=node,
            status=str(entry.get("status", "unknown")),
            name=str(entry.get("name", "")),
            hastate=str(hastate) if hastate else None,
            lock=str(lock) if lock else None,
        )
    return result


@dataclass(frozen=True)
class Quorum:
    """What `pvecm status` says: quorate or not, or no cluster at all (always quorate)."""

    quorate: bool
    standalone: bool = False

    def __str__(self) -> str:
        if self.standalone:
            return "a single node, not in a cluster (always quorate)"
        return "quorate" if self.quorate else "NOT quorate"


_QUORATE = re.compile(r"^Quorate:\s+(Yes|No)\s*$", re.MULTILINE)
# PVE/Corosync.pm on a node that is not in a cluster.
_NO_CLUSTER = "Corosync config '/etc/pve/corosync.conf' does not exist"


def parse_pvecm_status(stdout: str, stderr: str) -> Quorum:
    """`pvecm status`: the `Quorate:` line of corosync-quorumtool. Its exit code says nothing
    useful (1 when quorate, 0 when not, §2.3), so only the text counts."""
    match = _QUORATE.search(stdout)
    if match:
        return Quorum(quorate=match.group(1) == "Yes")
    if _NO_CLUSTER in stderr and not stdout.strip():
        return Quorum(quorate=True, standalone=True)
    text = (stdout.strip() or stderr.strip())[:200]
    raise ValueError(f"no 'Quorate:' line in pvecm status: {text!r}")


@dataclass(frozen=True)
class PendingChange:
    """One key `qm pending` shows as changed: to become `new`, or to be deleted."""

    key: str
    current: str | None
    new: str | None
    delete: bool = False

    def __str__(self) -> str:
        if self.delete:
            return f"{self.key}: delete (now {self.current})"
        if self.current is None:
            return f"{self.key}: add {self.new}"
        return f"{self.key}: {self.current} -> {self.new}"


_PENDING_LINE = re.compile(r"(cur|new|del) ([a-z][a-z0-9_-]*(?:\[\d+\])?): ?(.*)")


def parse_pending(text: str) -> list[PendingChange]:
    """`qm pending <vmid>` (format_pending: `cur`/`new`/`del <key>: <value>`, sorted by key,
    §3.1): the keys with a `new` or `del` line. Every current key has a `cur` line; those
    alone are not pending. Raise ValueError on any other line."""
    current: dict[str, str] = {}
    new: dict[str, str] = {}
    deleted: dict[str, str] = {}
    for line in text.split("\n"):
        if not line.strip():
            continue
        match = _PENDING_LINE.fullmatch(line.removesuffix("\r"))
        if not match:
            raise ValueError(f"unexpected line in qm pending output: {line[:200]!r}")
        kind, key, value = match.groups()
        {"cur": current, "new": new, "del": deleted}[kind][key] = value
    changes = [PendingChange(k, current.get(k), v) for k, v in new.items()]
    changes += [PendingChange(k, v, None, delete=True) for k, v in deleted.items()]
    return sorted(changes, key=lambda c: c.key)


def parse_backup_storages(text: str) -> list[str]:
    """`pvesh get /nodes/<node>/storage --content backup`: the names of the enabled, active
    storages that hold backups."""
    names = []
    for entry in _list_of_dicts(text, "pvesh get /nodes/<node>/storage"):
        storage = entry.get("storage")
        if not isinstance(storage, str) or not STORAGE_ID.fullmatch(storage):
            raise ValueError(f"a storage without a usable name: {entry!r:.200}")
        if entry.get("enabled", 1) in (0, "0") or entry.get("active", 1) in (0, "0"):
            continue
        names.append(storage)
    return names


@dataclass(frozen=True)
class Backup:
    """One backup of a VM in a storage's content listing."""

    volid: str
    ctime: int  # epoch seconds (file storages: from the file name, in the node's time zone)


def parse_backups(text: str, vmid: int) -> list[Backup]:
    """`pvesh get /nodes/<node>/storage/<storage>/content --content backup --vmid <vmid>`:
    this VM's backups (§5: `volid`, `vmid`, `ctime`)."""
    backups = []
    for entry in _list_of_dicts(text, "pvesh get .../content --content backup"):
        if entry.get("content", "backup") != "backup" or entry.get("vmid") != vmid:
            continue
        volid, ctime = entry.get("volid"), entry.get("ctime")
        if not isinstance(volid, str) or not isinstance(ctime, int) or isinstance(ctime, bool):
            raise ValueError(f"a backup without a volid and an integer ctime: {entry!r:.200}")
        backups.append(Backup(volid, ctime))
    return backups


# The config keys PVE builds the cloud-init user-data and network-config from: a change to one
# gives a new instance-id at the next start (reference §3.3).
CLOUDINIT_KEYS = re.compile(
    r"ciuser|cipassword|sshkeys|name|searchdomain|nameserver|ciupgrade|citype|cicustom"
    r"|ipconfig\d+|net\d+"
)
_DRIVE = re.compile(r"(ide|sata|scsi|virtio)\d+")


def cloudinit_drive(config: dict[str, str]) -> str | None:
    """The key of the VM's cloud-init drive (`ide2: local:vm-101-cloudinit,media=cdrom`)."""
    for key, value in sorted(config.items()):
        volume = value.split(",", 1)[0]
        if _DRIVE.fullmatch(key) and re.search(r"(^|[:/])vm-\d+-cloudinit(\.\w+)?$", volume):
            return key
    return None


def parse_cloudinit_meta(text: str) -> str:
    """`qm cloudinit dump <vmid> meta`: the instance-id the next start gives the guest (NoCloud
    `instance-id: <sha1>`, or ConfigDrive2's JSON `uuid`)."""
    match = re.search(r"^instance-id:\s*(\S+)\s*$", text, re.MULTILINE)
    if match:
        return match.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("uuid"), str):
        return str(data["uuid"])
    raise ValueError(f"no instance-id in qm cloudinit dump meta: {text.strip()[:200]!r}")
