"""The stand-in `qm`: option parsing and output formats as units, then the CLI driving a real
qemu-system-x86_64 without a guest OS (like the LAB transcript of the reference)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest
from pvelab.paths import LabPaths
from pvelab.pve import vmstate
from pvelab.pve.qm import cli as qm
from pvelab.pve.qm import formats, guest
from pvelab.pve.qm.context import Context, node_name
from pvelab.pve.qm.options import Command, Option, UsageError, parse

NODE = node_name()
LIB = str(Path(__file__).resolve().parents[2] / "lib")

# --- option parsing (PVE's Getopt::Long + JSONSchema) ----------------------------------

STOP = qm.COMMANDS["stop"].spec
SHUTDOWN = qm.COMMANDS["shutdown"].spec


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["100"], {"vmid": 100}),
        (["100", "--skiplock"], {"vmid": 100, "skiplock": True}),
        (["100", "-skiplock", "0"], {"vmid": 100, "skiplock": False}),
        (["100", "--timeout=40"], {"vmid": 100, "timeout": 40}),
        (["-timeout", "40", "100"], {"vmid": 100, "timeout": 40}),
        (["100", "--overrule-shutdown", "true"], {"vmid": 100, "overrule-shutdown": True}),
    ],
)
def test_parse_stop_options(argv: list[str], expected: dict[str, object]) -> None:
    assert parse(STOP, argv) == expected


def test_parse_boolean_option_without_value_before_next_option() -> None:
    assert parse(SHUTDOWN, ["100", "--forceStop", "--timeout", "5"]) == {
        "vmid": 100, "forceStop": True, "timeout": 5,
    }  # fmt: skip


def test_parse_option_names_case_insensitive_and_abbreviated() -> None:
    assert parse(SHUTDOWN, ["100", "--forcestop", "1"])["forceStop"] is True
    assert parse(SHUTDOWN, ["100", "--force", "1"])["forceStop"] is True


def _usage_error(spec: Command, argv: list[str]) -> str:
    with pytest.raises(UsageError) as info:
        parse(spec, argv)
    return str(info.value)


def test_parse_skiplock_before_vmid_is_pve_gotcha() -> None:
    # pve-common JSONSchema.pm get_options: Getopt takes `100` as the boolean's value, then
    # the positional check (`not enough arguments`) runs before the boolean parse.
    assert _usage_error(STOP, ["--skiplock", "100"]) == (
        "400 not enough arguments\nqm stop <vmid> [OPTIONS]\n"
    )


def test_parse_bad_boolean_is_a_plain_400() -> None:
    # get_options: raise("unable to parse boolean option\n", code => HTTP_BAD_REQUEST)
    assert _usage_error(STOP, ["100", "--skiplock", "maybe"]) == (
        "400 unable to parse boolean option\nqm stop <vmid> [OPTIONS]\n"
    )


def test_parse_missing_vmid() -> None:
    assert _usage_error(STOP, []) == "400 not enough arguments\nqm stop <vmid> [OPTIONS]\n"


def test_parse_extra_argument() -> None:
    assert _usage_error(STOP, ["100", "101"]).startswith("400 too many arguments\n")


def test_parse_vmid_type_check() -> None:
    assert "vmid: type check ('integer') failed - got 'abc'" in _usage_error(STOP, ["abc"])


def test_parse_unknown_option() -> None:
    assert _usage_error(STOP, ["100", "--bogus"]).startswith(
        "Unknown option: bogus\n400 unable to parse option\n"
    )


def test_parse_timeout_minimum() -> None:
    assert "timeout: value must have a minimum value of 0" in _usage_error(
        STOP, ["100", "--timeout", "-1"]
    )


def test_parse_guest_exec_extra_args_after_double_dash() -> None:
    spec = qm.COMMANDS["guest exec"].spec
    assert parse(spec, ["100", "--", "ls", "-la"])["extra-args"] == ["ls", "-la"]
    assert "Unknown option: la" in _usage_error(spec, ["100", "ls", "-la"])


def test_parse_enum_positional() -> None:
    spec = qm.COMMANDS["guest cmd"].spec
    assert "command: value 'pong' does not have a value in the enumeration" in _usage_error(
        spec, ["100", "pong"]
    )


def test_option_without_value_is_unparsable() -> None:
    spec = Command("x", ("vmid",), (Option("timeout", "integer"),))
    assert _usage_error(spec, ["100", "--timeout"]).startswith(
        "Option timeout requires an argument\n400 unable to parse option\n"
    )


# --- output formats ---------------------------------------------------------------------

OSINFO = {
    "version-id": "12", "name": "Debian GNU/Linux", "id": "debian", "machine": "x86_64",
    "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version": "12 (bookworm)",
    "kernel-release": "6.1.0-26-amd64",
    "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.112-1 (2024-09-30)",
}  # fmt: skip


def test_perl_json_matches_reference_osinfo() -> None:
    assert formats.agent_result(OSINFO) == (
        "{\n"
        '   "id" : "debian",\n'
        '   "kernel-release" : "6.1.0-26-amd64",\n'
        '   "kernel-version" : "#1 SMP PREEMPT_DYNAMIC Debian 6.1.112-1 (2024-09-30)",\n'
        '   "machine" : "x86_64",\n'
        '   "name" : "Debian GNU/Linux",\n'
        '   "pretty-name" : "Debian GNU/Linux 12 (bookworm)",\n'
        '   "version" : "12 (bookworm)",\n'
        '   "version-id" : "12"\n'
        "}\n"
    )


def test_perl_json_nested_arrays_and_empties() -> None:
    value = {"b": [1, {"x": True}], "a": [], "c": {}}
    assert formats.perl_json(value) == (
        '{\n   "a" : [],\n   "b" : [\n      1,\n      {\n         "x" : true\n      }\n'
        '   ],\n   "c" : {}\n}'
    )


@pytest.mark.parametrize(
    ("result", "text"),
    [({}, ""), (None, ""), ("thawed", "thawed\n"), (1732400000000000000, "1732400000000000000\n")],
)
def test_agent_result_scalars_and_empty(result: object, text: str) -> None:
    assert formats.agent_result(result) == text


def test_exec_status_booleans_become_numbers() -> None:
    res = formats.booleans_to_ints({"exited": True, "exitcode": 0, "out-data": "hello\n"})
    assert formats.perl_json(res) == (
        '{\n   "exitcode" : 0,\n   "exited" : 1,\n   "out-data" : "hello\\n"\n}'
    )


def test_qm_list_printf_format() -> None:
    rows = [
        formats.ListRow(101, "VM 101", "stopped", 512 << 20, 0, 0),
        formats.ListRow(100, "ubuntu-2204", "running", 2048 << 20, 32 << 30, 12345),
    ]
    assert formats.qm_list(rows) == (
        "      VMID NAME                 STATUS     MEM(MB)    BOOTDISK(GB) PID       \n"
        "       100 ubuntu-2204          running    2048              32.00 12345     \n"
        "       101 VM 101               stopped    512                0.00 0         \n"
    )


def test_qm_list_empty_prints_nothing() -> None:
    assert formats.qm_list([]) == ""


def test_status_verbose_sorted_without_cpu() -> None:
    stat = {"vmid": 100, "status": "running", "cpu": 0, "name": "a", "nics": {"tap0": {"netin": 1}}}
    assert formats.status_verbose(stat) == (
        "name: a\nnics:\n\ttap0:\n\t\tnetin: 1\nstatus: running\nvmid: 100\n"
    )


# --- the CLI on a real QEMU -------------------------------------------------------------


@dataclass(frozen=True)
class Qm:
    """Runs `python -m pvelab.pve.qm --lab <lab>` like the PVE host's `qm` wrapper does."""

    paths: LabPaths

    def __call__(self, *args: str | int, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": LIB, "PVELAB_ACCEL": "tcg"}
        cmd = [
            sys.executable,
            "-m",
            "pvelab.pve.qm",
            "--lab",
            str(self.paths.root),
            *map(str, args),
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)

    def write_conf(self, vmid: int, text: str) -> None:
        self.paths.pve_conf_dir.mkdir(parents=True, exist_ok=True)
        self.paths.conf(vmid).write_text(text)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Qm]:
    """An empty lab dir; every QEMU started in it is killed afterwards."""
    paths = LabPaths(tmp_path / "lab")
    yield Qm(paths)
    for conf in paths.pve_conf_dir.glob("*.conf"):
        pid = vmstate.running_pid(paths, int(conf.stem))
        if pid:
            os.kill(pid, signal.SIGKILL)


