"""The lab's PVE nodes: each its own sshd on <node address>:<base>, the stand-ins first on PATH."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

from pvelab import procs
from pvelab.paths import PROJECT_ROOT, LabPaths
from pvelab.pve import cluster
from pvelab.pve.cluster import FIRST_NODE
from pvelab.sshcmd import LabError, ensure_keypair, local_run

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it
# Settings of the `up` process that qm, started by sshd with a clean environment, must share.
PASSED_ENV = (
    "PVELAB_CACHE",
    "PVELAB_ACCEL",
    "XDG_CACHE_HOME",
    "PVELAB_MIGRATE_SECONDS",
    "PVELAB_PVE_VERSION",
)
# The stand-in commands in every node's bin dir, and the module each one runs.
COMMANDS = {"qm": "pvelab.pve.qm", "pvesh": "pvelab.pve.pvesh", "pvecm": "pvelab.pve.pvecm",
            "ha-manager": "pvelab.pve.ha"}  # fmt: skip


def host_path(paths: LabPaths, node: str = FIRST_NODE) -> str:
    """PATH of every session on a PVE node: the node's bin (qm, pvesh, pvecm) first."""
    return f"{paths.node_bin_dir(node)}:/usr/sbin:/usr/bin:/sbin:/bin"


def host_key(paths: LabPaths, node: str = FIRST_NODE) -> Path:
    return paths.node_dir(node) / "ssh_host_ed25519_key"


def pidfile(paths: LabPaths, node: str = FIRST_NODE) -> Path:
    return paths.node_dir(node) / "sshd.pid"


def sshd_config_text(paths: LabPaths, port: int, node: str = FIRST_NODE) -> str:
    """sshd_config of a PVE node: its loopback address only, key-only root login, its PATH."""
    home = paths.node_dir(node)
    return "\n".join(
        [
            f"# pvelab PVE node {node} (written by `python -m pvelab up`)",
            f"ListenAddress {cluster.address(node)}:{port}",
            f"HostKey {host_key(paths, node)}",
            f"PidFile {pidfile(paths, node)}",
            f"AuthorizedKeysFile {home / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # PAM's session modules could rewrite PATH; nothing here needs PAM.
            "UsePAM no",
            # The lab dir may live under /tmp (1777), which StrictModes rejects for any file below.
            "StrictModes no",
            "PermitUserEnvironment no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            "LogLevel ERROR",
            f"SetEnv PATH={host_path(paths, node)} PVELAB_DIR={paths.root} PVELAB_NODE={node}",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def wrapper_text(
    paths: LabPaths, base: int, module: str, node: str = FIRST_NODE, python: str | None = None
) -> str:
    """A node's bin/<command>: runs a stand-in module against this lab as node `node`."""
    python = python or sys.executable
    lib = PROJECT_ROOT / "lib"
    env = {"PVELAB_PORT_BASE": str(base), "PVELAB_NODE": node}
    env.update({k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)})
    command = module.rsplit(".", 1)[-1]
    lines = [
        "#!/bin/sh",
        f"# pvelab stand-in for Proxmox VE's {command} on node {node} (written by `pvelab up`)",
        f"PYTHONPATH={shlex.quote(str(lib))}${{PYTHONPATH:+:$PYTHONPATH}}",
        *(f"{k}={shlex.quote(v)}" for k, v in env.items()),
        "export PYTHONPATH " + " ".join(env),
        f'exec {shlex.quote(python)} -m {module} --lab {shlex.quote(str(paths.root))} "$@"',
    ]
    return "\n".join(lines) + "\n"


def qm_wrapper_text(
    paths: LabPaths, base: int, python: str | None = None, node: str = FIRST_NODE
) -> str:
    """<node bin>/qm: the stand-in qm of node `node` (PVELAB_NODE names it)."""
    return wrapper_text(paths, base, "pvelab.pve.qm", node, python)


def write_files(paths: LabPaths, port: int, node: str = FIRST_NODE) -> Path:
    """sshd_config, host key, authorized_keys (operator key) and the node's bin wrappers;
    returns the config."""
    home, bin_dir = paths.node_dir(node), paths.node_bin_dir(node)
    home.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    ensure_keypair(host_key(paths, node), f"root@{node}")
    pub = paths.operator_key.with_name(paths.operator_key.name + ".pub")
    (home / "authorized_keys").write_text(pub.read_text())
    config = home / "sshd_config"
    config.write_text(sshd_config_text(paths, port, node))
    for command, module in COMMANDS.items():
        wrapper = bin_dir / command
        wrapper.write_text(wrapper_text(paths, port, module, node))
        wrapper.chmod(0o755)
    return config


def running_pid(paths: LabPaths, node: str = FIRST_NODE) -> int | None:
    """A node's sshd pid if its pidfile names a live sshd started with our config."""
    try:
        pid = int(pidfile(paths, node).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    config = str(paths.node_dir(node) / "sshd_config")
    # sshd rewrites its argv into one title: "sshd: /usr/sbin/sshd -f <config> [listener] ..."
    return pid if procs.alive(pid) and config in " ".join(procs.cmdline(pid)) else None


def start(paths: LabPaths, port: int, node: str = FIRST_NODE) -> int:
    """Start (or keep) a PVE node's sshd; returns its pid."""
    config = write_files(paths, port, node)
    pid = running_pid(paths, node)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)  # re-read the freshly written config
        return pid
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    local_run([SSHD, "-t", "-f", str(config)])
    local_run([SSHD, "-f", str(config)])  # daemonizes; the pidfile appears once it listens
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = running_pid(paths, node)
        if pid is not None:
            return pid
        time.sleep(0.1)
    raise LabError(
        f"PVE node {node} sshd ({config}) wrote no pidfile {pidfile(paths, node)} within 10 s"
    )


def stop(paths: LabPaths, node: str = FIRST_NODE) -> bool:
    """Stop a PVE node's sshd (its listener; live sessions end on their own)."""
    pid = running_pid(paths, node)
    if pid is None:
        return False
    gone = procs.terminate(pid, grace=5)
    pidfile(paths, node).unlink(missing_ok=True)
    return gone
