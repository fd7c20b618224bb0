"""Helpers for the report/ledger/redaction tests: the real stages against a fake fleet, with
pytest-html and the reporting plugin on."""

from __future__ import annotations

from pathlib import Path

import fakes
import pytest

FAST = ["--restart-pause", "0", "--boot-timeout", "5"]
PLUGINS = ["-p", "no:cacheprovider"]


def inventory(n: int, extra_vars: str = "") -> str:
    hosts = "".join(
        f"        {name}: {{ansible_host: 127.0.0.1, ansible_port: {2201 + i}, vmid: {101 + i}, "
        f"proxmox_host: pve}}\n"
        for i, name in enumerate(names(n))
    )
    return (
        "all:\n"
        + (f"  vars:\n{extra_vars}" if extra_vars else "")
        + "  children:\n    proxmox:\n      hosts:\n        pve: {ansible_host: 127.0.0.1, ansible_port: 2200}\n"
        + "    ubuntu_vms:\n      hosts:\n"
        + hosts
    )


def names(n: int) -> list[str]:
    base = ["pbs", "pihole", "pihole-backup"]
    return base[:n] if n <= 3 else [f"vm{i:02d}" for i in range(n)]


def fleet_of(n: int, cls: type[fakes.FakeFleet] = fakes.FakeFleet) -> fakes.FakeFleet:
    return cls(
        [
            fakes.FakeVM(name, 101 + i, f"bc:24:11:00:{i // 256:02x}:{i % 256 + 1:02x}")
            for i, name in enumerate(names(n))
        ]
    )


def make_suite(pytester: pytest.Pytester, n: int = 3, extra_vars: str = "") -> pytest.Pytester:
    return fakes.stage_suite(pytester, inventory(n, extra_vars))


def run(
    suite: pytest.Pytester, fleet: fakes.FakeFleet, *args: str, name: str = "run", **kwargs: object
) -> tuple[pytest.RunResult, Path]:
    """Run the stages; returns the result and the HTML report's path (ledger etc. beside it)."""
    html = suite.path / "reports" / f"pvepatch-{name}.html"
    result = suite.runpytest(
        "--inventory", "inventory.yaml", *FAST, *PLUGINS, f"--html={html}", "--self-contained-html",
        *args, plugins=[fakes.FleetPlugin(fleet)], **kwargs,
    )  # fmt: skip
    return result, html


def mutating(fleet: fakes.FakeFleet) -> list[tuple[str, str]]:
    """The commands that changed something on the fake fleet (a down slot or a VM lock taken,
    too)."""
    import re

    verbs = re.compile(
        r"qm (start|stop|shutdown|set)|apt-get -y|systemctl start|pvepatch-slot|pvepatch-vm-lock"
    )
    return [(h, c) for h, c in fleet.commands if verbs.search(c)]


STAGES = ("preflight", "guest_agent", "snapshot", "patch", "restart", "verify", "rollback")
