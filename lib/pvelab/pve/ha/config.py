"""The HA stack's files under etc/pve (PVE::HA::Config, HA8 4.0.7): resources.cfg (SectionConfig),
manager_status (CRM JSON), crm_commands (queued commands), nodes/<node>/lrm_status (LRM JSON)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pvelab.paths import LabPaths
from pvelab.pve.ha import nodes

TYPES = ("ct", "vm")  # PVE::HA::Resources plugins (PVECT, PVEVM)
STATES = ("started", "stopped", "enabled", "disabled", "ignored")  # HA8 Resources.pm enum
# PVEVM->options(); SectionConfig writes `comment` first, then the rest sorted.
OPTIONS = ("comment", "group", "max_relocate", "max_restart", "state")
RESOURCES_FILE = "/etc/pve/ha/resources.cfg"


Warn = Callable[[str], None]


def stderr_warn(line: str) -> None:
    """Perl `warn`: one line on stderr."""
    sys.stderr.write(line + "\n")


def quiet(line: str) -> None:
    """Warnings nobody reads (the daemons' and qm's reads of resources.cfg)."""


class HAError(Exception):
    """A `die` in the HA code: the message is what PVE prints (no trailing newline)."""


@dataclass
class Resources:
    """resources.cfg parsed: sid -> properties (raw strings, `type` included), file order, digest."""

    ids: dict[str, dict[str, str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    digest: str = hashlib.sha1(b"").hexdigest()


def ha_dir(paths: LabPaths) -> Path:
    return paths.root / "etc" / "pve" / "ha"


def resources_path(paths: LabPaths) -> Path:
    return ha_dir(paths) / "resources.cfg"


def manager_status_path(paths: LabPaths) -> Path:
    return ha_dir(paths) / "manager_status"


def crm_commands_path(paths: LabPaths) -> Path:
    return ha_dir(paths) / "crm_commands"


def lrm_status_path(paths: LabPaths, node: str) -> Path:
    return paths.root / "etc" / "pve" / "nodes" / node / "lrm_status"


def _write_atomic(path: Path, text: str) -> None:
    """pmxcfs writes are atomic for readers: a temp file renamed over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{id(text)}")
    tmp.write_text(text)
    os.replace(tmp, path)


# PCL Cluster.pm $cfs_lock: the lock request's timeout (10 s) and its 1 s retry sleep; the lab's
# tests shorten the sleep.
CFS_LOCK_TIMEOUT = 10
CFS_LOCK_SLEEP = 1.0


def _no_quorum_lock_wait(err: TextIO | None) -> None:
    """$cfs_lock without quorum: mkdir in the read-only pmxcfs fails, so it says `trying to
    acquire cfs lock` and sleeps 1 s until alarm's remaining time (10, then one less each
    try) runs out - nine times - then `got lock request timeout`, reported as no quorum."""
    stream = sys.stderr if err is None else err
    remaining = CFS_LOCK_TIMEOUT
    while True:
        remaining -= 1
        if remaining <= 0:
            raise HAError("cfs-lock 'domain-ha' error: no quorum!")
        stream.write("trying to acquire cfs lock 'domain-ha' ...\n")
        stream.flush()
        time.sleep(CFS_LOCK_SLEEP)


@contextmanager
def domain_lock(
    paths: LabPaths, check_quorum: bool = True, err: TextIO | None = None
) -> Iterator[None]:
    """cfs_lock_domain('ha'): one writer of resources.cfg and crm_commands at a time."""
    if check_quorum and not nodes.quorate(paths):
        _no_quorum_lock_wait(err)
    lock = paths.root / "var" / "lock" / "pve-ha" / "domain-ha.lck"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --- resources.cfg (PC SectionConfig.pm parse_config / write_config) ----------------------


def verify_name(rtype: str, name: str) -> None:
    """PVEVM/PVECT verify_name."""
    if not re.fullmatch(r"[1-9][0-9]+", name):
        raise HAError("invalid VMID")