NO_AGENT = "name: t900\nmemory: 64\ncores: 1\n"
WITH_AGENT = NO_AGENT + "agent: 1\n"


@pytest.fixture
def running(lab: Qm) -> Qm:
    """VM 900 (no agent key) started with `qm start`."""
    lab.write_conf(900, NO_AGENT)
    result = lab("start", 900)
    assert result.returncode == 0, result.stderr
    return lab


def test_list_without_vms_prints_nothing(lab: Qm) -> None:
    result = lab("list")
    assert (result.returncode, result.stdout) == (0, "")


def test_start_returns_once_daemonized_and_status_running(running: Qm) -> None:
    result = running("status", 900)
    assert (result.returncode, result.stdout) == (0, "status: running\n")


def test_status_verbose_has_pid_and_qmpstatus(running: Qm) -> None:
    lines = running("status", 900, "--verbose").stdout.splitlines()
    keys = [line.split(":")[0] for line in lines]
    assert keys == sorted(keys)
    assert {"name: t900", "qmpstatus: running", "status: running", "vmid: 900"} <= set(lines)
    assert f"pid: {vmstate.running_pid(running.paths, 900)}" in lines


def test_list_shows_running_vm_with_pid(running: Qm) -> None:
    row = running("list").stdout.splitlines()[1].split()
    assert row == [
        "900",
        "t900",
        "running",
        "64",
        "0.00",
        str(vmstate.running_pid(running.paths, 900)),
    ]


