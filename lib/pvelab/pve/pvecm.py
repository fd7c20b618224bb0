"""The stand-in `pvecm status|nodes` (`python -m pvelab.pve.pvecm --lab DIR ...`).

PVE 8.4's `pvecm status` (PCL `src/PVE/CLI/pvecm.pm` `status`) prints `Cluster information`
from corosync.conf's totem section, then execs `corosync-quorumtool -siH`; `pvecm nodes` execs
`corosync-quorumtool -l`. Their texts and exit codes are corosync 3.1's
(`tools/corosync-quorumtool.c` v3.1.9: `display_quorum_data`, `display_nodes_data`,
`show_status`): **0 when quorate, 2 (EXIT_NOT_QUORATE) when not**, since commit db38e395
(2019, corosync 3.0.2; before it `show_status` returned `is_quorate`, i.e. 1 when quorate).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pvelab.paths import LabPaths
from pvelab.pve import cluster
from pvelab.pve.clihandler import CLI, Def
from pvelab.pve.qm.options import Command, UsageError, parse

EXIT_NOT_QUORATE = 2
CONFIG_VERSION = 2  # corosync.conf after `pvecm create` + one `pvecm add`
RING_SEQ = 0x35  # the ring id's sequence number (hex in the output); bumped by a partition
CLUSTERCONFIG = "PVE::API2::ClusterConfig"
PVECM = "PVE::CLI::pvecm"
# PCL CLI/pvecm.pm $cmddef; usages as pve-docs 8.4 `pvecm.1-synopsis.adoc`.
PVECM_CLI = CLI("pvecm", {
    "apiver": Def(CLUSTERCONFIG),
    "keygen": Def(PVECM, "<filename>"),
    "create": Def(CLUSTERCONFIG, "<clustername> [OPTIONS]"),
    "add": Def(PVECM, "<hostname> [OPTIONS]"),
    "addnode": Def(CLUSTERCONFIG, "<node> [OPTIONS]"),
    "delnode": Def(CLUSTERCONFIG, "<node>"),
    "status": Def(PVECM),
    "nodes": Def(PVECM),
    "expected": Def(PVECM, "<expected>"),
    "updatecerts": Def(PVECM, " [OPTIONS]"),
    "mtunnel": Def(PVECM, "[<extra-args>] [OPTIONS]"),
    "qdevice": {
        "setup": Def(PVECM, "<address> [OPTIONS]"),
        "remove": Def(PVECM),
    },
})  # fmt: skip


class PvecmCommand(Command):
    """A pvecm command without parameters: its usage names `pvecm` (`"$prefix $args"`)."""

    def usage(self) -> str:
        return "pvecm " + super().usage().removeprefix("qm ")


def _padded(text: str) -> str:
    """print_string_padded: right-aligned in 10 columns, then a space."""
    return f"{text:>10} "


def membership(paths: LabPaths, local: str, *, hex_ids: bool, by_ip: bool) -> str:
    """display_nodes_data: `Membership information`, one row per member."""
    lines = ["", "Membership information", "----------------------",
             _padded("Nodeid") + _padded("Votes") + "Name"]  # fmt: skip
    for node in cluster.members(paths, local):
        nodeid = f"0x{node.nodeid:08x} " if hex_ids else _padded(str(node.nodeid))
        name = node.address if by_ip else node.name
        local_mark = " (local)" if node.name == local else ""
        lines.append(f"{nodeid}{_padded('1')}{name}{local_mark}")
    return "\n".join(lines) + "\n"


def status_text(paths: LabPaths, local: str, now: float | None = None) -> str:
    """`pvecm status`: the totem lines, then `corosync-quorumtool -siH`."""
    me = cluster.node(local)
    assert me is not None
    quorate = cluster.quorate(paths)
    members = cluster.members(paths, local)
    votes = len(members)
    expected = len(cluster.NODES)
    quorum = expected // 2 + 1
    ring = f"{min(n.nodeid for n in members):x}.{RING_SEQ + (0 if quorate else 1):x}"
    lines = [
        "Cluster information",
        "-------------------",
        f"{'Name:':<17} {cluster.CLUSTER_NAME}",
        f"{'Config Version:':<17} {CONFIG_VERSION}",
        f"{'Transport:':<17} knet",
        f"{'Secure auth:':<17} on",
        "",
        "Quorum information",
        "------------------",
        f"Date:             {time.ctime(now)}",
        "Quorum provider:  corosync_votequorum",
        f"Nodes:            {votes}",
        f"Node ID:          0x{me.nodeid:08x}",
        f"Ring ID:          {ring}",
        f"Quorate:          {'Yes' if quorate else 'No'}",
        "",
        "Votequorum information",
        "----------------------",
        f"Expected votes:   {expected}",
        f"Highest expected: {expected}",
        f"Total votes:      {votes}",
        f"Quorum:           {quorum} {' ' if quorate else 'Activity blocked'}",
        f"Flags:            {'Quorate ' if quorate else ''}",
    ]
    return "\n".join(lines) + "\n" + membership(paths, local, hex_ids=True, by_ip=True)


def run(paths: LabPaths, local: str, argv: list[str], out: TextIO, err: TextIO) -> int:
    """One pvecm command line (CLIHandler handle_cmd); returns the exit code."""
    try:
        found = PVECM_CLI.command(argv)
        name = " ".join(found.words)
        if name == "help" and not any(a.startswith("-") for a in found.rest):
            out.write(PVECM_CLI.help(found.rest))
            return 0
        if name in ("status", "nodes"):  # `properties => {}`: Getopt, then no arguments
            parse(PvecmCommand(name), found.rest)
    except UsageError as exc:
        err.write(str(exc))
        return exc.rc
    if name == "status":
        out.write(status_text(paths, local))
        return 0 if cluster.quorate(paths) else EXIT_NOT_QUORATE
    if name == "nodes":
        out.write(membership(paths, local, hex_ids=False, by_ip=False))
        return 0
    err.write(f"pvelab: `pvecm {name}` is not implemented by the lab's pvecm\n")
    return 255


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `[--lab DIR] <pvecm args...>`; the node is $PVELAB_NODE (set by the wrapper)."""
    paths, local, args = cluster.command_line(argv)
    return run(paths, local, args, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
