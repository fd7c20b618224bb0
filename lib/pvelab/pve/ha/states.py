"""The CRM's service state machine (HA8 4.0.7 Manager.pm `next_state_*`), a base class of
pvelab.pve.ha.manager.Manager: each method reads the service's config (`cd`), its CRM state
(`sd`) and the LRM's result for its uid, and changes the state with PVE's log lines."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

from pvelab.pve.ha import config, placement
from pvelab.pve.ha.journal import Log

SUCCESS = 0  # HA8 Tools.pm exit codes of the resource agents
ERROR = 1
EWRONG_NODE = 3
IGNORED = 8

_uid_counter = 0


def new_uid(state: str) -> str:
    """compute_new_uuid: md5_base64(state . $$ . time() . counter)."""
    global _uid_counter
    _uid_counter += 1
    raw = f"{state}{os.getpid()}{int(time.time())}{_uid_counter}".encode()
    return base64.b64encode(hashlib.md5(raw).digest()).decode().rstrip("=")  # noqa: S324


class States:
    """next_state_* of PVE::HA::Manager; `ss` is service_status, `ns` the node states."""

    paths: Any
    log: Log
    ss: dict[str, dict[str, Any]]
    ns: placement.NodeStatus

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

    def next_state(self, sid: str, cd: dict, sd: dict, lrm_res: dict | None) -> None:
        state = sd["state"]
        if state == "stopped":
            self.next_state_stopped(sid, cd, sd)
        elif state == "started":
            self.next_state_started(sid, cd, sd, lrm_res)
        elif state == "request_start":
            self.change_state(sid, "started", node=sd.get("node"))
        elif state in ("migrate", "relocate", "request_start_balance"):
            self.next_state_migrate_relocate(sid, cd, sd, lrm_res)
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

    def next_state_migrate_relocate(self, sid: str, cd: dict, sd: dict, lrm_res: dict | None) -> None:  # fmt: skip  # noqa: E501
        if lrm_res is None:
            return
        code = lrm_res.get("exit_code")
        req_state = "started" if cd["state"] == "started" else "request_stop"
        if code == SUCCESS:
            self.change_state(sid, req_state, node=sd.get("target"))
        elif code == EWRONG_NODE:
            self.log(f"service '{sid}' - migration failed: service registered on wrong node!")
            self.change_state(sid, "error")
        elif code == IGNORED:
            self.log(f"service '{sid}' - rebalance-on-start request ignored - service already running")  # fmt: skip  # noqa: E501
            self.change_state(sid, req_state, node=sd.get("node"))
        else:
            self.log(f"service '{sid}' - migration failed (exit code {code})")
            self.change_state(sid, req_state, node=sd.get("node"))

    def _move_cmd(self, sid: str, sd: dict, cmd: str, target: str) -> bool:
        """The migrate/relocate command of next_state_stopped/started: True if it moves."""
        if not self.ns.node_is_online(target):
            self.log(f"ignore service '{sid}' {cmd} request - node '{target}' not online")
        elif sd.get("node") == target:
            self.log(f"ignore service '{sid}' {cmd} request - service already on node '{target}'")
        else:
            return True
        return False

    def next_state_stopped(self, sid: str, cd: dict, sd: dict) -> None:
        if cd.get("node") is not None and sd.get("node") != cd["node"]:
            self.log(f"fixup service '{sid}' location ({sd.get('node')} => {cd['node']})")
            sd["node"] = cd["node"]
        if sd.get("cmd"):
            cmd, arg = sd["cmd"][0], sd["cmd"][1]
            if cmd in ("migrate", "relocate"):
                if self._move_cmd(sid, sd, cmd, arg):
                    self.change_state(sid, cmd, node=sd.get("node"), target=arg)
                    return
            elif cmd == "stop":
                self.log(f"ignore service '{sid}' {cmd} request - service already stopped")
            else:
                self.log(f"unknown command '{cmd}' for service '{sid}'")
            sd.pop("cmd", None)
        if cd["state"] == "started":
            self.change_state(sid, "request_start", node=sd.get("node"))
        elif cd["state"] not in ("disabled", "stopped"):
            self.log(f"service '{sid}' - unknown state '{cd['state']}' in service configuration")

    def next_state_started(self, sid: str, cd: dict, sd: dict, lrm_res: dict | None) -> None:
        node = sd.get("node") or ""
        if not self.ns.node_is_online(node):
            if self.ns.get_node_state(node) != "maintenance":
                return  # no fencing in the lab: wait for the node
            sd["maintenance_node"] = node  # fallback for when it comes out of maintenance
        if cd["state"] in ("disabled", "stopped"):
            self.change_state(sid, "request_stop")
            return
        if cd["state"] != "started":
            self.log(f"service '{sid}' - unknown state '{cd['state']}' in service configuration")
            return
        if sd.get("cmd"):
            self._started_cmd(sid, sd, *sd.pop("cmd"))
            return
        try_next = False
        if lrm_res is not None:
            code = lrm_res.get("exit_code")
            if code == SUCCESS:
                if sd.get("failed_nodes"):
                    self.log(f"relocation policy successful for '{sid}' on node '{node}',"
                             f" failed nodes: {', '.join(sd['failed_nodes'])}")  # fmt: skip
                sd.pop("failed_nodes", None)
                sd["running"] = 1  # only valid while state == 'started'
            elif code in (ERROR, EWRONG_NODE):
                sd.pop("running", None)
                failed = sd.setdefault("failed_nodes", [])
                failed.append(node)
                if len(failed) > cd["max_relocate"]:
                    self.log(f"recovery policy for service {sid} failed, entering error state."
                             f" Failed nodes: {', '.join(map(str, failed))}")  # fmt: skip
                    self.change_state(sid, "error")
                    return
                try_next = True
                self.log(f"starting service {sid} on node '{node}' failed, relocating service.")
            else:
                sd.setdefault("failed_nodes", []).append(node)
                self.log(f"service '{sid}' got unrecoverable error (exit code {code}))")
                self.change_state(sid, "error")
                return
        self._place_started(sid, cd, sd, lrm_res, try_next)

    def _started_cmd(self, sid: str, sd: dict, cmd: str, arg: Any) -> None:
        if cmd in ("migrate", "relocate"):
            if self._move_cmd(sid, sd, cmd, arg):
                self.log(f"{cmd} service '{sid}' to node '{arg}'")
                self.change_state(sid, cmd, node=sd.get("node"), target=arg)
            return
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

    def _place_started(self, sid: str, cd: dict, sd: dict, lrm_res: dict | None, try_next: bool) -> None:  # fmt: skip  # noqa: E501
        """The tail of next_state_started: select_service_node, move if it picks another node."""
        node = sd.get("node") or ""
        usage = placement.online_node_usage(self.ns, self.ss)
        fallback = sd.get("maintenance_node")
        chosen = placement.select_service_node(
            usage, node, try_next, sd.get("failed_nodes"), fallback
        )
        if chosen and chosen != node:
            if fallback is not None:
                if chosen == fallback:
                    self.log(f"moving service '{sid}' back to '{fallback}', node came back from"
                             " maintenance.")  # fmt: skip
                    sd.pop("maintenance_node", None)
                elif node != fallback:
                    self.log(f"dropping maintenance fallback node '{fallback}' for '{sid}'")
                    sd.pop("maintenance_node", None)
            if cd["type"] == "vm":
                self.log(f"migrate service '{sid}' to node '{chosen}' (running)")
                self.change_state(sid, "migrate", node=node, target=chosen)
            else:
                self.log(f"relocate service '{sid}' to node '{chosen}'")
                self.change_state(sid, "relocate", node=node, target=chosen)
            return
        if try_next and chosen is None:
            self.log(f"Start Error Recovery: Tried all available nodes for service '{sid}', retry"
                     f" start on current node. Tried nodes: {', '.join(map(str, sd['failed_nodes']))}")  # fmt: skip  # noqa: E501
        if fallback and node == fallback and self.ns.get_node_state(node) == "online":
            self.log(f"service '{sid}': clearing stale maintenance node '{fallback}' setting"
                     " (is current node)")  # fmt: skip
            sd.pop("maintenance_node", None)
        if lrm_res is not None:  # start it again if it went down, keep no result lost
            sd["uid"] = new_uid(sd["state"])
