"""A fake fleet for fast unit and plugin tests: guests and a Proxmox host answering like the real ones.

It stands in for the hosts only in the project's own fast tests; the end-to-end proof runs
against the lab's real VMs (tests/lab).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pvepatch.cycle.slots import HOST_SLOT_DIR, LocalHeld
from pvepatch.errors import TransportError
from pvepatch.inventory import SSHSpec
from pvepatch.transport.command import CommandResult


@dataclass
class FakeVM:
    name: str
    vmid: int
    mac: str
    agent_installed: bool = True
    agent_in_config: bool = True
    running: bool = True
    lock: str | None = None
    ssh_up: bool = True
    ssh_after_boot: bool = True
    ignores_shutdown: bool = False  # the guest ignores ACPI and the agent's shutdown
    start_fails: bool = False  # qm start fails (the VM stays stopped)
    shutdown_seconds: float = 0.2  # how long a clean shutdown takes: status stays running
    pending: dict[str, str] = field(default_factory=dict)  # applied at the next stop, like PVE
    packages: dict[str, str] = field(
        default_factory=lambda: {"bash": "5.2-1", "openssl": "3.0.1-1"}
    )
    updates: dict[str, str] = field(default_factory=lambda: {"openssl": "3.0.2-1"})
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    pid: int = 1000
    started_at: float = field(default_factory=time.time)
    reboot_required: bool = False
    guest_mac: str | None = None  # set to simulate an inventory pointing at another guest
    agent_name: str | None = None  # the host name the agent reports, when not the VM's name
    status_unknown: int = 0  # `qm status` fails this many times while the VM is stopped
    apt_running: bool = False  # an apt/dpkg process runs in the guest (pgrep finds it)
    newest_kernel: str | None = None  # the newest /boot/vmlinuz-*, when not the running one
    sigterm_at: str | None = None  # "start"/"shutdown": that qm verb sends SIGTERM, once
    bad_update: bool = False  # its dist-upgrade installs an update that kills the guest agent
    agent_broken: bool = False  # the agent is installed but does not run (masked)
    snapshot_error: str | None = None  # `qm snapshot` fails with this (a raw disk, say)
    rollback_error: str | None = None  # `qm rollback` fails with this, the VM left as it is
    update_fails: bool = False  # `apt-get update` cannot fetch the lists
    # name -> description, snaptime and the guest's state it holds (packages, agent)
    snapshots: dict[str, dict[str, object]] = field(default_factory=dict)
    node: str = "pve"  # the cluster node its config is on (qm on another node cannot see it)
    hastate: str | None = None  # its HA state in /cluster/resources; None: not an HA resource
    backups: list[float] = field(default_factory=list)  # epoch times of its backups
    extra_config: dict[str, str] = field(default_factory=dict)  # more `qm config` keys
    # a cloud-init drive: the instance-id in the guest, and the one `qm cloudinit dump` gives
    cloudinit: bool = False
    ci_instance_id: str | None = None
    ci_next_instance_id: str = "8b0f3c2a9e1d4b7f6a5c3e2d1f0a9b8c7d6e5f4a"
    # HA (hastate set, not `ignored`): requests queued by qm, carried out `ha_delay` s later
    ha_delay: float = 0.6
    ha_queue: list[tuple[float, str]] = field(default_factory=list)
    ha_requested: str = "started"
    ha_stop_fails: bool = False  # the LRM cannot stop it: HA state error, VM left running
    ha_state_at_start: list[tuple[str | None, bool]] = field(
        default_factory=list
    )  # (hastate, running) when `qm start` came
    # an admin's config edit that lands while PVE stops the VM (after pvepatch's last check)
    pending_at_stop: dict[str, str] = field(default_factory=dict)
    # what an admin does to it while its dist-upgrade runs (a config edit, a migration)
    during_update: dict[str, object] = field(default_factory=dict)
    # a live migration to this node right after its agent first answers following a start
    migrate_after_start: str | None = None
    starts: int = 0  # `qm start`s carried out

    def boot(self) -> None:
        self.starts += 1
        self.running = True
        self.boot_id = str(uuid.uuid4())
        self.pid += 1
        self.started_at = time.time()
        self.ssh_up = self.ssh_after_boot
        self.reboot_required = False


def _ok(out: str = "", rc: int = 0, err: str = "") -> tuple[int, str, str]:
    return rc, out, err


class FakeFleet:
    """Guests and one Proxmox host 'pve'; every command sent is logged in `commands`."""

    def __init__(self, vms: list[FakeVM]):
        self.vms = {vm.name: vm for vm in vms}
        self.by_vmid = {vm.vmid: vm for vm in vms}
        self.commands: list[tuple[str, str]] = []
        self.connects: list[str] = []
        self.max_down = 0
        # the fake Proxmox host's down slots: the real slot script, run on this machine
        self.slot_dir = tempfile.mkdtemp(prefix="pvepatch-fake-slots-")
        self.units: dict[str, tuple[int, str, str]] = {}  # detached apt: unit -> rc, out, err
        self.quorate = True  # what `pvecm status` says

    def factory(self, name: str, spec: SSHSpec) -> FakeTransport:
        self.connects.append(name)
        if name in self.vms and not (self.vms[name].running and self.vms[name].ssh_up):
            raise TransportError(
                name, f"SSH connection to {spec} failed: [Errno 111] Connection refused"
            )
        return FakeTransport(self, name)

    def down_count(self) -> int:
        return sum(not vm.running for vm in self.vms.values())

    def run(self, host: str, command: str) -> tuple[int, str, str]:
        self.commands.append((host, command))
        self.ha_rounds()
        if host in self.vms:
            vm = self.vms[host]
            if not (vm.running and vm.ssh_up):
                raise TransportError(host, "SSH connection lost")
            return self.guest(vm, command)
        return self.pve(command)

    # --- a guest ---------------------------------------------------------------------------
    def guest(self, vm: FakeVM, command: str) -> tuple[int, str, str]:
        port_present = vm.agent_in_config
        m = re.match(r"command -v (\S+)", command)
        if m:
            known = m.group(1) in {"command", "dpkg-query", "systemctl", "apt-get"}
            return _ok("/usr/bin/x\n" if known else "", 0 if known else 1)
        if command in {"true", "uname -m"}:
            return _ok("x86_64\n" if command == "uname -m" else "")
        if command == "uname -s":
            return _ok("Linux\n")
        if command == "uname -r":
            return _ok("6.1.0-1-amd64\n")
        if command == "cat /etc/os-release":
            return _ok("ID=debian\nVERSION_ID=12\n")
        if command == "cat /proc/sys/kernel/random/boot_id":
            return _ok(vm.boot_id + "\n")
        if command == "hostname":
            return _ok(vm.name + "\n")
        if command.startswith("cat /var/lib/cloud/data/instance-id"):
            return _ok(f"{vm.ci_instance_id}\n" if vm.ci_instance_id else "")
        if command.startswith("cat /sys/class/net/"):
            return _ok(f"{vm.guest_mac or vm.mac}\n00:00:00:00:00:00\n")
        if command.startswith("df -Pm"):
            return _ok(
                "Filesystem 1048576-blocks Used Available Capacity Mounted on\n/dev/vda 2000 800 1200 40% /\n"
            )
        if command == "dpkg --audit":
            return _ok("")
        if command.startswith("pgrep -a -x"):
            busy = vm.apt_running
            return _ok("4242 apt-get -y dist-upgrade\n" if busy else "", 0 if busy else 1)
        if command.startswith("ls /boot"):
            return _ok(f"{vm.newest_kernel}\n" if vm.newest_kernel else "")
        if command.startswith("test -c /dev/virtio-ports/"):
            return _ok(rc=0 if port_present else 1)
        if command == "test -d /run/systemd/system/":
            return _ok()
        if command.startswith("if test -e /var/run/reboot-required"):
            return _ok("REQUIRED\nopenssl\n" if vm.reboot_required else "")
        if command.startswith("dpkg-query -f '${Status}' -W qemu-guest-agent"):
            return _ok(
                "install ok installed" if vm.agent_installed else "", 0 if vm.agent_installed else 1
            )
        if command.startswith("dpkg-query -W -f"):
            pkgs = dict(vm.packages)
            if vm.agent_installed:
                pkgs["qemu-guest-agent"] = "1:7.2"
            return _ok("".join(f"{n}\t{v}\tii \n" for n, v in pkgs.items()))
        if command.startswith("systemctl is-active"):
            up = vm.agent_installed and port_present and not vm.agent_broken
            return _ok("active\n" if up else "inactive\n", 0 if up else 3)
        if command.startswith("systemctl is-enabled"):
            return _ok("static\n", 0 if vm.agent_installed else 1)
        if command.startswith("systemctl start"):
            return _ok()
        if "systemd-run --unit=" in command:
            return self.unit_start(vm, command)
        if command.startswith("u=pvepatch-"):
            return self.unit_poll(command)
        if "apt-get -s" in command:
            return _ok(
                "".join(f"Inst {n} [{vm.packages[n]}] ({v})\n" for n, v in vm.updates.items())
            )
        if " apt-get " in command or command.startswith("apt-get"):
            return self.apt(vm, command)
        return _ok("", 127, f"fake guest: unknown command: {command}")

    def apt(self, vm: FakeVM, command: str) -> tuple[int, str, str]:
        words = shlex.split(command)
        verb = words[-1] if words[-1] in {"update", "dist-upgrade", "autoremove"} else None
        if verb == "update" and vm.update_fails:
            return _ok("", 100, "E: Failed to fetch http://deb.example/dists/x/InRelease\n")
        if verb == "dist-upgrade":
            vm.agent_broken = vm.agent_broken or vm.bad_update
            vm.reboot_required = vm.reboot_required or bool(vm.updates)
            vm.packages.update(vm.updates)
            vm.updates = {}
            for key, value in vm.during_update.items():
                if key == "pending":
                    vm.pending.update(value)  # type: ignore[call-overload]
                else:
                    setattr(vm, key, value)
            vm.during_update = {}
        elif "install" in words and "qemu-guest-agent" in words:
            vm.agent_installed = True
        return _ok("Reading package lists...\n")

    def unit_start(self, vm: FakeVM, command: str) -> tuple[int, str, str]:
        """systemd-run of a detached apt call: it runs to its end at once, output kept."""
        words = shlex.split(command)
        unit = re.search(r"--unit=(\S+)", command).group(1)  # type: ignore[union-attr]
        self.units[unit] = self.apt(vm, words[words.index("-c") + 1].split(" >")[0])
        return _ok()

    def unit_poll(self, command: str) -> tuple[int, str, str]:
        """A poll of a detached unit (pvepatch.guest.detached.POLL): ended, all output."""
        unit = command.split(";")[0].removeprefix("u=")
        offset = int(re.search(r"n=(\d+);", command).group(1))  # type: ignore[union-attr]
        rc, out, err = self.units[unit]
        data = out.encode()
        head = f"pvepatch-follow inactive {rc} {len(data)}\n"
        return _ok(head + data[offset:].decode(), 0, err)

    # --- the Proxmox host -------------------------------------------------------------------
    def pve(self, command: str) -> tuple[int, str, str]:
        """Proxmox's answer; a VM's `sigterm_at` verb sends SIGTERM to this process once (the
        operator's kill): before a start (the VM stopped), or inside a shutdown once the VM has
        stopped (the reply never arrives)."""
        words = shlex.split(command)
        vmid = words[2] if words[:1] == ["qm"] and len(words) > 2 else ""
        vm = self.by_vmid.get(int(vmid)) if vmid.isdigit() else None
        hit = vm is not None and vm.sigterm_at == words[1]
        if vm is not None and hit:
            vm.sigterm_at = None
        if hit and words[1] == "start":
            os.kill(os.getpid(), signal.SIGTERM)
        result = self._qm(command)
        if hit and words[1] != "start":
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    def _cluster(self, words: list[str]) -> tuple[int, str, str]:
        """pvesh and pvecm as PVE 8 answers them (reference §2.1, §2.3, §5)."""
        if words == ["pvecm", "status"]:
            quorate = "Yes" if self.quorate else "No"
            text = (
                "Cluster information\n-------------------\nName:             pvelab\n\n"
                "Quorum information\n------------------\nNodes:            2\n"
                f"Quorate:          {quorate}\n"
            )
            return _ok(text, 1 if self.quorate else 0)  # pvecm exits 1 when quorate
        path = words[2] if len(words) > 2 and words[:2] == ["pvesh", "get"] else ""
        if path == "/cluster/resources":
            entries = []
            for vm in self.vms.values():
                entry: dict[str, object] = {
                    "id": f"qemu/{vm.vmid}",
                    "vmid": vm.vmid,
                    "node": vm.node,
                    "type": "qemu",
                    "name": vm.name,
                    "status": "running" if vm.running else "stopped",
                }
                if vm.hastate:
                    entry["hastate"] = vm.hastate
                entries.append(entry)
            return _ok(json.dumps(entries, sort_keys=True) + "\n")
        if re.fullmatch(r"/nodes/[a-z0-9-]+/storage", path):
            return _ok('[{"active":1,"content":"backup,iso","enabled":1,"storage":"local"}]\n')
        if re.fullmatch(r"/nodes/[a-z0-9-]+/storage/local/content", path):
            vm = self.by_vmid[int(words[words.index("--vmid") + 1])]
            listed = [
                {
                    "content": "backup",
                    "ctime": int(at),
                    "format": "vma.zst",
                    "vmid": vm.vmid,
                    "volid": f"local:backup/vzdump-qemu-{vm.vmid}-"
                    + time.strftime("%Y_%m_%d-%H_%M_%S", time.localtime(at))
                    + ".vma.zst",
                }
                for at in vm.backups
            ]
            return _ok(json.dumps(listed, sort_keys=True) + "\n")
        return _ok("", 255, f"fake pve: unknown command: {' '.join(words)}\n")

    def config_lines(self, vm: FakeVM, current: bool) -> list[str]:
        lines = [f"name: {vm.name}", f"net0: virtio={vm.mac.upper()},bridge=vmbr0", "memory: 384"]
        if vm.agent_in_config or (not current and "agent" in vm.pending):
            lines.append("agent: 1")
        if vm.lock:
            lines.append(f"lock: {vm.lock}")
        if vm.cloudinit:
            lines.append(f"ide2: local:vm-{vm.vmid}-cloudinit,media=cdrom")
        config = dict(line.split(": ", 1) for line in lines)
        config.update(vm.extra_config)
        if not current:
            config.update((k, v) for k, v in vm.pending.items() if k != "agent")
        return sorted(f"{k}: {v}" for k, v in config.items())

    @staticmethod
    def apply_pending(vm: FakeVM) -> None:
        """What PVE does when it stops a VM: the pending changes become the config."""
        vm.pending.update(vm.pending_at_stop)
        vm.pending_at_stop = {}
        for key, value in vm.pending.items():
            if key == "agent":
                vm.agent_in_config = True
            else:
                vm.extra_config[key] = value
        vm.pending.clear()

    def _qm(self, command: str) -> tuple[int, str, str]:
        words = shlex.split(command)
        if words[:1] in (["pvesh"], ["pvecm"]):
            return self._cluster(words)
        if words[:1] != ["qm"] or len(words) < 3:
            return _ok("", 255, f"fake pve: unknown command: {command}")
        verb, vmid = words[1], words[2]
        if verb in {"guest", "cloudinit"}:
            vmid = words[3]
        vm = self.by_vmid.get(int(vmid))
        if vm is None or vm.node != "pve":
            return _ok(
                "", 2, f"Configuration file 'nodes/pve/qemu-server/{vmid}.conf' does not exist\n"
            )
        if verb == "status" and vm.status_unknown and not vm.running:
            vm.status_unknown -= 1  # the host does not answer for a moment (pmxcfs restarting)
            return _ok("", 255, "ipcc_send_rec[1] failed: Connection refused\n")
        if verb == "status":
            if "--verbose" in words:
                lines = [
                    f"name: {vm.name}",
                    f"status: {'running' if vm.running else 'stopped'}",
                    f"vmid: {vm.vmid}",
                ]
                if vm.running:
                    lines += [
                        f"pid: {vm.pid}",
                        "qmpstatus: running",
                        f"uptime: {int(time.time() - vm.started_at)}",
                    ]
                return _ok("\n".join(sorted(lines)) + "\n")
            return _ok(f"status: {'running' if vm.running else 'stopped'}\n")
        if verb == "config":
            return _ok("\n".join(self.config_lines(vm, "--current" in words)) + "\n")
        if verb == "cloudinit" and words[2:] == ["dump", vmid, "meta"]:
            if not vm.cloudinit:
                return _ok("", 255, f"VM {vmid} has no cloud-init drive\n")  # (fake's text)
            return _ok(f"instance-id: {vm.ci_next_instance_id}\n")
        if verb == "pending":
            current = dict(line.split(": ", 1) for line in self.config_lines(vm, current=True))
            out = []
            for key in sorted(set(current) | set(vm.pending)):
                if key in current:
                    out.append(f"cur {key}: {current[key]}")
                if key in vm.pending:
                    out.append(f"new {key}: {vm.pending[key]}")
            return _ok("\n".join(out) + "\n")
        if verb == "guest":
            if not vm.agent_in_config:
                return _ok("", 2, "No QEMU guest agent configured\n")
            if not vm.running:
                return _ok("", 2, f"VM {vm.vmid} is not running\n")
            if not vm.agent_installed or vm.agent_broken:
                return _ok("", 2, "QEMU guest agent is not running\n")
            if words[4] == "get-host-name":
                return _ok(f'{{\n   "host-name" : "{vm.agent_name or vm.name}"\n}}\n')
            if vm.migrate_after_start and vm.starts:  # live: new QEMU there, same guest boot
                vm.node, vm.migrate_after_start = vm.migrate_after_start, None
                vm.pid += 1
                vm.started_at = time.time()
            return _ok("")
        if verb == "set":
            if vm.lock and "--skiplock" not in words:
                return _ok("", 255, f"VM is locked ({vm.lock})\n")
            if vm.running:
                vm.pending["agent"] = "enabled=1"  # not hot-pluggable: applied at the next stop
            else:
                vm.agent_in_config = True
            return _ok(f"update VM {vm.vmid}: -agent enabled=1\n")
        skiplock = "--skiplock" in words
        if vm.hastate and vm.hastate != "ignored" and verb in {"shutdown", "stop", "start"}:
            return self.ha_request(vm, verb)
        if verb in {"shutdown", "stop"}:
            if vm.running and vm.lock and not skiplock:
                return _ok("", 255, f"VM is locked ({vm.lock})\n")
            if verb == "shutdown" and vm.running:
                # A clean shutdown takes time; meanwhile Proxmox still reports it running.
                time.sleep(min(vm.shutdown_seconds, 2.0))
                if vm.ignores_shutdown:
                    return _ok("", 255, "VM quit/powerdown failed - got timeout\n")
            vm.running = False
            self.apply_pending(vm)
            self.max_down = max(self.max_down, self.down_count())
            return _ok()
        if verb == "start":
            if vm.lock and not skiplock:
                return _ok("", 255, f"VM is locked ({vm.lock})\n")
            if vm.running:
                return _ok("", 255, f"VM {vm.vmid} already running\n")
            if vm.start_fails:
                return _ok("", 255, "start failed: QEMU exited with code 1\n")
            vm.boot()
            return _ok()
        if verb in {"snapshot", "listsnapshot", "rollback", "delsnapshot"}:
            return self._snapshots(vm, verb, words)
        return _ok("", 255, f"fake pve: unsupported qm {verb}")

    # --- HA: qm only queues; the CRM/LRM act later (reference §1.1, §1.4, §1.6) --------------
    def ha_request(self, vm: FakeVM, verb: str) -> tuple[int, str, str]:
        what = "start" if verb == "start" else "stop"
        if vm.hastate == "error":
            return _ok(
                f"Requesting HA {what} for VM {vm.vmid}\n",
                255,
                f"service 'vm:{vm.vmid}' in error state, must be disabled and fixed first\n",
            )
        due = time.monotonic() + vm.ha_delay
        if verb == "start":
            vm.ha_state_at_start.append((vm.hastate, vm.running))
            vm.ha_requested = "started"  # already the requested state while a stop is queued
            vm.ha_queue.append((due, "start"))
            return _ok(f"Requesting HA start for VM {vm.vmid}\n")
        vm.ha_queue.append((due, "stop"))
        return _ok(f"Requesting HA stop for VM {vm.vmid}\n")

    def ha_rounds(self) -> None:
        """The queued requests whose time has come, in order, each in PVE's steps (reference
        §1.4): the CRM takes a stop (`request_stop`, the requested state rewritten to stopped,
        so a start queued behind it is lost), the LRM stops the VM, and only a round later
        does the CRM report `stopped`; a start: the VM runs, then HA reports `started`."""
        now = time.monotonic()
        for vm in self.vms.values():
            while vm.ha_queue and vm.ha_queue[0][0] <= now:
                _, action = vm.ha_queue.pop(0)
                later = now + vm.ha_delay
                if action == "stop":
                    vm.ha_requested, vm.hastate = "stopped", "request_stop"
                    vm.ha_queue.insert(0, (later, "lrm stop"))
                elif action == "lrm stop":
                    if vm.ha_stop_fails:
                        vm.hastate = "error"
                        continue
                    vm.running = False  # qm status says stopped a round before HA does
                    self.apply_pending(vm)
                    self.max_down = max(self.max_down, self.down_count())
                    vm.ha_queue.insert(0, (later, "crm stopped"))
                elif action == "crm stopped":
                    vm.hastate = "stopped"
                elif action == "start" and vm.ha_requested == "started" and not vm.running:
                    vm.boot()
                    vm.ha_queue.insert(0, (later, "crm started"))
                elif action == "crm started":
                    vm.hastate = "started"

    def _snapshots(self, vm: FakeVM, verb: str, words: list[str]) -> tuple[int, str, str]:
        """PVE 8's snapshot commands: texts and exit codes of the reference, the guest's state
        (packages, agent) kept in the snapshot; a rollback hard-stops a running VM."""
        if verb == "listsnapshot":
            out, depth = "", 0
            for name, snap in sorted(self.snapshot_items(vm), key=lambda i: i[1]["snaptime"]):
                prefix = " " * depth + "`->"
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap["snaptime"]))  # type: ignore[arg-type]
                desc = str(snap["description"]).split("\n")[0] or "no-description"
                out += f"{prefix} {name:<{30 - len(prefix)}} {when:<23} {desc}\n"
                depth += 1
            prefix = " " * depth + "`->"
            out += f"{prefix} {'current':<{30 - len(prefix)}} {'':<23} You are here!\n"
            return _ok(out)
        name = words[3]
        if verb != "snapshot" and name not in vm.snapshots:
            return _ok("", 255, f"snapshot '{name}' does not exist\n")
        if vm.lock:
            return _ok("", 255, f"VM is locked ({vm.lock})\n")
        if verb == "snapshot":
            if name in vm.snapshots:
                return _ok("", 255, f"snapshot name '{name}' already used\n")
            if vm.snapshot_error:
                return _ok("", 255, f"{vm.snapshot_error}\n")
            desc = words[words.index("--description") + 1] if "--description" in words else ""
            state = (dict(vm.packages), dict(vm.updates), vm.agent_installed, vm.agent_broken)
            vm.snapshots[name] = {"description": desc, "snaptime": time.time(), "state": state}
            return _ok(f"snapshotting 'drive-virtio0' (local:vm-{vm.vmid}-disk-0)\n")
        if verb == "delsnapshot":
            del vm.snapshots[name]
            return _ok()
        if vm.rollback_error:
            return _ok("", 255, f"{vm.rollback_error}\n")
        if vm.running:  # __snapshot_rollback_vm_stop: a hard stop, then the VM stays stopped
            time.sleep(0.2)
            vm.running = False
            self.max_down = max(self.max_down, self.down_count())
        packages, updates, installed, broken = vm.snapshots[name]["state"]  # type: ignore[misc]
        vm.packages, vm.updates = dict(packages), dict(updates)
        vm.agent_installed, vm.agent_broken = installed, broken
        return _ok()

    @staticmethod
    def snapshot_items(vm: FakeVM) -> list[tuple[str, dict[str, object]]]:
        return list(vm.snapshots.items())


# One part of a batch script (pvepatch.transport.batch.script): the command and its end mark.
BATCH_PART = re.compile(
    r"\( (.*?)\n\); printf '\\n(@@pvepatch-end-[0-9a-f]+) %s\\n' \"\$\?\"; "
    r"printf '\\n\2\\n' >&2",
    re.S,
)


class FakeTransport:
    """A connection to a fake host: finished command lines in, canned answers out."""

    def __init__(self, fleet: FakeFleet, host: str):
        self.fleet = fleet
        self.host = host
        self.host_key = f"ssh-ed25519 SHA256:fake-{host}"  # as if verified against known_hosts

    def run(self, command: str, *, timeout: float, mutating: bool) -> CommandResult:
        parts = BATCH_PART.findall(command)
        if not parts:
            rc, out, err = self.fleet.run(self.host, command)
            return CommandResult(self.host, command, rc, out, err, 0.01, mutating)
        stdout = stderr = ""  # a batch (pvepatch.transport.batch): what `sh` would print for it
        for part, mark in parts:
            rc, out, err = self.fleet.run(self.host, part)
            stdout += f"{out}\n{mark} {rc}\n"
            stderr += f"{err}\n{mark}\n"
        return CommandResult(self.host, command, rc, stdout, stderr, 0.01, mutating)

    def hold(self, text: str) -> LocalHeld:
        """The fake Proxmox host holds its slot locks on this machine, in the fleet's dir."""
        if self.host in self.fleet.vms:
            raise TransportError(self.host, "fake guests hold nothing")
        self.fleet.commands.append((self.host, text))
        return LocalHeld(text.replace(HOST_SLOT_DIR, self.fleet.slot_dir))

    def close(self) -> None:
        pass


