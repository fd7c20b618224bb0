"""The HA stand-in's files and texts: resources.cfg, manager_status, `ha-manager status|config`,
the CLI's checks and errors (HA8 4.0.7), and qm's HA branch (QS8 API2/Qemu.pm)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from pvelab.paths import LabPaths
from pvelab.pve import cluster
from pvelab.pve.ha import cli, config, status
from pvelab.pve.ha.config import hastate
from pvelab.pve.qm import cli as qm
from pvelab.pve.qm.context import Context


@pytest.fixture
def paths(tmp_path: Path) -> LabPaths:
    """A lab dir with VMs 101 and 102 configured on node pve (no QEMU runs)."""
    lab = LabPaths(tmp_path / "lab")
    lab.pve_conf_dir.mkdir(parents=True)
    for vmid in (101, 102):
        lab.conf(vmid).write_text(f"name: t{vmid}\nmemory: 64\n")
    return lab


def ha(paths: LabPaths, *argv: str) -> tuple[int, str, str]:
    """`ha-manager <argv>`: exit code, stdout, stderr."""
    out, err = StringIO(), StringIO()
    rc = cli.run(paths, list(argv), cli.Io(out, err))
    return rc, out.getvalue(), err.getvalue()


def qm_call(paths: LabPaths, *argv: str | int) -> tuple[int, str, str]:
    """`qm <argv>` on node pve: exit code, stdout, stderr."""
    out, err = StringIO(), StringIO()
    rc = qm.run(Context(paths, "pve", out, err), [str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def ms_with(paths: LabPaths, sid: str, **sd: Any) -> None:
    """A manager_status as the CRM writes it, with one service."""
    config.write_manager_status(paths, {
        "master_node": "pve", "node_status": {"pve": "online"}, "timestamp": int(time.time()),
        "service_status": {sid: {"node": "pve", "uid": "x", **sd}},
    })  # fmt: skip


# --- resources.cfg (PC SectionConfig.pm) ------------------------------------------------


def test_resources_cfg_round_trip_writes_comment_first_then_sorted_with_tabs() -> None:
    text = "vm: 501\n    state started\n    max_relocate 2\n    comment web\n"
    res = config.parse_resources(text)
    assert res.ids == {
        "vm:501": {"type": "vm", "state": "started", "max_relocate": "2", "comment": "web"}
    }
    assert config.format_resources(res) == (
        "vm: 501\n\tcomment web\n\tmax_relocate 2\n\tstate started\n\n"
    )


def test_resources_cfg_keeps_file_order_of_sections() -> None:
    res = config.parse_resources("vm: 200\n\nvm: 101\n\tstate stopped\n")
    assert res.order == ["vm:200", "vm:101"]
    assert config.format_resources(res) == "vm: 200\n\nvm: 101\n\tstate stopped\n\n"


def test_resources_cfg_bad_vmid_section_is_skipped_with_pves_warning() -> None:
    warnings: list[str] = []
    res = config.parse_resources("vm: 1x\n\tstate started\n\nvm: 101\n", warnings.append)
    assert list(res.ids) == ["vm:101"]
    assert warnings == [
        "file /etc/pve/ha/resources.cfg line 1 (skip section 'vm:1x'): invalid VMID"
    ]


def test_digest_is_sha1_of_the_raw_file() -> None:
    digest = hashlib.sha1(b"vm: 101\n").hexdigest()
    assert config.parse_resources("vm: 101\n").digest == digest
    assert config.parse_resources("vm: 101\n\n").digest != digest


# --- verbose state (HA8 Tools.pm get_verbose_service_state) -----------------------------


@pytest.mark.parametrize(
    ("ss", "sc", "expected"),
    [
        (None, None, "deleting"),
        (None, {"state": "ignored", "node": "pve"}, "ignored"),
        (None, {"state": "started"}, "not found"),
        (None, {"state": "started", "node": "pve"}, "queued"),
        ({"state": "stopped"}, {"state": "started", "node": "pve"}, "starting"),
        ({"state": "stopped"}, {"state": "disabled", "node": "pve"}, "disabled"),
        ({"state": "stopped"}, {"state": "stopped", "node": "pve"}, "stopped"),
        ({"state": "started", "running": 1}, {"state": "started", "node": "pve"}, "started"),
        ({"state": "started"}, {"state": "started", "node": "pve"}, "starting"),
        ({"state": "started", "running": 1}, {"state": "stopped", "node": "pve"}, "stopping"),
        ({"state": "request_stop"}, {"state": "stopped", "node": "pve"}, "request_stop"),
        ({"state": "error"}, {"state": "disabled", "node": "pve"}, "clearing error flag"),
        ({"state": "error"}, {"state": "started", "node": "pve"}, "error"),
    ],
)
def test_verbose_service_state(ss: dict | None, sc: dict | None, expected: str) -> None:
    assert status.verbose_service_state(ss, sc) == expected


# --- ha-manager status / config ---------------------------------------------------------


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_perl_localtime_matches_the_reference_example(utc: None) -> None:
    assert status.perl_localtime(1479899243) == "Wed Nov 23 11:07:23 2016"
    assert status.perl_localtime(1478171243) == "Thu Nov  3 11:07:23 2016"  # space-padded day


def test_status_of_an_empty_cluster_is_quorum_only(paths: LabPaths) -> None:
    assert ha(paths, "status") == (0, "quorum OK\n", "")


def test_status_before_the_crm_saw_the_resource_is_queued(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    assert ha(paths, "status") == (0, "quorum OK\nservice vm:101 (pve, queued)\n", "")


def test_status_lines_pve8_format(paths: LabPaths, utc: None) -> None:
    now = 1479899243
    config.write_manager_status(paths, {
        "master_node": "pve", "timestamp": now - 3,
        "node_status": {"pve": "online", "pve2": "online"},
        "service_status": {"vm:101": {"node": "pve", "state": "started", "running": 1, "uid": "u"},
                           "vm:102": {"node": "pve", "state": "request_stop", "uid": "v"}},
    })  # fmt: skip
    config.write_lrm_status(paths, "pve", {"state": "active", "mode": "active", "timestamp": now})
    config.write_lrm_status(paths, "pve2", {"state": "wait_for_agent_lock", "timestamp": now - 40})
    config.write_resources(paths, config.parse_resources("vm: 101\n\nvm: 102\n\tstate stopped\n"))
    entries = status.status_entries(paths, ctime=now)
    assert status.status_text(entries) == (
        "quorum OK\n"
        "master pve (active, Wed Nov 23 11:07:20 2016)\n"
        "lrm pve (active, Wed Nov 23 11:07:23 2016)\n"
        "lrm pve2 (old timestamp - dead?, Wed Nov 23 11:06:43 2016)\n"
        "service vm:101 (pve, started)\n"
        "service vm:102 (pve, request_stop)\n"
    )


def test_status_idle_lrm_and_unreadable_lrm(paths: LabPaths) -> None:
    now = int(time.time())
    config.write_manager_status(
        paths,
        {
            "master_node": "pve",
            "timestamp": now,
            "node_status": {"pve": "online", "pve2": "online"},
        },
    )
    config.write_lrm_status(paths, "pve", {"state": "wait_for_agent_lock", "timestamp": now})
    warnings: list[str] = []
    lines = status.status_text(status.status_entries(paths, now, warnings.append)).splitlines()
    assert lines[2] == f"lrm pve (idle, {status.perl_localtime(now)})"
    assert lines[3] == "lrm pve2 (unable to read lrm status)"
    assert warnings == ["unable to read file '/etc/pve/nodes/pve2/lrm_status'"]


def test_status_master_idle_when_old_and_no_services(paths: LabPaths) -> None:
    now = int(time.time())
    config.write_manager_status(paths, {"master_node": "pve", "timestamp": now - 100})
    line = ha(paths, "status")[1].splitlines()[1]
    assert line == f"master pve (idle, {status.perl_localtime(now - 100)})"


def test_status_without_quorum(paths: LabPaths) -> None:
    cluster.set_quorum(paths, False)
    assert ha(paths, "status")[1] == "quorum No quorum on node 'pve'!\n"


def test_status_verbose_appends_full_cluster_state_as_perl_pretty_json(paths: LabPaths) -> None:
    rc, out, _ = ha(paths, "status", "--verbose")
    assert rc == 0
    assert out == (
        "quorum OK\nfull cluster state:\n"
        '{\n   "manager_status" : {},\n   "quorum" : {\n      "node" : "pve",\n'
        '      "quorate" : 1\n   }\n}\n'
    )


def test_config_prints_sid_then_tab_indented_sorted_keys(paths: LabPaths) -> None:
    ha(paths, "add", "vm:102", "--state", "stopped", "--max_restart", "2")
    ha(paths, "add", "101", "--comment", "web vm")
    assert ha(paths, "config") == (
        0,
        "vm:101\n\tcomment web vm\n\nvm:102\n\tmax_restart 2\n\tstate stopped\n\n",
        "",
    )
    assert config.resources_path(paths).read_text() == (
        "vm: 102\n\tmax_restart 2\n\tstate stopped\n\nvm: 101\n\tcomment web vm\n\n"
    )


# --- ha-manager add / set / remove / crm-command: checks and errors ---------------------


@pytest.mark.parametrize(
    ("argv", "err"),
    [
        (["add", "vm:101"], "create resource failed: resource ID 'vm:101' already defined\n"),
        (["add", "vm:999"], "resource 'vm:999' does not exist in cluster\n"),
        (["add", "999"], "unable do detect SID from VMID - VM/CT 999 does not exist\n"),
        (["add", "vm:1x"], "invalid VMID\n"),
        (["add", "xy:101"], "unknown section type 'xy'\n"),
        (["add", "ct:101", "--type", "vm"], "types does not match\n"),
        (["set", "vm:102", "--state", "stopped"],
         "update resources config failed: no such resource 'vm:102'\n"),
        (["set", "vm:101", "--group", "g1"], "HA group 'g1' does not exist\n"),
        (["remove", "vm:102"], "cannot delete service 'vm:102', not HA managed!\n"),
        (["crm-command", "stop", "vm:102", "0"], "resource 'vm:102' is not HA managed\n"),
    ],
)  # fmt: skip
def test_cli_errors_exit_255(paths: LabPaths, argv: list[str], err: str) -> None:
    assert ha(paths, "add", "vm:101")[0] == 0
    assert ha(paths, *argv) == (255, "", err)


@pytest.mark.parametrize(
    ("argv", "err"),
    [
        # HA8 Tools.pm pve_verify_ha_resource_or_vm_id: die "...\n"; check_prop adds the prefix
        (["add", "vm 101"], "sid: invalid format - value does not look like a valid ha resource"
                            " id\n\nha-manager add <sid> [OPTIONS]\n"),
        (["add", "foo"], "sid: invalid format - value does not look like a valid ha resource"
                         " id\n\nha-manager add <sid> [OPTIONS]\n"),
        (["set", "vm:101", "--state", "up"],
         "state: value 'up' does not have a value in the enumeration "
         "'started, stopped, enabled, disabled, ignored'\nha-manager set <sid> [OPTIONS]\n"),
        (["set", "vm:101", "--max_restart", "-1"],
         "max_restart: value must have a minimum value of 0\nha-manager set <sid> [OPTIONS]\n"),
        (["crm-command", "stop", "vm:101", "x"], "timeout: type check ('integer') failed - got 'x'"
                                                 "\nha-manager crm-command stop <sid> <timeout>\n"),
    ],
)  # fmt: skip
def test_cli_parameter_verification(paths: LabPaths, argv: list[str], err: str) -> None:
    assert ha(paths, *argv) == (255, "", "400 Parameter verification failed.\n" + err)


def test_cli_unknown_command_lists_usage(paths: LabPaths) -> None:
    rc, out, err = ha(paths, "frob")
    assert (rc, out) == (255, "")
    assert err.startswith(  # PC CLIHandler.pm print_usage_short
        "ERROR: unknown command 'ha-manager frob'\nUSAGE: ha-manager <COMMAND> [ARGS] [OPTIONS]\n\n"
    )
    assert "       ha-manager crm-command stop <sid> <timeout>\n" in err


def test_cli_real_command_the_lab_lacks_says_so(paths: LabPaths) -> None:
    # HA8 CLI/ha_manager.pm: `groupremove`, a real command (the lab has no HA groups)
    assert ha(paths, "groupremove", "g1") == (
        255, "", "pvelab: `ha-manager groupremove` is not implemented by the lab's ha-manager\n",
    )  # fmt: skip


def test_set_and_remove_rewrite_resources_cfg(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101", "--state", "started", "--comment", "x")
    assert ha(paths, "set", "101", "--state", "disabled", "--delete", "comment")[0] == 0
    assert config.resources_path(paths).read_text() == "vm: 101\n\tstate disabled\n\n"
    assert ha(paths, "remove", "vm:101") == (0, "", "")
    assert config.resources_path(paths).read_text() == ""


def test_set_with_stale_digest_is_refused(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    rc, _, err = ha(paths, "set", "vm:101", "--state", "stopped", "--digest", "0" * 40)
    assert (rc, err) == (255, "update resources config failed: detected modified configuration"
                              " - file changed by other user? Try again.\n")  # fmt: skip


def test_crm_command_stop_appends_a_line(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    assert ha(paths, "crm-command", "stop", "vm:101", "60") == (0, "", "")
    assert ha(paths, "crm-command", "stop", "101", "0") == (0, "", "")
    assert config.crm_commands_path(paths).read_text() == "stop vm:101 60\nstop vm:101 0\n"


def test_error_state_blocks_requests_but_disabled(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    ms_with(paths, "vm:101", state="error")
    error = "service 'vm:101' in error state, must be disabled and fixed first\n"
    assert ha(paths, "set", "vm:101", "--state", "started") == (255, "", error)
    assert ha(paths, "crm-command", "stop", "vm:101", "0") == (255, "", error)
    assert ha(paths, "set", "vm:101", "--state", "disabled") == (0, "", "")


def test_ignored_service_takes_no_crm_command(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101", "--state", "ignored")
    assert ha(paths, "crm-command", "stop", "vm:101", "0")[2] == (
        "resource 'vm:101' is not HA managed\n"
    )


def test_add_without_quorum_fails(paths: LabPaths) -> None:
    cluster.set_quorum(paths, False)
    assert ha(paths, "add", "vm:101") == (255, "", "cluster not ready - no quorum?\n")


# --- hastate (/cluster/resources) --------------------------------------------------------


def test_hastate_none_requested_then_crm_state(paths: LabPaths) -> None:
    assert hastate(paths, 101) is None
    ha(paths, "add", "vm:101", "--state", "stopped")
    assert hastate(paths, 101) == "stopped"
    ms_with(paths, "vm:101", state="request_start")
    assert hastate(paths, 101) == "request_start"
    assert hastate(paths, 102) is None


# --- qm's HA branch -----------------------------------------------------------------------


def test_qm_start_of_ha_vm_only_requests_started(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101", "--state", "stopped")
    assert qm_call(paths, "start", 101) == (0, "Requesting HA start for VM 101\n", "")
    assert config.read_resources(paths).ids["vm:101"]["state"] == "started"
    assert not paths.pidfile(101).exists()  # nothing started: the LRM does that later


def test_qm_stop_of_ha_vm_queues_hard_stop(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    assert qm_call(paths, "stop", 101) == (0, "Requesting HA stop for VM 101\n", "")
    assert config.crm_commands_path(paths).read_text() == "stop vm:101 0\n"


def test_qm_shutdown_of_ha_vm_queues_stop_with_timeout_default_60(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    rc, out, err = qm_call(paths, "shutdown", 101)
    assert (rc, out) == (0, "Requesting HA stop for VM 101\n")
    assert err == "VM 101 not running\n\n"  # vm_is_paused's warning comes first, as in PVE
    qm_call(paths, "shutdown", 101, "--timeout", 0)
    assert config.crm_commands_path(paths).read_text() == "stop vm:101 60\nstop vm:101 0\n"


def test_qm_stop_overrule_shutdown_not_applicable(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    # QS8 API2/Qemu.pm vm_stop: raise_param_exc, so RESTHandler cli_handler appends the usage
    assert qm_call(paths, "stop", 101, "--overrule-shutdown", 1) == (
        255, "", "400 Parameter verification failed.\n"
                 "overrule-shutdown: Not applicable for HA resources.\n"
                 "qm stop <vmid> [OPTIONS]\n",
    )  # fmt: skip
    assert not config.crm_commands_path(paths).exists()


def test_qm_stop_of_ha_vm_in_error_state_is_the_reference_transcript(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    ms_with(paths, "vm:101", state="error")
    rc, out, err = qm_call(paths, "stop", 101)
    assert (rc, out + err) == (
        255,
        "Requesting HA stop for VM 101\n"
        "service 'vm:101' in error state, must be disabled and fixed first\n"
        "command 'ha-manager crm-command stop vm:101 0' failed: exit code 255\n",
    )


def test_qm_of_ignored_resource_acts_directly(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101", "--state", "ignored")
    assert qm_call(paths, "stop", 101) == (0, "", "")  # a stopped VM: the direct path, silent
    assert not config.crm_commands_path(paths).exists()


def test_manager_status_is_json_the_crm_writes(paths: LabPaths) -> None:
    ms_with(paths, "vm:101", state="started")
    data = json.loads(config.manager_status_path(paths).read_text())
    assert data["service_status"]["vm:101"]["state"] == "started"
