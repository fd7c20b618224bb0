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
from pvelab.pve.qm import formats, guest, migrate, power, schema, setconf, snapconf, snapshot
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
    cores = int(conf.get("cores", "1")) * int(conf.get("sockets", "1"))
    stat: dict[str, Any] = {
        "vmid": vmid,
        "name": conf.get("name", f"VM {vmid}"),
        "status": "running" if pid else "stopped",
        "cpus": cores,
        "maxmem": int(conf.get("memory", "512")) * 1024 * 1024,
        "maxdisk": _bootdisk_size(conf),
        "uptime": vmstate.uptime(pid) if pid else 0,
    }
    for key in ("lock", "tags"):
        if key in conf:
            stat[key] = conf[key]
    if pid:
        stat["pid"] = pid
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
            Option("machine"),
            Option("force-cpu"),
            Option("stateuri", max_length=128),
            Option("migratedfrom"),
            Option("migration_type", enum=("secure", "insecure")),
            Option("migration_network"),
            Option("targetstorage"),
            Option("nets-host-mtu"),
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
}


# QS8 CLI/qm.pm $cmddef: every top-level word (+ CLIHandler's `help`), for PVE's unique-prefix
# expansion; aliases are matched only in full. The stand-in implements COMMANDS of them.
PVE_COMMANDS = (
    "list create destroy clone migrate remote-migrate set config pending showcmd status snapshot "
    "delsnapshot listsnapshot rollback template start stop reset shutdown reboot suspend resume "
    "sendkey vncproxy wait unlock disk enroll-efi-keys monitor guest mtunnel nbdstop terminal "
    "importovf cleanup cloudinit import help".split()
)
PVE_ALIASES = {
    "agent": "guest cmd", "importdisk": "disk import", "move-disk": "disk move",
    "move_disk": "disk move", "rescan": "disk rescan", "resize": "disk resize",
    "unlink": "disk unlink",
}  # fmt: skip
GUEST_COMMANDS = ("cmd", "passwd", "exec", "exec-status")


def usage_all(prefix: str = "") -> str:
    """print_usage_short: the USAGE line, a blank line, the (sub)commands' short usages."""
    lines = [COMMANDS[k].spec.usage() for k in sorted(COMMANDS) if k.startswith(prefix)]
    return "USAGE: qm <COMMAND> [ARGS] [OPTIONS]\n\n" + "".join(f"       {u}\n" for u in lines)


def _expand(word: str, names: tuple[str, ...] | list[str]) -> str:
    """CLIHandler $expand_command_name: exact, else the only command starting with it."""
    if word in names or word in PVE_ALIASES:
        return word
    matches = [n for n in names if n.startswith(word)]
    return matches[0] if len(matches) == 1 else word


def resolve(argv: list[str]) -> tuple[Entry, list[str]]:
    """Find the (sub)command; usage errors as PVE's CLIHandler prints them."""
    if not argv:
        raise UsageError("ERROR: no command specified\n" + usage_all())
    word = _expand(argv[0], PVE_COMMANDS)
    if word in PVE_ALIASES:
        return resolve([*PVE_ALIASES[word].split(), *argv[1:]])
    rest = argv[1:]
    if word == "guest":
        if not rest:
            raise UsageError("ERROR: incomplete command 'qm guest'\n" + usage_all("guest "))
        word, rest = f"guest {_expand(rest[0], GUEST_COMMANDS)}", rest[1:]
    if word not in COMMANDS:
        raise UsageError(f"ERROR: unknown command 'qm {word}'\n" + usage_all())
    return COMMANDS[word], rest


def run(ctx: Context, argv: list[str]) -> int:
    """Execute one qm command line; returns the exit code (output already written)."""
    try:
        entry, rest = resolve(argv)
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
