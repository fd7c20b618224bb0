"""The Lab: brings the PVE stand-in and its guests up and down, resets them, injects faults."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pvelab import procs
from pvelab.fleet import bootwait, faults, inventory, provision, roster, seed
from pvelab.fleet.roster import FLEET, VM
from pvelab.paths import LabPaths, port_base
from pvelab.pve import accel, cluster, node, vmconf, vmstate
from pvelab.pve.ha import config as haconfig
from pvelab.pve.ha import daemon as hadaemon
from pvelab.sshcmd import CommandError, CommandResult, LabError, quote, ssh_run

Log = Callable[[str], None]
VMs = Sequence[str] | str | None
UP_TIMEOUT = float(os.environ.get("PVELAB_UP_TIMEOUT", "600"))


class Lab:
    """One lab directory: `up`, `down`, `reset`, `fault`, and ways to look inside."""

    def __init__(self, paths: LabPaths | None = None, base: int | None = None) -> None:
        self.paths = paths or LabPaths.default()
        saved = self.state().get("port_base")
        if base is None and "PVELAB_PORT_BASE" not in os.environ and isinstance(saved, int):
            base = saved  # the lab keeps the ports it was brought up with
        self.base = base if base is not None else port_base()

    # -- where things are -------------------------------------------------------------------
    @property
    def inventory_path(self) -> Path:
        return self.paths.inventory

    @property
    def repo_port(self) -> int:
        return self.base + 1

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.paths.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _save_state(self, **changes: Any) -> None:
        data = {**self.state(), **changes}
        tmp = self.paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.paths.state_file)

    # -- commands into the lab --------------------------------------------------------------
    def pve_run(
        self, cmd: str | Sequence[str], timeout: float = 120, node: str = cluster.FIRST_NODE
    ) -> CommandResult:
        """A command on a PVE node (default `pve`), over its SSH like an operator would."""
        return ssh_run(
            self.paths, self.base, cmd, host=node, timeout=timeout, address=cluster.address(node)
        )

    def qm(
        self, *args: str | int, timeout: float = 120, check: bool = True, node: str | None = None
    ) -> CommandResult:
        """`ssh <node> qm <args>` (default `pve`); check=True raises CommandError on failure."""
        result = self.pve_run(
            ["qm", *map(str, args)], timeout=timeout, node=node or cluster.FIRST_NODE
        )
        if check and not result.ok:
            raise CommandError(result)
        return result

    def node_of(self, vm: VM) -> str:
        """The node that holds the VM (.vmlist); `pve` for a VM not provisioned yet."""
        return cluster.vm_node(self.paths, vm.vmid) or cluster.FIRST_NODE

    def guest_run(
        self, vm: str | VM, cmd: str | Sequence[str], timeout: float = 120
    ) -> tuple[int, str, str]:
        """Run `cmd` as root in the guest over SSH (pinned host key, BatchMode); (rc, out, err)."""
        result = self.guest_result(vm, cmd, timeout=timeout)
        return result.rc, result.stdout, result.stderr

    def guest_result(
        self, vm: str | VM, cmd: str | Sequence[str], timeout: float = 120
    ) -> CommandResult:
        guest = roster.by_name(vm) if isinstance(vm, str) else vm
        return ssh_run(self.paths, guest.ssh_port(self.base), cmd, host=guest.name, timeout=timeout)

    def qm_log(self) -> list[dict[str, Any]]:
        """Every `qm` call recorded by the stand-in (log/qm.log, JSON lines)."""
        try:
            lines = self.paths.qm_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def qemu_pid(self, vm: VM) -> int | None:
        return vmstate.running_pid(self.paths, vm.vmid)

    # -- up ---------------------------------------------------------------------------------
    def up(self, vms: VMs = None, log: Log = print, timeout: float = UP_TIMEOUT) -> dict[str, Any]:
        """Idempotently bring the lab up: image, repo, PVE host, VMs; wait until all answer."""
        began = time.monotonic()
        selected = roster.select(vms)
        image = self._prepare_host(log)
        for vm in selected:
            self._prepare_vm(vm, image, log)
        # Every VM the lab holds, not only those (re)started now: `reset(["pbs"])` must not drop
        # the others from the inventory.
        inventory.write(
            self.paths, self.base, [vm for vm in FLEET if self.paths.conf(vm.vmid).exists()]
        )
        states = self._start_vms(selected, log)
        self._wait(states, timeout, log)
        summary = self._summary(selected, states, time.monotonic() - began)
        self._save_state(last_up=summary)
        for line in format_summary(summary):
            log(line)
        return summary

    def wait(self, vms: VMs = None, timeout: float = UP_TIMEOUT, log: Log = print) -> None:
        """Wait until the given (started) VMs answer: agent (if configured), then SSH login."""
        states = [self._boot_state(vm) for vm in roster.select(vms)]
        self._wait(states, timeout, log)

    def _boot_state(self, vm: VM) -> bootwait.BootState:
        agent = vmconf.parse_conf(self.paths.conf(vm.vmid).read_text()).get("agent")
        return bootwait.BootState(
            vm, time.monotonic(), vmconf.agent_enabled({"agent": agent or "0"})
        )

    def _wait(self, states: list[bootwait.BootState], timeout: float, log: Log) -> None:
        log(f"waiting for {', '.join(s.vm.name for s in states)} (deadline {timeout:.0f} s)")
        bootwait.wait_all(
            states,
            port_of=lambda vm: vm.ssh_port(self.base),
            login=lambda vm: self.guest_result(vm, "cat /etc/hostname", timeout=30),
            qemu_alive=lambda vm: self.qemu_pid(vm) is not None,
            paths=self.paths,
            timeout=timeout,
            log=log,
        )

    def _prepare_host(self, log: Log) -> Any:
        from pvelab.image import build, repo  # heavy: only needed when bringing the lab up

        for d in (self.paths.root, self.paths.log_dir, self.paths.keys_dir):
            d.mkdir(parents=True, exist_ok=True)
        img = build.ensure_image(log=log)
        repo.ensure_repo(img, self.paths.repo_dir, log=log)
        repo_pid = self._repo_server_pid()
        if repo_pid is None:
            log_file = self.paths.log_dir / "repo-http.log"
            repo_pid = repo.start_repo_server(self.paths.repo_dir, self.repo_port, log_file)
            log(f"apt repository served on 127.0.0.1:{self.repo_port} (pid {repo_pid})")
        seed.ensure_operator_key(self.paths)
        sshd_pids = {}
        for pve in cluster.NODES:
            sshd_pids[pve.name] = node.start(self.paths, self.base, pve.name)
            log(
                f"PVE node {pve.name} sshd on {pve.address}:{self.base} (pid {sshd_pids[pve.name]})"
            )
        ha_pid = hadaemon.start(self.paths, self.base)  # the HA CRM + LRMs (kept if running)
        log(f"HA daemon: pid {ha_pid}, log {self.paths.log_dir / 'ha.log'}")
        self._save_state(ha_pid=ha_pid)
        for vm in FLEET:  # every VM's key is pinned, also for VMs not started this time
            seed.write_seed(self.paths, vm)
        pinned: list[seed.KnownHost] = [
            (self.base, _pub(node.host_key(self.paths, pve.name)), pve.address)
            for pve in cluster.NODES
        ]
        pinned += [(vm.ssh_port(self.base), _pub(seed.host_key(self.paths, vm))) for vm in FLEET]
        seed.write_known_hosts(self.paths, pinned)
        self.choose_accel(img.kernel, log)
        self._save_state(
            port_base=self.base,
            repo_port=self.repo_port,
            repo_pid=repo_pid,
            pve_sshd_pid=sshd_pids[cluster.FIRST_NODE],
            node_sshd_pids=sshd_pids,
            image={"dir": str(img.dir), "base": str(img.base), "kernel": str(img.kernel)},
        )
        return img

    def choose_accel(self, kernel: Path | None, log: Log = print) -> accel.Verdict:
        """KVM or TCG for this lab's VMs, said in one line; QEMU's own words go to lab.json."""
        verdict = accel.probe(self.paths, kernel=kernel)
        log(verdict.line())
        self._save_state(accel=verdict.record())
        return verdict

    def _repo_server_pid(self) -> int | None:
        pid = self.state().get("repo_pid")
        if not isinstance(pid, int) or not procs.alive(pid):
            return None
        argv = procs.cmdline(pid)
        return pid if str(self.paths.repo_dir) in argv and str(self.repo_port) in argv else None

    def _prepare_vm(self, vm: VM, img: Any, log: Log) -> None:
        running = self.qemu_pid(vm) is not None
        if not running and provision.ensure_overlay(self.paths, vm, img.base):
            log(f"{vm.name}: overlay {self.paths.disk(vm.vmid).name} created on {img.base}")
        what = provision.ensure_conf(self.paths, vm, img.kernel, img.initrd)
        if what != "kept":
            log(f"{vm.name}: conf {self.paths.conf(vm.vmid).name} {what}")

    def _start_vms(self, selected: list[VM], log: Log) -> list[bootwait.BootState]:
        states = []
        for vm in selected:
            owner = self.node_of(vm)
            status = self.qm("status", vm.vmid, node=owner).stdout.strip()
            if status != "status: running":
                result = self.qm("start", vm.vmid, timeout=60, node=owner)
                log(f"{vm.name}: qm start {vm.vmid} ({result.duration:.1f} s)")
            else:
                log(f"{vm.name}: already running")
            states.append(self._boot_state(vm))
        return states

    def _summary(
        self, selected: list[VM], states: list[bootwait.BootState], seconds: float
    ) -> dict[str, Any]:
        vms = {}
        for st in states:
            pid = self.qemu_pid(st.vm)
            vms[st.vm.name] = {
                "vmid": st.vm.vmid,
                "ssh_port": st.vm.ssh_port(self.base),
                "dns_port": st.vm.dns_port(self.base),
                "pid": pid,
                "rss_mib": round((procs.rss_kib(pid) or 0) / 1024) if pid else None,
                "agent_s": st.seconds(st.agent_at),
                "ssh_s": st.seconds(st.ssh_at),
            }
        return {
            "seconds": round(seconds, 1),
            "accel": self.state().get("accel"),
            "pve": f"ssh -p {self.base} root@127.0.0.1",
            "inventory": str(self.paths.inventory),
            "vms": vms,
        }

    # -- down / reset -----------------------------------------------------------------------
    def stop_vm(self, vm: VM) -> str:
        """Hard stop (as `qm stop`, skipping locks); falls back to killing QEMU. Returns how."""
        pid = self.qemu_pid(vm)
        if pid is None:
            return "not running"
        owner = self.node_of(vm)
        if node.running_pid(self.paths, owner) is not None:
            result = self.qm("stop", vm.vmid, "--skiplock", 1, timeout=60, check=False, node=owner)
            if result.ok and self.qemu_pid(vm) is None:
                return "qm stop"
        if procs.terminate(pid, grace=10):
            return "killed"
        raise LabError(f"{vm.name}: QEMU pid {pid} survived SIGTERM and SIGKILL")

    def down(self, log: Log = print) -> None:
        """Stop every VM (disks kept), both PVE nodes' sshds and the repo server. Backups,
        .vmlist and cluster faults stay."""
        if hadaemon.stop(self.paths):  # first: its LRM would restart VMs stopped below
            log("HA daemon stopped")
        haconfig.clear(self.paths)  # no HA resource survives `down`: the next `up` starts clean
        self._save_state(ha_pid=None)
        with ThreadPoolExecutor(max_workers=len(FLEET)) as pool:
            for vm, how in zip(FLEET, pool.map(self.stop_vm, FLEET), strict=True):
                if how != "not running":
                    log(f"{vm.name}: stopped ({how})")
        for pve in cluster.NODES:
            if node.stop(self.paths, pve.name):
                log(f"PVE node {pve.name} sshd stopped")
        repo_pid = self._repo_server_pid()
        if repo_pid is not None and procs.terminate(repo_pid, grace=5):
            log("apt repository server stopped")
        self._save_state(pve_sshd_pid=None, node_sshd_pids=None, repo_pid=None)

    def reset(self, vms: VMs = None, log: Log = print, timeout: float = UP_TIMEOUT) -> dict:
        """Undo every fault: stop, fresh overlay from the base, fresh conf on node `pve`, no
        other disks, re-seed, quorum back; then `up` (which also restores the image's repository
        if a fault altered it). Backups in storage `local` stay."""
        selected = roster.select(vms)
        for vm in selected:
            if haconfig.remove_resource(self.paths, f"vm:{vm.vmid}", check_quorum=False):
                log(f"{vm.name}: HA resource vm:{vm.vmid} removed")  # else qm stop only queues
            how = self.stop_vm(vm)
            log(f"{vm.name}: {how}")
            owner = self.node_of(vm)
            self.paths.conf(vm.vmid).unlink(missing_ok=True)
            cluster.register(self.paths, vm.vmid, cluster.FIRST_NODE, keep=False)
            if owner != cluster.FIRST_NODE:
                log(f"{vm.name}: back on node {cluster.FIRST_NODE} from {owner} (.vmlist)")
            # The overlay and any disk a fault added (snapshot-unsupported's raw disk).
            for disk in self.paths.disks_dir.glob(f"vm-{vm.vmid}-disk-*"):
                disk.unlink()
            seed.write_seed(self.paths, vm)
            log(f"{vm.name}: conf and disks removed; `up` recreates them from the base image")
        if not cluster.quorate(self.paths):
            cluster.set_quorum(self.paths, True)
            log("cluster: quorum restored")
        return self.up([vm.name for vm in selected], log=log, timeout=timeout)

    # -- faults -----------------------------------------------------------------------------
    def fault(self, name: str, vm: str | VM | None, log: Log = print) -> CommandResult | None:
        """Inject fault `name` into `vm`: host side first, then the guest (via SSH as root), then
        its conf, then the host's `after` step. A cluster fault (no-quorum) takes no VM."""
        flt = faults.get(name)
        if flt.whole_cluster is not None:
            flt.whole_cluster(self.paths)
            log(f"cluster: fault {name} applied ({flt.summary})")
            return None
        if vm is None:
            raise LabError(f"fault {name} needs a VM")
        guest = roster.by_name(vm) if isinstance(vm, str) else vm
        faults.check_applicable(flt, guest)
        if flt.host is not None:
            flt.host(self.paths, guest)
        result = None
        if flt.guest_script is not None:
            text = flt.guest_script
            if callable(text):
                text = text(self.paths, guest)
            # `sync`: a fault must survive a hard power-off (qm stop) as well as a clean shutdown.
            script = text + "\nsync\n"
            result = self.guest_result(guest, ["sh", "-c", script], timeout=flt.timeout)
            if not result.ok:
                raise CommandError(result)
        if flt.conf:
            conf = self.paths.conf(guest.vmid)
            conf.write_text(faults.apply_conf(flt, conf.read_text(), guest.vmid))
        if flt.after is not None:
            flt.after(self.paths, guest)
        log(f"{guest.name}: fault {name} applied ({flt.summary})")
        return result

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        state = self.state()
        repo_pid = self._repo_server_pid()
        sshd_pid = node.running_pid(self.paths)
        nodes = {
            pve.name: {
                "address": pve.address,
                "port": self.base,
                "pid": node.running_pid(self.paths, pve.name),
            }
            for pve in cluster.NODES
        }
        vms = {}
        for vm in FLEET:
            pid = self.qemu_pid(vm)
            conf = self.paths.conf(vm.vmid)
            vm_conf = vmconf.parse_conf(conf.read_text() if conf.exists() else "")
            vms[vm.name] = {
                "vmid": vm.vmid,
                "node": cluster.vm_node(self.paths, vm.vmid),
                "configured": conf.exists(),
                "status": "running" if pid else "stopped",
                "pid": pid,
                "rss_mib": round((procs.rss_kib(pid) or 0) / 1024) if pid else None,
                "ssh_port": vm.ssh_port(self.base),
                "lock": vm_conf.lock,
                "agent": vm_conf.get("agent"),
            }
        return {
            "lab": str(self.paths.root),
            "pve_sshd": {"port": self.base, "pid": sshd_pid},
            "nodes": nodes,
            "quorate": cluster.quorate(self.paths),
            "repo_http": {"port": self.repo_port, "pid": repo_pid},
            "accel": state.get("accel"),
            "vms": vms,
        }


def _pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def format_summary(summary: dict[str, Any]) -> list[str]:
    acc = summary.get("accel") or {}
    lines = [
        f"lab up in {summary['seconds']} s; acceleration {str(acc.get('accel')).upper()}"
        f" ({str(acc.get('reason')).splitlines()[0]})",
        f"PVE host: {summary['pve']}   inventory: {summary['inventory']}",
        f"{'VM':<14} {'VMID':>4} {'SSH':>6} {'agent s':>8} {'SSH s':>6} {'RSS MiB':>8}",
    ]
    for name, vm in summary["vms"].items():
        lines.append(
            f"{name:<14} {vm['vmid']:>4} {vm['ssh_port']:>6} {str(vm['agent_s']):>8}"
            f" {str(vm['ssh_s']):>6} {str(vm['rss_mib']):>8}"
        )
    return lines


__all__ = ["Lab", "LabError", "CommandError", "quote", "format_summary"]