def test_start_twice_is_already_running(running: Qm) -> None:
    result = running("start", 900)
    assert (result.returncode, result.stderr) == (255, "VM 900 already running\n")


def test_qemu_runs_with_pidfile_and_without_agent_port(running: Qm) -> None:
    pid = vmstate.running_pid(running.paths, 900)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert str(running.paths.pidfile(900)).encode() in argv
    assert b"virtserialport,chardev=qga0,name=org.qemu.guest_agent.0" not in argv


def test_stop_ends_qemu_and_removes_runtime_files(running: Qm) -> None:
    result = running("stop", 900)
    assert (result.returncode, result.stderr) == (0, "")
    assert running("status", 900).stdout == "status: stopped\n"
    assert not running.paths.qmp_socket(900).exists()


def test_stop_of_stopped_vm_is_silent_success(lab: Qm) -> None:
    lab.write_conf(900, NO_AGENT)
    result = lab("stop", 900)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_shutdown_of_stopped_vm_warns_and_succeeds(lab: Qm) -> None:
    lab.write_conf(900, NO_AGENT)
    result = lab("shutdown", 900)
    assert (result.returncode, result.stderr) == (0, "VM 900 not running\n\n")


def test_locked_vm_refuses_start(lab: Qm) -> None:
    lab.write_conf(900, NO_AGENT + "lock: backup\n")
    result = lab("start", 900)
    assert (result.returncode, result.stderr) == (255, "VM is locked (backup)\n")


def test_locked_running_vm_refuses_stop_without_skiplock(running: Qm) -> None:
    running.write_conf(900, NO_AGENT + "lock: backup\n")
    result = running("stop", 900)
    assert (result.returncode, result.stderr) == (255, "VM is locked (backup)\n")
    assert running("status", 900).stdout == "status: running\n"


def test_skiplock_stops_locked_vm(running: Qm) -> None:
    running.write_conf(900, NO_AGENT + "lock: backup\n")
    assert running("stop", 900, "--skiplock", 1).returncode == 0
    assert running("status", 900).stdout == "status: stopped\n"


def test_unlock_removes_lock(lab: Qm) -> None:
    lab.write_conf(900, NO_AGENT + "lock: backup\n")
    assert lab("unlock", 900).returncode == 0
    assert "lock:" not in lab("config", 900).stdout


