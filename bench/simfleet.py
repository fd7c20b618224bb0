"""A simulated fleet for bench/simulate_fleet.py: fake VMs that take (scaled) time to shut down,
boot and patch, in every process of a pytest-xdist run, logging when each one is down.

Imported by the run directory's conftest in the controller and in each worker, under the virtual
clock of bench/simclock.py (`-p simclock`): every delay here is in virtual seconds. The fleet's plan
(delays and faults per VM, drawn by the bench) and its outputs live in $PVEPATCH_SIM_DIR:

- `plan.json`: per VM its Proxmox host, vmid, delays (virtual seconds) and faults;
- `events.jsonl`: one line per event on a VM (shutdown, stopped, start, ssh_back, agent_back, ...),
  appended by whichever process owns the VM, stamped with virtual wall-clock time;
- `state/<vm>`: a VM down now, so that other workers (a redundancy partner's health check) see it;
- `slots-<pve>/`: the fake Proxmox host's down slots (the real slot script, run on this machine);
- `final-<worker>.json`: at the end, the state of each VM this process touched.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import fakes
import pytest
from pvepatch.cycle.slots import HOST_SLOT_DIR, LocalHeld
from pvepatch.errors import TransportError
from pvepatch.inventory import SSHSpec

FLEET_KEY = pytest.StashKey["SimFleet"]()
NEVER = float("inf")


# --- a VM that takes time ------------------------------------------------------------------
@dataclass
class SimVM(fakes.FakeVM):
    pve: str = "pve1"
    boot_seconds: float = 30.0  # from `qm start` to sshd accepting
    agent_seconds: float = 1.5  # from sshd accepting to the agent answering
    apt_seconds: float = 9.0  # the dist-upgrade unit's run time
    apt_fails: bool = False
    ready_at: float = 0.0  # (virtual) time sshd accepts; NEVER while stopped or never
    touched: bool = False  # this process took it down
    back: bool = False  # SSH answered after its restart (the down interval is closed)

    def boot(self) -> None:
        super().boot()
        self.ready_at = time.time() + self.boot_seconds if self.ssh_after_boot else NEVER


class SimFleet(fakes.FakeFleet):
    """The fake fleet of one process: its own VMs' states, the others' read from `state/`."""

    def __init__(self, vms: list[SimVM], sim_dir: Path, worker: str):
        super().__init__(vms)
        self.sim_dir, self.worker = sim_dir, worker
        self.state = sim_dir / "state"
        self.apt_units: dict[str, tuple[float, float]] = {}  # unit -> started, seconds

    @classmethod
    def from_plan(cls, sim_dir: Path, worker: str) -> SimFleet:
        plan = json.loads((sim_dir / "plan.json").read_text())
        vms = [SimVM(**spec) for spec in plan["vms"]]
        return cls(vms, sim_dir, worker)

    def event(self, vm: SimVM, what: str, **extra: object) -> None:
        line = {
            "t": time.time(),
            "vm": vm.name,
            "pve": vm.pve,
            "event": what,
            "worker": self.worker,
        }
        data = (json.dumps({**line, **extra}) + "\n").encode()
        fd = os.open(self.sim_dir / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)  # one write on O_APPEND: lines of several processes never mix
        finally:
            os.close(fd)

    def _mark_down(self, vm: SimVM, ready_at: float | None) -> None:
        (self.state / vm.name).write_text(json.dumps({"ready_at": ready_at}))

    def answers(self, vm: SimVM) -> bool:
        """Whether the VM's sshd accepts now (another worker's VM: as its state file says)."""
        if not vm.touched:
            try:
                ready = json.loads((self.state / vm.name).read_text())["ready_at"]
            except FileNotFoundError:
                return True
            return ready is not None and time.time() >= ready
        if not (vm.running and vm.ssh_up and time.time() >= vm.ready_at):
            return False
        if not vm.back:
            vm.back = True
            self.event(vm, "ssh_back")
        return True

    # --- connections ---------------------------------------------------------------------------
    def factory(self, name: str, spec: SSHSpec) -> fakes.FakeTransport:
        self.connects.append(name)
        vm = self.vms.get(name)
        if vm is not None and not self.answers(vm):  # type: ignore[arg-type]
            raise TransportError(
                name, f"SSH connection to {spec} failed: [Errno 111] Connection refused"
            )
        return SimTransport(self, name)

    def run(self, host: str, command: str) -> tuple[int, str, str]:
        vm = self.vms.get(host)
        if vm is not None and not self.answers(vm):  # type: ignore[arg-type]
            self.commands.append((host, command))
            raise TransportError(host, "SSH connection lost")
        return super().run(host, command)

    # --- the guest: apt takes time, and may fail -------------------------------------------------
    def unit_start(self, vm: fakes.FakeVM, command: str) -> tuple[int, str, str]:
        answer = super().unit_start(vm, command)
        unit = re.search(r"--unit=(\S+)", command).group(1)  # type: ignore[union-attr]
        assert isinstance(vm, SimVM)
        if "dist-upgrade" in command:
            self.apt_units[unit] = (time.time(), vm.apt_seconds)
            if vm.apt_fails:
                self.units[unit] = (
                    100,
                    "E: Sub-process /usr/bin/dpkg returned an error code (1)\n",
                    "",
                )
        return answer

    def unit_poll(self, command: str) -> tuple[int, str, str]:
        """The poll waits in the guest up to 4 s for the unit to end (detached.POLL)."""
        unit = command.split(";")[0].removeprefix("u=")
        started, seconds = self.apt_units.get(unit, (0.0, 0.0))
        left = started + seconds - time.time()
        if left > 0:
            time.sleep(min(left, 4.0))
            if left > 4.0:
                return 0, "pvepatch-follow active none 0\n", ""
        return super().unit_poll(command)

    # --- the Proxmox host: shutdown, start and the agent take time ---------------------------------
    def pve(self, command: str) -> tuple[int, str, str]:
        words = shlex.split(command)
        verb = words[1] if len(words) > 2 and words[0] == "qm" else ""
        vmid = words[3] if verb == "guest" else (words[2] if verb else "")
        vm = self.by_vmid.get(int(vmid)) if vmid.isdigit() else None
        if not isinstance(vm, SimVM):
            return super().pve(command)
        if verb in {"shutdown", "stop"} and vm.running:
            return self._take_down(vm, verb, words)
        if verb == "start" and not vm.running:
            self.event(vm, "start")
            answer = super().pve(command)
            self._mark_down(vm, None if vm.ready_at == NEVER else vm.ready_at)
            if answer[0] != 0:
                self.event(vm, "start_failed")
            return answer
        if verb == "guest" and vm.touched and vm.running:
            if time.time() < vm.ready_at + vm.agent_seconds:
                return 2, "", "QEMU guest agent is not running\n"
            answer = super().pve(command)
            if answer[0] == 0 and not getattr(vm, "_agent_seen", False):
                vm._agent_seen = True  # type: ignore[attr-defined]
                self.event(vm, "agent_back")
                (self.state / vm.name).unlink(missing_ok=True)
            return answer
        return super().pve(command)

    def _take_down(self, vm: SimVM, verb: str, words: list[str]) -> tuple[int, str, str]:
        vm.touched, vm.back, vm.ready_at = True, False, NEVER
        vm._agent_seen = False  # type: ignore[attr-defined]
        self.event(vm, verb)
        self._mark_down(vm, None)
        if verb == "shutdown":
            if vm.ignores_shutdown:  # PVE waits for its --timeout, then fails
                timeout = float(words[words.index("--timeout") + 1]) if "--timeout" in words else 60
                time.sleep(timeout)
                self.event(vm, "shutdown_failed")
                (self.state / vm.name).unlink(missing_ok=True)
                vm.ready_at, vm.back = 0.0, True  # it never went down
                return 255, "", "VM quit/powerdown failed - got timeout\n"
            time.sleep(vm.shutdown_seconds)
        vm.running = False
        if vm.pending.pop("agent", None):
            vm.agent_in_config = True
        self.event(vm, "stopped")
        return 0, "", ""

    def final_state(self) -> dict[str, dict[str, object]]:
        return {
            vm.name: {"running": vm.running, "answers": self.answers(vm)}  # type: ignore[arg-type]
            for vm in self.vms.values()
            if getattr(vm, "touched", False)
        }


class SimTransport(fakes.FakeTransport):
    """A connection to a fake host; a Proxmox host's slots are one directory per host, shared by
    every process of the run."""

    fleet: SimFleet

    def hold(self, text: str) -> LocalHeld:
        if self.host in self.fleet.vms:
            raise TransportError(self.host, "fake guests hold nothing")
        self.fleet.commands.append((self.host, text))
        return LocalHeld(
            text.replace(HOST_SLOT_DIR, str(self.fleet.sim_dir / f"slots-{self.host}"))
        )


# --- conftest hooks (the run directory's conftest imports them) ------------------------------------
def _sim_dir() -> Path:
    return Path(os.environ["PVEPATCH_SIM_DIR"])


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    from pvepatch.plugin import FACTORY_KEY

    if not getattr(time.sleep, "simulated", False):
        raise pytest.UsageError("simfleet: load the virtual clock first: pytest -p simclock")

    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    fleet = SimFleet.from_plan(_sim_dir(), worker)
    config.stash[FACTORY_KEY] = fleet.factory
    config.stash[FLEET_KEY] = fleet


def pytest_sessionfinish(session: pytest.Session) -> None:
    fleet = session.config.stash[FLEET_KEY]
    path = _sim_dir() / f"final-{fleet.worker}.json"
    path.write_text(json.dumps(fleet.final_state()))
