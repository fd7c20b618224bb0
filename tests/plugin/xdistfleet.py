"""A fake fleet in every process of a run, xdist workers included (import its hooks in a conftest).

The fleet is built from $PVEPATCH_FAKE_FLEET (the number of VMs, as reportkit.fleet_of) and
$PVEPATCH_FAKE_FAULTS (`vm:attribute[=value],...`, e.g. `pihole:start_fails` or
`pihole:sigterm_at=shutdown`). Each process has its own fleet; at its end it writes what it sent
to `fleet-<worker id or "main">.json` in the directory pytest runs in, so a test can see which
worker ran which VM.
"""

from __future__ import annotations

import json
import os

import pytest
import reportkit
from pvepatch.plugin import FACTORY_KEY

FLEET_KEY = pytest.StashKey[object]()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    fleet = reportkit.fleet_of(int(os.environ["PVEPATCH_FAKE_FLEET"]))
    for fault in filter(None, os.environ.get("PVEPATCH_FAKE_FAULTS", "").split(",")):
        vm, attribute = fault.split(":")
        name, _, value = attribute.partition("=")
        setattr(fleet.vms[vm], name, value or True)
    config.stash[FACTORY_KEY] = fleet.factory
    config.stash[FLEET_KEY] = fleet


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    fleet = config.stash[FLEET_KEY]
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    path = config.invocation_params.dir / f"fleet-{worker}.json"
    path.write_text(json.dumps({"commands": fleet.commands, "mutating": reportkit.mutating(fleet)}))
