"""The QEMU command line for a VM config, built like PVE's config_to_command (lab subset)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from pvelab.paths import LabPaths, port_base
from pvelab.pve.storage import volume
from pvelab.pve.vmconf import ConfError, parse_agent, parse_property_string

QEMU_BINARY = "qemu-system-x86_64"
DEFAULT_MEMORY_MB = 512  # PVE's `memory` default
# The guest's apt repository, reached through `guestfwd` (DESIGN.md, "Ports").
REPO_GUEST_ADDR = "10.0.2.100:80"
DNS_TAG = "pvelab-dns"


def accel_args(accel: str) -> list[str]:
    """`-accel` (and `-cpu`) for the verdict of `pvelab.accel.probe`."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # tb-size=64 cuts QEMU's RSS from ~760 MB to ~335 MB at no boot cost (lab-measurements).
    return ["-accel", "tcg,tb-size=64"]


def ssh_port(vmid: int) -> int:
    return port_base() + vmid


def dns_port(vmid: int) -> int:
    return port_base() + 1000 + vmid


def repo_port() -> int:
    return port_base() + 1


def guestfwd_target() -> str:
    """`cmd:` relay to the repo port, spawned per guest connection (see pvelab/pve/guestfwd.py).

    Not `tcp:127.0.0.1:<port>`: QEMU opens that single connection at start (failing the start
    when the repo server is down) and serves no later guest connection.
    """
    relay = Path(__file__).with_name("guestfwd.py")
    cmd = shlex.join([sys.executable, str(relay), "127.0.0.1", str(repo_port())])
    return "cmd:" + cmd.replace(",", ",,")  # QemuOpts: a literal comma is doubled


def has_tag(conf: dict[str, str], tag: str) -> bool:
    """PVE `tags` are separated by `;`, `,` or spaces."""
    return tag in re.split(r"[;,\s]+", conf.get("tags", ""))


def netdev_args(conf: dict[str, str], vmid: int, key: str) -> list[str]:
    """`netN: virtio=<MAC>,bridge=vmbr0` → restricted user-mode network with the lab's forwards."""
    props = parse_property_string(conf[key])
    model, mac = next(
        ((k, v) for k, v in props.items() if k in ("virtio", "e1000")), ("virtio", "")
    )
    netdev = [f"user,id={key},restrict=on"]
    if key == "net0":
        netdev.append(f"hostfwd=tcp:127.0.0.1:{ssh_port(vmid)}-:22")
        if has_tag(conf, DNS_TAG):
            netdev.append(f"hostfwd=udp:127.0.0.1:{dns_port(vmid)}-:53")
            netdev.append(f"hostfwd=tcp:127.0.0.1:{dns_port(vmid)}-:53")
        netdev.append(f"guestfwd=tcp:{REPO_GUEST_ADDR}-{guestfwd_target()}")
    device = "virtio-net-pci" if model == "virtio" else "e1000"
    device += f",netdev={key}" + (f",mac={mac}" if mac else "")
    return ["-netdev", ",".join(netdev), "-device", device]


def drive_args(conf: dict[str, str], vmid: int, key: str, paths: LabPaths) -> list[str]:
    """`virtioN: local:vm-<vmid>-disk-<n>[.raw],size=2G` → its file, with PVE's drive/device ids.

    `id=drive-<key>` names the block backend QMP addresses (`blockdev-snapshot-internal-sync`
    `{"device": "drive-virtio0"}`); the device keeps the config key as its id, as PVE's does.
    """
    try:
        vol = volume(conf[key].split(",", 1)[0], vmid, paths)
    except ConfError as exc:
        raise ConfError(f"{key}: {exc}") from exc
    drive = f"file={vol.path},if=none,id=drive-{key},format={vol.format}"
    return ["-drive", drive, "-device", f"virtio-blk-pci,drive=drive-{key},id={key}"]


def _indexed(conf: dict[str, str], prefix: str) -> list[str]:
    keys = [k for k in conf if re.fullmatch(rf"{prefix}\d+", k)]
    return sorted(keys, key=lambda k: int(k[len(prefix) :]))


def agent_args(conf: dict[str, str], vmid: int, paths: LabPaths) -> list[str]:
    """The guest agent chardev and port, exactly as PVE adds them (only when enabled)."""
    agent = parse_agent(conf.get("agent"))
    if not agent.enabled:
        return []
    args = ["-chardev", f"socket,path={paths.qga_socket(vmid)},server=on,wait=off,id=qga0"]
    if agent.type == "isa":
        return args + ["-device", "isa-serial,chardev=qga0"]
    return args + [
        "-device",
        "virtio-serial,id=qga0",
        "-device",
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ]


def qemu_command(
    conf: dict[str, str], vmid: int, paths: LabPaths, accel: str = "tcg", binary: str = QEMU_BINARY
) -> list[str]:
    """QEMU argv for VM `vmid` (PVE's config_to_command minus `-id`, `+pve`, `-no-shutdown`).

    No `-no-shutdown`: the lab has no qmeventd, so a guest poweroff must end QEMU.
    """
    cores = int(conf.get("cores", "1")) * int(conf.get("sockets", "1"))
    cmd = [
        binary,
        "-name",
        conf.get("name", f"vm{vmid}"),
        "-chardev",
        f"socket,id=qmp,path={paths.qmp_socket(vmid)},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-pidfile",
        str(paths.pidfile(vmid)),
        "-daemonize",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        f"file:{paths.serial_log(vmid)}",
        "-monitor",
        "none",
        "-m",
        str(int(conf.get("memory", DEFAULT_MEMORY_MB))),
        "-smp",
        str(cores),
        *accel_args(accel),
    ]
    cmd += agent_args(conf, vmid, paths)
    for key in _indexed(conf, "virtio"):
        cmd += drive_args(conf, vmid, key, paths)
    for key in _indexed(conf, "net"):
        cmd += netdev_args(conf, vmid, key)
    if conf.get("args"):
        cmd += shlex.split(conf["args"])
    return cmd
