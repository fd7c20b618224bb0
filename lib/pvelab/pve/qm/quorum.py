"""What `qm` cannot do without quorum: the checks PVE makes, with PVE's texts."""

from __future__ import annotations

import os

from pvelab.pve import cluster
from pvelab.pve.qm.context import Context, QmError


def check_cfs_quorum(ctx: Context) -> None:
    """PVE::Cluster::check_cfs_quorum (PCL `Cluster.pm`): start, migrate, create, clone."""
    if not cluster.quorate(ctx.paths):
        raise QmError(cluster.NO_QUORUM)


def check_config_writable(ctx: Context, vmid: int) -> None:
    """A config write without quorum: pmxcfs is read-only, so PVE's file_set_contents (PC
    `Tools.pm`) fails opening its temp file with EACCES (errno text inferred, reference §2.3)."""
    if not cluster.quorate(ctx.paths):
        tmp = f"/etc/pve/nodes/{ctx.node}/qemu-server/{vmid}.conf.tmp.{os.getpid()}"
        raise QmError(f"unable to open file '{tmp}' - Permission denied")
