"""The few PVE 8.4 API GET handlers the lab's `pvesh` serves, computed from the lab's files.

Sources: PM8 `PVE/API2/Cluster.pm` `resources` and `PVE/API2Tools.pm` `extract_vm_stats` /
`extract_node_stats` / `extract_storage_stats`; QS8 `src/PVE/API2/Qemu.pm` `vm_status`;
PS8 `src/PVE/API2/Storage/Status.pm` `index` and `Content.pm` `index`. Values pvestatd takes
from RRD (cpu, mem, net and disk counters) are the lab's own: QEMU's RSS and CPU time, zeros for
the counters the lab does not track.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pvelab.paths import LabPaths
from pvelab.pve import backups, cluster, vmconf, vmstate
from pvelab.pve.ha import config as ha_config
from pvelab.pve.qmp import MonitorError, QMPClient

CGROUP_MODE = 2  # PVE 8 nodes run the unified cgroup v2 hierarchy


class ApiError(Exception):
    """A `die` in an API handler: message for stderr, exit code."""

    def __init__(self, message: str, rc: int = 255) -> None:
        super().__init__(message)
        self.rc = rc


def _bootdisk_size(conf: dict[str, str]) -> int:
    for key in sorted(conf):
        if re.fullmatch(r"(virtio|scsi|sata|ide)\d+", key) and "media=cdrom" not in conf[key]:
            try:
                props = vmconf.parse_property_string(conf[key], default_key="file")
                return vmconf.parse_size(props["size"]) if "size" in props else 0
            except (vmconf.ConfError, ValueError):
                return 0
    return 0


def _cpu_fraction(pid: int, uptime: int, cpus: int) -> float:
    """QEMU's CPU time over its lifetime, as a fraction of its vCPUs (pvestatd: per interval)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds / max(uptime, 1) / max(cpus, 1)


def _rss_bytes(pid: int) -> int:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _qmp_status(paths: LabPaths, vmid: int) -> str:
    try:
        reply = QMPClient(paths.qmp_socket(vmid), vmid).command("query-status", timeout=2)
        return str(reply["status"])
    except (MonitorError, TypeError, KeyError):
        return "running"


def vm_stats(paths: LabPaths, vmid: int, conf: dict[str, str]) -> dict[str, Any]:
    """vmstatus(): the keys pvestatd reports for one VM."""
    pid = vmstate.running_pid(paths, vmid)
    cpus = int(conf.get("cores", "1")) * int(conf.get("sockets", "1"))
    uptime = vmstate.uptime(pid) if pid else 0
    return {
        "name": conf.get("name", f"VM {vmid}"),
        "status": "running" if pid else "stopped",
        "qmpstatus": _qmp_status(paths, vmid) if pid else "stopped",
        "pid": pid,
        "uptime": uptime,
        "maxcpu": cpus,
        "cpu": _cpu_fraction(pid, uptime, cpus) if pid else 0,
        "maxmem": int(conf.get("memory", "512")) * 1024 * 1024,
        "mem": _rss_bytes(pid) if pid else 0,
        "maxdisk": _bootdisk_size(conf),
        "template": 1 if conf.get("template") == "1" else 0,
    }


def _load(paths: LabPaths, vmid: int) -> dict[str, str] | None:
    try:
        conf = vmconf.load_conf(paths.conf(vmid))
    except vmconf.ConfError:
        return None
    return conf.main if conf is not None else None


def vm_resource(paths: LabPaths, vmid: int) -> dict[str, Any] | None:
    """One `/cluster/resources` guest entry (PVE 8: no `memhost`)."""
    conf = _load(paths, vmid)
    owner = cluster.vm_node(paths, vmid)
    if conf is None or owner is None:
        return None
    stats = vm_stats(paths, vmid, conf)
    entry: dict[str, Any] = {
        "id": f"qemu/{vmid}",
        "vmid": vmid,
        "node": owner,
        "type": "qemu",
        # pvestatd: `$d->{qmpstatus} || $d->{status}`
        "status": stats["qmpstatus"],
        "name": stats["name"],
        "uptime": stats["uptime"],
        "template": stats["template"],
        "maxcpu": stats["maxcpu"],
        "cpu": stats["cpu"],
        "maxmem": stats["maxmem"],
        "mem": stats["mem"],
        "maxdisk": stats["maxdisk"],
        "disk": 0,
        "netin": 0,
        "netout": 0,
        "diskread": 0,
        "diskwrite": 0,
    }
    for key in ("lock", "tags"):
        if conf.get(key):
            entry[key] = conf[key]
    hastate = ha_config.hastate(paths, vmid)
    if hastate is not None:
        entry["hastate"] = hastate
    return entry


def _meminfo() -> dict[str, int]:
    result = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        result[key] = int(rest.split()[0]) * 1024
    return result


