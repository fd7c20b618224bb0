"""The stand-in `qm`: PVE's CLI on the lab's QEMU VMs (`python -m pvelab.pve.qm --lab DIR ...`)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pvelab.paths import LabPaths
from pvelab.pve import cluster, vmconf, vmstate
from pvelab.pve.qm import (
    cipending,
    cloudinit,
    cmddef,
    confdesc,
    formats,
    guest,
    migrate,
    power,
    schema,
    setconf,
    snapconf,
    snapshot,
)
from pvelab.pve.qm.context import Context, QmError, node_name
from pvelab.pve.qm.options import (
    Command,
    Option,
    ParamErrors,
    UsageError,
    check_value,
    param_error,
    parse,
)
from pvelab.pve.qmp import MonitorError

SKIPLOCK = Option("skiplock", "boolean")
SNAPNAME = snapconf.snapname_error
SNAPSHOT_OPT = Option("snapshot", check=SNAPNAME)
TIMEOUT = Option("timeout", "integer", minimum=0)


def pid_error(value: str) -> str | None:
    """Agent.pm exec-status: `pid` is of type integer."""
    return check_value(Option("pid", "integer"), value)


WAIT_TIMEOUT = Option("timeout", "integer", minimum=1)  # QS8 CLI/qm.pm `wait`: minimum => 1
CONFIGID_LIST = schema.configid_list_error
# QS8 API2/Qemu.pm update_vm: skiplock, delete, revert, force (requires delete), digest + keys.
SET_OPTIONS = (
    SKIPLOCK,
    Option("delete", check=CONFIGID_LIST, is_list=True),
    Option("revert", check=CONFIGID_LIST, is_list=True),
    Option("force", "boolean", requires="delete"),
    Option("digest", max_length=40),
    *schema.SET_OPTIONS,
    *confdesc.SET_OPTIONS,
)


def status(ctx: Context, p: dict[str, Any]) -> None:
    """`qm status [--verbose]`."""
    stat = vm_status(ctx, p["vmid"], ctx.load(p["vmid"]).main)
    if p.get("verbose"):
        ctx.out(formats.status_verbose(stat))
    else:
        ctx.out(f"status: {stat.get('qmpstatus') or 'unknown'}\n")


def _bootdisk_size(conf: dict[str, str]) -> int:
    for key in sorted(conf):
        if re.fullmatch(r"(virtio|scsi|sata|ide)\d+", key) and "media=cdrom" not in conf[key]:
            size = vmconf.parse_property_string(
                conf[key].split(",", 1)[1] if "," in conf[key] else ""
            )
            return vmconf.parse_size(size["size"]) if "size" in size else 0
    return 0


def vm_status(ctx: Context, vmid: int, conf: dict[str, str], full: bool = True) -> dict[str, Any]:
    """PVE's vmstatus() subset: the keys the lab can know."""
    pid = vmstate.running_pid(ctx.paths, vmid)
    cores = int(conf.get("cores") or "1") * int(conf.get("sockets") or "1")
    stat: dict[str, Any] = {
        "vmid": vmid,
        "name": conf.get("name") or f"VM {vmid}",
        "status": "running" if pid else "stopped",
        "cpus": int(conf["vcpus"]) if conf.get("vcpus") else min(cores, os.cpu_count() or 1),
        "maxmem": int(conf.get("memory", "512")) * 1024 * 1024,
        "disk": 0,  # QemuServer.pm vmstatus: "no info available", for every VM
        "maxdisk": _bootdisk_size(conf),
        "uptime": vmstate.uptime(pid) if pid else 0,
        "cpu": 0,
        "mem": 0,
        "netout": 0,  # the sums of the VM's tap devices: the lab's VMs have none
        "netin": 0,
    }
    if conf.get("balloon") not in (None, "", "0"):
        stat["balloon_min"] = int(conf["balloon"]) * 1024 * 1024
        stat["shares"] = int(conf.get("shares", "1000"))  # load_defaults: shares 1000
    if conf.get("template") not in (None, "", "0"):
        stat["template"] = 1
    if any(conf.get(f"serial{i}") for i in range(4)):
        stat["serial"] = 1
    for key in ("lock", "tags"):
        if key in conf:
            stat[key] = conf[key]
    if pid:
        stat["pid"] = pid
        stat["mem"] = vmstate.mem_share(pid, stat["maxmem"])
        if full:
            try:
                stat["qmpstatus"] = ctx.qmp(vmid).command("query-status", timeout=2)["status"]
            except (MonitorError, TypeError, KeyError):
                stat["qmpstatus"] = "running"  # PVE falls back silently
    if full and "qmpstatus" not in stat:
        stat["qmpstatus"] = stat["status"]
    return stat


