"""qm command building and parsing, against the real output strings of the Proxmox reference."""

from __future__ import annotations

import pytest
from proofs import running_proof, stopped_proof
from pvepatch.errors import QmError
from pvepatch.proxmox.parse import (
    RunStatus,
    agent_enabled,
    net_macs,
    parse_agent_option,
    parse_agent_output,
    parse_key_values,
    parse_qm_status,
)
from pvepatch.proxmox.qm import Qm
from pvepatch.transport.command import CommandResult

# From ../shared/reference/proxmox-qm.md (sections 1.7, 1.9, 1.10, 1.12).
OSINFO = """{
   "id" : "debian",
   "kernel-release" : "6.1.0-26-amd64",
   "machine" : "x86_64",
   "pretty-name" : "Debian GNU/Linux 12 (bookworm)",
   "version-id" : "12"
}
"""
VERBOSE = "balloon: 402653184\nblockstat:\n\tvirtio0:\n\t\trd_bytes: 1\nlock: backup\nname: pbs\npid: 12345\nqmpstatus: running\nstatus: running\nuptime: 77\nvmid: 101\n"


def test_status_line():
    assert parse_qm_status("status: running\n") == "running"
    assert parse_qm_status("status: stopped\n") == "stopped"
    with pytest.raises(ValueError, match="unexpected 'qm status' output"):
        parse_qm_status("Configuration file 'nodes/pve/qemu-server/999.conf' does not exist\n")


def test_status_verbose():
    status = RunStatus.parse(VERBOSE)
    assert status == RunStatus("running", 12345, 77, "backup")
    assert RunStatus.parse("name: pbs\nstatus: stopped\nvmid: 101\n") == RunStatus(
        "stopped", None, None, None
    )


def test_config_agent_lock_and_macs():
    config = parse_key_values(
        "agent: enabled=1,fstrim_cloned_disks=1,type=virtio\nlock: backup\nmemory: 384\n"
        "net0: virtio=BC:24:11:00:01:01,bridge=vmbr0\nnet1: e1000=BC:24:11:00:01:02,bridge=vmbr1\n"
    )
    assert config["lock"] == "backup"
    assert agent_enabled(config)
    assert net_macs(config) == {"bc:24:11:00:01:01", "bc:24:11:00:01:02"}


@pytest.mark.parametrize(
    "value, enabled",
    [
        ("1", True),
        ("0", False),
        ("1,freeze-fs=1", True),
        ("enabled=1,freeze-fs-on-backup=0", True),
        ("enabled=0", False),
        (None, False),
    ],
)
def test_agent_property_string(value, enabled):
    assert agent_enabled({"agent": value} if value else {}) is enabled
    assert parse_agent_option(value)["enabled"] in {"0", "1"}


def test_agent_output():
    assert parse_agent_output("") == {}  # `qm guest cmd <vmid> ping` prints nothing on success
    assert parse_agent_output(OSINFO)["pretty-name"] == "Debian GNU/Linux 12 (bookworm)"
    assert parse_agent_output("thawed\n") == "thawed"
    with pytest.raises(ValueError, match="guest agent error"):
        parse_agent_output(
            '{\n   "error" : {\n      "class" : "GenericError",\n      "desc" : "x"\n   }\n}\n'
        )


class Recorder:
    host = "pve"

    def __init__(self, *replies: tuple[int, str, str]):
        self.replies = list(replies)
        self.calls: list[tuple[str, bool, float]] = []

    def run(self, command, *args, timeout=60.0, mutating=False):
        from pvepatch.transport.command import quote

        text = quote(command, *args)
        self.calls.append((text, mutating, timeout))
        rc, out, err = self.replies.pop(0) if self.replies else (0, "", "")
        return CommandResult("pve", text, rc, out, err, 0.1, mutating)

    def close(self):
        pass


def test_commands_built_from_validated_values():
    t = Recorder()
    qm = Qm(t, 101)
    running, stopped = running_proof(101), stopped_proof(101)
    qm.shutdown(running, 180)
    qm.shutdown(running, 60, skiplock=True)
    qm.stop(running, 30, skiplock=True)
    qm.start(stopped)
    qm.set_agent(running, True)
    assert [c for c, _, _ in t.calls] == [
        "qm shutdown 101 --timeout 180",
        "qm shutdown 101 --timeout 60 --skiplock 1",
        "qm stop 101 --timeout 30 --skiplock 1",  # vmid first: PVE's Getopt would eat it otherwise
        "qm start 101",
        "qm set 101 --agent enabled=1",
    ]
    assert all(mutating for _, mutating, _ in t.calls)
    assert t.calls[0][2] > 180  # the SSH timeout outlasts qm's own


def test_vmid_must_be_int():
    with pytest.raises(TypeError):
        Qm(Recorder(), "101; reboot")  # type: ignore[arg-type]


def test_missing_vm_error_names_the_qm_text():
    t = Recorder((2, "", "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist\n"))
    with pytest.raises(QmError) as excinfo:
        Qm(t, 999).status()
    assert "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist" in str(
        excinfo.value
    )
    assert excinfo.value.vmid == 999 and excinfo.value.result.rc == 2


def test_nonsense_output_is_an_error():
    with pytest.raises(QmError, match="cannot understand qm output"):
        Qm(Recorder((0, "Welcome to bash\n", "")), 101).status()


def test_read_only_agent_commands_only():
    with pytest.raises(ValueError):
        Qm(Recorder(), 101).agent("shutdown")
