"""qm's `$cmddef` (qemu-server 8.4.10 `CLI/qm.pm`): every command of PVE's qm, its handler class
and short usage, whether or not the stand-in implements it (`cli.COMMANDS` says which).

The usages are RESTHandler getopt_usage's over each method's schema, as pve-docs 8.4
`qm.1-synopsis.adoc` prints them (`help`: CLIHandler's own, with `extra-args`).
"""

from __future__ import annotations

from pvelab.pve.clihandler import CLI, Alias, Def, Tree

QEMU = "PVE::API2::Qemu"
AGENT = "PVE::API2::Qemu::Agent"
QM = "PVE::CLI::qm"
VMID_OPTS = "<vmid> [OPTIONS]"
SNAP = "<vmid> <snapname> [OPTIONS]"

CMDDEF: Tree = {
    "list": Def(QEMU, " [OPTIONS]"),
    "create": Def(QEMU, VMID_OPTS),
    "destroy": Def(QEMU, VMID_OPTS),
    "clone": Def(QEMU, "<vmid> <newid> [OPTIONS]"),
    "migrate": Def(QEMU, "<vmid> <target> [OPTIONS]"),
    "remote-migrate": Def(
        QM,
        "<vmid> [<target-vmid>] <target-endpoint> --target-bridge <string>"
        " --target-storage <string> [OPTIONS]",
    ),
    "set": Def(QEMU, VMID_OPTS),
    "config": Def(QEMU, VMID_OPTS),
    "pending": Def(QEMU, "<vmid>"),
    "showcmd": Def(QM, VMID_OPTS),
    "status": Def(QM, VMID_OPTS),
    "snapshot": Def(QEMU, SNAP),
    "delsnapshot": Def(QEMU, SNAP),
    "listsnapshot": Def(QEMU, "<vmid>"),
    "rollback": Def(QEMU, SNAP),
    "template": Def(QEMU, VMID_OPTS),
    "start": Def(QEMU, VMID_OPTS),
    "stop": Def(QEMU, VMID_OPTS),
    "reset": Def(QEMU, VMID_OPTS),
    "shutdown": Def(QEMU, VMID_OPTS),
    "reboot": Def(QEMU, VMID_OPTS),
    "suspend": Def(QEMU, VMID_OPTS),
    "resume": Def(QEMU, VMID_OPTS),
    "sendkey": Def(QEMU, "<vmid> <key> [OPTIONS]"),
    "vncproxy": Def(QM, "<vmid>"),
    "wait": Def(QM, VMID_OPTS),
    "unlock": Def(QM, "<vmid>"),
    "importdisk": Alias("disk import"),
    "move-disk": Alias("disk move"),
    "move_disk": Alias("disk move"),
    "rescan": Alias("disk rescan"),
    "resize": Alias("disk resize"),
    "unlink": Alias("disk unlink"),
    "disk": {
        "import": Def(QM, "<vmid> <source> <storage> [OPTIONS]"),
        "move": Def(QEMU, "<vmid> <disk> [<storage>] [OPTIONS]"),
        "rescan": Def(QM, " [OPTIONS]"),
        "resize": Def(QEMU, "<vmid> <disk> <size> [OPTIONS]"),
        "unlink": Def(QEMU, "<vmid> --idlist <string> [OPTIONS]"),
    },
    "enroll-efi-keys": Def(QM, "<vmid>"),
    "monitor": Def(QM, "<vmid>"),
    "agent": Alias("guest cmd"),
    "guest": {
        "cmd": Def(AGENT, "<vmid> <command>"),
        "passwd": Def(AGENT, "<vmid> <username> [OPTIONS]"),
        "exec": Def(QM, "<vmid> [<extra-args>] [OPTIONS]"),
        "exec-status": Def(AGENT, "<vmid> <pid>"),
    },
    "mtunnel": Def(QM),
    "nbdstop": Def(QM, "<vmid>"),
    "terminal": Def(QM, VMID_OPTS),
    "importovf": Def(QM, "<vmid> <manifest> <storage> [OPTIONS]"),
    "cleanup": Def(QM, "<vmid> <clean-shutdown> <guest-requested>"),
    "cloudinit": {
        "dump": Def(QEMU, "<vmid> <type>"),
        "pending": Def(QEMU, "<vmid>"),
        "update": Def(QEMU, "<vmid>"),
    },
    "import": Def(QM, "<vmid> <source> --storage <string> [OPTIONS]"),
}

QM_CLI = CLI("qm", CMDDEF)
