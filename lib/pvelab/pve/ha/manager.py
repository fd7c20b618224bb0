"""The CRM (HA8 4.0.7 CRM.pm + Manager.pm, the parts a lab without fencing needs): one `manage()`
per round turns queued commands (stop, migrate, relocate, node maintenance), requested states,
node states and LRM results into CRM service states (pvelab.pve.ha.states), logging PVE's lines,
and writes manager_status."""

from __future__ import annotations

import re
import time
from typing import Any

from pvelab.paths import LabPaths
from pvelab.pve.ha import config, nodes
from pvelab.pve.ha.journal import Log
from pvelab.pve.ha.placement import NodeStatus
from pvelab.pve.ha.states import ERROR, EWRONG_NODE, SUCCESS, States, new_uid

__all__ = ["CRM", "ERROR", "EWRONG_NODE", "SUCCESS", "Manager", "new_uid"]
CRM_IDLE_ROUNDS = 90  # CRM.pm $max_active_idle_rounds


class Manager(States):
    """PVE::HA::Manager: `ss` is service_status, kept across rounds and in manager_status."""

    def __init__(self, paths: LabPaths, node: str, log: Log) -> None:
        self.paths, self.node, self.log = paths, node, log
        old = config.read_manager_status(paths)
        self.ns = NodeStatus(log, old.get("node_status") or {})
        self.ss: dict[str, dict[str, Any]] = old.get("service_status", {})
        self.ms: dict[str, Any] = {"master_node": node}
        if "node_request" in old:  # a node in (manual) maintenance stays so on a new master
            self.ms["node_request"] = old["node_request"]

    def _lrm_status(self) -> tuple[dict[str, Any], dict[str, str]]:
        """read_lrm_status: the results of every node's LRM, and each LRM's mode."""
        results: dict[str, Any] = {}
        modes: dict[str, str] = {}
        for node in sorted(self.ns.status):
            lrm = config.read_lrm_status(self.paths, node) or {}
            modes[node] = lrm.get("mode") or "active"
            for uid, res in (lrm.get("results") or {}).items():
                results.setdefault(uid, res)
        return results, modes

    def manage(self) -> None:
        """One CRM round (Manager.pm `manage`)."""
        for node in nodes.cluster_nodes(self.paths):
            self.ns.get_node_state(node)  # list_nodes: the members and the known nodes
        results, modes = self._lrm_status()
        self.ns.update(nodes.cluster_nodes(self.paths), modes)
        if not self.ns.node_is_operational(self.node):
            self.log("master seems offline")
            return
        sc = config.checked_config(self.paths)
        for sid in sorted(sc):
            cd = sc[sid]
            if sid in self.ss or cd["state"] == "ignored":
                continue
            self.log(f"adding new service '{sid}' on node '{cd.get('node') or ''}'")
            state = "request_start" if cd["state"] == "started" else "request_stop"
            self.ss[sid] = {"state": state, "node": cd.get("node"), "uid": new_uid("started")}
        for sid in list(self.ss):
            if sid in sc and sc[sid]["state"] != "ignored":
                continue
            reason = "ignored state requested" if sid in sc else "no config"
            self.log(f"removing stale service '{sid}' ({reason})")
            del self.ss[sid]
        self.update_crm_commands()
        repeat = True
        while repeat:
            repeat = False
            for sid in sorted(self.ss):
                sd = self.ss[sid]
                cd = sc.get(sid) or {"state": "disabled", "type": sid.split(":")[0]}
                lrm_res = results.get(sd["uid"]) if sd.get("uid") else None
                last = sd["state"]
                self.next_state(sid, cd, sd, lrm_res)
                repeat = repeat or sd["state"] != last
        self.ms["node_status"] = self.ns.status
        self.ms["service_status"] = self.ss
        self.ms["timestamp"] = int(time.time())
        config.write_manager_status(self.paths, self.ms)

    def update_crm_commands(self) -> None:
        """Manager.pm update_crm_commands."""
        for cmd in config.take_crm_commands(self.paths).split("\n"):
            if not cmd:
                continue
            move = re.fullmatch(r"(migrate|relocate)\s+(\S+)\s+(\S+)", cmd)
            stop = re.fullmatch(r"stop\s+(\S+)\s+(\S+)", cmd)
            maint = re.fullmatch(r"(enable|disable)-node-maintenance\s+(\S+)", cmd)
            if move:
                task, sid, node = move.groups()
                sd = self.ss.get(sid)
                if sd is None:
                    self.log(f"crm command error - no such service: {cmd}")
                elif not self.ns.node_is_online(node):
                    self.log(f"crm command error - node not online: {cmd}")
                elif node == sd.get("node"):
                    self.log(f"ignore crm command - service already on target node: {cmd}")
                else:
                    self.log(f"got crm command: {cmd}")
                    sd["cmd"] = [task, node]
            elif stop:
                if stop.group(1) in self.ss:
                    self.log(f"got crm command: {cmd}")
                    self.ss[stop.group(1)]["cmd"] = ["stop", stop.group(2)]
                else:
                    self.log(f"crm command error - no such service: {cmd}")
            elif maint:
                self._maintenance_cmd(cmd, maint.group(1) == "enable", maint.group(2))
            else:
                self.log(f"unable to parse crm command: {cmd}")

    def _maintenance_cmd(self, cmd: str, enable: bool, node: str) -> None:
        """enable/disable-node-maintenance: the `node_request` the node's LRM follows."""
        state = self.ns.get_node_state(node)
        requests = self.ms.setdefault("node_request", {})
        if not enable:
            if state != "maintenance":
                self.log(
                    f"clearing maintenance of node {node} requested, but it's in state {state}"
                )
            requests.setdefault(node, {}).pop("maintenance", None)  # Perl autovivifies
        elif state == "online":
            requests.setdefault(node, {})["maintenance"] = 1
        elif state == "maintenance":
            self.log(f"ignoring crm command - node {node} is already in maintenance state")
        else:
            self.log(f"crm command error - node not online: {cmd}")