def list_(ctx: Context, p: dict[str, Any]) -> None:
    """`qm list [--full]`."""
    rows = []
    for path in ctx.paths.pve_conf_dir.glob("*.conf"):
        if not re.fullmatch(r"\d+", path.stem):
            continue
        vmid = int(path.stem)
        if not cluster.on_node(ctx.paths, vmid, ctx.node):
            continue  # config_list: `next if ... $d->{node} ne $nodename`
        conf = vmconf.load_conf(path)
        if conf is None:
            continue
        stat = vm_status(ctx, vmid, conf.main, full=bool(p.get("full")))
        rows.append(
            formats.ListRow(
                vmid,
                stat["name"],
                stat.get("qmpstatus") or stat["status"],
                stat["maxmem"],
                stat["maxdisk"],
                stat.get("pid", 0),
            )  # fmt: skip
        )
    ctx.out(formats.qm_list(rows))


def config(ctx: Context, p: dict[str, Any]) -> None:
    """`qm config [--current|--snapshot <name>]`: sorted `key: value`, pending applied unless
    --current; with --snapshot that snapshot's section (API vm_config)."""
    if p.get("snapshot"):
        conf = snapshot.snapshot_config(ctx, p)
    else:
        conf = setconf.current_config(ctx.load(p["vmid"]), bool(p.get("current")))
    for key in sorted(conf):
        if key == "digest":
            continue
        value = vmconf.encode_text(conf[key]) if key == "description" else conf[key]
        ctx.out(f"{key}: {value}\n")


def unlock(ctx: Context, p: dict[str, Any]) -> None:
    """`qm unlock`: drop `lock` (and a pending one)."""
    vmid = p["vmid"]
    ctx.load(vmid)
    with ctx.lock_config(vmid):
        conf = ctx.load(vmid)
        conf.main.pop("lock", None)
        conf.pending.pop("lock", None)
        vmconf.write_conf(ctx.paths.conf(vmid), conf)


@dataclass(frozen=True)
class Entry:
    spec: Command
    handler: Callable[[Context, dict[str, Any]], None]
    task: bool = False  # worker command: exit 255 on failure, warnings on stdout


def _vm(name: str, *options: Option, **kw: Any) -> Command:
    return Command(name, ("vmid",), options, **kw)


def _snap(name: str, *options: Option) -> Command:
    return Command(name, ("vmid", "snapname"), options, arg_checks={"snapname": SNAPNAME})


COMMANDS: dict[str, Entry] = {
    "start": Entry(
        _vm(
            "start",
            SKIPLOCK,
            TIMEOUT,
            Option("machine", check=confdesc.machine_error),
            Option("force-cpu"),
            Option("stateuri", max_length=128),
            Option("migratedfrom", check=migrate.node_name_error),
            Option("migration_type", enum=("secure", "insecure")),
            Option("migration_network", check=confdesc.cidr_error),
            Option("targetstorage", check=confdesc.storage_pair_list_error, is_list=True),
            Option("nets-host-mtu", check=confdesc.nets_host_mtu_error),
        ),
        power.start,
        task=True,
    ),  # fmt: skip
    "stop": Entry(
        _vm(
            "stop",
            SKIPLOCK,
            TIMEOUT,
            Option("keepActive", "boolean"),
            Option("overrule-shutdown", "boolean"),
            Option("migratedfrom"),
        ),
        power.stop,
        task=True,
    ),  # fmt: skip
    "shutdown": Entry(
        _vm(
            "shutdown",
            SKIPLOCK,
            TIMEOUT,
            Option("forceStop", "boolean"),
            Option("keepActive", "boolean"),
        ),
        power.shutdown,
        task=True,
    ),  # fmt: skip
    "reboot": Entry(_vm("reboot", TIMEOUT), power.reboot, task=True),
    "status": Entry(_vm("status", Option("verbose", "boolean")), status),
    "config": Entry(_vm("config", Option("current", "boolean"), SNAPSHOT_OPT), config),
    "list": Entry(Command("list", (), (Option("full", "boolean"),)), list_),
    "set": Entry(_vm("set", *SET_OPTIONS), setconf.set_),
    "pending": Entry(_vm("pending"), setconf.pending),
    "unlock": Entry(_vm("unlock"), unlock),
    "wait": Entry(_vm("wait", WAIT_TIMEOUT), power.wait),
    "snapshot": Entry(
        _snap("snapshot", Option("description"), Option("vmstate", "boolean")),
        snapshot.snapshot,
        task=True,
    ),
    "listsnapshot": Entry(_vm("listsnapshot"), snapshot.listsnapshot),
    "rollback": Entry(_snap("rollback", Option("start", "boolean")), snapshot.rollback, task=True),
    "delsnapshot": Entry(
        _snap("delsnapshot", Option("force", "boolean")), snapshot.delsnapshot, task=True
    ),
    "guest cmd": Entry(
        Command("guest cmd", ("vmid", "command"), arg_enums={"command": guest.GUEST_COMMANDS}),
        guest.cmd,
    ),
    "guest exec": Entry(
        _vm(
            "guest exec",
            Option("synchronous", "boolean"),
            TIMEOUT,
            Option("pass-stdin", "boolean"),
            extra_args=True,
        ),
        guest.exec_,
    ),  # fmt: skip
    "guest exec-status": Entry(
        Command("guest exec-status", ("vmid", "pid"), arg_checks={"pid": pid_error}),
        guest.exec_status,
    ),
    "migrate": Entry(migrate.COMMAND, migrate.migrate, task=True),
    "cloudinit dump": Entry(
        Command("cloudinit dump", ("vmid", "type"), arg_enums={"type": cloudinit.DUMP_TYPES}),
        cloudinit.dump,
    ),
    "cloudinit pending": Entry(_vm("cloudinit pending"), cipending.pending),
    "cloudinit update": Entry(_vm("cloudinit update"), cipending.update),
}


