"""What each proof and each stage asks, per host, and asking it together in one round trip.

The command lines come from `Guest.asked` and `Qm.asked` (pvepatch.guest.facts.QUESTIONS,
pvepatch.proxmox.qm.QUESTIONS). `Asking` sends them through pvepatch.transport.batch: one SSH
command per host, both hosts at once, each answer recorded as its own command.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from pvepatch.errors import PvepatchError
from pvepatch.guest.facts import Guest, service_question
from pvepatch.inventory import Target
from pvepatch.proxmox.qm import Qm
from pvepatch.transport.batch import Prefetch
from pvepatch.transport.connections import RecordingTransport

# What a change inside the guest needs proven besides the binding: room, and dpkg consistent.
FIT = ("free_root", "free_boot", "dpkg_audit")
# What every proof asks of the cluster first: where the VM is, its HA state, quorum.
CLUSTER = ("resources", "quorum")


class Questions(NamedTuple):
    """Read-only command lines to ask together: in the guest, and of `qm` on its host."""

    guest: list[str]
    qm: list[str]


def proof(target: Target, *also: str) -> Questions:
    """What a proof asks (pvepatch.proxmox.preconditions), and the guest questions `also`."""
    return Questions(
        Guest.asked("macs", "hostname", *also),
        Qm.asked(
            target.vmid,
            *CLUSTER,
            "run_status",
            "config",
            "config_current",
            "agent_host_name",
        ),
    )


def fit(target: Target, *also: str) -> Questions:
    """What a change inside the guest asks first: a proof, room and dpkg (and `also`)."""
    return proof(target, *FIT, *also)


def before_shutdown(target: Target) -> Questions:
    """Right before the shutdown: a proof, whether apt/dpkg runs, who the guest is now, and the
    pending config changes the stop will apply."""
    asked = proof(target, "package_managers", "boot_id", "kernel")
    return Questions(asked.guest, [*asked.qm, *Qm.asked(target.vmid, "pending", "config_current")])


def cluster(target: Target) -> Questions:
    """What the cluster gate asks (pvepatch.cycle.cluster): where, HA, quorum, pending."""
    return Questions([], Qm.asked(target.vmid, *CLUSTER, "pending"))


def before_start(target: Target) -> Questions:
    """What proves the VM this run shut down stopped now (prove_stopped_by_us)."""
    return Questions([], Qm.asked(target.vmid, *CLUSTER, "run_status", "config"))


def back(target: Target) -> Questions:
    """After SSH is back with a new boot: the first answers of the port and agent checks."""
    return Questions(Guest.asked("virtio_port"), Qm.asked(target.vmid, "agent_ping"))


def after_apt() -> Questions:
    """What the patch action asks after the apt run, then what the stage's checks ask
    (tests_patch/test_30_patch.py)."""
    return Questions(
        Guest.asked("packages", "reboot_required", "boot_id", "planned", "packages", "dpkg_audit"),
        [],
    )


def preflight(target: Target) -> Questions:
    """What the preflight's checks ask (tests_patch/test_10_preflight.py and test_15's lock
    check): `qm status` and `qm config` twice, each check takes its own answer."""
    return Questions(
        Guest.asked("answers", "macs", "hostname", *FIT),
        Qm.asked(
            target.vmid,
            "status",
            "status",
            "config",
            "config",
            "agent_ping",
            "agent_host_name",
            *CLUSTER,
            "pending",
        ),
    )


def agent(target: Target) -> Questions:
    """What ensure_agent asks (testinfra detects the system first), and again what the stage's
    checks ask after it (tests_patch/test_20_guest_agent.py): when ensure_agent changes
    something, the second answers are dropped and the checks ask anew."""
    checks = ("agent_package", "virtio_port", "agent_service")
    return Questions(
        Guest.asked("system_type", "os_release", "arch", "systemd", *checks, *checks),
        Qm.asked(target.vmid, "config", "config"),
    )


def verify(target: Target, patching: bool = False) -> Questions:
    """What the verify stage's checks ask (tests_patch/test_50_verify.py, then in a patch run
    test_55_restart_proof.py's look at the VM as it is now, with the node it runs on)."""
    guest = Guest.asked("answers", "virtio_port", "agent_service", "boot_id", "kernel")
    if target.pihole is not None:
        guest.append(service_question(target.pihole.service))
    where = ("resources",) if patching else ()
    return Questions(guest, Qm.asked(target.vmid, "agent_ping", "status", *where, "run_status"))


class Asking:
    """Questions asked together for one VM (mixed into pvepatch.cycle.actions.VMCycle), kept
    in `_asked` for the transports `guest()` and `_qm_transport()` make."""

    def __init__(self) -> None:
        self._asked = Prefetch()
        self._asking = 0

    def guest(self) -> Guest:
        raise NotImplementedError

    def _qm_transport(self) -> RecordingTransport:
        raise NotImplementedError

    @contextmanager
    def asked_together(self, guest: Sequence[str] = (), qm: Sequence[str] = ()) -> Iterator[None]:
        """Inside the block, the read-only command lines `guest` (Guest.asked) and `qm`
        (Qm.asked) are answered from one round trip per host, sent on entry; each answer is used
        once. The outermost block starts from nothing and drops what is left when it ends, so
        a proof never uses an answer older than its block; a nested block asks only what the
        outer one has not."""
        if not self._asking:
            self._asked.clear()
        self._asking += 1
        try:
            self.ask_ahead(guest, qm)
            yield
        finally:
            self._asking -= 1
            if not self._asking:
                self._asked.clear()

    def ask_ahead(
        self, guest: Sequence[str] = (), qm: Sequence[str] = (), timeout: float = 60.0
    ) -> None:
        """Ask these read-only command lines now, one round trip per host, both hosts at once,
        for the checks that follow within seconds (pvepatch.transport.batch.FRESH_FOR): each
        check takes its answer once, or asks again. A change, a new connection or a proof drops
        what is left. A host that cannot be reached is not asked: its questions fail where they
        are asked, as they would have alone."""
        batches = []
        for questions, connect in (
            (guest, lambda: self.guest().transport),
            (qm, self._qm_transport),
        ):
            try:  # the guest first: its new connection drops what is kept
                transport = connect() if questions else None
            except PvepatchError:
                continue
            if isinstance(transport, RecordingTransport):
                batches.append((transport, questions))
        if len(batches) == 2:  # two hosts: the Proxmox host's batch runs beside the guest's
            other = threading.Thread(
                target=batches[1][0].fetch, args=(batches[1][1], timeout), daemon=True
            )
            other.start()
            batches[0][0].fetch(batches[0][1], timeout)
            other.join()
        elif batches:
            batches[0][0].fetch(batches[0][1], timeout)
