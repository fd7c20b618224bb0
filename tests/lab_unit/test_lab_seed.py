"""Per-VM seeds (fw_cfg tar) and the pinned known_hosts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pvelab.fleet import roster, seed
from pvelab.paths import LabPaths
from pvelab.pve import node


@pytest.fixture
def paths(tmp_path: Path) -> LabPaths:
    p = LabPaths(tmp_path)
    seed.ensure_operator_key(p)
    return p


def test_seed_tar_holds_the_five_files(paths: LabPaths) -> None:
    tar = seed.write_seed(paths, roster.by_name("pihole"))
    members = seed.read_seed(tar)
    assert sorted(members) == sorted(seed.SEED_FILES)
    assert members["hostname"] == b"pihole\n"
    assert members["role"] == b"pihole\n"
    assert members["authorized_keys"] == (paths.keys_dir / "id_ed25519.pub").read_bytes()
    assert members["ssh_host_ed25519_key"].startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert members["ssh_host_ed25519_key.pub"].startswith(b"ssh-ed25519 ")


def test_each_vm_has_its_own_host_key(paths: LabPaths) -> None:
    pubs = set()
    for vm in roster.FLEET:
        seed.write_seed(paths, vm)
        pubs.add(seed.read_seed(roster.seed_tar(paths, vm))["ssh_host_ed25519_key.pub"])
    assert len(pubs) == len(roster.FLEET)


def test_reseed_keeps_the_host_key(paths: LabPaths) -> None:
    vm = roster.by_name("pbs")
    first = seed.read_seed(seed.write_seed(paths, vm))["ssh_host_ed25519_key"]
    again = seed.read_seed(seed.write_seed(paths, vm))["ssh_host_ed25519_key"]
    assert first == again


def test_known_hosts_pins_pve_host_and_vms(paths: LabPaths) -> None:
    node.write_files(paths, 22000)
    entries = [(22000, node.host_key(paths).with_suffix(".pub"))]
    for vm in roster.FLEET:
        seed.write_seed(paths, vm)
        key = seed.host_key(paths, vm)
        entries.append((vm.ssh_port(22000), key.with_name(key.name + ".pub")))
    lines = seed.write_known_hosts(paths, entries).read_text().splitlines()
    assert [line.split()[0] for line in lines] == [
        "[127.0.0.1]:22000", "[127.0.0.1]:22101", "[127.0.0.1]:22102",
        "[127.0.0.1]:22103", "[127.0.0.1]:22104", "[127.0.0.1]:22105",
    ]  # fmt: skip
    for line in lines:
        assert re.fullmatch(r"\[127\.0\.0\.1\]:\d+ ssh-ed25519 AAAA[A-Za-z0-9+/=]+", line), line