def test_guest_ping_without_agent_inside_fails_after_3s(lab: Qm) -> None:
    lab.write_conf(900, WITH_AGENT)
    assert lab("start", 900).returncode == 0
    started = time.monotonic()
    result = lab("guest", "cmd", 900, "ping")
    assert (result.returncode, result.stderr) == (255, "QEMU guest agent is not running\n")
    assert 2.9 < time.monotonic() - started < 6


def test_agent_alias_behaves_like_guest_cmd(lab: Qm) -> None:
    lab.write_conf(900, NO_AGENT)
    result = lab("agent", 900, "ping")
    assert (result.returncode, result.stderr) == (255, "No QEMU guest agent configured\n")


def test_guest_cmd_without_agent_key(running: Qm) -> None:
    result = running("guest", "cmd", 900, "ping")
    assert result.stderr == "No QEMU guest agent configured\n"


def test_guest_cmd_on_stopped_vm(lab: Qm) -> None:
    lab.write_conf(900, WITH_AGENT)
    result = lab("guest", "cmd", 900, "ping")
    assert (result.returncode, result.stderr) == (255, "VM 900 is not running\n")


def test_shutdown_acpi_without_os_times_out_and_vm_keeps_running(running: Qm) -> None:
    result = running("shutdown", 900, "--timeout", 2)
    assert (result.returncode, result.stderr) == (255, "VM quit/powerdown failed - got timeout\n")
    assert running("status", 900).stdout == "status: running\n"