# The inventory of standard_fleet(): pve and three VMs (nothing ever connects to its addresses)
STANDARD_INVENTORY = """
all:
  children:
    proxmox:
      hosts:
        pve: {ansible_host: 127.0.0.1, ansible_port: 2200}
    ubuntu_vms:
      hosts:
        pbs: {ansible_host: 127.0.0.1, ansible_port: 2201, vmid: 101, proxmox_host: pve}
        pihole: {ansible_host: 127.0.0.1, ansible_port: 2202, vmid: 102, proxmox_host: pve}
        pihole-backup: {ansible_host: 127.0.0.1, ansible_port: 2203, vmid: 103, proxmox_host: pve}
"""


def standard_fleet() -> FakeFleet:
    names = ["pbs", "pihole", "pihole-backup"]
    return FakeFleet(
        [FakeVM(n, 101 + i, f"bc:24:11:00:00:{i + 1:02x}") for i, n in enumerate(names)]
    )


class FleetPlugin:
    """Hands the pvepatch plugin a fake fleet instead of SSH (pass in runpytest's plugins=)."""

    def __init__(self, fleet: FakeFleet):
        self.fleet = fleet

    @pytest.hookimpl(tryfirst=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> None:
        """Before any pytest_configure: the pvepatch plugin builds its connections there."""
        from pvepatch.plugin import FACTORY_KEY

        config.stash[FACTORY_KEY] = self.fleet.factory


STAGES = Path(__file__).resolve().parents[2] / "tests_patch"


def stage_suite(pytester: pytest.Pytester, inventory: str) -> pytest.Pytester:
    """A pytester directory holding the real stage files and `inventory` as inventory.yaml."""
    shutil.copytree(
        STAGES, pytester.path / "tests_patch", ignore=shutil.ignore_patterns("__pycache__")
    )
    (pytester.path / "inventory.yaml").write_text(inventory)
    pytester.makeini("[pytest]\ntestpaths = tests_patch\n")
    return pytester
