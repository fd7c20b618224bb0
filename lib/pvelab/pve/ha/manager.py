"""The CRM (HA8 4.0.7 CRM.pm + Manager.pm, the parts a lab without fencing or migration needs):
one `manage()` per round turns queued commands, requested states and LRM results into CRM
service states, logging PVE's lines, and writes manager_status."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

from pvelab.paths import LabPaths
from pvelab.pve.ha import config, nodes
from pvelab.pve.ha.journal import Log

SUCCESS = 0  # HA8 Tools.pm exit codes of the resource agents
ERROR = 1
EWRONG_NODE = 3
VALID_STATES = ("stopped", "request_stop", "request_start", "request_start_balance", "started",
                "fence", "recovery", "migrate", "relocate", "freeze", "error")  # fmt: skip
CRM_IDLE_ROUNDS = 90  # CRM.pm $max_active_idle_rounds

_uid_counter = 0


def new_uid(state: str) -> str:
    """compute_new_uuid: md5_base64(state . $$ . time() . counter)."""
    global _uid_counter
    _uid_counter += 1
    raw = f"{state}{os.getpid()}{int(time.time())}{_uid_counter}".encode()
    return base64.b64encode(hashlib.md5(raw).digest()).decode().rstrip("=")  # noqa: S324


class Manager:
    """PVE::HA::Manager: `ss` is service_status, kept across rounds and in manager_status."""

    def __init__(self, paths: LabPaths, node: str, log: Log) -> None:
        self.paths, self.node, self.log = paths, node, log
        old = config.read_manager_status(paths)
        self.ss: dict[str, dict[str, Any]] = old.get("service_status", {})
        self.ms: dict[str, Any] = {"master_node": node}
        if "node_request" in old:
            self.ms["node_request"] = old["node_request"]

    def change_state(self, sid: str, new_state: str, **params: Any) -> None:
        """$change_service_state: new uid, the log line PVE writes."""
        sd = self.ss[sid]
        old_state = sd["state"]
        kept: dict[str, Any] = {
            k: sd[k] for k in ("node", "failed_nodes", "maintenance_node") if k in sd
        }
        sd.clear()
        sd.update(kept, state=new_state)
        text = ", ".join(f"{k} = {params[k]}" for k in sorted(params))
        sd.update(params)
        sd["uid"] = new_uid(new_state)
        text = f"  ({text})" if text else ""
        self.log(f"service '{sid}': state changed from '{old_state}' to '{new_state}'{text}")

    def _lrm_results(self, node_names: list[str]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for node in node_names:
            for uid, res in (
                (config.read_lrm_status(self.paths, node) or {}).get("results") or {}
            ).items():  # noqa: E501
                results.setdefault(uid, res)
        return results

    def manage(self) -> None:
        """One CRM round (Manager.pm `manage`)."""
        node_names = nodes.cluster_nodes(self.paths)
        results = self._lrm_results(node_names)
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
                cd = sc.get(sid) or {"state": "disabled"}
                lrm_res = results.get(sd["uid"]) if sd.get("uid") else None
                last = sd["state"]
                self.next_state(sid, cd, sd, lrm_res)
                repeat = repeat or sd["state"] != last
        self.ms["node_status"] = {n: "online" for n in node_names}
        self.ms["service_status"] = self.ss
        self.ms["timestamp"] = int(time.time())
        config.write_manager_status(self.paths, self.ms)

    def update_crm_commands(self) -> None:
        """Manager.pm update_crm_commands: `stop <sid> <timeout>` (migrate is not in the lab)."""
        for cmd in config.take_crm_commands(self.paths).split("\n"):
            words = cmd.split()
            if not words:
                continue
            if len(words) == 3 and words[0] == "stop":
                if words[1] in self.ss:
                    self.log(f"got crm command: {cmd}")
                    self.ss[words[1]]["cmd"] = ["stop", words[2]]
                else:
                    self.log(f"crm command error - no such service: {cmd}")
            else:
                self.log(f"unable to parse crm command: {cmd}")

    def next_state(self, sid: str, cd: dict, sd: dict, lrm_res: dict | None) -> None:
        state = sd["state"]
        if state == "stopped":
            self.next_state_stopped(sid, cd, sd)
        elif state == "started":
            self.next_state_started(sid, cd, sd, lrm_res)
        elif state == "request_start":
            self.change_state(sid, "started", node=sd.get("node"))
        elif state == "request_stop":
            if lrm_res is not None:
                code = lrm_res.get("exit_code")
                if code == SUCCESS:
                    self.change_state(sid, "stopped")
                else:
                    self.log(f"service '{sid}' stop failed (exit code {code})")
                    self.change_state(sid, "error")
        elif state == "error" and cd["state"] == "disabled":
            sd.pop("failed_nodes", None)  # clean up on error recovery
            self.change_state(sid, "stopped")

    def next_state_stopped(self, sid: str, cd: dict, sd: dict) -> None:
        if cd.get("node") is not None and sd.get("node") != cd["node"]:
            self.log(f"fixup service '{sid}' location ({sd.get('node')} => {cd['node']})")
            sd["node"] = cd["node"]
        if sd.get("cmd"):
            cmd = sd["cmd"][0]
            if cmd == "stop":
                self.log(f"ignore service '{sid}' {cmd} request - service already stopped")
            else:
                self.log(f"unknown command '{cmd}' for service '{sid}'")
            del sd["cmd"]
        if cd["state"] == "started":
            self.change_state(sid, "request_start", node=sd.get("node"))
        elif cd["state"] not in ("disabled", "stopped"):
            self.log(f"service '{sid}' - unknown state '{cd['state']}' in service configuration")

    def next_state_started(self, sid: str, cd: dict, sd: dict, lrm_res: dict | None) -> None:
        if cd["state"] in ("disabled", "stopped"):
            self.change_state(sid, "request_stop")
            return
        if cd["state"] != "started":
            self.log(f"service '{sid}' - unknown state '{cd['state']}' in service configuration")
            return
        if sd.get("cmd"):
            cmd, arg = sd.pop("cmd")
            if cmd != "stop":
                self.log(f"unknown command '{cmd}' for service '{sid}'")
                return
            if int(arg) == 0:
                self.log(f"request immediate service hard-stop for service '{sid}'")
            else:
                self.log(f"request graceful stop with timeout '{arg}' for service '{sid}'")
            self.change_state(sid, "request_stop", timeout=int(arg))
            try:  # $haenv->update_service_config($sid, {'state' => 'stopped'})
                config.update_resource(self.paths, sid, {"state": "stopped"})
            except config.HAError as exc:
                self.log(f"got unexpected error - {exc}")
            return
        if lrm_res is None:
            return
        code = lrm_res.get("exit_code")
        if code == SUCCESS:
            if sd.get("failed_nodes"):
                self.log(f"relocation policy successful for '{sid}' on node '{sd['node']}',"
                         f" failed nodes: {', '.join(sd['failed_nodes'])}")  # fmt: skip
            sd.pop("failed_nodes", None)
            sd["running"] = 1  # only valid while state == 'started'
        elif code in (ERROR, EWRONG_NODE):
            sd.pop("running", None)
            failed = sd.setdefault("failed_nodes", [])
            failed.append(sd.get("node"))
            if len(failed) > cd["max_relocate"]:
                self.log(f"recovery policy for service {sid} failed, entering error state."
                         f" Failed nodes: {', '.join(map(str, failed))}")  # fmt: skip
                self.change_state(sid, "error")
                return
            self.log(
                f"starting service {sid} on node '{sd.get('node')}' failed, relocating service."
            )  # noqa: E501
            # The lab cannot migrate: select_service_node finds no other node.
            self.log(f"Start Error Recovery: Tried all available nodes for service '{sid}', retry"
                     f" start on current node. Tried nodes: {', '.join(map(str, failed))}")  # fmt: skip
        else:
            sd.setdefault("failed_nodes", []).append(sd.get("node"))
            self.log(f"service '{sid}' got unrecoverable error (exit code {code}))")
            self.change_state(sid, "error")
            return
        sd["uid"] = new_uid(sd["state"])  # start it again if it went down, keep no result lost


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
