"""The lab's PVE host: its own sshd on 127.0.0.1:<base>, with the stand-in qm first on PATH."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

from pvelab import procs
from pvelab.paths import PROJECT_ROOT, LabPaths
from pvelab.sshcmd import LabError, ensure_keypair, local_run

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it
# Settings of the `up` process that qm, started by sshd with a clean environment, must share.
PASSED_ENV = ("PVELAB_CACHE", "PVELAB_ACCEL", "XDG_CACHE_HOME")


def host_path(paths: LabPaths) -> str:
    """PATH of every session on the PVE host: the lab's bin (qm) first."""
    return f"{paths.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"


def host_key(paths: LabPaths) -> Path:
    return paths.pve_dir / "ssh_host_ed25519_key"


def pidfile(paths: LabPaths) -> Path:
    return paths.pve_dir / "sshd.pid"


def sshd_config_text(paths: LabPaths, port: int) -> str:
    """sshd_config of the PVE host: loopback only, key-only root login, the lab's PATH."""
    pve = paths.pve_dir
    return "\n".join(
        [
            "# pvelab PVE host (written by `python -m pvelab up`)",
            f"ListenAddress 127.0.0.1:{port}",
            f"HostKey {host_key(paths)}",
            f"PidFile {pidfile(paths)}",
            f"AuthorizedKeysFile {pve / 'authorized_keys'}",
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
            f"SetEnv PATH={host_path(paths)} PVELAB_DIR={paths.root}",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def qm_wrapper_text(paths: LabPaths, base: int, python: str | None = None) -> str:
    """<lab>/bin/qm: runs the stand-in qm against this lab (its dir, ports, image cache)."""
    python = python or sys.executable
    lib = PROJECT_ROOT / "lib"
    env = {"PVELAB_PORT_BASE": str(base)}
    env.update({k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)})
    lines = [
        "#!/bin/sh",
        "# pvelab stand-in for Proxmox VE's qm (written by `python -m pvelab up`)",
        f"PYTHONPATH={shlex.quote(str(lib))}${{PYTHONPATH:+:$PYTHONPATH}}",
        *(f"{k}={shlex.quote(v)}" for k, v in env.items()),
        "export PYTHONPATH " + " ".join(env),
        f'exec {shlex.quote(python)} -m pvelab.pve.qm --lab {shlex.quote(str(paths.root))} "$@"',
    ]
    return "\n".join(lines) + "\n"


def write_files(paths: LabPaths, port: int) -> Path:
    """sshd_config, host key, authorized_keys (operator key) and bin/qm; returns the config."""
    paths.pve_dir.mkdir(parents=True, exist_ok=True)
    paths.bin_dir.mkdir(parents=True, exist_ok=True)
    ensure_keypair(host_key(paths), "root@pve")
    pub = paths.operator_key.with_name(paths.operator_key.name + ".pub")
    (paths.pve_dir / "authorized_keys").write_text(pub.read_text())
    config = paths.pve_dir / "sshd_config"
    config.write_text(sshd_config_text(paths, port))
    qm = paths.bin_dir / "qm"
    qm.write_text(qm_wrapper_text(paths, port))
    qm.chmod(0o755)
    return config


def running_pid(paths: LabPaths) -> int | None:
    """The PVE host sshd's pid if its pidfile names a live sshd started with our config."""
    try:
        pid = int(pidfile(paths).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    config = str(paths.pve_dir / "sshd_config")
    # sshd rewrites its argv into one title: "sshd: /usr/sbin/sshd -f <config> [listener] ..."
    return pid if procs.alive(pid) and config in " ".join(procs.cmdline(pid)) else None


def start(paths: LabPaths, port: int) -> int:
    """Start (or keep) the PVE host sshd; returns its pid."""
    config = write_files(paths, port)
    pid = running_pid(paths)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)  # re-read the freshly written config
        return pid
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    local_run([SSHD, "-t", "-f", str(config)])
    local_run([SSHD, "-f", str(config)])  # daemonizes; the pidfile appears once it listens
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = running_pid(paths)
        if pid is not None:
            return pid
        time.sleep(0.1)
    raise LabError(f"PVE host sshd ({config}) wrote no pidfile {pidfile(paths)} within 10 s")


def stop(paths: LabPaths) -> bool:
    """Stop the PVE host sshd (its listener; live sessions end on their own)."""
    pid = running_pid(paths)
    if pid is None:
        return False
    gone = procs.terminate(pid, grace=5)
    pidfile(paths).unlink(missing_ok=True)
    return gone
