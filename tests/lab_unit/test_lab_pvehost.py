"""The PVE host sshd: its config, the qm wrapper, and (really started) the PATH sessions get."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from pvelab.fleet import seed
from pvelab.paths import LabPaths
from pvelab.pve import node
from pvelab.sshcmd import ssh_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sshd_config_listens_on_loopback_only(tmp_path: Path) -> None:
    text = node.sshd_config_text(LabPaths(tmp_path), 22000)
    lines = text.splitlines()
    assert "ListenAddress 127.0.0.1:22000" in lines
    assert [line for line in lines if line.startswith(("ListenAddress", "Port"))] == [
        "ListenAddress 127.0.0.1:22000"
    ]
    assert "PermitRootLogin prohibit-password" in lines
    assert "PasswordAuthentication no" in lines
    assert f"AuthorizedKeysFile {tmp_path}/pve/authorized_keys" in lines
    assert f"PidFile {tmp_path}/pve/sshd.pid" in lines
    path = f"{tmp_path}/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert f"SetEnv PATH={path} PVELAB_DIR={tmp_path} PVELAB_NODE=pve" in lines


def test_qm_wrapper_runs_the_stand_in_for_this_lab(tmp_path: Path) -> None:
    text = node.qm_wrapper_text(LabPaths(tmp_path), 24000, python="/venv/bin/python")
    assert text.startswith("#!/bin/sh\n")
    assert f'exec /venv/bin/python -m pvelab.pve.qm --lab {tmp_path} "$@"' in text
    assert "PVELAB_PORT_BASE=24000" in text
    assert "PVELAB_NODE=pve\n" in text  # explicit, never the machine's hostname


def test_sshd_config_passes_sshd_t(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path)
    seed.ensure_operator_key(paths)
    config = node.write_files(paths, 22000)
    subprocess.run([node.SSHD, "-t", "-f", str(config)], check=True)


@pytest.fixture
def pve(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real PVE host sshd on a free loopback port, stopped afterwards."""
    paths = LabPaths(tmp_path)
    port = free_port()
    seed.ensure_operator_key(paths)
    node.start(paths, port)
    seed.write_known_hosts(paths, [(port, node.host_key(paths).with_suffix(".pub"))])
    yield paths, port
    node.stop(paths)


def test_non_interactive_ssh_finds_the_stand_in_qm(pve) -> None:  # type: ignore[no-untyped-def]
    paths, port = pve
    result = ssh_run(paths, port, "command -v qm; id -u", host="pve", timeout=30)
    assert result.ok, result
    assert result.stdout.split() == [f"{paths.bin_dir}/qm", "0"]


def test_pve_host_refuses_unknown_keys(pve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths, port = pve
    other = seed.ensure_keypair(tmp_path / "other" / "id_ed25519", "stranger")
    stranger = LabPaths(tmp_path / "other-lab")
    stranger.keys_dir.mkdir(parents=True)
    (stranger.keys_dir / "id_ed25519").write_bytes(other.read_bytes())
    (stranger.keys_dir / "id_ed25519").chmod(0o600)
    stranger.known_hosts.write_text(paths.known_hosts.read_text())
    result = ssh_run(stranger, port, "true", host="pve", timeout=30)
    assert result.rc == 255
    assert "Permission denied" in result.stderr
