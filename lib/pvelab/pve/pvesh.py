"""The stand-in `pvesh` (`python -m pvelab.pve.pvesh --lab DIR get <path> [OPTIONS]`).

PVE 8.4's API shell (PM8 `PVE/CLI/pvesh.pm`, PC `CLIHandler.pm`, `CLIFormatter.pm`) for the
GET paths of `api.py`; anything else fails the way pvesh does. Calls for another node's path
are answered here rather than proxied over SSH: every lab node reads the same files.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml

from pvelab.paths import LabPaths
from pvelab.pve import api, cluster
from pvelab.pve.clihandler import CLI, Def
from pvelab.pve.qm.formats import perl_json, perl_scalar
from pvelab.pve.qm.options import UsageError

USAGE = "pvesh get <api_path> [OPTIONS] [FORMAT_OPTIONS]"
PVESH = "PVE::CLI::pvesh"
API_PATH = "<api_path> [OPTIONS] [FORMAT_OPTIONS]"
# PM8 CLI/pvesh.pm $cmddef; usages as pve-docs 8.4 `pvesh.1-synopsis.adoc`.
PVESH_CLI = CLI("pvesh", {
    "usage": Def(PVESH, "<api_path> [OPTIONS]"), "get": Def(PVESH, API_PATH),
    "ls": Def(PVESH, API_PATH), "set": Def(PVESH, API_PATH), "create": Def(PVESH, API_PATH),
    "delete": Def(PVESH, API_PATH),
})  # fmt: skip
FORMATS = ("text", "json", "json-pretty", "yaml")
# PC RESTHandler.pm $standard_output_options, plus pvesh's own `noproxy`.
STANDARD = {"output-format": "string", "noheader": "boolean", "noborder": "boolean",
            "quiet": "boolean", "human-readable": "boolean", "noproxy": "boolean"}  # fmt: skip


class PveshError(Exception):
    def __init__(self, message: str, rc: int = 255) -> None:
        super().__init__(message)
        self.rc = rc


@dataclass(frozen=True)
class Route:
    pattern: str  # path parts; `{name}` binds a URI parameter
    options: dict[str, str]  # name -> boolean|integer|string|pve-vmid (integer + format)
    handler: Callable[[LabPaths, str, dict[str, Any]], Any]
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def match(self, parts: list[str]) -> dict[str, str] | None:
        want = self.pattern.split("/")
        if len(want) != len(parts):
            return None
        bound = {}
        for w, p in zip(want, parts, strict=True):
            if w.startswith("{"):
                bound[w[1:-1]] = p
            elif w != p:
                return None
        return bound


def _resources(paths: LabPaths, local: str, p: dict[str, Any]) -> Any:
    return api.cluster_resources(paths, local, p.get("type"))


def _storage(paths: LabPaths, local: str, p: dict[str, Any]) -> Any:
    return api.storage_index(paths, p.get("content"), p.get("storage"))


def _content(paths: LabPaths, local: str, p: dict[str, Any]) -> Any:
    vmid = int(p["vmid"]) if "vmid" in p else None
    return api.storage_content(paths, p["storage"], p.get("content"), vmid)


def _status_current(paths: LabPaths, local: str, p: dict[str, Any]) -> Any:
    return api.vm_status_current(paths, p["node"], int(p["vmid"]))


ROUTES = (
    Route("cluster/resources", {"type": "string"}, _resources,
          {"type": ("vm", "storage", "node", "sdn")}),
    Route("nodes/{node}/storage",
          {"storage": "string", "content": "string", "enabled": "boolean", "target": "string",
           "format": "boolean"}, _storage),
    Route("nodes/{node}/storage/{storage}/content", {"content": "string", "vmid": "pve-vmid"},
          _content),
    Route("nodes/{node}/qemu/{vmid}/status/current", {}, _status_current),
)  # fmt: skip


def find(path: str) -> tuple[Route, dict[str, str]] | None:
    parts = [p for p in path.split("/") if p]
    for route in ROUTES:
        bound = route.match(parts)
        if bound is not None:
            return route, bound
    return None


def _param_error(name: str, message: str) -> PveshError:
    """A PVE::Exception with `errors` (code 400), its `usage` set by RESTHandler cli_handler for
    pvesh's own `get`: uncaught, Perl's die exit code (255 here, see `run`)."""
    return PveshError(f"400 Parameter verification failed.\n{name}: {message}\n{USAGE}\n")


def vmid_error(value: str) -> str | None:
    """JSONSchema check_prop for `type => 'integer', format => 'pve-vmid'`: the type check, then
    pve_verify_vmid (`^[1-9][0-9]{2,8}$`), whose message ends in a newline of its own."""
    if not re.fullmatch(r"[+-]?\d+", value):
        return f"type check ('integer') failed - got '{value}'"
    if not re.fullmatch(r"[1-9][0-9]{2,8}", value):
        return "invalid format - value does not look like a valid VM ID\n"
    return None


def parse_options(route: Route, argv: list[str]) -> dict[str, Any]:
    """Getopt::Long the PVE way (`--name value`, `--name=value`, optional boolean values);
    unknown options are reported all together, then `unable to parse option` (JSONSchema.pm)."""
    kinds = {**route.options, **STANDARD}
    enums = {**route.enums, "output-format": FORMATS}
    opts: dict[str, str] = {}
    unknown, extra = "", []
    i = 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if not arg.startswith("-"):
            extra.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        kind = kinds.get(name)
        if kind is None:
            unknown += f"Unknown option: {name}\n"
            continue
        if not eq:
            if kind == "boolean":
                value = "1"
                if i < len(argv) and not argv[i].startswith("-"):
                    value, i = argv[i], i + 1
            elif i < len(argv):
                value, i = argv[i], i + 1
            else:
                unknown += f"Option {name} requires an argument\n"
                continue
        opts[name] = value
    if unknown:
        raise PveshError(f"{unknown}400 unable to parse option\n{USAGE}\n")
    if extra:
        raise PveshError(f"400 too many arguments\n{USAGE}\n")
    for name, value in opts.items():
        if kinds[name] == "integer" and not re.fullmatch(r"[+-]?\d+", value):
            raise _param_error(name, f"type check ('integer') failed - got '{value}'")
        if kinds[name] == "pve-vmid" and (problem := vmid_error(value)):
            raise _param_error(name, problem)
        if name in enums and value not in enums[name]:
            values = ", ".join(enums[name])
            raise _param_error(
                name, f"value '{value}' does not have a value in the enumeration '{values}'"
            )
    return opts


def perl_compact_json(value: Any) -> str:
    """`to_json($data, {utf8 => 1, allow_nonref => 1, canonical => 1})`: sorted keys, no
    spaces, numbers as Perl prints them."""
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}:{perl_compact_json(value[k])}"
                 for k in sorted(value, key=str))  # fmt: skip
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(perl_compact_json(v) for v in value) + "]"
    return perl_scalar(value)


def render(data: Any, fmt: str) -> str:
    """CLIFormatter print_api_result for the machine formats."""
    if fmt == "json":
        return perl_compact_json(data) + "\n"
    if fmt == "json-pretty":
        return perl_json(data) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, explicit_start=True, sort_keys=True, default_flow_style=False)
    raise PveshError(
        f"pvelab: output format '{fmt}' is not implemented by the lab's pvesh;"
        " use --output-format json or json-pretty"
    )


def _check_node(node: str, local: str) -> str:
    """check_proxyto: `localhost` and the local node are served here, cluster nodes by proxy,
    others fail resolving (PCL `Cluster.pm` remote_node_ip, PC `Network.pm`/`Tools.pm`)."""
    if node in ("localhost", local):
        return local
    if cluster.node(node) is None:
        raise PveshError(
            f"hostname lookup '{node}' failed - failed to get address info for: {node}:"
            " Name or service not known"
        )
    return node


def run(paths: LabPaths, local: str, argv: list[str], out: TextIO, err: TextIO) -> int:
    """One pvesh command line; returns the exit code."""
    try:
        found = PVESH_CLI.command(argv)
    except UsageError as exc:
        err.write(str(exc))
        return exc.rc
    command = " ".join(found.words)
    if command == "help" and not any(a.startswith("-") for a in found.rest):
        out.write(PVESH_CLI.help(found.rest))
        return 0
    if not found.rest:
        assert isinstance(found.node, Def)
        err.write(f"400 not enough arguments\n{found.node.usage(found.cmdstr)}\n")
        return 255
    path = found.rest[0]
    match = find(path) if command == "get" else None
    if match is None:
        err.write(f"No '{command}' handler defined for '{path}'\n")  # pvesh.pm extract_path_info
        return 1
    route, bound = match
    try:
        params = parse_options(route, found.rest[1:])
        if "node" in bound:
            bound["node"] = _check_node(bound["node"], local)
        if "vmid" in bound and (problem := vmid_error(bound["vmid"])):
            raise _param_error("vmid", problem)  # PVE::API2 handle's validate, after proxying
        data = route.handler(paths, local, {**params, **bound})
        if params.get("quiet") in ("1", "true", "yes", "on"):
            return 0
        out.write(render(data, params.get("output-format", "text")))
    except (PveshError, api.ApiError) as exc:
        message = str(exc)
        err.write(message if message.endswith("\n") else message + "\n")
        return exc.rc
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `[--lab DIR] <pvesh args...>`; the node is $PVELAB_NODE (set by the wrapper)."""
    paths, local, args = cluster.command_line(argv)
    return run(paths, local, args, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
