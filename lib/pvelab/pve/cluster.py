"""The lab's two-node PVE cluster: its nodes, which node holds each VM (.vmlist), quorum.

Real PVE keeps a VM's config under /etc/pve/nodes/<node>/qemu-server/; pmxcfs derives the
virtual file /etc/pve/.vmlist from those directories. The lab keeps every conf in one directory
(`etc/pve/qemu-server/`) and writes `.vmlist` itself, in pmxcfs's format (PCL
`src/pmxcfs/status.c` `cfs_create_vmlist_msg`), as the one record of ownership.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvelab.paths import LabPaths

CLUSTER_NAME = "pvelab"
FIRST_NODE = "pve"


@dataclass(frozen=True)
class Node:
    name: str
    nodeid: int
    address: str  # the node's sshd and corosync ring0 address (loopback only)


NODES: tuple[Node, ...] = (Node("pve", 1, "127.0.0.1"), Node("pve2", 2, "127.0.0.2"))
NO_QUORUM = "cluster not ready - no quorum?"  # PCL `Cluster.pm` check_cfs_quorum


def node(name: str) -> Node | None:
    return next((n for n in NODES if n.name == name), None)


def node_names() -> list[str]:
    return [n.name for n in NODES]


def address(name: str) -> str:
    found = node(name)
    if found is None:
        raise KeyError(name)
    return found.address


# --- .vmlist -----------------------------------------------------------------------------


def read_vmlist(paths: LabPaths) -> dict[str, Any] | None:
    """The parsed .vmlist, or None when the lab has none (a standalone node: all VMs local)."""
    try:
        data = json.loads(paths.vmlist.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def vmlist_text(version: int, ids: dict[str, dict[str, Any]]) -> str:
    """pmxcfs's exact layout: `"<vmid>": { "node": ..., "type": ..., "version": N }` lines."""
    if not ids:
        return f'{{\n"version": {version}\n\n}}\n'
    rows = [
        f'"{vmid}": {{ "node": "{e["node"]}", "type": "{e["type"]}", "version": {e["version"]} }}'
        for vmid, e in sorted(ids.items(), key=lambda item: int(item[0]))
    ]
    return f'{{\n"version": {version},\n"ids": {{\n' + ",\n".join(rows) + "}\n\n}\n"


@contextmanager
def _vmlist_locked(paths: LabPaths) -> Iterator[dict[str, Any]]:
    """Read-modify-write of .vmlist under a flock; the caller edits the yielded dict."""
    paths.pve_etc.mkdir(parents=True, exist_ok=True)
    with open(paths.pve_etc / ".vmlist.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_vmlist(paths) or {"version": 0, "ids": {}}
        data.setdefault("ids", {})
        before = json.dumps(data, sort_keys=True)
        yield data
        if json.dumps(data, sort_keys=True) != before:
            tmp = paths.vmlist.with_name(f".vmlist.tmp.{os.getpid()}")
            tmp.write_text(vmlist_text(int(data["version"]), data["ids"]))
            os.replace(tmp, paths.vmlist)


def _set(data: dict[str, Any], vmid: int, node_name: str) -> None:
    data["version"] = int(data.get("version", 0)) + 1
    data["ids"][str(vmid)] = {"node": node_name, "type": "qemu", "version": data["version"]}


def register(paths: LabPaths, vmid: int, node_name: str = FIRST_NODE, *, keep: bool = True) -> str:
    """Record `vmid` on `node_name`; keep=True leaves a VM already listed where it is.
    Returns the node that holds it."""
    with _vmlist_locked(paths) as data:
        entry = data["ids"].get(str(vmid))
        if entry is None or (not keep and entry["node"] != node_name):
            _set(data, vmid, node_name)
        return str(data["ids"][str(vmid)]["node"])


def move(paths: LabPaths, vmid: int, node_name: str) -> None:
    """move_config_to_node: the VM now belongs to `node_name`."""
    if node(node_name) is None:
        raise KeyError(node_name)
    with _vmlist_locked(paths) as data:
        _set(data, vmid, node_name)


def vm_node(paths: LabPaths, vmid: int) -> str | None:
    """The node that holds the VM's config (None: no config). A conf the .vmlist does not
    name (yet) belongs to the first node, where provisioning puts every VM."""
    if not paths.conf(vmid).exists():
        return None
    entry = (read_vmlist(paths) or {}).get("ids", {}).get(str(vmid))
    return str(entry["node"]) if entry else FIRST_NODE


def on_node(paths: LabPaths, vmid: int, node_name: str) -> bool:
    """Whether `qm` on `node_name` sees the VM: its conf exists and the node holds it.
    Without a .vmlist the lab is one standalone node (the qm unit tests): every conf is local."""
    if not paths.conf(vmid).exists():
        return False
    if read_vmlist(paths) is None:
        return True
    return vm_node(paths, vmid) == node_name


def vmids(paths: LabPaths) -> list[int]:
    """Every VM with a config, any node."""
    found = (
        [p.stem for p in paths.pve_conf_dir.glob("*.conf")] if paths.pve_conf_dir.exists() else []
    )
    return sorted(int(s) for s in found if s.isdigit())


# --- quorum ------------------------------------------------------------------------------


def quorate(paths: LabPaths) -> bool:
    """The cluster has quorum unless the lab's `no-quorum` fault is in place."""
    return not paths.no_quorum_flag.exists()


def set_quorum(paths: LabPaths, quorate: bool, reason: str = "") -> None:
    """Lose (quorate=False) or regain quorum for every node of the lab."""
    if quorate:
        paths.no_quorum_flag.unlink(missing_ok=True)
        return
    paths.no_quorum_flag.parent.mkdir(parents=True, exist_ok=True)
    paths.no_quorum_flag.write_text((reason or "pvelab fault no-quorum") + "\n")


def members(paths: LabPaths, local: str) -> list[Node]:
    """The nodes the local node sees: all with quorum, only itself without (its partition)."""
    if quorate(paths):
        return list(NODES)
    return [n for n in NODES if n.name == local]


def command_line(argv: list[str] | None) -> tuple[LabPaths, str, list[str]]:
    """A stand-in command's `[--lab DIR] <args...>`: the lab, the node it runs on
    ($PVELAB_NODE, set by the node's wrapper) and its own arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    paths = LabPaths.default()
    if args[:1] == ["--lab"] and len(args) > 1:
        paths, args = LabPaths(Path(args[1]).resolve()), args[2:]
    return paths, os.environ.get("PVELAB_NODE") or FIRST_NODE, args
