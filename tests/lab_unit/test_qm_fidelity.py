"""The stand-in `qm` against PVE 8.4's own code, case by case (texts quoted from qemu-server
stable-bookworm and pve-common/pve-guest-common; the source of each is named in the test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path

import pytest
from pvelab.paths import LabPaths
from pvelab.pve import vmstate
from pvelab.pve.qm import cli as qm
from pvelab.pve.qm import version
from pvelab.pve.qm.context import Context
from pvelab.pve.qm.setconf import pending_lines
from pvelab.pve.vmconf import parse_conf

Run = Callable[..., tuple[int, str, str]]
CONF = "name: t900\nmemory: 64\ncores: 1\n"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabPaths:
    """A lab dir with VM 900 (stopped) and PVE 8 texts."""
    monkeypatch.delenv(version.ENV_VERSION, raising=False)
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(900).write_text(CONF)
    return paths


@pytest.fixture
def run(lab: LabPaths) -> Iterator[Run]:
    """`qm <argv>` in-process: (rc, stdout, stderr)."""

    def call(*argv: str | int) -> tuple[int, str, str]:
        ctx = Context(lab, "pve", stdout=StringIO(), stderr=StringIO())
        rc = qm.run(ctx, [str(a) for a in argv])
        return rc, ctx.stdout.getvalue(), ctx.stderr.getvalue()  # type: ignore[attr-defined]

    yield call


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> None:
    """VM 900 counts as running (hotplug paths of `qm set`)."""
    monkeypatch.setattr(vmstate, "running_pid", lambda _paths, _vmid: 4242)


def conf_of(lab: LabPaths) -> str:
    return lab.conf(900).read_text()


# --- argument checks (pve-common 8.3 JSONSchema.pm, RESTHandler.pm) -------------------------


def test_vmid_with_leading_zero_fails_the_pve_vmid_format(run: Run) -> None:
    # JSONSchema.pm pve_verify_vmid: die "value does not look like a valid VM ID\n"; check_prop
    # prefixes "invalid format - " and Exception.pm adds "\n" after the die's own newline.
    assert run("status", "0900") == (
        255,
        "",
        "400 Parameter verification failed.\n"
        "vmid: invalid format - value does not look like a valid VM ID\n\n"
        "qm status <vmid> [OPTIONS]\n",
    )


def test_vmid_below_100_is_a_format_error_not_a_minimum(run: Run) -> None:
    # check_prop runs the format before minimum/maximum, and the format needs 3..9 digits
    assert "vmid: invalid format - value does not look like a valid VM ID\n" in run("stop", 99)[2]


def test_wait_timeout_has_minimum_1(run: Run) -> None:
    # QS8 CLI/qm.pm `wait`: timeout => { type => 'integer', minimum => 1 }
    assert run("wait", 900, "--timeout", 0) == (
        255,
        "",
        "400 Parameter verification failed.\n"
        "timeout: value must have a minimum value of 1\n"
        "qm wait <vmid> [OPTIONS]\n",
    )


def test_usage_without_arguments_has_two_spaces(run: Run) -> None:
    # RESTHandler.pm getopt_usage: $out .= "$prefix $args"; then " [OPTIONS]"
    assert run("list", "extra")[2] == "400 too many arguments\nqm list  [OPTIONS]\n"


def test_enum_option_of_start(run: Run) -> None:
    # QS8 API2/Qemu.pm vm_start: migration_type enum => ['secure', 'insecure']
    assert (
        "migration_type: value 'fast' does not have a value in the enumeration 'secure, insecure'"
        in run("start", 900, "--migration_type", "fast")[2]
    )


def test_command_names_expand_from_a_unique_prefix(run: Run) -> None:
    # CLIHandler.pm $expand_command_name: `stat` can only be `status`
    assert run("stat", 900) == (0, "status: stopped\n", "")


def test_unknown_command_prints_pves_usage_head(run: Run) -> None:
    rc, _out, err = run("frobnicate")
    assert rc == 255
    assert err.startswith(  # CLIHandler.pm print_usage_short
        "ERROR: unknown command 'qm frobnicate'\nUSAGE: qm <COMMAND> [ARGS] [OPTIONS]\n\n"
    )


# --- qm set (QS8 API2/Qemu.pm $update_vm_api) ----------------------------------------------


def test_set_without_options_dies(run: Run) -> None:
    # die "no options specified\n" if !$delete_str && !$revert_str && !scalar(keys %$param);
    assert run("set", 900, "--skiplock", 1) == (255, "", "no options specified\n")


def test_set_prints_the_update_line_and_applies_on_a_stopped_vm(run: Run, lab: LabPaths) -> None:
    # print "update VM $vmid: " . join(' ', @paramarr) . "\n"; keys sorted, booleans as 1/0
    rc, out, err = run("set", 900, "--onboot", "yes", "--cores", 2, "--skiplock")
    assert (rc, out, err) == (0, "update VM 900: -cores 2 -onboot 1 -skiplock 1\n", "")
    assert "cores: 2\n" in conf_of(lab) and "[PENDING]" not in conf_of(lab)


def test_set_delete_of_unset_key_warns(run: Run) -> None:
    # warn "cannot delete '$opt' - not set in current configuration!\n";
    assert run("set", 900, "--delete", "onboot") == (
        0,
        "update VM 900: -delete onboot\n",
        "cannot delete 'onboot' - not set in current configuration!\n",
    )


def test_set_delete_of_unknown_option(run: Run) -> None:
    # raise_param_exc({ delete => "unknown option '$opt'" }); the CLI handler adds the usage
    assert run("set", 900, "--delete", "bogus") == (
        255,
        "",
        "400 Parameter verification failed.\n"
        "delete: unknown option 'bogus'\n"
        "qm set <vmid> [OPTIONS]\n",
    )


def test_set_force_requires_delete(run: Run) -> None:
    # update_vm: force => { requires => 'delete' } (JSONSchema.pm check_object)
    assert (
        "delete: missing property - 'force' requires this property\n"
        in (run("set", 900, "--force", "--name", "x")[2])
    )


def test_pve8_agent_format_has_no_freeze_fs(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    # QS8 QemuServer.pm $agent_fmt: enabled, fstrim_cloned_disks, freeze-fs-on-backup, type;
    # JSONSchema.pm parse_property_string: die "invalid key in comma-separated list property"
    assert run("set", 900, "--agent", "1,freeze-fs=1")[2] == (
        "400 Parameter verification failed.\n"
        "agent: invalid format - invalid key in comma-separated list property: freeze-fs\n\n"
        "qm set <vmid> [OPTIONS]\n"
    )
    monkeypatch.setenv(version.ENV_VERSION, "9")  # QS9 Agent.pm $agent_fmt has `freeze-fs`
    assert run("set", 900, "--agent", "1,freeze-fs=1")[0] == 0


def test_set_bad_agent_boolean(run: Run) -> None:
    # the default key takes the raw part; check_type 'boolean' accepts only '1' and '0'
    assert (
        "agent: invalid format - format error\nagent.enabled: type check ('boolean') "
        in (run("set", 900, "--agent", "maybe")[2])
    )


def test_set_on_running_vm_hotplugs_fast_plug_keys_only(
    run: Run, lab: LabPaths, running: None
) -> None:
    # QS8 QemuServer.pm vmconfig_hotplug_pending: $fast_plug_option (name) applied at once;
    # `cores` is no hotplug case and stays in [PENDING]
    assert run("set", 900, "--name", "renamed", "--cores", 2)[0] == 0
    conf = parse_conf(conf_of(lab))
    assert conf.main["name"] == "renamed"
    assert (conf.main["cores"], conf.pending) == ("1", {"cores": "2"})


def test_set_delete_on_running_vm_is_pending(run: Run, lab: LabPaths, running: None) -> None:
    assert run("set", 900, "--delete", "memory")[0] == 0
    assert parse_conf(conf_of(lab)).pending == {"delete": "memory"}
    assert run("pending", 900)[1] == "cur cores: 1\ndel memory: 64\ncur name: t900\n"


# --- qm pending, qm config ------------------------------------------------------------------


def test_pending_lines_follow_format_pending() -> None:
    # GuestHelpers.pm format_pending; QS8 vm_pending masks cipassword ('********** ' pending)
    conf = parse_conf(
        "cores: 2\nname: a\ncipassword: x\ndescription: a:b\n"
        "\n[PENDING]\ncores: 4\nmemory: 512\ncipassword: y\ndelete: name\n"
    )
    assert pending_lines(conf) == (
        "cur cipassword: **********\nnew cipassword: ********** \n"
        "cur cores: 2\nnew cores: 4\n"
        "cur description: a%3Ab\n"
        "new memory: 512\n"
        "del name: a\n"
    )


def test_config_snapshot_shows_that_snapshot(run: Run, lab: LabPaths) -> None:
    lab.conf(900).write_text(CONF + "parent: pre\n\n[pre]\ncores: 4\nsnaptime: 1700000000\n")
    # AbstractConfig load_snapshot_config: the section itself (digest skipped by the printer)
    assert run("config", 900, "--snapshot", "pre") == (0, "cores: 4\nsnaptime: 1700000000\n", "")
    rc, out, err = run("config", 900, "--snapshot", "nosuch")  # a die: exit code is Perl's $!
    assert (rc != 0, out, err) == (True, "", "snapshot 'nosuch' does not exist\n")


def test_config_pending_delete_of_a_false_value_still_shows_it(run: Run, lab: LabPaths) -> None:
    # load_current_config: delete $conf->{$opt} if $conf->{$opt};  ("0" is false in Perl)
    lab.conf(900).write_text(CONF + "onboot: 0\n\n[PENDING]\ndelete: onboot,cores\n")
    assert run("config", 900)[1] == "memory: 64\nname: t900\nonboot: 0\n"


# --- guest exec -----------------------------------------------------------------------------


def test_guest_exec_without_command_fails_before_the_agent_check(run: Run) -> None:
    # QS8 Agent.pm qemu_exec dies before agent_cmd loads the config and checks the agent
    assert run("guest", "exec", 900) == (255, "", "command or input-data (or both) required\n")


def test_version_switch_defaults_to_8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(version.ENV_VERSION, raising=False)
    assert (version.pve_major(), version.flavour().qga_error_kind) == (8, "qmp")
    monkeypatch.setenv(version.ENV_VERSION, "9.1")
    assert (version.pve_major(), version.flavour().qga_error_kind) == (9, "qga")
