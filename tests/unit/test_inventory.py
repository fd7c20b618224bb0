"""Inventory parsing (Ansible YAML) and every validation error, naming file, host and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pvepatch.errors import InventoryError
from pvepatch.inventory import load_inventory

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


BASE = """
all:
  vars:
    ansible_user: admin
  children:
    proxmox:
      hosts:
        pve: {ansible_host: 192.0.2.10}
    ubuntu_vms:
      vars:
        ansible_port: 2222
      hosts:
%s
    pihole:
      vars:
        ansible_host: 192.0.2.22
        pihole_resolve_name: pi.hole
        pihole_blocked_name: ads.example.com
      hosts:
        pihole:
"""


def inv(tmp_path: Path, hosts: str, **kw: str):
    return load_inventory(write(tmp_path, BASE % hosts), **kw)


def test_example_inventory_is_valid():
    inventory = load_inventory(ROOT / "inventory.yaml")
    assert [t.name for t in inventory.targets] == [
        "pbs",
        "pihole",
        "pihole-backup",
        "ca",
        "grafana",
        "bookstack",
        "npm",
    ]
    assert all(t.ssh.address.startswith("192.0.2.") for t in inventory.targets)
    npm = inventory.target("npm")
    assert npm.ssh.user == "ubuntu" and npm.ssh.become
    assert {t.name for t in inventory.targets if t.pihole} == {"pihole", "pihole-backup"}


def test_seed_form_and_variable_precedence(tmp_path):
    inventory = inv(
        tmp_path,
        """
        pbs: {ansible_host: 192.0.2.21, vmid: 101, proxmox_host: pve}
        pihole: {ansible_host: 192.0.2.22, vmid: 102, proxmox_host: pve, ansible_port: 22}
""",
    )
    pbs, pihole = inventory.targets
    assert (pbs.vmid, pbs.proxmox.name, pbs.ssh.address) == (101, "pve", "192.0.2.21")
    assert pbs.ssh.user == "admin"  # from all
    assert pbs.ssh.port == 2222  # group var beats all
    assert pihole.ssh.port == 22  # host var beats group
    assert pihole.pihole and pihole.pihole.resolve_name == "pi.hole" and pihole.pihole.port == 53
    assert pbs.pihole is None
    assert inventory.proxmox_hosts["pve"].ssh.address == "192.0.2.10"


def test_known_hosts_file_from_ssh_common_args(tmp_path):
    inventory = inv(
        tmp_path,
        """
        pbs: {vmid: 101, proxmox_host: pve, ansible_ssh_common_args: "-o UserKnownHostsFile=/lab/kh -o StrictHostKeyChecking=yes"}
