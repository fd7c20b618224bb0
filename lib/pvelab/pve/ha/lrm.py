"""The LRM of one node (HA8 4.0.7 LRM.pm): every round it queues the CRM's state of each local
service, runs the resource agent in workers (threads here, forks in PVE), and reports the results
in nodes/<node>/lrm_status. The agent is PVEVM's: the stand-in qm's own power and migrate code,
called as the HA stack (type 'ha'). A node asked into maintenance (manager_status `node_request`)
runs in mode `maintenance` until the CRM moved its services away.

Lab limit: no online (live) migration. `migrate` of a running VM fails as a failed migration task
does in PVE: `service vm:<id> not moved (migration error)`, exit code 1, and the CRM puts the
service back to `started` on its node (`migration failed (exit code 1)`)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from pvelab.paths import LabPaths
from pvelab.pve.ha import config
from pvelab.pve.ha.journal import Log
from pvelab.pve.ha.states import ERROR, EWRONG_NODE, IGNORED, SUCCESS

ETRY_AGAIN, EUNKNOWN_SERVICE_TYPE, EUNKNOWN_COMMAND, EUNKNOWN_SERVICE = 2, 4, 5, 7
EINVALID_PARAMETER = 6
MAX_WORKERS = 4  # datacenter.cfg max_workers default (Env/PVE2.pm get_max_workers)
LRM_IDLE_ROUNDS = 60  # LRM.pm $max_active_idle_rounds
WORKER_SHARE = 0.8  # run_workers waits up to 8 s of a 10 s round for its workers


class Agent(Protocol):
    """A resource agent (PVE::HA::Resources::PVEVM) on one node."""

    def running(self, vmid: int) -> bool: ...
    def start(self, vmid: int) -> None: ...
    def shutdown(self, vmid: int, timeout: int | None) -> None: ...
    def migrate(self, vmid: int, target: str, online: bool) -> bool: ...


@dataclass
class Worker:
    sid: str
    uid: str
    state: str
    params: dict[str, Any] = field(default_factory=dict)
    future: Future[int] | None = None


class LRM:
    """One node's LRM; `work()` is one round, `round_s` its length (10 s in PVE)."""

    def __init__(self, paths: LabPaths, node: str, agent: Agent, log: Log, round_s: float) -> None:
        self.paths, self.node, self.agent, self.log = paths, node, agent, log
        self.round_s = round_s
        self.state = "startup"
        self.mode = "active"
        self.workers: dict[str, Worker] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.restart_tries: dict[str, int] = {}
        self.service_status: dict[str, dict[str, Any]] = {}
        self.idle_rounds = 0
        self.pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix=f"lrm-{node}")
        self.set_state("wait_for_agent_lock")

    def set_state(self, new: str) -> None:
        if new != self.state:
            self.log(f"status change {self.state} => {new}")
            self.state = new

    def write_status(self) -> None:
        config.write_lrm_status(self.paths, self.node, {
            "mode": self.mode, "results": self.results, "state": self.state,
            "timestamp": int(time.time()),
        })  # fmt: skip

    def active_service_count(self) -> int:
        skip = ("stopped", "freeze", "error", "request_start")
        return sum(
            1
            for sd in self.service_status.values()
            if sd.get("node") == self.node and sd.get("state") not in (None, *skip)
        )

    def update_service_status(self) -> None:
        """The CRM's service states, and the node's maintenance request (LRM.pm)."""
        ms = config.read_manager_status(self.paths)
        self.service_status = ms.get("service_status", {})
        request = (ms.get("node_request") or {}).get(self.node) or {}
        if request.get("maintenance"):
            self.mode = "maintenance"
        elif self.mode == "maintenance":
            self.mode = "active"

    def work(self) -> None:
        """One LRM round (LRM.pm `work`, quorate and never fenced)."""
        self.update_service_status()
        if self.state == "active" and self.mode == "maintenance":
            self.set_state("maintenance")
        elif self.state == "maintenance":
            if not self.active_service_count() and not self.run_workers():
                if self.mode != "maintenance":
                    self.set_state("active")  # empty and no maintenance requested
        elif self.state == "wait_for_agent_lock":
            if self.active_service_count():
                self.set_state("active")
        elif self.state == "active":
            local = any(sd.get("node") == self.node for sd in self.service_status.values())
            if not local and not self.run_workers():
                self.idle_rounds += 1
                if self.idle_rounds > LRM_IDLE_ROUNDS:
                    self.log(
                        f"node had no service configured for {LRM_IDLE_ROUNDS} rounds, going idle."
                    )  # noqa: E501
                    self.set_state("wait_for_agent_lock")
                    self.idle_rounds = 0
            else:
                self.idle_rounds = 0
        if self.state in ("active", "maintenance"):
            self.manage_resources()
        self.write_status()

    def manage_resources(self) -> int:
        for sid in list(self.restart_tries):
            if sid not in self.service_status:
                del self.restart_tries[sid]
        for sid, sd in self.service_status.items():
            if not sd.get("node") or not sd.get("uid") or sd["node"] != self.node:
                continue
            if sd.get("state") in (None, "recovery", "freeze", "request_start"):
                continue
            params = {"target": sd.get("target"), "timeout": sd.get("timeout")}
            self.queue(sid, sd["uid"], sd["state"], params)
        return self.run_workers()

    def queue(self, sid: str, uid: str, state: str, params: dict[str, Any]) -> None:
        """queue_resource_command: never the same command twice, except `stopped`."""
        if state != "stopped" and uid in self.results:
            return
        worker = self.workers.get(sid)
        if worker is not None and worker.future is not None:
            return  # already running
        self.workers[sid] = Worker(sid, uid, state, params)

    def run_workers(self) -> int:
        """Start queued workers, collect finished ones, for up to 80 % of a round."""
        start = time.monotonic()
        while time.monotonic() - start <= WORKER_SHARE * self.round_s:
            active = 0
            for sid, worker in list(self.workers.items()):
                if worker.future is None:
                    sc = config.checked_config(self.paths).get(sid)
                    worker.future = self.pool.submit(self.exec_agent, sid, sc, worker)
                if worker.future.done():
                    self.finished(worker)
                else:
                    active += 1
            if not active:
                break
            time.sleep(min(0.2, self.round_s / 20))
        return len(self.workers)

    def finished(self, worker: Worker) -> None:
        """resource_command_finished + handle_service_exitcode."""
        del self.workers[worker.sid]
        assert worker.future is not None
        try:
            code = worker.future.result()
        except Exception as exc:  # the forked worker died: PVE logs the error, exit -1
            self.log(str(exc))
            code = -1
        code = self.handle_exitcode(worker.sid, worker.state, code)
        if code == ETRY_AGAIN:
            return  # tell nobody, simply retry
        self.results[worker.uid] = {"sid": worker.sid, "state": worker.state, "exit_code": code}
        valid = {sd.get("uid") for sd in self.service_status.values()}
        self.results = {uid: r for uid, r in self.results.items() if uid in valid}

    def handle_exitcode(self, sid: str, cmd: str, code: int) -> int:
        if cmd != "started":
            return code
        if code == SUCCESS:
            self.restart_tries[sid] = 0
        elif code == ERROR:
            cd = config.checked_config(self.paths).get(sid)
            max_restart = cd["max_restart"] if cd else 0
            tries = self.restart_tries.setdefault(sid, 0)
            if tries >= max_restart:
                self.log(f"unable to start service {sid} on local node after {tries} retries")
                self.restart_tries[sid] = 0
                return ERROR
            self.restart_tries[sid] = tries + 1
            self.log(f"restart policy: retry number {tries + 1} for service '{sid}'")
            return ETRY_AGAIN
        return code

    def exec_agent(self, sid: str, sc: dict[str, Any] | None, worker: Worker) -> int:
        """exec_resource_agent, in a worker thread."""
        rtype, _, name = sid.partition(":")
        if rtype != "vm":
            self.log(f"service type '{rtype}' not implemented")
            return EUNKNOWN_SERVICE_TYPE
        if sc is None:
            self.log(f"missing resource configuration for '{sid}'")
            return EUNKNOWN_SERVICE
        cmd, vmid = worker.state, int(name)
        if cmd == "error":
            self.log(f"service {sid} is in an error state and needs manual intervention."
                     " Look up 'ERROR RECOVERY' in the documentation.")  # fmt: skip
            return SUCCESS  # error always succeeds
        if sc.get("node") != self.node:
            self.log(f"service '{sid}' not on this node")
            return EWRONG_NODE
        running = self.agent.running(vmid)
        if cmd == "started":
            if running:
                return SUCCESS
            self.log(f"starting service {sid}")
            self.agent.start(vmid)
            if self.agent.running(vmid):
                self.log(f"service status {sid} started")
                return SUCCESS
            self.log(f"unable to start service {sid}")
            return ERROR
        if cmd in ("request_stop", "stopped"):
            if not running:
                return SUCCESS
            timeout = worker.params.get("timeout")
            self.log(
                f"stopping service {sid}" + (f" (timeout={timeout})" if timeout is not None else "")
            )  # noqa: E501
            self.agent.shutdown(vmid, timeout)
            if not self.agent.running(vmid):
                self.log(f"service status {sid} stopped")
                return SUCCESS
            self.log(f"unable to stop stop service {sid} (still running)")  # sic, LRM.pm
            return ERROR
        if cmd in ("migrate", "relocate", "request_start_balance"):
            return self.exec_migrate(sid, sc, cmd, vmid, running, worker.params.get("target"))
        self.log(f"implement me (cmd '{cmd}')")
        return EUNKNOWN_COMMAND

    def exec_migrate(
        self, sid: str, sc: dict[str, Any], cmd: str, vmid: int, running: bool, target: str | None
    ) -> int:
        """exec_resource_agent's migrate/relocate: PVEVM::migrate, online for `migrate`."""
        if target is None:
            raise ValueError(f"{cmd} '{sid}' failed - missing target")
        if sc.get("node") == target:
            return SUCCESS  # already there
        if cmd == "request_start_balance" and running:
            self.log(f"ignoring rebalance-on-start for service {sid} - already running")
            return IGNORED
        if not self.agent.migrate(vmid, target, cmd == "migrate"):
            self.log(f"service {sid} not moved (migration error)")
            return ERROR
        return SUCCESS