def parse_resources(text: str, warn: Warn = stderr_warn) -> Resources:
    """SectionConfig parse_config for HA resources; bad sections are skipped with PVE's warning."""
    res = Resources(digest=hashlib.sha1(text.encode()).hexdigest())
    current: dict[str, str] | None = None
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("#"):
            continue
        if not line.strip():
            current = None
            continue
        prefix = f"file {RESOURCES_FILE} line {lineno}"
        header = re.fullmatch(r"(\S+):\s*(\S+)\s*", line)
        if current is None and header:
            rtype, name = header.group(1).lower(), header.group(2)
            sid = f"{rtype}:{name}"
            try:
                if rtype not in TYPES:
                    raise HAError(f"no such resource type '{rtype}'")
                verify_name(rtype, name)
            except HAError as exc:
                warn(f"{prefix} (skip section '{sid}'): {exc}")
                current = {}  # swallow the section's lines
                continue
            current = res.ids[sid] = {"type": rtype}
            res.order.append(sid)
            continue
        prop = re.fullmatch(r"\s+(\S+)(\s+(.*\S))?\s*", line)
        if current is None:
            continue
        if prop and (prop.group(1) not in OPTIONS or prop.group(3) is None):
            sid = next((s for s, v in res.ids.items() if v is current), "")
            if sid:
                warn(
                    f"{prefix} (section '{sid}') - unable to parse value of '{prop.group(1)}': "
                    "unexpected property"
                )
        elif prop:
            current[prop.group(1)] = prop.group(3)
    return res


def format_resources(res: Resources) -> str:
    """SectionConfig write_config: `<type>: <name>`, tab-indented properties, blank line after."""
    out = []
    for sid in res.order:
        scfg = res.ids[sid]
        rtype, name = sid.split(":", 1)
        lines = [f"{rtype}: {name}"]
        for key in OPTIONS:
            value = scfg.get(key)
            if value is not None and value != "":
                lines.append(f"\t{key} {value}")
        out.append("\n".join(lines) + "\n\n")
    return "".join(out)


def read_resources(paths: LabPaths, warn: Warn = stderr_warn) -> Resources:
    try:
        text = resources_path(paths).read_text()
    except FileNotFoundError:
        text = ""
    return parse_resources(text, warn)


def write_resources(paths: LabPaths, res: Resources) -> None:
    _write_atomic(resources_path(paths), format_resources(res))


def parse_sid(paths: LabPaths, sid: str) -> tuple[str, str, str]:
    """PVE::HA::Config::parse_sid: `vm:100`, or a bare VMID looked up in the vmlist."""
    if re.fullmatch(r"\d+", sid):
        entry = nodes.vmlist(paths).get(int(sid))
        if entry is None:
            raise HAError(f"unable do detect SID from VMID - VM/CT {sid} does not exist")
        rtype = "ct" if entry["type"] == "lxc" else "vm"
        return f"{rtype}:{sid}", rtype, sid
    match = re.fullmatch(r"(\S+):(\S+)", sid)
    if not match:
        raise HAError(f"unable to parse service id '{sid}'")
    return sid, match.group(1), match.group(2)


def is_managed(res: Resources, sid: str, has_state: str | None = None) -> bool:
    """$service_check_ha_state: configured and not `ignored` (or in exactly `has_state`)."""
    scfg = res.ids.get(sid)
    if scfg is None:
        return False
    state = scfg.get("state")
    if has_state is None:
        return state != "ignored"
    state = "started" if state in (None, "enabled") else state
    return state == ("started" if has_state == "enabled" else has_state)


def vm_is_ha_managed(paths: LabPaths, vmid: int) -> bool:
    """PVE::HA::Config::vm_is_ha_managed: what qm start/stop/shutdown ask first."""
    res = read_resources(paths, warn=quiet)
    return any(is_managed(res, f"{t}:{vmid}") for t in ("vm", "ct"))


def service_status(paths: LabPaths, sid: str) -> dict[str, Any]:
    """get_service_status: {managed, state (CRM state)}."""
    if not is_managed(read_resources(paths, warn=quiet), sid):
        return {"managed": 0}
    ss = read_manager_status(paths).get("service_status", {}).get(sid, {})
    return {"managed": 1, "state": ss.get("state")}


def checked_config(paths: LabPaths) -> dict[str, dict[str, Any]]:
    """read_and_check_resources_config: defaults filled in, `node` from the vmlist."""
    vms = nodes.vmlist(paths)
    conf: dict[str, dict[str, Any]] = {}
    for sid, raw in read_resources(paths, warn=quiet).ids.items():
        cd: dict[str, Any] = dict(raw)
        cd["state"] = "started" if cd.get("state") in (None, "enabled") else cd["state"]
        cd["max_restart"] = int(cd.get("max_restart", 1))
        cd["max_relocate"] = int(cd.get("max_relocate", 1))
        name = sid.split(":", 1)[1]
        entry = vms.get(int(name)) if name.isdigit() else None
        if entry is not None:
            cd["node"] = entry["node"]
        conf[sid] = cd
    return conf