""",
    )
    assert inventory.targets[0].ssh.known_hosts_files == (Path("/lab/kh"),)


@pytest.mark.parametrize(
    "hosts, message",
    [
        (
            "        pbs: {proxmox_host: pve}",
            "host 'pbs': 'vmid' is missing: every target VM must define vmid and proxmox_host",
        ),
        (
            "        pbs: {vmid: 10a, proxmox_host: pve}",
            "host 'pbs': 'vmid' must be an integer, got '10a'",
        ),
        (
            "        pbs: {vmid: 99, proxmox_host: pve}",
            "host 'pbs': 'vmid' must be between 100 and 999999999, got 99",
        ),
        (
            "        pbs: {vmid: true, proxmox_host: pve}",
            "host 'pbs': 'vmid' must be an integer, got True",
        ),
        ("        pbs: {vmid: 101}", "host 'pbs': 'proxmox_host' is missing"),
        (
            "        pbs: {vmid: 101, proxmox_host: pve2}",
            "host 'pbs': 'proxmox_host' names 'pve2', which is not a host of the inventory",
        ),
        (
            "        pbs: {vmid: 101, proxmox_host: pve}\n        ca: {vmid: 101, proxmox_host: pve}",
            "host 'ca': 'vmid' 101 on Proxmox host 'pve' is also the vmid of 'pbs'",
        ),
        (
            "        pbs: {vmid: 101, proxmox_host: pve, ansible_port: http}",
            "host 'pbs': 'ansible_port' must be an integer, got 'http'",
        ),
        (
            "        pbs: {vmid: 101, proxmox_host: pve, ansible_ssh_private_key_file: /nonexistent/key}",
            "host 'pbs': 'ansible_ssh_private_key_file' file not found: /nonexistent/key",
        ),
    ],
)
def test_validation_errors_name_file_host_and_field(tmp_path, hosts, message):
    with pytest.raises(InventoryError) as excinfo:
        inv(tmp_path, hosts)
    assert str(excinfo.value) == f"{tmp_path / 'inventory.yaml'}: {message}"


def test_same_vmid_on_two_proxmox_hosts_is_fine(tmp_path):
    text = (
        BASE
        % "        pbs: {vmid: 101, proxmox_host: pve}\n        ca: {vmid: 101, proxmox_host: pve2}"
    ).replace(
        "        pve: {ansible_host: 192.0.2.10}",
        "        pve: {ansible_host: 192.0.2.10}\n        pve2:",
    )
    inventory = load_inventory(write(tmp_path, text))
    assert [(t.name, t.proxmox.name) for t in inventory.targets] == [("pbs", "pve"), ("ca", "pve2")]


def test_seed_style_pihole_gets_defaults_and_no_block_check(tmp_path):
    """Only a group membership: resolve pi.hole, no blocked name (the check is skipped)."""
    text = """
all:
  children:
    proxmox:
      hosts:
        pve:
    ubuntu_vms:
      hosts:
        pihole: {ansible_host: 192.0.2.22, vmid: 102, proxmox_host: pve}
    pihole:
      hosts:
        pihole:
