"""The lab's Ansible-format inventory (DESIGN.md "Fleet"), read by pvepatch unchanged."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from pvelab.fleet.roster import FLEET, VM
from pvelab.paths import LabPaths
from pvelab.pve import cluster

PVE_HOST = cluster.FIRST_NODE
PIHOLE_VARS = {
    "pihole_resolve_name": "pi.hole",
    "pihole_blocked_name": "ads.example.com",
    "pihole_service": "dnsmasq",
    # QEMU 7.2's user-mode network with restrict=on relays TCP forwards but drops the guest's
    # UDP replies, so the lab's Pi-holes are queried over TCP (real DNS, the same dnsmasq).
    "pihole_dns_protocol": "tcp",
}
# The two Pi-holes serve the same clients: pvepatch never has both down at once.
REDUNDANCY_VARS = {"pvepatch_redundancy_group": "pihole"}


def build(paths: LabPaths, base: int, vms: Iterable[VM] = FLEET) -> dict[str, Any]:
    """The inventory as a dict: groups proxmox (both cluster nodes), ubuntu_vms (every VM, bound
    to `pve`, where provisioning puts it), pihole (DNS role and redundancy group)."""
    vms = list(vms)
    guests = {
        vm.name: {
            "ansible_host": "127.0.0.1",
            "ansible_port": vm.ssh_port(base),
            "vmid": vm.vmid,
            "proxmox_host": PVE_HOST,
        }
        for vm in vms
    }
    piholes = {vm.name: {"pihole_dns_port": vm.dns_port(base)} for vm in vms if vm.role == "pihole"}
    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(paths.operator_key),
                "ansible_ssh_common_args": (
                    f"-o UserKnownHostsFile={paths.known_hosts} -o StrictHostKeyChecking=yes"
                ),
            },
            "children": {
                "proxmox": {
                    "hosts": {
                        n.name: {"ansible_host": n.address, "ansible_port": base}
                        for n in cluster.NODES
                    }
                },
                "ubuntu_vms": {"hosts": guests},
                "pihole": {"hosts": piholes, "vars": {**PIHOLE_VARS, **REDUNDANCY_VARS}},
            },
        }
    }


def render(paths: LabPaths, base: int, vms: Iterable[VM] = FLEET) -> str:
    header = "# pvelab inventory (written by `python -m pvelab up`; Ansible YAML format)\n"
    body = yaml.safe_dump(build(paths, base, vms), sort_keys=False, default_flow_style=False)
    return header + body


def write(paths: LabPaths, base: int, vms: Iterable[VM] = FLEET) -> None:
    paths.inventory.write_text(render(paths, base, vms))
