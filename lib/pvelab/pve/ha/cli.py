"""The stand-in `ha-manager` (HA8 CLI/ha_manager.pm, API2/HA/Resources.pm): `python -m pvelab.pve.ha
--lab DIR <command> ...`; texts, checks and exit codes (0, or 255 after a `die`) of PVE 8.4."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from pvelab.paths import LabPaths
from pvelab.pve import clihandler, cluster
from pvelab.pve.clihandler import Alias, Def
from pvelab.pve.cluster import command_line
from pvelab.pve.ha import config, nodes, status
from pvelab.pve.ha.config import HAError
from pvelab.pve.qm.options import Command, Option, UsageError, parse


class HACommand(Command):
    """A PVE CLI command whose usage line names `ha-manager`."""

    def usage(self) -> str:
        return "ha-manager " + super().usage().removeprefix("qm ")


def _sid_format(value: str) -> str | None:
    """JSONSchema format `pve-ha-resource-or-vm-id` (HA8 Tools.pm)."""
    ok = re.fullmatch(r"[a-z]+:\S+|\d+", value)
    return None if ok else "invalid format - value does not look like a valid ha resource id\n"


def _node_format(value: str) -> str | None:
    """JSONSchema format `pve-node` (PC JSONSchema.pm pve_verify_node_name)."""
    ok = re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?", value)
    return None if ok else "invalid format - value does not look like a valid node name\n"


def _timeout_check(value: str) -> str | None:
    if not re.fullmatch(r"[+-]?\d+", value):
        return f"type check ('integer') failed - got '{value}'"
    return None if int(value) >= 0 else "value must have a minimum value of 0"


def _comment_check(value: str) -> str | None:
    return None if len(value) <= 4096 else "value may only be 4096 characters long"


STATE = Option("state", enum=config.STATES)
RESOURCE_OPTIONS = (
    Option("comment", check=_comment_check),
    Option("group"),
    Option("max_relocate", "integer", minimum=0),
    Option("max_restart", "integer", minimum=0),
    STATE,
)
SID_CHECK: dict[str, Callable[[str], str | None]] = {"sid": _sid_format}


@dataclass
class Io:
    """The two output streams of one `ha-manager` call."""

    stdout: TextIO
    stderr: TextIO


def _settings(p: dict[str, Any]) -> dict[str, str]:
    return {k: str(p[k]) for k in config.OPTIONS if k in p}


def cmd_status(paths: LabPaths, p: dict[str, Any], io: Io) -> None:
    """`ha-manager status [--verbose]`."""

    def warn(line: str) -> None:
        io.stderr.write(line + "\n")

    entries = status.status_entries(paths, warn=warn)
    io.stdout.write(status.status_text(entries))
    if p.get("verbose"):
        io.stdout.write("full cluster state:\n")
        io.stdout.write(status.perl_pretty_json(status.full_cluster_state(paths)))


def cmd_config(paths: LabPaths, p: dict[str, Any], io: Io) -> None:
    """`ha-manager config [--type vm|ct]`."""
    out, err = status.config_text(config.read_resources(paths), p.get("type"))
    io.stdout.write(out)
    io.stderr.write(err)


def cmd_add(paths: LabPaths, p: dict[str, Any], io: Io) -> None:
    """API2::HA::Resources `create`."""
    if not nodes.quorate(paths):
        raise HAError(cluster.NO_QUORUM)  # check_cfs_quorum() before anything else
    sid, rtype, name = config.parse_sid(paths, p["sid"])
    if p.get("type") and p["type"] != rtype:
        raise HAError("types does not match")
    if rtype not in config.TYPES:
        raise HAError(f"unknown section type '{rtype}'")
    config.verify_name(rtype, name)
    entry = nodes.vmlist(paths).get(int(name))
    if entry is None:  # PVEVM/PVECT `exists`: the vmlist only
        raise HAError(f"resource '{sid}' does not exist in cluster")
    try:
        with config.domain_lock(paths, err=io.stderr):
            res = config.read_resources(paths)
            if sid in res.ids:
                raise HAError(f"resource ID '{sid}' already defined")
            res.ids[sid] = {"type": rtype, **_settings(p)}
            res.order.append(sid)
            config.write_resources(paths, res)
    except HAError as exc:
        raise HAError(f"create resource failed: {exc}") from exc


def check_service_state(paths: LabPaths, sid: str, req_state: str | None = None) -> None:
    """API2::HA::Resources::check_service_state: an `error` service takes only `disabled`."""
    st = config.service_status(paths, sid)
    if st["managed"] and st.get("state") == "error" and req_state != "disabled":
        raise HAError(f"service '{sid}' in error state, must be disabled and fixed first")


def cmd_set(paths: LabPaths, p: dict[str, Any], io: Io) -> None:
    """API2::HA::Resources `update`."""
    sid, _rtype, _name = config.parse_sid(paths, p["sid"])
    if p.get("group"):
        raise HAError(f"HA group '{p['group']}' does not exist")  # the lab has no groups.cfg
    check_service_state(paths, sid, p.get("state"))
    delete = [k for k in re.split(r"[,;\s]+", p.get("delete", "")) if k]
    config.update_resource(paths, sid, _settings(p), delete, p.get("digest"), io.stderr)


def cmd_remove(paths: LabPaths, p: dict[str, Any], io: Io) -> None:
    """API2::HA::Resources `delete`."""
    sid, _rtype, _name = config.parse_sid(paths, p["sid"])
    if sid not in config.read_resources(paths).ids:
        raise HAError(f"cannot delete service '{sid}', not HA managed!")
    config.remove_resource(paths, sid, err=io.stderr)


def cmd_stop(paths: LabPaths, p: dict[str, Any], io: Io) -> None:
    """`ha-manager crm-command stop <sid> <timeout>` (CLI/ha_manager.pm `stop`)."""
    sid, _rtype, _name = config.parse_sid(paths, p["sid"])
    if not config.is_managed(config.read_resources(paths), sid):
        raise HAError(f"resource '{sid}' is not HA managed")
    check_service_state(paths, sid)
    config.queue_crm_command(paths, f"stop {sid} {int(p['timeout'])}", io.stderr)


Handler = Callable[[LabPaths, dict[str, Any], Io], None]


def cmd_move(task: str) -> Handler:
    """API2::HA::Resources `migrate` / `relocate` (`ha-manager migrate|relocate` are aliases of
    `crm-command migrate|relocate`): no check of the node beyond its format; the CRM decides."""

    def handler(paths: LabPaths, p: dict[str, Any], io: Io) -> None:
        sid, _rtype, _name = config.parse_sid(paths, p["sid"])
        if not config.is_managed(config.read_resources(paths), sid):
            raise HAError(f"resource '{sid}' is not HA managed")  # service_is_ha_managed
        check_service_state(paths, sid)
        config.queue_crm_command(paths, f"{task} {sid} {p['node']}", io.stderr)

    return handler


def cmd_maintenance(disable: bool) -> Handler:
    """CLI/ha_manager.pm `node-maintenance-set` (`crm-command node-maintenance enable|disable`)."""

    def handler(paths: LabPaths, p: dict[str, Any], io: Io) -> None:
        if cluster.node(p["node"]) is None:  # PCL Cluster.pm check_node_exists
            raise HAError(f"no such cluster node '{p['node']}'")
        cmd = "disable-node-maintenance" if disable else "enable-node-maintenance"
        config.queue_crm_command(paths, f"{cmd} {p['node']}", io.stderr)

    return handler


NODE_CHECK: dict[str, Callable[[str], str | None]] = {"node": _node_format}
COMMANDS: dict[str, tuple[HACommand, Handler]] = {
    "status": (HACommand("status", (), (Option("verbose", "boolean"),)), cmd_status),
    "config": (HACommand("config", (), (Option("type", enum=config.TYPES),)), cmd_config),
    "add": (
        HACommand("add", ("sid",), (*RESOURCE_OPTIONS, Option("type", enum=config.TYPES)),
                  arg_checks=SID_CHECK),
        cmd_add,
    ),
    "remove": (HACommand("remove", ("sid",), arg_checks=SID_CHECK), cmd_remove),
    "set": (
        HACommand("set", ("sid",), (*RESOURCE_OPTIONS, Option("delete"), Option("digest")),
                  arg_checks=SID_CHECK),
        cmd_set,
    ),
    "crm-command stop": (
        HACommand("crm-command stop", ("sid", "timeout"),
                  arg_checks={**SID_CHECK, "timeout": _timeout_check}),
        cmd_stop,
    ),
    **{
        f"crm-command {task}": (
            HACommand(f"crm-command {task}", ("sid", "node"),
                      arg_checks={**SID_CHECK, **NODE_CHECK}),
            cmd_move(task),
        )
        for task in ("migrate", "relocate")
    },
    **{
        f"crm-command node-maintenance {word}": (
            HACommand(f"crm-command node-maintenance {word}", ("node",), arg_checks=NODE_CHECK),
            cmd_maintenance(word == "disable"),
        )
        for word in ("enable", "disable")
    },
}  # fmt: skip


GROUPS = "PVE::API2::HA::Groups"
RESOURCES = "PVE::API2::HA::Resources"
HA_MANAGER = "PVE::CLI::ha_manager"
# HA8 CLI/ha_manager.pm $cmddef; usages as pve-docs 8.4 `ha-manager.1-synopsis.adoc`.
HA_CLI = clihandler.CLI("ha-manager", {
    "status": Def(HA_MANAGER, " [OPTIONS]"),
    "config": Def(RESOURCES, " [OPTIONS]"),
    "groupconfig": Def(GROUPS),
    "groupadd": Def(GROUPS, "<group> --nodes <string> [OPTIONS]"),
    "groupremove": Def(GROUPS, "<group>"),
    "groupset": Def(GROUPS, "<group> [OPTIONS]"),
    "add": Def(RESOURCES, "<sid> [OPTIONS]"),
    "remove": Def(RESOURCES, "<sid>"),
    "set": Def(RESOURCES, "<sid> [OPTIONS]"),
    "migrate": Alias("crm-command migrate"),
    "relocate": Alias("crm-command relocate"),
    "crm-command": {
        "migrate": Def(RESOURCES, "<sid> <node>"),
        "relocate": Def(RESOURCES, "<sid> <node>"),
        "stop": Def(HA_MANAGER, "<sid> <timeout>"),
        "node-maintenance": {
            "enable": Def(HA_MANAGER, "<node>"),
            "disable": Def(HA_MANAGER, "<node>"),
        },
    },
})  # fmt: skip


def resolve(argv: list[str]) -> tuple[str, list[str]]:
    """CLIHandler resolve_cmd + handle_cmd's aborts: the command's words and its arguments."""
    found = HA_CLI.command(argv)
    return " ".join(found.words), found.rest


def run(paths: LabPaths, argv: list[str], io: Io) -> int:
    """One `ha-manager` command line; returns the exit code (output already written)."""
    try:
        name, rest = resolve(argv)
        if name == "help" and not any(a.startswith("-") for a in rest):
            io.stdout.write(HA_CLI.help(rest))
            return 0
        if name not in COMMANDS:  # a real command of PVE's ha-manager the lab does not have
            io.stderr.write(
                f"pvelab: `ha-manager {name}` is not implemented by the lab's ha-manager\n"
            )
            return 255
        spec, handler = COMMANDS[name]
        params = parse(spec, rest)
    except UsageError as exc:
        io.stderr.write(str(exc))
        return exc.rc
    try:
        handler(paths, params, io)
    except HAError as exc:
        io.stderr.write(f"{exc}\n")
        return 255
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `[--lab DIR] <ha-manager args...>`."""
    paths, _, args = command_line(argv)
    return run(paths, args, Io(sys.stdout, sys.stderr))
