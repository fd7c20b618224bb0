"""pvepatch's command-line options, their checks, and the Options they become."""

from __future__ import annotations

import os

import pytest

from pvepatch.cycle.options import Options
from pvepatch.inventory import DEFAULT_GROUP


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("pvepatch", "pvepatch: patch and verify Proxmox VMs")
    group.addoption(
        "--inventory",
        default=os.environ.get("PVEPATCH_INVENTORY"),
        metavar="PATH",
        help="Ansible YAML inventory (default: $PVEPATCH_INVENTORY, else inventory.yaml in the "
        "rootdir)",
    )
    group.addoption(
        "--group",
        default=DEFAULT_GROUP,
        help="inventory group of the target VMs (default: %(default)s)",
    )
    group.addoption(
        "--limit",
        default=None,
        metavar="PATTERN",
        help="only these hosts or groups, comma-separated, '!name' excludes (as Ansible's --limit)",
    )
    group.addoption(
        "--known-hosts",
        action="append",
        default=[],
        metavar="FILE",
        help="extra known_hosts file (also read: ~/.ssh/known_hosts and UserKnownHostsFile in "
        "the inventory)",
    )
    group.addoption(
        "--accept-new-host-keys",
        action="store_true",
        help="record unknown SSH host keys (like OpenSSH accept-new); a changed key is never "
        "accepted",
    )
    group.addoption(
        "--restart-method",
        choices=["shutdown", "stop"],
        default="shutdown",
        help="shutdown: clean 'qm shutdown' then 'qm start' (default); stop: the old playbook's "
        "hard 'qm stop' then 'qm start' (power-off: see README)",
    )
    group.addoption(
        "--hard-stop-fallback",
        action="store_true",
        help="when the clean shutdown times out, power the VM off with 'qm stop' (default: fail "
        "and leave it running)",
    )
    group.addoption(
        "--skiplock",
        action="store_true",
        help="restart VMs even when Proxmox holds a lock on them (backup, snapshot, migrate): "
        "dangerous",
    )
    for name, kind, default, text in (
        ("--shutdown-timeout", int, 180, "seconds for the clean shutdown"),
        (
            "--boot-timeout",
            float,
            600.0,
            "seconds for SSH, the virtio port and the agent to come back after the start",
        ),
        ("--restart-pause", float, 5.0, "seconds between stopped and start"),
        ("--ssh-timeout", float, 15.0, "SSH connect timeout in seconds"),
        (
            "--apt-lock-timeout",
            int,
            600,
            "seconds to wait for another apt/dpkg to release its lock",
        ),
        ("--min-free-mb", int, 500, "free MB required on / before patching"),
    ):
        group.addoption(name, type=kind, default=default, help=f"{text} (default: %(default)s)")


def check_options(config: pytest.Config) -> None:
    """Raise pytest.UsageError for option values that make no sense together."""
    for name in ("shutdown_timeout", "boot_timeout", "ssh_timeout", "apt_lock_timeout"):
        if config.getoption(name) <= 0:
            raise pytest.UsageError(f"pvepatch: --{name.replace('_', '-')} must be positive")
    if config.getoption("restart_pause") < 0:
        raise pytest.UsageError("pvepatch: --restart-pause must not be negative")
    if config.getoption("min_free_mb") < 0:
        raise pytest.UsageError("pvepatch: --min-free-mb must not be negative")
    if config.getoption("hard_stop_fallback") and config.getoption("restart_method") == "stop":
        raise pytest.UsageError(
            "pvepatch: --hard-stop-fallback only applies to --restart-method shutdown"
        )


def options_from(config: pytest.Config) -> Options:
    return Options(
        restart_method=config.getoption("restart_method"),
        skiplock=config.getoption("skiplock"),
        hard_stop_fallback=config.getoption("hard_stop_fallback"),
        shutdown_timeout=config.getoption("shutdown_timeout"),
        boot_timeout=config.getoption("boot_timeout"),
        restart_pause=config.getoption("restart_pause"),
        lock_timeout=config.getoption("apt_lock_timeout"),
        min_free_root_mb=config.getoption("min_free_mb"),
    )