def resolve(argv: list[str]) -> tuple[str, list[str]]:
    """CLIHandler resolve_cmd + handle_cmd's aborts: the command's words and its arguments."""
    found = cmddef.QM_CLI.command(argv)
    return " ".join(found.words), found.rest


def _help(ctx: Context, args: list[str]) -> int:
    """CLIHandler `help [<cmd>...]` (the short form; --verbose prints the full one)."""
    if any(a.startswith("-") for a in args):
        ctx.stderr.write("pvelab: `qm help --verbose` is not implemented by the lab's qm\n")
        return 255
    ctx.out(cmddef.QM_CLI.help(args))
    return 0


def run(ctx: Context, argv: list[str]) -> int:
    """Execute one qm command line; returns the exit code (output already written)."""
    try:
        name, rest = resolve(argv)
        if name == "help":
            return _help(ctx, rest)
        if name not in COMMANDS:  # a real command of PVE's qm the stand-in does not have
            ctx.stderr.write(f"pvelab: `qm {name}` is not implemented by the lab's qm\n")
            return 255
        entry = COMMANDS[name]
        params = parse(entry.spec, rest)
    except UsageError as exc:
        ctx.stderr.write(str(exc))
        return exc.rc
    ctx.task = entry.task  # a handler clears it for its checks before PVE's fork_worker
    try:
        entry.handler(ctx, params)
    except ParamErrors as exc:  # raise_param_exc in the API code: the CLI adds the usage
        ctx.stderr.write(str(param_error(entry.spec, exc.errors)))
        return 255
    except QmError as exc:
        ctx.stderr.write(f"{exc}\n")
        return 255 if ctx.task else exc.rc
    return 0


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def log_call(paths: LabPaths, record: dict[str, Any]) -> None:
    """Append one JSON line with a single O_APPEND write (safe under concurrent calls)."""
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.qm_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def _interrupted(signum: int, frame: object) -> None:
    raise QmError("received interrupt")


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `[--lab DIR] <qm args...>`; logs every call to LabPaths.qm_log."""
    args = list(sys.argv[1:] if argv is None else argv)
    paths = LabPaths.default()
    if args[:1] == ["--lab"] and len(args) > 1:
        paths, args = LabPaths(Path(args[1]).resolve()), args[2:]
    elif args and args[0].startswith("--lab="):
        paths, args = LabPaths(Path(args[0][6:]).resolve()), args[1:]
    started, rc = _now(), 255
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        rc = run(Context(paths, node_name()), args)
    except QmError as exc:  # interrupted outside a handler
        sys.stderr.write(f"{exc}\n")
    finally:
        log_call(paths, {"start": started, "end": _now(), "argv": args, "rc": rc})
    return rc
