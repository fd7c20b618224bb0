"""pvepatch's command-line options, their checks, and the Options they become."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import pytest

from pvepatch.cycle.options import REBOOT_POLICIES, Options
from pvepatch.cycle.slots import MAX_SLOTS
from pvepatch.cycle.snapshot import SnapshotPolicy
from pvepatch.inventory import DEFAULT_GROUP, Target


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
    group.addoption(
        "--max-down",
        type=int,
        default=1,
        metavar="K",
        help="at most K target VMs down at any moment, across pytest-xdist workers and across "
        "runs against the same Proxmox host (default: %(default)s)",
    )
    group.addoption(
        "--lock-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long a VM waits for a down slot before it fails (default: %(default)s)",
    )
    group.addoption(
        "--canary",
        type=int,
        default=0,
        metavar="N",
        help="patch the first N VMs first; the rest start only if they pass (default: off)",
    )
    group.addoption(
        "--max-fail",
        type=int,
        default=0,
        metavar="N",
        help="after N failed VMs no new VM starts; VMs already down are brought back "
        "(default: off)",
    )
    group.addoption(
        "--reboot",
        choices=list(REBOOT_POLICIES),
        default="always",
        help="always: restart every patched VM (default); if-required: only when the guest "
        "asks (/var/run/reboot-required or a newer kernel); never: patch only, report who "
        "still needs one",
    )
    group.addoption(
        "--snapshot",
        action="store_true",
        help="snapshot each VM (qm snapshot, disk only) before its update; a VM whose snapshot "
        "fails is not patched (per host: pvepatch_snapshot)",
    )
    group.addoption(
        "--rollback-on-failure",
        action="store_true",
        help="with --snapshot: roll back a VM whose checks fail after its update, start it and "
        "check it again (per host: pvepatch_rollback_on_failure)",
    )
    group.addoption(
        "--snapshot-keep",
        type=int,
        default=1,
        metavar="N",
        help="pvepatch snapshots kept per VM after a good update; older ones are deleted "
        "(default: %(default)s; per host: pvepatch_snapshot_keep)",
    )
    group.addoption(
        "--snapshot-max-age",
        default="14d",
        metavar="AGE",
        help="-m verify warns about pvepatch snapshots older than this (e.g. 36h, 14d; "
        "default: %(default)s)",
    )
    group.addoption(
        "--apply-pending",
        action="store_true",
        help="restart a VM even when its Proxmox config has pending changes pvepatch did not "
        "make (qm pending); the restart applies them and the report lists them. Without it, "
        "such a VM is not touched",
    )
    group.addoption(
        "--max-backup-age",
        default=None,
        metavar="AGE",
        help="patch only VMs whose newest backup (in the Proxmox backup storages) is at most "
        "this old (e.g. 24h, 7d); a VM with none or an older one is not touched",
    )
    for name, kind, default, text in (
        ("--shutdown-timeout", int, 180, "seconds for the clean shutdown"),
        (
            "--boot-timeout",
            float,
            600.0,
            "seconds for SSH, the virtio port and the agent to come back after the start",
        ),
        ("--restart-pause", float, 0.0, "seconds between stopped and start"),
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
    if not 1 <= config.getoption("max_down") <= MAX_SLOTS:
        raise pytest.UsageError(f"pvepatch: --max-down must be between 1 and {MAX_SLOTS}")
    if config.getoption("lock_timeout") <= 0:
        raise pytest.UsageError("pvepatch: --lock-timeout must be positive")
    for name in ("canary", "max_fail"):
        if config.getoption(name) < 0:
            raise pytest.UsageError(f"pvepatch: --{name.replace('_', '-')} must not be negative")
    if config.getoption("restart_pause") < 0:
        raise pytest.UsageError("pvepatch: --restart-pause must not be negative")
    if config.getoption("min_free_mb") < 0:
        raise pytest.UsageError("pvepatch: --min-free-mb must not be negative")
    if not 1 <= config.getoption("snapshot_keep") <= 100:
        raise pytest.UsageError("pvepatch: --snapshot-keep must be between 1 and 100")
    max_age(config)
    backup_age(config)
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
        max_down=config.getoption("max_down"),
        slot_timeout=config.getoption("lock_timeout"),
        reboot=config.getoption("reboot"),
        canary=config.getoption("canary"),
        max_fail=config.getoption("max_fail"),
        snapshot=config.getoption("snapshot"),
        rollback_on_failure=config.getoption("rollback_on_failure"),
        snapshot_keep=config.getoption("snapshot_keep"),
        snapshot_max_age=max_age(config),
        apply_pending=config.getoption("apply_pending"),
        max_backup_age=backup_age(config),
    )


def snapshot_warnings(targets: Iterable[Target], options: Options) -> list[str]:
    """Rollback asked where no snapshot is taken: a usage error when no VM gets a snapshot, a
    warning per VM whose inventory turns its snapshot off."""
    policies = {t.name: SnapshotPolicy.of(t, options) for t in targets}
    if options.rollback_on_failure and not any(p.enabled for p in policies.values()):
        raise pytest.UsageError(
            "pvepatch: --rollback-on-failure needs --snapshot (or pvepatch_snapshot: true in the "
            "inventory): without a snapshot there is nothing to roll back to"
        )
    return [
        f"{name}: rollback on failure is asked, but it gets no snapshot (pvepatch_snapshot): "
        "it cannot be rolled back"
        for name, policy in policies.items()
        if policy.rollback and not policy.enabled
    ]


_AGE = re.compile(r"(\d+)([smhdw]?)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def max_age(config: pytest.Config) -> float:
    """--snapshot-max-age in seconds: a whole number with s, m, h, d or w (bare: days)."""
    return _age("--snapshot-max-age", config.getoption("snapshot_max_age"), "36h or 14d")


def backup_age(config: pytest.Config) -> float | None:
    """--max-backup-age in seconds, or None when not given."""
    value = config.getoption("max_backup_age")
    return None if value is None else _age("--max-backup-age", value, "24h or 7d")


def _age(option: str, value: object, example: str) -> float:
    text = str(value).strip().lower()
    match = _AGE.fullmatch(text)
    if not match or int(match.group(1)) == 0:
        raise pytest.UsageError(
            f"pvepatch: {option} must be a positive age such as {example}, got {text!r}"
        )
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