def test_shutdown_during_a_shutdown_fails_on_the_config_lock(running: Qm) -> None:
    """PVE: a running `qm shutdown` holds the config flock for its whole wait, so a second one
    waits 10 s for it and fails (the first goes on)."""
    env = {**os.environ, "PYTHONPATH": LIB, "PVELAB_ACCEL": "tcg"}
    first = subprocess.Popen(
        [sys.executable, "-m", "pvelab.pve.qm", "--lab", str(running.paths.root),
         "shutdown", "900", "--timeout", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        marker = running.paths.lock_dir / "qmshutdown-900.task"
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        began = time.monotonic()
        second = running("shutdown", 900, "--timeout", 5)
        waited = time.monotonic() - began
        assert first.poll() is None  # the first shutdown still waits for the guest
    finally:
        first.terminate()
        first.communicate(timeout=10)
    assert 10 <= waited < 15
    assert (second.returncode, second.stderr) == (
        255, f"can't lock file '{running.paths.lockfile(900)}' - got timeout\n",
    )  # fmt: skip
    # the task log (stdout) has the notice; PVE's line end after it is not pinned down
    assert second.stdout.rstrip("\n") == "trying to acquire lock..."
    assert running("status", 900).stdout == "status: running\n"


def test_shutdown_force_stop_terminates(running: Qm) -> None:
    result = running("shutdown", 900, "--timeout", 1, "--forceStop", 1)
    assert result.returncode == 0
    assert result.stdout == "VM still running - terminating now with SIGTERM\n"
    assert running("status", 900).stdout == "status: stopped\n"


def test_shutdown_with_dead_agent_falls_back_to_acpi(lab: Qm) -> None:
    lab.write_conf(900, WITH_AGENT)
    assert lab("start", 900).returncode == 0
    result = lab("shutdown", 900, "--timeout", 1)
    assert result.stdout == (  # QS8 QMPClient.pm names every peer "qmp"
        "QEMU Guest Agent is not running - VM 900 qmp command 'guest-ping' failed - got timeout\n"
    )
    assert result.stderr == "VM quit/powerdown failed - got timeout\n"


def test_wait_times_out_on_running_vm(running: Qm) -> None:
    result = running("wait", 900, "--timeout", 1)
    pid = vmstate.running_pid(running.paths, 900)
    assert result.stdout == f"waiting until VM 900 stops (PID {pid})\n"
    assert result.stderr == "wait failed - got timeout\n"


def test_reboot_of_stopped_vm(lab: Qm) -> None:
    lab.write_conf(900, NO_AGENT)
    result = lab("reboot", 900)
    # QS8 API2/Qemu.pm vm_reboot: vm_is_paused warns mon_cmd's die ("$@\n"), then
    # check_running's die; exit 2 = ENOENT of the pidfile's open left in $!
    assert (result.returncode, result.stderr) == (2, "VM 900 not running\n\nVM 900 not running\n")


def test_set_agent_on_running_vm_is_pending_until_stop(running: Qm) -> None:
    assert running("set", 900, "--agent", "1,freeze-fs-on-backup=1").returncode == 0
    assert "agent: 1,freeze-fs-on-backup=1\n" in running("config", 900).stdout
    assert "agent:" not in running("config", 900, "--current").stdout
    running("stop", 900)
    # QS8 _do_vm_stop -> vm_stop_cleanup(..., $apply_pending_changes = 1): applied at the stop
    assert "[PENDING]" not in running.paths.conf(900).read_text()
    running("start", 900)
    pid = vmstate.running_pid(running.paths, 900)
    assert b"qga0" in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_set_delete_agent_on_stopped_vm(lab: Qm) -> None:
    lab.write_conf(900, WITH_AGENT)
    assert lab("set", 900, "--delete", "agent").returncode == 0
    assert "agent" not in lab("config", 900).stdout


def test_set_rejects_bad_agent_string(lab: Qm) -> None:
    lab.write_conf(900, NO_AGENT)
    result = lab("set", 900, "--agent", "maybe")
    assert result.returncode != 0 and "agent:" in result.stderr


def test_config_prints_sorted_keys(lab: Qm) -> None:
    lab.write_conf(900, "name: t\nagent: 1\nmemory: 64\ndigest: abc\n")
    assert lab("config", 900).stdout == "agent: 1\nmemory: 64\nname: t\n"


@pytest.mark.parametrize("cmd", [["status"], ["config"], ["guest", "cmd"]])
def test_unknown_vmid_configuration_file_missing(lab: Qm, cmd: list[str]) -> None:
    args = [*cmd, 999, "ping"] if cmd[0] == "guest" else [*cmd, 999]
    result = lab(*args)
    assert (result.returncode, result.stderr) == (
        2, f"Configuration file 'nodes/{NODE}/qemu-server/999.conf' does not exist\n",
    )  # fmt: skip


@pytest.mark.parametrize(("cmd", "times"), [("stop", 1), ("shutdown", 2)])
def test_unknown_vmid_stop_shutdown(lab: Qm, cmd: str, times: int) -> None:
    # shutdown: QS8 vm_is_paused warns "$@\n" of its assert_config_exists_on_node first
    result = lab(cmd, 999)
    line = f"unable to find configuration file for VM 999 on node '{NODE}'\n"
    assert (result.returncode, result.stderr) == (255, "\n".join([line] * times))


def test_unknown_vmid_start(lab: Qm) -> None:
    result = lab("start", 999)
    assert result.returncode == 255
    assert (
        result.stderr == f"Configuration file 'nodes/{NODE}/qemu-server/999.conf' does not exist\n"
    )


def test_usage_error_exit_255(lab: Qm) -> None:
    result = lab("frobnicate")
    assert result.returncode == 255
    assert result.stderr.startswith("ERROR: unknown command 'qm frobnicate'\nUSAGE: qm <COMMAND>")


def test_config_flock_contention_is_waited_for(running: Qm) -> None:
    lockfile = running.paths.lockfile(900)
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(1.0, os.close, (fd,)).start()
    result = running("stop", 900)
    assert result.returncode == 0
    assert result.stdout == "trying to acquire lock... OK\n"


def test_every_call_is_logged_with_rc(lab: Qm) -> None:
    lab.write_conf(900, NO_AGENT)
    lab("status", 900)
    lab("stop", "--skiplock", 900)
    lab("bogus")
    records = [json.loads(line) for line in lab.paths.qm_log.read_text().splitlines()]
    assert [(r["argv"], r["rc"]) for r in records] == [
        (["status", "900"], 0), (["stop", "--skiplock", "900"], 255), (["bogus"], 255),
    ]  # fmt: skip
    assert all(r["start"] <= r["end"] and "T" in r["start"] for r in records)


def test_log_lines_stay_whole_under_concurrent_calls(lab: Qm) -> None:
    procs = [threading.Thread(target=lab, args=("list",)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = lab.paths.qm_log.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["rc"] == 0 for line in lines)


# --- guest commands against a scripted agent (no guest OS can answer a real one) ---------


@pytest.fixture
def agent_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Context]]:
    """A Context whose VM 900 'runs' and whose .qga socket is a scripted qemu-ga."""
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(900).write_text(WITH_AGENT)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(vmstate, "running_pid", lambda _paths, _vmid: 4242)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(paths.qga_socket(900)))
    srv.listen(4)
    replies: dict[str, object] = {}

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as reader:
                for raw in reader:
                    req = json.loads(raw.lstrip(b"\xff"))
                    if req["execute"] == "guest-sync-delimited":
                        conn.sendall(
                            b"\xff"
                            + json.dumps({"return": req["arguments"]["id"]}).encode()
                            + b"\n"
                        )
                    else:
                        conn.sendall(json.dumps(replies[req["execute"]]).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()

    def make(**answers: object) -> Context:
        replies.update({"guest-ping": {"return": {}}}, **answers)
        return Context(paths, "pve", stdout=StringIO(), stderr=StringIO())

    yield make
    srv.close()


def test_guest_cmd_ping_prints_nothing(agent_peer: Callable[..., Context]) -> None:
    ctx = agent_peer()
    assert qm.run(ctx, ["guest", "cmd", "900", "ping"]) == 0
    assert ctx.stdout.getvalue() == ""  # type: ignore[attr-defined]


def test_guest_cmd_osinfo_pretty_json(agent_peer: Callable[..., Context]) -> None:
    ctx = agent_peer(**{"guest-get-osinfo": {"return": OSINFO}})
    assert qm.run(ctx, ["agent", "900", "get-osinfo"]) == 0
    assert ctx.stdout.getvalue() == formats.agent_result(OSINFO)  # type: ignore[attr-defined]


def test_guest_cmd_agent_error_printed_exit_0(agent_peer: Callable[..., Context]) -> None:
    ctx = agent_peer(**{"guest-fsfreeze-status": {"error": {"class": "GenericError", "desc": "x"}}})
    assert qm.run(ctx, ["guest", "cmd", "900", "fsfreeze-status"]) == 0
    assert '"desc" : "x"' in ctx.stdout.getvalue()  # type: ignore[attr-defined]


def test_guest_exec_synchronous_output(agent_peer: Callable[..., Context]) -> None:
    status = {"exited": True, "exitcode": 3, "out-data": base64.b64encode(b"out\n").decode()}
    ctx = agent_peer(**{"guest-exec": {"return": {"pid": 77}},
                        "guest-exec-status": {"return": status}})  # fmt: skip
    assert qm.run(ctx, ["guest", "exec", "900", "--", "sh", "-c", "exit 3"]) == 0
    assert ctx.stdout.getvalue() == (  # type: ignore[attr-defined]
        '{\n   "exitcode" : 3,\n   "exited" : 1,\n   "out-data" : "out\\n"\n}\n'
    )


def test_guest_exec_agent_error(agent_peer: Callable[..., Context]) -> None:
    err = {"error": {"class": "GenericError", "desc": "Guest agent command failed"}}
    ctx = agent_peer(**{"guest-exec": err})
    assert qm.run(ctx, ["guest", "exec", "900", "--", "/nonexistent"]) == 255
    assert ctx.stderr.getvalue() == "Agent error: Guest agent command failed\n"  # type: ignore[attr-defined]


def test_guest_exec_async_returns_pid(agent_peer: Callable[..., Context]) -> None:
    ctx = agent_peer(**{"guest-exec": {"return": {"pid": 77}}})
    assert qm.run(ctx, ["guest", "exec", "900", "--synchronous", "0", "--", "true"]) == 0
    assert ctx.stdout.getvalue() == '{\n   "pid" : 77\n}\n'  # type: ignore[attr-defined]


def test_guest_commands_enum_is_pves() -> None:
    assert len(guest.GUEST_COMMANDS) == 20 and "network-get-interfaces" in guest.GUEST_COMMANDS
