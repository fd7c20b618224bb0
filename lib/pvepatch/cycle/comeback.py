"""A VM coming back after its start: SSH with a new boot, the virtio port, the agent, and DNS
for a Pi-hole, each awaited in order within the one --boot-timeout."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from pvepatch.cycle import questions
from pvepatch.cycle.options import Options
from pvepatch.cycle.record import RestartOutcome
from pvepatch.cycle.wait import wait_for
from pvepatch.errors import PvepatchError
from pvepatch.guest import dns
from pvepatch.guest.facts import Guest
from pvepatch.inventory import Target
from pvepatch.proxmox.parse import AGENT_PORT
from pvepatch.proxmox.qm import Qm
from pvepatch.transport.connections import Connections

# A check after the start: its outcome field and mark, what is awaited, the probe, its interval.
Step = tuple[str, str, Callable[[], object], float]


class Cycle(Protocol):
    """What the checks need of the VM's cycle (pvepatch.cycle.actions.VMCycle)."""

    target: Target
    options: Options
    connections: Connections
    progress: Callable[[str], None]

    def guest(self) -> Guest: ...

    def ask_ahead(
        self, guest: Sequence[str] = (), qm: Sequence[str] = (), timeout: float = 60.0
    ) -> None: ...


def wait_back(cycle: Cycle, outcome: RestartOutcome, qm: Qm) -> bool:
    """Await each of `steps()` in turn, marking each on `outcome` when seen: True when every
    check passed (the VM is healthy, no longer down). No SSH with a new boot ends the wait:
    nothing after it can be seen."""
    limit = cycle.options.boot_timeout
    started = time.monotonic()
    deadline = started + limit
    healthy = True
    for name, what, probe, interval in steps(cycle, outcome, qm):
        try:
            wait_for(
                what,
                probe,
                timeout=max(1.0, deadline - time.monotonic()),
                interval=interval,
                progress=cycle.progress,
                limit=limit,
                since=started,
            )
        except PvepatchError as exc:
            outcome.errors[name] = str(exc)
            healthy = False
            if name == "ssh_back":
                cycle.connections.forget(cycle.target.name)
                return False
            continue
        if hasattr(outcome, name):
            setattr(outcome, name, True)
        outcome.mark(name)
    return healthy


def steps(cycle: Cycle, outcome: RestartOutcome, qm: Qm) -> list[Step]:
    """What the VM shows again after its start, in order: each with its probe and how often
    the probe is asked."""
    target, connections = cycle.target, cycle.connections
    before = outcome.before.boot_id if outcome.before else None

    def ssh_with_new_boot() -> str | None:
        if not connections.banner(target.name, target.ssh):
            return None  # sshd not accepting yet: asked again in a quarter second
        transport = connections.probe(target.name, target.ssh)
        boot_id = Guest(transport).boot_id()
        if boot_id == before:
            return None
        cycle.ask_ahead(*questions.back(target))  # both hosts at once
        return boot_id

    checks: list[Step] = [
        ("ssh_back", f"SSH to {target.name} with a new boot_id", ssh_with_new_boot, 0.25),
        (
            "port_back",
            f"{AGENT_PORT} in {target.name}",
            lambda: cycle.guest().virtio_port_is_chardev(),
            0.5,
        ),
        ("agent_back", f"qm guest cmd {target.vmid} ping", lambda: qm.agent_ping().ok, 1.0),
    ]
    if target.pihole is not None:
        spec = target.pihole
        checks.append(
            (
                "dns_back",
                f"DNS from {spec.server}:{spec.port}",
                lambda: (
                    dns.query(spec.server, spec.port, spec.resolve_name, spec.protocol).resolved
                ),
                1.0,
            )
        )
    return checks