def node_resource(paths: LabPaths, name: str, local: str) -> dict[str, Any]:
    """extract_node_stats: every lab node is this machine; outside the partition: offline."""
    node = cluster.node(name)
    assert node is not None
    online = any(n.name == name for n in cluster.members(paths, local))
    st = os.statvfs("/")
    mem = _meminfo()
    entry: dict[str, Any] = {
        "id": f"node/{name}",
        "node": name,
        "type": "node",
        "status": "online" if online else "offline",
        "level": "",
        "maxcpu": os.cpu_count() or 1,
        "maxmem": mem["MemTotal"],
        "maxdisk": st.f_blocks * st.f_frsize,
        "cgroup-mode": CGROUP_MODE,
    }
    if online:
        entry["uptime"] = int(float(Path("/proc/uptime").read_text().split()[0]))
        entry["cpu"] = min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        entry["mem"] = mem["MemTotal"] - mem.get("MemAvailable", 0)
        entry["disk"] = (st.f_blocks - st.f_bfree) * st.f_frsize
    return entry


def storage_resource(paths: LabPaths, name: str) -> dict[str, Any]:
    """extract_storage_stats for `local` on one node."""
    info = backups.status(paths)
    return {
        "id": f"storage/{name}/{backups.STORAGE}",
        "storage": backups.STORAGE,
        "node": name,
        "type": "storage",
        "plugintype": backups.STORAGE_TYPE,
        "status": "available",
        "shared": backups.SHARED,
        "content": info["content"],
        "maxdisk": info["total"],
        "disk": info["used"],
    }


def cluster_resources(paths: LabPaths, local: str, kind: str | None) -> list[dict[str, Any]]:
    """GET /cluster/resources [--type vm|node|storage|sdn]: guests by vmid (string order, as
    `sort keys`), then nodes, then storages."""
    result: list[dict[str, Any]] = []
    if kind in (None, "vm"):
        for vmid in sorted(cluster.vmids(paths), key=str):
            entry = vm_resource(paths, vmid)
            if entry is not None:
                result.append(entry)
    if kind in (None, "node"):
        result += [node_resource(paths, n, local) for n in cluster.node_names()]
    if kind in (None, "storage"):
        result += [storage_resource(paths, n) for n in cluster.node_names()]
    return result


def conf_missing(node: str, vmid: int) -> ApiError:
    return ApiError(f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist", 2)


def vm_status_current(paths: LabPaths, node: str, vmid: int) -> dict[str, Any]:
    """GET /nodes/<node>/qemu/<vmid>/status/current (vm_status: vmstatus full + ha + agent)."""
    conf = _load(paths, vmid) if cluster.on_node(paths, vmid, node) else None
    if conf is None:
        raise conf_missing(node, vmid)
    stats = vm_stats(paths, vmid, conf)
    status: dict[str, Any] = {
        "vmid": vmid,
        "name": stats["name"],
        "status": stats["status"],
        "qmpstatus": stats["qmpstatus"],
        "cpus": stats["maxcpu"],
        "cpu": stats["cpu"],
        "maxmem": stats["maxmem"],
        "mem": stats["mem"],
        "maxdisk": stats["maxdisk"],
        "disk": 0,
        "uptime": stats["uptime"],
        "netin": 0,
        "netout": 0,
        "diskread": 0,
        "diskwrite": 0,
    }
    if stats["pid"]:
        status["pid"] = stats["pid"]
    for key in ("lock", "tags"):
        if conf.get(key):
            status[key] = conf[key]
    if stats["template"]:
        status["template"] = 1
    status["ha"] = dict(ha_config.service_status(paths, f"vm:{vmid}"))
    if vmconf.agent_enabled(conf):
        status["agent"] = 1
    return status


def storage_index(paths: LabPaths, content: str | None, storage: str | None) -> list[Any]:
    """GET /nodes/<node>/storage [--content X] [--storage S]."""
    if storage is not None and storage != backups.STORAGE:
        raise ApiError(
            "400 Parameter verification failed.\nstorage: No such storage.\n"
            "pvesh get <api_path> [OPTIONS] [FORMAT_OPTIONS]"
        )
    wanted = [c for c in re.split(r"[,;\s]+", content or "") if c]
    if wanted and not set(wanted) & set(backups.CONTENT):
        return []
    return [backups.status(paths)]


def storage_content(
    paths: LabPaths, storage: str, content: str | None, vmid: int | None
) -> list[dict[str, Any]]:
    """GET /nodes/<node>/storage/<storage>/content [--content X] [--vmid N]."""
    if storage != backups.STORAGE:
        raise ApiError(f"storage '{storage}' does not exist")  # PS8 Storage.pm storage_config
    return backups.content(paths, content, vmid)
