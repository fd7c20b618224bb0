"""The restart of an HA-managed VM, the way the HA manager expects it.

For an HA resource, `qm shutdown|stop|start` only queue a request and return at once; the CRM
and the node's LRM carry it out rounds later (10 s rounds), and an HA stop always ends in a
power-off after its timeout (reference `proxmox-ha-cluster-snapshot.md` §1.1, §1.4). So the
restart asks HA, then waits until HA reports the state *and* `qm status` agrees (§1.5), before
the next step. The start is requested only once the VM is seen stopped: a start queued behind a
pending stop is lost and leaves the VM off (§1.6). The same proofs, deadlines, down budget and
checks after the start as any restart (pvepatch.cycle.restart).
"""

from __future__ import annotations

from pvepatch.cycle.restart import Restart, _why
from pvepatch.cycle.wait import wait_for
from pvepatch.errors import PvepatchError
from pvepatch.proxmox.cluster import HA_HANDS_OFF, VMResource
from pvepatch.proxmox.preconditions import Proof
from pvepatch.transport.command import CommandResult

# Two HA rounds before anything happens, the power-off after the timeout, the status lag.
HA_SLACK = 60.0
# How long a queued start may take: the rounds, then QEMU starting (qm start's own wait).
HA_START_TIMEOUT = HA_SLACK + 120.0


class HARestart(Restart):
    """A Restart whose stop and start are requests to the HA manager, each waited for."""

    START = "ha start"
    _ha_state: str | None = None  # the HA state the last wait ended on

    def _stop_action(self) -> str:
        return "ha stop"

    def _take_down(self) -> bool:
        opts, outcome = self.options, self.outcome
        assert self.proof is not None
        outcome.mark("shutdown_sent")
        hard = opts.restart_method == "stop"
        outcome.shutdown = self.qm.ha_stop(self.proof, opts.shutdown_timeout, hard=hard)
        if not outcome.shutdown.ok:
            outcome.errors["shutdown"] = f"HA stop request failed ({_why(outcome.shutdown)})"
            return False
        limit = (0 if hard else opts.shutdown_timeout) + HA_SLACK
        if not self._ha_reached("stopped", "stopped", "stopped", limit):
            # Unless HA gave up on it (error), the request stays with HA, whose requested state
            # is `stopped` now: it may still power the VM off, and keep it off, after this run
            # stopped waiting.
            if self._ha_state != "error" and not self._uncertain:
                self._uncertain = (
                    f"HA was asked to stop it and had not reported it stopped when pvepatch "
                    f"stopped waiting ({self.outcome.errors.get('stopped', 'no reason given')}); "
                    "HA may still power it off and keep it off: check ha-manager status; to "
                    f"keep it running: ha-manager set vm:{self.target.vmid} --state started"
                )
            return False
        outcome.stopped = True
        outcome.mark("stopped")
        return True

    def _send_start(self, proof: Proof) -> CommandResult:
        return self.qm.ha_start(proof)

    def _seen_started(self) -> bool:
        return self._ha_reached("start", "started", "running", HA_START_TIMEOUT)

    def _ha_reached(self, step: str, hastate: str, status: str, timeout: float) -> bool:
        """Wait until /cluster/resources gives `hastate` on the VM's node and `qm status` says
        `status`. HA in a state that needs an admin, the VM no longer HA-managed, or moved to
        another node end the wait at once: recorded under `step`, False."""
        vmid, node = self.target.vmid, self.target.proxmox.node
        self._ha_state = None

        def probe() -> tuple[str, VMResource | None] | None:
            where = self.qm.resource()
            if where is None or where.node != node:
                return "moved", where
            if where.hastate in HA_HANDS_OFF or not where.ha_managed:
                return "hands off", where
            if where.hastate == hastate and self.qm.status() == status:
                return "reached", where
            return None

        what = f"HA to report VM {vmid} {hastate} and qm status {status}"
        try:
            kind, where = wait_for(
                what, probe, timeout=timeout, interval=2, progress=self.cycle.progress
            )
        except PvepatchError as exc:
            self.outcome.errors[step] = str(exc)
            return False
        self._ha_state = where.hastate if where else None
        if kind == "moved":
            on = f"node '{where.node}'" if where else "no node (not listed)"
            self.outcome.errors[step] = (
                f"HA moved VM {vmid} to {on}, not '{node}': pvepatch does not follow it"
            )
            self._uncertain = f"HA moved it to {on}: check it there (ha-manager status)"
        elif kind == "hands off":
            state = f"state '{where.hastate}'" if where and where.hastate else "no HA state"
            self.outcome.errors[step] = (
                f"HA has VM {vmid} in {state} (waiting for {hastate}): it needs an admin"
            )
        return kind == "reached"