def update_resource(
    paths: LabPaths, sid: str, changes: dict[str, str], delete: list[str] | None = None,
    digest: str | None = None, err: TextIO | None = None,
) -> None:  # fmt: skip
    """update_resources_config, under the domain lock."""
    try:
        with domain_lock(paths, err=err):
            res = read_resources(paths)
            if digest and digest != res.digest:
                raise HAError(
                    "detected modified configuration - file changed by other user? Try again."
                )
            scfg = res.ids.get(sid)
            if scfg is None:
                raise HAError(f"no such resource '{sid}'")
            scfg.update(changes)
            for key in delete or []:
                if key not in OPTIONS:
                    raise HAError(f"no such option '{key}'")
                scfg.pop(key, None)
            write_resources(paths, res)
    except HAError as exc:
        raise HAError(f"update resources config failed: {exc}") from exc


def remove_resource(
    paths: LabPaths, sid: str, check_quorum: bool = True, err: TextIO | None = None
) -> bool:
    """delete_service_from_config: True if it was there (check_quorum=False: the lab's reset)."""
    with domain_lock(paths, check_quorum, err):
        res = read_resources(paths)
        if sid not in res.ids:
            return False
        del res.ids[sid]
        res.order.remove(sid)
        write_resources(paths, res)
    return True


# --- manager_status, crm_commands, lrm_status --------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return dict(json.loads(text)) if text.strip() else {}


def read_manager_status(paths: LabPaths) -> dict[str, Any]:
    return _read_json(manager_status_path(paths))


def write_manager_status(paths: LabPaths, status: dict[str, Any]) -> None:
    _write_atomic(manager_status_path(paths), json.dumps(status, sort_keys=True))


def read_lrm_status(paths: LabPaths, node: str) -> dict[str, Any] | None:
    """The node's LRM status; None when the file does not exist (PVE warns and says 'unknown')."""
    path = lrm_status_path(paths, node)
    return _read_json(path) if path.exists() else None


def write_lrm_status(paths: LabPaths, node: str, status: dict[str, Any]) -> None:
    _write_atomic(lrm_status_path(paths, node), json.dumps(status, sort_keys=True))


def queue_crm_command(paths: LabPaths, cmd: str, err: TextIO | None = None) -> None:
    """queue_crm_commands: append one line under the domain lock."""
    with domain_lock(paths, err=err):
        path = crm_commands_path(paths)
        data = path.read_text() if path.exists() else ""
        _write_atomic(path, data + cmd.rstrip("\n") + "\n")


def take_crm_commands(paths: LabPaths) -> str:
    """read_crm_commands: the queued lines, and the file emptied."""
    with domain_lock(paths):
        path = crm_commands_path(paths)
        data = path.read_text() if path.exists() else ""
        if data:
            _write_atomic(path, "")
    return data


def any_pending_crm_command(paths: LabPaths) -> bool:
    path = crm_commands_path(paths)
    return path.exists() and path.stat().st_size > 0


# --- /cluster/resources `hastate` ---------------------------------------------------------


def hastate(paths: LabPaths, vmid: int) -> str | None:
    """/cluster/resources `hastate` (PM8 API2/Cluster.pm): the CRM state from manager_status, else
    the requested state from resources.cfg; None if `vm:<vmid>` is no HA resource (and also when
    its section has no `state` line and the CRM has not seen it: PVE then gives `null`)."""
    sid = f"vm:{vmid}"
    service = read_manager_status(paths).get("service_status", {}).get(sid)
    if service is not None:
        return service.get("state")
    scfg = read_resources(paths, warn=quiet).ids.get(sid)
    return scfg.get("state") if scfg is not None else None


def clear(paths: LabPaths) -> None:
    """Forget every HA file (lab `down`): no resources, no CRM/LRM state, no queued command."""
    for path in (resources_path(paths), manager_status_path(paths), crm_commands_path(paths)):
        path.unlink(missing_ok=True)
    for lrm in (paths.root / "etc" / "pve" / "nodes").glob("*/lrm_status"):
        lrm.unlink(missing_ok=True)
