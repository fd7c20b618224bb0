"""The lab for end-to-end tests: brought up once per session, taken down at the end."""

from __future__ import annotations

import os

import pytest
from pvelab.fleet.lab import Lab


@pytest.fixture(scope="session")
def lab() -> Lab:
    """The pvelab fleet (five real VMs and the stand-in Proxmox host), fresh, up and answering."""
    lab = Lab()
    log = lambda line: print(f"[pvelab] {line}", flush=True)  # noqa: E731
    if os.environ.get("PVELAB_E2E_REUSE"):
        lab.up(log=log)  # developer's shortcut: keep the fleet as it is
    elif lab.paths.state_file.exists():
        lab.reset(log=log)  # fresh overlays: the tests expect an unpatched, fault-free fleet
    else:
        lab.up(log=log)
    yield lab
    if not os.environ.get("PVELAB_E2E_REUSE"):
        lab.down(log=log)
