"""Read an Ansible YAML inventory and bind each target VM to its Proxmox host.

Every problem of the inventory is collected and raised at once, as one `InventoryProblems`
(an `InventoryError`) whose message lists each problem as `FILE: host 'X': 'field' ...`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pvepatch.inventory import build
from pvepatch.inventory.fields import Fields
from pvepatch.inventory.limit import select
from pvepatch.inventory.model import (
    DEFAULT_GROUP,
    PIHOLE_GROUP,
    PROXMOX_GROUP,
    VMID_MAX,
    VMID_MIN,
    Inventory,
    PiholeSpec,
    ProxmoxHost,
    SSHSpec,
    Target,
)
from pvepatch.inventory.problems import Problems
from pvepatch.inventory.resolve import resolve_address
from pvepatch.inventory.source import load_yaml
from pvepatch.inventory.tree import Tree, host_name_problem

__all__ = [
    "DEFAULT_GROUP",
    "PIHOLE_GROUP",
    "PROXMOX_GROUP",
    "VMID_MAX",
    "VMID_MIN",
    "Inventory",
    "PiholeSpec",
    "ProxmoxHost",
    "SSHSpec",
    "Target",
    "host_name_problem",
    "load_inventory",
    "names",
    "read_yaml",
    "resolve_address",
]


def read_yaml(path: str | Path) -> Any:
    """The inventory file as plain data, read as load_inventory reads it (bounded; `!vault`
    values become `Vault` strings); raises InventoryError. For other readers, e.g. the redactor."""
    problems = Problems(str(path))
    return load_yaml(Path(path), problems)


def load_inventory(
    path: str | Path,
    group: str = DEFAULT_GROUP,
    limit: str | None = None,
    resolve: build.Resolver = resolve_address,
) -> Inventory:
    """Parse and validate the inventory; raise one InventoryError listing every problem.

    `resolve` turns a Pi-hole's DNS server name into an address (bounded; tests pass their own).
    """
    path = Path(path)
    problems = Problems(str(path))
    tree = Tree(load_yaml(path, problems), problems)
    chosen = select(tree, problems, group, limit)
    binder = _Binder(tree, problems, group)
    targets = [binder.target(name, path.parent, resolve) for name in chosen]
    redundancy = binder.redundancy(
        {t.redundancy_group for t in targets if t is not None and t.redundancy_group},
        {t.name: t for t in targets if t is not None},
        path.parent,
        resolve,
    )
    problems.raise_if_any()
    return Inventory(
        path,
        tuple(t for t in targets if t is not None),
        dict(binder.proxmox),
        problems.warnings,
        redundancy,
    )


class _Binder:
    """Binds every VM of the target group to (proxmox_host, vmid), recording each problem."""

    def __init__(self, tree: Tree, problems: Problems, group: str):
        self.tree, self.problems, self.group = tree, problems, group
        self.depth = tree.depth()
        self.members = tree.members(group)
        self.proxmox: dict[str, ProxmoxHost] = {}
        self.bindings: dict[str, tuple[str, int]] = {}
        bound: dict[tuple[str, int], str] = {}
        for name in self.members:
            binding = self._bind(name)
            if binding is None:
                continue
            if binding in bound:
                problems.add(
                    f"{binding[1]} on Proxmox host '{binding[0]}' is also the vmid of "
                    f"'{bound[binding]}'",
                    host=name,
                    field="vmid",
                )
            bound.setdefault(binding, name)
            self.bindings[name] = binding
        self._check_proxmox_hosts_are_not_targets()

    def fields(self, name: str) -> Fields:
        return Fields(self.problems.path, name, self.tree.host_vars(name, self.depth))

    def _bind(self, name: str) -> tuple[str, int] | None:
        if not self._consistent(name):
            return None
        f = self.fields(name)
        vmid = self.problems.attempt(lambda: build.vmid(f))
        pve = self.problems.attempt(lambda: f.word("proxmox_host"))
        if pve is not None and pve not in self.tree.hosts():
            self.problems.add(
                f"names '{pve}', which is not a host of the inventory",
                host=name,
                field="proxmox_host",
            )
            return None
        if pve is not None and pve in self.members:
            self.problems.add(
                f"names '{pve}', which is itself a target VM", host=name, field="proxmox_host"
            )
            return None
        return None if vmid is None or pve is None else (pve, vmid)

    def _consistent(self, name: str) -> bool:
        """A host listed by two groups must not get two different bindings from them."""
        ok = True
        for field in build.BINDING_FIELDS:
            given = [(g, hv[field]) for g, hv in self.tree.host_entries(name) if field in hv]
            if len({repr(v) for _, v in given}) > 1:
                where = " but ".join(f"{v!r} under group '{g}'" for g, v in given[:2])
                self.problems.add(
                    f"is {where}: a VM has exactly one {field}", host=name, field=field
                )
                ok = False
        return ok

    def _check_proxmox_hosts_are_not_targets(self) -> None:
        used_by: dict[str, list[str]] = {}
        for name in self.members:
            pve = self.tree.host_vars(name, self.depth).get("proxmox_host")
            if isinstance(pve, str):
                used_by.setdefault(pve, []).append(name)
        for name in self.members:
            why = [f"the proxmox_host of '{user}'" for user in used_by.get(name, [])[:3]]
            if PROXMOX_GROUP in self.tree.groups_of(name):
                why.append(f"in group '{PROXMOX_GROUP}'")
            if why:
                self.problems.add(
                    f"is a Proxmox host ({', '.join(why)}) and also in target group "
                    f"'{self.group}': a Proxmox host is never patched by pvepatch; "
                    f"remove it from '{self.group}'",
                    host=name,
                )

    def target(self, name: str, base_dir: Path, resolve: build.Resolver) -> Target | None:
        binding = self.bindings.get(name)
        f = self.fields(name)
        ssh = build.ssh_spec(f, base_dir, self.problems)
        groups = self.tree.groups_of(name)
        pihole: PiholeSpec | None = None
        pihole_wanted = self.problems.attempt(lambda: build.is_pihole(f, groups))
        if pihole_wanted and ssh is not None:
            pihole = build.pihole_spec(f, ssh, resolve, self.problems)
        pve = self._proxmox(binding[0], base_dir) if binding else None
        group = self.problems.attempt(lambda: build.redundancy_group(f))
        snapshot = self.problems.attempt(lambda: build.snapshot_vars(f))
        if binding is None or ssh is None or pve is None or (pihole_wanted and pihole is None):
            return None
        if snapshot is None:
            return None
        return Target(name, binding[1], pve, ssh, frozenset(groups), pihole, group, snapshot)

    def redundancy(
        self,
        wanted: set[str],
        chosen: dict[str, Target],
        base_dir: Path,
        resolve: build.Resolver,
    ) -> dict[str, tuple[Target, ...]]:
        """Every member of the target group in each wanted redundancy group, also the ones
        --limit left out: a partner is checked (and never down together) either way."""
        groups: dict[str, list[Target]] = {g: [] for g in sorted(wanted)}
        if not wanted:
            return {}
        for name in self.members:
            raw = self.tree.host_vars(name, self.depth).get(build.REDUNDANCY_FIELD)
            if raw not in wanted:
                continue
            target = chosen.get(name) or self.target(name, base_dir, resolve)
            if target is not None and target.redundancy_group in groups:
                groups[target.redundancy_group].append(target)
        return {g: tuple(ts) for g, ts in groups.items()}

    def _proxmox(self, name: str, base_dir: Path) -> ProxmoxHost | None:
        if name not in self.proxmox:
            ssh = build.ssh_spec(self.fields(name), base_dir, self.problems)
            if ssh is None:
                return None
            node = self.problems.attempt(lambda: build.pve_node(self.fields(name)))
            self.proxmox[name] = ProxmoxHost(name, ssh, node)
        return self.proxmox[name]


def names(targets: Iterable[Target]) -> list[str]:
    return [t.name for t in targets]