class CRM:
    """CRM.pm's states without locks and watchdogs: `wait_for_quorum` until there is work, then
    `master` (which runs the Manager every round), idle again after 90 rounds without services."""

    def __init__(self, paths: LabPaths, node: str, log: Log) -> None:
        self.paths, self.node, self.log = paths, node, log
        self.state = "startup"
        self.manager: Manager | None = None
        self.idle_rounds = 0
        self.set_state("wait_for_quorum")

    def set_state(self, new: str) -> None:
        if new == self.state:
            return
        self.log(f"status change {self.state} => {new}")
        self.state = new
        self.manager = Manager(self.paths, self.node, self.log) if new == "master" else None

    def can_get_active(self) -> bool:
        if not nodes.quorate(self.paths):
            return False
        return bool(config.read_resources(self.paths, warn=config.quiet).ids) or (
            config.any_pending_crm_command(self.paths)
        )

    def work(self) -> bool:
        """One iteration; True if it was a full (master) round, False for a short wait."""
        if self.state == "wait_for_quorum" and self.can_get_active():
            self.set_state("master")
        elif self.state == "master":
            if not nodes.quorate(self.paths):
                return True  # lost its lock: the lab's CRM simply pauses (timestamps age)
            if not config.read_resources(self.paths, warn=config.quiet).ids:
                self.idle_rounds += 1
                if self.idle_rounds > CRM_IDLE_ROUNDS:
                    self.idle_rounds = 0
                    self.log(
                        f"cluster had no service configured for {CRM_IDLE_ROUNDS} rounds, going idle."
                    )  # noqa: E501
                    self.set_state("wait_for_quorum")
            else:
                self.idle_rounds = 0
        if self.state != "master" or self.manager is None:
            return False
        try:
            self.manager.manage()
        except (OSError, ValueError, KeyError, config.HAError) as exc:
            self.log(f"got unexpected error - {exc}")
        return True
