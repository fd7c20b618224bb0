"""`--limit` as Ansible reads it: hosts or groups, `,` or `:` separated, `!name` excludes."""

from __future__ import annotations

from pvepatch.inventory.problems import Problems
from pvepatch.inventory.tree import Tree


def select(tree: Tree, problems: Problems, group: str, limit: str | None) -> list[str]:
    """The target hosts `limit` selects; a name that is both a group and a host is warned about.

    As Ansible does, such a name selects the group (its hosts); Ansible's warning is "Found both
    group and host with same name", and so is ours, with the hosts it selected.
    """
    if group not in tree.groups:
        problems.fatal(f"target group '{group}' not found (see --group)")
    targets = tree.members(group)
    if not targets:
        problems.fatal(f"target group '{group}' has no hosts")
    if not limit:
        return targets
    wanted: set[str] = set()
    excluded: set[str] = set()
    before = len(problems.items)
    for word in limit.replace(":", ",").split(","):
        word = word.strip()
        if not word:
            continue
        name = word.lstrip("!")
        if any(c in name for c in "*?[~&"):
            problems.add(
                f"--limit: '{word}': wildcards, regular expressions and '&' are not supported; "
                "name hosts or groups"
            )
            continue
        if name in tree.groups:
            names = set(tree.members(name))
            if name in tree.hosts():
                problems.warnings.append(_both(tree, name))
        elif name in tree.hosts():
            names = {name}
        else:
            problems.add(f"--limit: '{name}' is neither a host nor a group")
            continue
        (excluded if word.startswith("!") else wanted).update(names)
    if len(problems.items) > before:
        return []
    chosen = [t for t in targets if (not wanted or t in wanted) and t not in excluded]
    if not chosen:
        problems.add(f"--limit '{limit}' selects no host of group '{group}'")
    return chosen


def _both(tree: Tree, name: str) -> str:
    members = tree.members(name)
    text = (
        f"--limit '{name}': found both group and host with same name: selecting the group, "
        f"as Ansible does (hosts: {', '.join(members) or 'none'})"
    )
    others = [m for m in members if m != name]
    if name in members and others:
        only = ",".join([name, *(f"!{m}" for m in others)])
        text += f"; for host '{name}' alone write --limit '{only}'"
    return text