"""
    spec = load_inventory(write(tmp_path, text)).target("pihole").pihole
    assert spec is not None
    assert (spec.server, spec.port, spec.resolve_name, spec.blocked_name, spec.service) == (
        "192.0.2.22",
        53,
        "pi.hole",
        None,
        "pihole-FTL",
    )


def test_pihole_dns_server_given_as_a_name_is_resolved(tmp_path):
    text = (BASE % "        pihole: {vmid: 102, proxmox_host: pve}").replace(
        "        ansible_host: 192.0.2.22\n", "        pihole_dns_server: localhost\n"
    )
    spec = load_inventory(write(tmp_path, text)).target("pihole").pihole
    assert spec is not None and spec.server_name == "localhost"
    assert spec.server in {"127.0.0.1", "::1"}


def test_yaml_syntax_error_names_line(tmp_path):
    with pytest.raises(
        InventoryError,
        match=r"inventory.yaml: YAML syntax error at line 3, column 1: expected the node content",
    ):
        load_inventory(write(tmp_path, "all:\n  children: [\n"))


def test_missing_file(tmp_path):
    with pytest.raises(InventoryError, match="cannot read inventory: No such file or directory"):
        load_inventory(tmp_path / "nope.yaml")


def test_unknown_group_and_empty(tmp_path):
    with pytest.raises(InventoryError, match="target group 'web' not found"):
        inv(tmp_path, "        pbs: {vmid: 101, proxmox_host: pve}", group="web")
    with pytest.raises(InventoryError, match="the inventory is empty"):
        load_inventory(write(tmp_path, ""))


def test_limit_by_name_group_and_exclusion(tmp_path):
    hosts = "        pbs: {vmid: 101, proxmox_host: pve}\n        pihole: {vmid: 102, proxmox_host: pve}\n        ca: {vmid: 104, proxmox_host: pve}"
    assert [t.name for t in inv(tmp_path, hosts, limit="ca").targets] == ["ca"]
    assert [t.name for t in inv(tmp_path, hosts, limit="pihole,ca").targets] == ["pihole", "ca"]
    assert [t.name for t in inv(tmp_path, hosts, limit="ubuntu_vms,!pihole").targets] == [
        "pbs",
        "ca",
    ]
    with pytest.raises(InventoryError, match="--limit: 'web1' is neither a host nor a group"):
        inv(tmp_path, hosts, limit="web1")
    with pytest.raises(InventoryError, match="selects no host of group 'ubuntu_vms'"):
        inv(tmp_path, hosts, limit="pve")


def test_proxmox_host_in_the_target_group_is_refused(tmp_path):
    """pve is bound as a Proxmox host and listed in ubuntu_vms: refused, never a target."""
    with pytest.raises(InventoryError) as excinfo:
        inv(tmp_path, "        pbs: {vmid: 101, proxmox_host: pve}\n        pve:")
    assert (
        f"{tmp_path / 'inventory.yaml'}: host 'pve': is a Proxmox host (the proxmox_host of "
        "'pbs', in group 'proxmox') and also in target group 'ubuntu_vms': a Proxmox host is "
        "never patched by pvepatch; remove it from 'ubuntu_vms'" in str(excinfo.value).splitlines()
    )


def test_proxmox_group_member_in_the_target_group_is_refused(tmp_path):
    text = (
        (BASE % "        pbs: {vmid: 101, proxmox_host: pve}")
        .replace(
            "        pve: {ansible_host: 192.0.2.10}",
            "        pve: {ansible_host: 192.0.2.10}\n        pve2: {vmid: 200, proxmox_host: pve}",
        )
        .replace("    ubuntu_vms:\n", "    ubuntu_vms:\n      children:\n        proxmox:\n")
    )
    with pytest.raises(
        InventoryError,
        match=r"host 'pve2': is a Proxmox host \(in group 'proxmox'\) and also in target group",
    ):
        load_inventory(write(tmp_path, text))


def test_limit_name_that_is_both_group_and_host_warns_as_ansible(tmp_path):
    inventory = load_inventory(ROOT / "inventory.yaml", limit="pihole")
    assert [t.name for t in inventory.targets] == ["pihole", "pihole-backup"]
    assert inventory.warnings == [
        "--limit 'pihole': found both group and host with same name: selecting the group, as "
        "Ansible does (hosts: pihole, pihole-backup); for host 'pihole' alone write "
        "--limit 'pihole,!pihole-backup'"
    ]
    alone = load_inventory(ROOT / "inventory.yaml", limit="pihole,!pihole-backup")
    assert [t.name for t in alone.targets] == ["pihole"]
    assert load_inventory(ROOT / "inventory.yaml", limit="pbs").warnings == []


def test_vault_value_where_unused_is_accepted(tmp_path):
    hosts = """        pbs:
          vmid: 101
          proxmox_host: pve
          ansible_become_password: !vault |
            $ANSIBLE_VAULT;1.1;AES256
            6162636465
"""
    assert [t.name for t in inv(tmp_path, hosts).targets] == ["pbs"]


def test_ansible_unsafe_tag_is_a_plain_string(tmp_path):
    inventory = inv(
        tmp_path, "        pbs: {vmid: 101, proxmox_host: pve, ansible_user: !unsafe 'op{{x}}'}"
    )
    assert inventory.targets[0].ssh.user == "op{{x}}"


def test_duplicate_key_is_a_warning_naming_the_line(tmp_path):
    inventory = inv(tmp_path, "        pbs: {vmid: 101, proxmox_host: pve, vmid: 101}")
    assert inventory.warnings == [
        f"{tmp_path / 'inventory.yaml'}: line 13: key 'vmid' is given twice in one mapping; "
        "the last one is used (as Ansible does)"
    ]


def test_read_yaml_gives_vault_values_as_placeholders(tmp_path):
    from pvepatch.inventory import read_yaml
    from pvepatch.inventory.source import Vault

    path = write(
        tmp_path, "all:\n  vars:\n    ansible_become_password: !vault |\n      $ANSIBLE_VAULT;1.1\n"
    )
    value = read_yaml(path)["all"]["vars"]["ansible_become_password"]
    assert isinstance(value, Vault) and value == "$ANSIBLE_VAULT;1.1\n"
