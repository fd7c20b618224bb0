"""Groups, hosts and variables as Ansible's YAML inventory plugin reads them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pvepatch.inventory.problems import Problems

GROUP_KEYS = {"hosts", "vars", "children"}
# Host names become test ids and report file names: letters, digits and . _ - : @ + = %,
# no leading '-' or '.', no '..' (so no path separators, whitespace or control characters).
_SAFE_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+=%-]*")


def host_name_problem(name: str) -> str | None:
    """Why `name` is not a safe host name, or None."""
    if _SAFE_HOST.fullmatch(name) and ".." not in name and len(name) <= 253:
        return None
    return (
        f"host name {name!r} is not safe (it names report files and test ids): use letters, "
        "digits and . _ - : @ + = % only, not starting with '-' or '.', without '..'"
    )


@dataclass
class Group:
    name: str
    vars: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


class Tree:
    """The inventory's groups; structural problems are recorded, not raised one by one."""

    def __init__(self, data: Any, problems: Problems):
        self.problems = problems
        self.groups: dict[str, Group] = {}
        self._groups_of: dict[str, set[str]] = {}
        if data is None:
            problems.fatal("the inventory is empty")
        if isinstance(data, list):
            problems.fatal(
                "the top level is a list; it must be a mapping of groups (e.g. 'all:'), "
                "as Ansible's YAML inventory"
            )
        if not isinstance(data, dict):
            problems.fatal("the top level must be a mapping of groups (e.g. 'all:')")
        all_group = self._group("all")
        for name, body in data.items():
            self._parse_group(str(name), body, [])
            if name != "all" and str(name) not in all_group.children:
                all_group.children.append(str(name))
        self._check_cycles()

    def _group(self, name: str) -> Group:
        return self.groups.setdefault(name, Group(name))

    def _mapping(self, group: str, key: str, value: Any, hint: str = "") -> dict[Any, Any]:
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        kind = type(value).__name__
        self.problems.add(f"group '{group}': '{key}' must be a mapping{hint}, got a {kind}")
        return {}

    def _parse_group(self, name: str, body: Any, path: list[str]) -> None:
        group = self._group(name)
        if body is None or name in path:
            return
        if not isinstance(body, dict):
            kind = type(body).__name__
            self.problems.add(
                f"group '{name}' must be a mapping (hosts, vars, children), got a {kind}"
            )
            return
        unknown = set(body) - GROUP_KEYS
        if unknown:
            self.problems.add(
                f"group '{name}': unknown key(s) {sorted(map(str, unknown))} "
                "(expected hosts, vars, children)"
            )
        hint = " of host names (write 'pbs:' on its own line, not '- pbs')"
        for host, hvars in self._mapping(name, "hosts", body.get("hosts"), hint).items():
            self._add_host(group, host, hvars)
        group.vars.update(self._mapping(name, "vars", body.get("vars")))
        for child, child_body in self._mapping(name, "children", body.get("children")).items():
            if str(child) not in group.children:
                group.children.append(str(child))
            self._parse_group(str(child), child_body, [*path, name])

    def _add_host(self, group: Group, host: Any, hvars: Any) -> None:
        name = "" if host is None else str(host)
        why = host_name_problem(name)
        if why:
            self.problems.add(f"group '{group.name}': {why}")
            return
        if hvars is not None and not isinstance(hvars, dict):
            self.problems.add(
                f"host variables must be a mapping, got a {type(hvars).__name__}", host=name
            )
            return
        group.hosts.setdefault(name, {}).update(hvars or {})

    def _check_cycles(self) -> None:
        for name in list(self.groups):
            seen, stack = set(), list(self.groups[name].children)
            while stack:
                child = stack.pop()
                if child == name:
                    self.problems.fatal(f"group '{name}' is its own descendant ('children' cycle)")
                if child not in seen:
                    seen.add(child)
                    stack.extend(self.groups[child].children)

    def depth(self) -> dict[str, int]:
        """Each group's distance from 'all' (the longest path, as Ansible orders vars)."""
        depth = {"all": 0}
        frontier = ["all"]
        while frontier:
            nxt = []
            for name in frontier:
                for child in self.groups[name].children:
                    if depth.get(child, -1) < depth[name] + 1:
                        depth[child] = depth[name] + 1
                        nxt.append(child)
            frontier = nxt
        return depth

    def hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for group in self.groups.values():
            for host in group.hosts:
                seen.setdefault(host, None)
        return list(seen)

    def groups_of(self, host: str) -> set[str]:
        """Every group `host` belongs to, directly or through children."""
        if host not in self._groups_of:
            parents: dict[str, set[str]] = {}
            for g in self.groups.values():
                for child in g.children:
                    parents.setdefault(child, set()).add(g.name)
            result = {g.name for g in self.groups.values() if host in g.hosts} | {"all"}
            stack = list(result)
            while stack:
                for parent in parents.get(stack.pop(), ()):
                    if parent not in result:
                        result.add(parent)
                        stack.append(parent)
            self._groups_of[host] = result
        return self._groups_of[host]

    def members(self, group: str) -> list[str]:
        """Hosts of `group` and of its children, in inventory order."""
        return [h for h in self.hosts() if group in self.groups_of(h)]

    def host_entries(self, host: str) -> list[tuple[str, dict[str, Any]]]:
        """(group, variables) for every group that lists `host` under its 'hosts'."""
        return [(g.name, g.hosts[host]) for g in self.groups.values() if host in g.hosts]

    def host_vars(self, host: str, depth: dict[str, int]) -> dict[str, Any]:
        """Group vars from 'all' down to the deepest group, then host vars (Ansible precedence)."""
        merged: dict[str, Any] = {}
        for name in sorted(self.groups_of(host), key=lambda g: (depth.get(g, 0), g)):
            merged.update(self.groups[name].vars)
        for _, hvars in self.host_entries(host):
            merged.update(hvars)
        return merged
