"""What `ha-manager status` and `ha-manager config` print (HA8 API2/HA/Status.pm `status`,
Tools.pm `get_verbose_service_state`, CLI/ha_manager.pm `config` formatter)."""

from __future__ import annotations

import json
import time
from typing import Any

from pvelab.paths import LabPaths
from pvelab.pve.ha import config, nodes


def verbose_service_state(ss: dict[str, Any] | None, sc: dict[str, Any] | None) -> str:
    """PVE::HA::Tools::get_verbose_service_state (HA8 = HA9)."""
    if sc is None:
        return "deleting"
    req = sc.get("state") or "ignored"
    if req == "ignored":
        return "ignored"
    if sc.get("node") is None:
        return "not found"
    if ss is None:
        return "queued"  # not yet processed by the manager
    cur = ss.get("state")
    state = cur
    if cur is None:
        state = "queued"
    elif cur == "stopped":
        if req == "started":
            state = "starting"
        elif req == "disabled":
            state = "disabled"
    elif cur == "started":
        if req in ("stopped", "disabled"):
            state = "stopping"
        if not ss.get("running"):
            state = "starting"
    elif cur == "error" and req == "disabled":
        state = "clearing error flag"
    return str(state)


def timestamp_to_status(ctime: float, timestamp: float) -> str:
    """Status.pm $timestamp_to_status."""
    tdiff = ctime - timestamp
    if tdiff > 30:
        return "old timestamp - dead?"
    if tdiff < -2:
        return "detected time drift!"
    return "active"


def perl_localtime(timestamp: float) -> str:
    """Perl's scalar localtime: `Wed Nov 23 11:07:23 2016` (day padded with a space)."""
    return time.asctime(time.localtime(timestamp))


def _active_count(ms: dict[str, Any]) -> dict[str, int]:
    count: dict[str, int] = {}
    for sd in ms.get("service_status", {}).values():
        node = sd.get("node")
        if not node:
            continue
        count.setdefault(node, 0)
        if sd.get("state") not in (None, "stopped", "freeze"):
            count[node] += 1
    return count


def _lrm_entry(
    node: str, lrm: dict[str, Any] | None, active: dict[str, int], ctime: float
) -> dict[str, Any]:
    if not lrm or not lrm.get("timestamp"):
        return {"id": f"lrm:{node}", "type": "lrm", "node": node,
                "status": f"{node} (unable to read lrm status)"}  # fmt: skip
    status = timestamp_to_status(ctime, lrm["timestamp"])
    mode = lrm.get("mode")
    if status == "active":
        mode = mode or "active"
        state = lrm.get("state") or "unknown"
        if mode != "active":
            status = f"{mode} mode"
        elif state == "wait_for_agent_lock" and not active.get(node):
            status = "idle"
        else:
            status = state
    elif mode == "maintenance":
        status = f"{mode} mode"
    return {
        "id": f"lrm:{node}", "type": "lrm", "node": node, "timestamp": lrm["timestamp"],
        "status": f"{node} ({status}, {perl_localtime(lrm['timestamp'])})",
    }  # fmt: skip


def _service_entry(sid: str, sc: dict[str, Any] | None, ss: dict[str, Any] | None) -> dict:
    data: dict[str, Any] = {"id": f"service:{sid}", "type": "service", "sid": sid}
    if ss is not None:
        data["node"] = ss.get("node")
        data["crm_state"] = ss.get("state")
    elif sc is not None:
        data["node"] = sc.get("node")
    node = data.get("node") or "---"
    data["state"] = verbose_service_state(ss, sc)
    data["status"] = f"{sid} ({node}, {data['state']})"
    if sc is not None:
        data["request_state"] = sc.get("state")
        for key in ("group", "max_restart", "max_relocate", "comment"):
            if sc.get(key) is not None:
                data[key] = sc[key]
    return data


def status_entries(
    paths: LabPaths, ctime: float | None = None, warn: config.Warn = config.stderr_warn
) -> list[dict[str, Any]]:
    """API2::HA::Status `status` (/cluster/ha/status/current): quorum, master, lrm, services."""
    ctime = time.time() if ctime is None else ctime
    here = nodes.local_node()
    quorate = nodes.quorate(paths)
    res: list[dict[str, Any]] = [
        {"id": "quorum", "type": "quorum", "node": here, "quorate": int(quorate),
         "status": "OK" if quorate else f"No quorum on node '{here}'!"}
    ]  # fmt: skip
    ms = config.read_manager_status(paths)
    sconf = config.checked_config(paths)
    if ms.get("master_node") is not None and ms.get("timestamp") is not None:
        status = timestamp_to_status(ctime, ms["timestamp"])
        if quorate and status != "active" and not sconf:
            status = "idle"  # mark crm idle if it has no service configured and is not active
        text = f"{ms['master_node']} ({status}, {perl_localtime(ms['timestamp'])})"
        res.append({"id": "master", "type": "master", "node": ms["master_node"],
                    "status": text, "timestamp": ms["timestamp"]})  # fmt: skip
    active = _active_count(ms)
    for node in sorted(ms.get("node_status", {})):
        lrm = config.read_lrm_status(paths, node)
        if lrm is None:
            warn(f"unable to read file '/etc/pve/nodes/{node}/lrm_status'")
        res.append(_lrm_entry(node, lrm, active, ctime))
    services = ms.get("service_status", {})
    for sid in sorted(services):
        res.append(_service_entry(sid, sconf.get(sid), services[sid]))
    for sid in sorted(sconf):  # also services the CRM has not processed yet
        if sid not in services:
            res.append(_service_entry(sid, sconf[sid], None))
    return res


def status_text(entries: list[dict[str, Any]]) -> str:
    """`ha-manager status`: `"$e->{type} $e->{status}"` per entry."""
    return "".join(f"{e['type']} {e['status']}\n" for e in entries)


def perl_pretty_json(data: Any) -> str:
    """to_json($data, {pretty => 1, canonical => 1}): 3-space indent, `"key" : value`."""
    return json.dumps(data, indent=3, sort_keys=True, separators=(",", " : ")) + "\n"


def full_cluster_state(paths: LabPaths) -> dict[str, Any]:
    """API2::HA::Status `manager_status`: what `ha-manager status --verbose` appends."""
    ms = config.read_manager_status(paths)
    data: dict[str, Any] = {
        "manager_status": ms,
        "quorum": {"node": nodes.local_node(), "quorate": int(nodes.quorate(paths))},
    }
    for node in sorted(ms.get("node_status", {})):
        lrm = config.read_lrm_status(paths, node)
        data.setdefault("lrm_status", {})[node] = {"mode": "unknown"} if lrm is None else lrm
    return data


def config_text(res: config.Resources, type_filter: str | None = None) -> tuple[str, str]:
    """`ha-manager config`: (stdout, stderr). Per sid sorted: `vm:100`, `\\t<key> <value>` sorted
    without digest/sid/type/errors, a blank line; group errors as warnings."""
    out, err = [], []
    for sid in sorted(res.ids):
        scfg = res.ids[sid]
        if type_filter and scfg["type"] != type_filter:
            continue
        out.append(f"{sid}\n")
        out.extend(f"\t{k} {scfg[k]}\n" for k in sorted(scfg) if k != "type")
        if scfg.get("group"):  # no HA groups in the lab: every group is unknown
            err.append(f"error: property 'group' - group '{scfg['group']}' does not exist\n")
        out.append("\n")
    return "".join(out), "".join(err)
