"""Where the CRM puts services (HA8 4.0.7 NodeStatus.pm, Manager.pm select_service_node and
recompute_online_node_usage with the `basic` scheduler, Usage/Basic.pm). The lab has no HA
groups (every node is in the default group, priority 0) and no fencing (a member is online)."""

from __future__ import annotations

import time
from typing import Any

from pvelab.pve.ha.journal import Log

FENCE_DELAY = 60  # NodeStatus.pm $fence_delay


class NodeStatus:
    """PVE::HA::NodeStatus: `status` is manager_status' node_status (node -> state)."""

    def __init__(self, log: Log, status: dict[str, str]) -> None:
        self.log, self.status = log, dict(status)
        self.last_online: dict[str, float] = {}

    def get_node_state(self, node: str) -> str:
        return self.status.setdefault(node, "unknown")

    def node_is_online(self, node: str) -> bool:
        return self.get_node_state(node) == "online"

    def node_is_operational(self, node: str) -> bool:
        return self.node_is_online(node) or self.get_node_state(node) == "maintenance"

    def node_is_offline_delayed(self, node: str, delay: float = FENCE_DELAY) -> bool:
        if self.get_node_state(node) == "online":
            return False
        last = self.last_online.get(node)
        if last is None:
            self.last_online[node] = time.time()
            return False
        return time.time() - last >= delay

    def list_online_nodes(self) -> list[str]:
        return sorted(n for n, s in self.status.items() if s == "online")

    def set_node_state(self, node: str, state: str) -> None:
        last = self.get_node_state(node)
        if state != last:
            self.status[node] = state
            self.log(f"node '{node}': state changed from '{last}' => '{state}'")

    def update(self, online: list[str], lrm_modes: dict[str, str]) -> None:
        """NodeStatus::update: members are online, or in maintenance while their LRM says so."""
        for node in sorted(online):
            self.last_online[node] = time.time()
            state, mode = self.get_node_state(node), lrm_modes.get(node, "unkown")
            if state == "online" and mode == "maintenance":
                self.set_node_state(node, "maintenance")
            elif state in ("unknown", "gone"):
                self.set_node_state(node, "online")
            elif state == "maintenance" and mode != "maintenance":
                self.set_node_state(node, "online")
        for node in sorted(self.status):
            if node in online:
                continue
            state = self.get_node_state(node)
            if state == "online":
                self.set_node_state(node, "unknown")
            elif state == "maintenance" and lrm_modes.get(node, "unkown") != "maintenance":
                self.set_node_state(node, "unknown")
            elif state == "unknown":
                self.set_node_state(node, "gone")


def online_node_usage(ns: NodeStatus, ss: dict[str, dict[str, Any]]) -> dict[str, int]:
    """recompute_online_node_usage, `basic` mode: online node -> count of services it carries."""
    usage = {node: 0 for node in ns.list_online_nodes()}
    for sid in sorted(ss):
        sd = ss[sid]
        state, node, target = sd.get("state"), sd.get("node"), sd.get("target")
        if node in usage:
            if state in ("started", "request_stop", "fence", "freeze", "error", "recovery"):
                usage[node] += 1
            elif state in ("migrate", "relocate", "request_start_balance"):
                if state != "request_start_balance":
                    usage[node] += 1
                if target in usage:
                    usage[target] += 1
        elif target in usage and state in ("migrate", "relocate"):
            usage[target] += 1
    return usage


def select_service_node(
    usage: dict[str, int], current: str, try_next: bool = False,
    tried: list[str] | None = None, maintenance_fallback: str | None = None,
) -> str | None:  # fmt: skip
    """Manager.pm select_service_node without groups: every online node has priority 0."""
    top = set(usage)
    if not top:
        return None
    if try_next:
        top -= set(tried or [])
    if maintenance_fallback is not None and maintenance_fallback in top:
        return maintenance_fallback
    if not try_next and current in top:
        return current
    nodes = sorted(top, key=lambda n: (usage[n], n))  # score_nodes_to_start_service: counts
    if not nodes:
        return None
    if try_next and current in nodes and nodes.index(current) < len(nodes) - 1:
        return nodes[nodes.index(current) + 1]
    return nodes[0]
