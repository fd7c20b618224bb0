"""The inventory pvepatch reads: Ansible YAML with the lab's groups, ports and SSH settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pvelab.fleet import inventory, roster
from pvelab.paths import LabPaths


@pytest.fixture
def inv(tmp_path: Path) -> dict:
    paths = LabPaths(tmp_path)
    inventory.write(paths, 22000, roster.FLEET)
    return yaml.safe_load(paths.inventory.read_text())


def test_all_vars_pin_key_and_known_hosts(inv: dict, tmp_path: Path) -> None:
    v = inv["all"]["vars"]
    assert v["ansible_user"] == "root"
    assert v["ansible_ssh_private_key_file"] == str(tmp_path / "keys" / "id_ed25519")
    assert v["ansible_ssh_common_args"] == (
        f"-o UserKnownHostsFile={tmp_path / 'known_hosts'} -o StrictHostKeyChecking=yes"
    )


def test_proxmox_group_is_both_cluster_nodes(inv: dict) -> None:
    hosts = inv["all"]["children"]["proxmox"]["hosts"]
    assert hosts == {
        "pve": {"ansible_host": "127.0.0.1", "ansible_port": 22000},
        "pve2": {"ansible_host": "127.0.0.2", "ansible_port": 22000},
    }


def test_ubuntu_vms_have_port_vmid_and_proxmox_host(inv: dict) -> None:
    hosts = inv["all"]["children"]["ubuntu_vms"]["hosts"]
    assert list(hosts) == ["pbs", "pihole", "pihole-backup", "ca", "grafana"]
    assert hosts["pbs"] == {
        "ansible_host": "127.0.0.1", "ansible_port": 22101, "vmid": 101, "proxmox_host": "pve",
    }  # fmt: skip
    assert [h["vmid"] for h in hosts.values()] == [101, 102, 103, 104, 105]


def test_pihole_group_has_dns_ports_and_names(inv: dict) -> None:
    group = inv["all"]["children"]["pihole"]
    assert group["hosts"] == {
        "pihole": {"pihole_dns_port": 23102},
        "pihole-backup": {"pihole_dns_port": 23103},
    }
    assert group["vars"] == {
        "pihole_resolve_name": "pi.hole",
        "pihole_blocked_name": "ads.example.com",
        "pihole_service": "dnsmasq",
        "pihole_dns_protocol": "tcp",
        "pvepatch_redundancy_group": "pihole",
    }


def test_subset_lists_only_selected_vms(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path)
    inventory.write(paths, 24000, roster.select("pbs,pihole"))
    inv = yaml.safe_load(paths.inventory.read_text())
    assert list(inv["all"]["children"]["ubuntu_vms"]["hosts"]) == ["pbs", "pihole"]
    assert inv["all"]["children"]["pihole"]["hosts"] == {"pihole": {"pihole_dns_port": 25102}}
