"""Run pvepatch (pytest on tests_patch/) as a user would, and read what it did."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
PVE_VERSION = "PVELAB_PVE_VERSION"


@dataclass
class PvepatchRun:
    rc: int
    output: str
    outcomes: dict[str, str]  # "test_vm_shut_down[pihole]" -> passed/failed/skipped/error
    messages: dict[str, str]

    def of_vm(self, vm: str) -> dict[str, str]:
        return {k.split("[")[0]: v for k, v in self.outcomes.items() if k.endswith(f"[{vm}]")}

    def failed(self, vm: str) -> set[str]:
        return {k for k, v in self.of_vm(vm).items() if v in {"failed", "error"}}

    def message(self, test: str, vm: str) -> str:
        return self.messages.get(f"{test}[{vm}]", "")


def run_pvepatch(inventory: Path, *args: str, workdir: Path, timeout: float = 1800) -> PvepatchRun:
    junit = workdir / f"junit-{len(list(workdir.glob('junit-*.xml')))}.xml"
    # `--inventory=PATH` in one word: pytest takes a separate option value for a test path when
    # it looks for its rootdir, before the plugin's options are known (see README).
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        f"--inventory={inventory}",
        f"--junitxml={junit}",
        "-p",
        "no:cacheprovider",
        "-rfEs",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    print(output[-20000:])
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = case.get("name", "")
            outcome = "passed"
            for child in case:
                if child.tag in {"failure", "error", "skipped"}:
                    outcome = {"failure": "failed"}.get(child.tag, child.tag)
                    messages[name] = (child.get("message") or "") + "\n" + (child.text or "")
            outcomes[name] = outcome
    return PvepatchRun(proc.returncode, output, outcomes, messages)


def start_pvepatch(inventory: Path, workdir: Path, *args: str) -> subprocess.Popen:
    """pvepatch in its own process group, as a terminal starts it (Ctrl-C hits the group)."""
    cmd = [sys.executable, "-m", "pytest", f"--inventory={inventory}", "-p", "no:cacheprovider",
           f"--junitxml={workdir / 'junit.xml'}", "-rfEs", *args]  # fmt: skip
    return subprocess.Popen(
        cmd,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT / "lib")},
    )


def versions(lab: Any, vm: str) -> dict[str, str]:
    """The packages installed in `vm` and their versions, as dpkg has them now."""
    rc, out, err = lab.guest_run(vm, "dpkg-query -W -f '${Package} ${Version}\\n'")
    assert rc == 0, err
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


def calls_of(log: list[dict], verb: str, vmid: int) -> list[dict]:
    """The stand-in qm's calls of `verb` on `vmid` in `log` (Lab.qm_log() entries)."""
    return [c for c in log if c["argv"][:2] == [verb, str(vmid)]]


@contextmanager
def pve_version(lab: Any, version: str) -> Iterator[None]:
    """Inside the block, every node's stand-in commands play PVE `version` (PVE 9's texts for
    "9"): their wrappers are written again with the setting, and again without it after."""
    from pvelab.pve import cluster, node

    old = os.environ.get(PVE_VERSION)

    def write(value: str | None) -> None:
        os.environ.pop(PVE_VERSION, None)
        if value:
            os.environ[PVE_VERSION] = value
        for name in cluster.node_names():
            node.write_files(lab.paths, lab.base, name)

    write(version)
    try:
        yield
    finally:
        write(old)


def plays_pve(lab: Any) -> str:
    """The PVE major version the first node's `qm` plays now ("8" unless its wrapper sets one)."""
    wrapper = lab.pve_run(["sh", "-c", 'cat "$(command -v qm)"']).stdout
    for line in wrapper.splitlines():
        if line.startswith(f"{PVE_VERSION}="):
            return line.split("=", 1)[1].strip("'")
    return "8"
