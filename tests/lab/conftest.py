"""The lab for end-to-end tests: brought up once per session, taken down at the end."""

from __future__ import annotations

import pytest
from pvelab.lab import Lab


@pytest.fixture(scope="session")
def lab() -> Lab:
    """The pvelab fleet (five real VMs and the stand-in Proxmox host), up and answering."""
    lab = Lab()
    lab.up(log=lambda line: print(f"[pvelab] {line}", flush=True))
    yield lab
    lab.down(log=lambda line: print(f"[pvelab] {line}", flush=True))
