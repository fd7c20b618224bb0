"""Which node holds a VM and which nodes the HA stack knows: the cluster stand-in's answers
(`pvelab.pve.cluster`: its NODES and the pmxcfs `.vmlist`)."""

from __future__ import annotations

import os

from pvelab.paths import LabPaths
from pvelab.pve import cluster

ENV_NODE = "PVELAB_NODE"  # set by each node's bin wrappers (node.py), as for qm


def local_node() -> str:
    """The node this `ha-manager` (or the CRM) runs on."""
    return os.environ.get(ENV_NODE) or cluster.FIRST_NODE


def vmlist(paths: LabPaths) -> dict[int, dict[str, str]]:
    """PVE::Cluster::get_vmlist()->{ids}: vmid -> {node, type} for every VM with a config."""
    found: dict[int, dict[str, str]] = {}
    for vmid in cluster.vmids(paths):
        node = cluster.vm_node(paths, vmid)
        if node is not None:
            found[vmid] = {"node": node, "type": "qemu"}
    return found


def vm_node(paths: LabPaths, vmid: int) -> str | None:
    """The node whose config holds VM `vmid`, None if no node has it."""
    return cluster.vm_node(paths, vmid)


def cluster_nodes(paths: LabPaths) -> list[str]:
    """The members the local node sees (all of them while quorate)."""
    return sorted(n.name for n in cluster.members(paths, local_node()))


def quorate(paths: LabPaths) -> bool:
    return cluster.quorate(paths)
