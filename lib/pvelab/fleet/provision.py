"""Per-VM files on the PVE side: the qcow2 overlay, the PVE conf and its .vmlist entry."""

from __future__ import annotations

import json
from pathlib import Path

from pvelab.fleet.roster import VM, qemu_args, render_conf
from pvelab.paths import LabPaths
from pvelab.pve import cluster
from pvelab.pve.vmconf import edited_conf, parse_conf
from pvelab.sshcmd import local_run


def backing_file(disk: Path) -> str | None:
    info = local_run(["qemu-img", "info", "--force-share", "--output=json", str(disk)])
    return json.loads(info.stdout).get("backing-filename")


def create_overlay(paths: LabPaths, vm: VM, base: Path) -> Path:
    """A fresh overlay on `base` (absolute backing path): the guest as the image built it."""
    disk = paths.disk(vm.vmid)
    disk.parent.mkdir(parents=True, exist_ok=True)
    disk.unlink(missing_ok=True)
    local_run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.resolve()),
         str(disk)]
    )  # fmt: skip
    return disk


def ensure_overlay(paths: LabPaths, vm: VM, base: Path) -> bool:
    """Create the overlay unless one on this very base exists; True if it was (re)created."""
    disk = paths.disk(vm.vmid)
    if disk.exists() and backing_file(disk) == str(base.resolve()):
        return False
    create_overlay(paths, vm, base)
    return True


def write_conf(paths: LabPaths, vm: VM, kernel: Path, initrd: Path) -> Path:
    """A fresh conf (what `reset` restores)."""
    conf = paths.conf(vm.vmid)
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(render_conf(paths, vm, kernel, initrd))
    return conf


def ensure_conf(paths: LabPaths, vm: VM, kernel: Path, initrd: Path) -> str:
    """Write the conf if missing; else only bring `args` up to date, keeping other edits
    (faults such as `lock: backup` survive `up`; `reset` removes them). Returns what it did."""
    conf = paths.conf(vm.vmid)
    # .vmlist: a new VM goes to the first node; one already listed (migrated) stays put.
    cluster.register(paths, vm.vmid, cluster.FIRST_NODE)
    if not conf.exists():
        write_conf(paths, vm, kernel, initrd)
        return "created"
    text = conf.read_text()
    args = qemu_args(paths, vm, kernel, initrd)
    if parse_conf(text).get("args") == args:
        return "kept"
    conf.write_text(edited_conf(text, "args", args))
    return "args updated"
