"""The stand-in CLIs against PVE 8.4's code, second round: CLIHandler's command tree and usage
listings, Getopt's view of arguments, vmstatus keys, vm_is_paused's warnings, start's formats,
the rest of $confdesc, and the cfs lock without quorum (each test names its source)."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from pathlib import Path

import pytest
from pvelab.paths import LabPaths
from pvelab.pve import cluster, pvecm, pvesh
from pvelab.pve.ha import cli as ha_cli
from pvelab.pve.ha import config as ha_config
from pvelab.pve.qm import cli as qm
from pvelab.pve.qm import version
from pvelab.pve.qm.context import Context

Run = Callable[..., tuple[int, str, str]]
HEAD = "USAGE: {} <COMMAND> [ARGS] [OPTIONS]\n\n"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabPaths:
    """A lab dir with VM 900 (stopped, 64 MiB) and PVE 8 texts."""
    monkeypatch.delenv(version.ENV_VERSION, raising=False)
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(900).write_text("name: t900\nmemory: 64\ncores: 1\n")
    return paths


@pytest.fixture
def run(lab: LabPaths) -> Run:
    """`qm <argv>` in-process on node pve: (rc, stdout, stderr)."""

    def call(*argv: str | int) -> tuple[int, str, str]:
        out, err = StringIO(), StringIO()
        rc = qm.run(Context(lab, "pve", out, err), [str(a) for a in argv])
        return rc, out.getvalue(), err.getvalue()

    return call


def ha(paths: LabPaths, *argv: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    rc = ha_cli.run(paths, list(argv), ha_cli.Io(out, err))
    return rc, out.getvalue(), err.getvalue()


# --- CLIHandler: listings (pve-common CLIHandler.pm print_usage_short, generate_usage_str) ----


def test_qm_guest_alone_is_an_incomplete_command_listing_its_four_commands(run: Run) -> None:
    # $abort->("incomplete command '$cmd_str'", $args): the group's commands, by class then
    # name (PVE::API2::Qemu::Agent cmd, exec-status, passwd; PVE::CLI::qm exec), no blank line
    assert run("guest") == (255, "", (
        "ERROR: incomplete command 'qm guest'\n" + HEAD.format("qm")
        + "       qm guest cmd <vmid> <command>\n"
        "       qm guest exec-status <vmid> <pid>\n"
        "       qm guest passwd <vmid> <username> [OPTIONS]\n"
        "       qm guest exec <vmid> [<extra-args>] [OPTIONS]\n"
    ))  # fmt: skip


def test_qm_unknown_command_lists_every_pve_command_groups_first_classes_apart(run: Run) -> None:
    rc, out, err = run("frobnicate")
    assert (rc, out) == (255, "")
    assert err.startswith(
        "ERROR: unknown command 'qm frobnicate'\n" + HEAD.format("qm")
        + "       qm cloudinit dump <vmid> <type>\n"
        "       qm cloudinit pending <vmid>\n"
        "       qm cloudinit update <vmid>\n\n"
        "       qm disk move <vmid> <disk> [<storage>] [OPTIONS]\n"
    )  # fmt: skip
    # a group ends in the separator; classes PVE::API2::Qemu, PVE::CLI::qm, PVE::CLIHandler
    assert "       qm template <vmid> [OPTIONS]\n\n       qm cleanup <vmid>" in err
    assert err.endswith(
        "       qm wait <vmid> [OPTIONS]\n\n       qm help [<extra-args>] [OPTIONS]\n"
    )
    # getopt_usage "$prefix $args": a command without arguments keeps its space
    assert "       qm mtunnel \n" in err and "       qm list  [OPTIONS]\n" in err


def test_qm_real_command_the_lab_lacks_is_a_pvelab_error(run: Run) -> None:
    assert run("showcmd", 900) == (
        255, "", "pvelab: `qm showcmd` is not implemented by the lab's qm\n"
    )  # fmt: skip


def test_qm_help_of_one_command(run: Run) -> None:
    # CLIHandler `help`: generate_usage_str('short'), leading blanks stripped, "USAGE: $str\n"
    assert run("help", "status") == (0, "USAGE: qm status <vmid> [OPTIONS]\n\n", "")


def test_ha_manager_crm_command_alone_is_incomplete(tmp_path: Path) -> None:
    # HA8 CLI/ha_manager.pm $cmddef: the node-maintenance group first, then Resources' migrate
    # and relocate, then CLI::ha_manager's stop
    assert ha(LabPaths(tmp_path), "crm-command") == (255, "", (
        "ERROR: incomplete command 'ha-manager crm-command'\n" + HEAD.format("ha-manager")
        + "       ha-manager crm-command node-maintenance disable <node>\n"
        "       ha-manager crm-command node-maintenance enable <node>\n"
        "       ha-manager crm-command migrate <sid> <node>\n"
        "       ha-manager crm-command relocate <sid> <node>\n"
        "       ha-manager crm-command stop <sid> <timeout>\n"
    ))  # fmt: skip


def test_pvecm_without_command_lists_its_commands(tmp_path: Path) -> None:
    err = StringIO()
    assert pvecm.run(LabPaths(tmp_path), "pve", [], StringIO(), err) == 255
    assert err.getvalue() == (
        "ERROR: no command specified\n" + HEAD.format("pvecm")
        + "       pvecm qdevice remove \n"
        "       pvecm qdevice setup <address> [OPTIONS]\n\n"
        "       pvecm addnode <node> [OPTIONS]\n"
        "       pvecm apiver \n"
        "       pvecm create <clustername> [OPTIONS]\n"
        "       pvecm delnode <node>\n\n"
        "       pvecm add <hostname> [OPTIONS]\n"
        "       pvecm expected <expected>\n"
        "       pvecm keygen <filename>\n"
        "       pvecm mtunnel [<extra-args>] [OPTIONS]\n"
        "       pvecm nodes \n"
        "       pvecm status \n"
        "       pvecm updatecerts  [OPTIONS]\n\n"
        "       pvecm help [<extra-args>] [OPTIONS]\n"
    )  # fmt: skip


def test_pvesh_unknown_command_lists_its_commands(tmp_path: Path) -> None:
    err = StringIO()
    assert pvesh.run(LabPaths(tmp_path), "pve", ["frob"], StringIO(), err) == 255
    assert err.getvalue() == (
        "ERROR: unknown command 'pvesh frob'\n" + HEAD.format("pvesh")
        + "".join(f"       pvesh {c} <api_path> [OPTIONS] [FORMAT_OPTIONS]\n"
                  for c in ("create", "delete", "get", "ls", "set"))
        + "       pvesh usage <api_path> [OPTIONS]\n\n"
        "       pvesh help [<extra-args>] [OPTIONS]\n"
    )  # fmt: skip


# --- $expand_command_name for every CLI ----------------------------------------------------


def test_pvecm_stat_expands_to_status(tmp_path: Path) -> None:
    out = StringIO()
    pvecm.run(LabPaths(tmp_path), "pve", ["stat"], out, StringIO())
    assert out.getvalue().startswith("Cluster information\n")


def test_pvesh_g_expands_to_get(tmp_path: Path) -> None:
    err = StringIO()
    assert pvesh.run(LabPaths(tmp_path), "pve", ["g", "/nope"], StringIO(), err) == 1
    assert err.getvalue() == "No 'get' handler defined for '/nope'\n"


def test_ha_manager_conf_expands_to_config(tmp_path: Path) -> None:
    assert ha(LabPaths(tmp_path), "conf") == (0, "", "")


def test_pvecm_status_with_an_argument(tmp_path: Path) -> None:
    # pvecm.pm `status => [__PACKAGE__, 'status']`: getopt_usage "$prefix $args", args empty
    err = StringIO()
    assert pvecm.run(LabPaths(tmp_path), "pve", ["status", "extra"], StringIO(), err) == 255
    assert err.getvalue() == "400 too many arguments\npvecm status \n"


# --- JSONSchema get_options: Getopt::Long with prefix_pattern (--|-) -------------------------


def test_dash_digits_is_an_option_to_getopt(run: Run) -> None:
    assert run("status", "-5") == (255, "", (
        "Unknown option: 5\n400 unable to parse option\nqm status <vmid> [OPTIONS]\n"
    ))  # fmt: skip


def test_ha_crm_stop_timeout_minus_one_is_an_unknown_option(tmp_path: Path) -> None:
    assert ha(LabPaths(tmp_path), "crm-command", "stop", "vm:100", "-1") == (255, "", (
        "Unknown option: 1\n400 unable to parse option\n"
        "ha-manager crm-command stop <sid> <timeout>\n"
    ))  # fmt: skip


def test_a_string_option_takes_a_negative_value(run: Run) -> None:
    # `timeout=s` takes the next argument whatever it looks like; the minimum then fails
    assert run("start", 900, "--timeout", "-1") == (255, "", (
        "400 Parameter verification failed.\ntimeout: value must have a minimum value of 0\n"
        "qm start <vmid> [OPTIONS]\n"
    ))  # fmt: skip


def test_positional_name_is_an_option_too(run: Run) -> None:
    # get_options builds a Getopt spec from every schema property, vmid included
    assert run("status", "--vmid", 900) == (
        255, "", "400 not enough arguments\nqm status <vmid> [OPTIONS]\n"
    )  # fmt: skip


# --- vmstatus (QS8 QemuServer.pm) ----------------------------------------------------------


def test_status_verbose_of_a_stopped_vm_has_the_zero_counters(run: Run) -> None:
    # vmstatus sets disk, mem, netin, netout (and cpu, left out by `qm status`) for every VM
    assert run("status", 900, "--verbose") == (0, (
        "cpus: 1\ndisk: 0\nmaxdisk: 0\nmaxmem: 67108864\nmem: 0\nname: t900\nnetin: 0\n"
        "netout: 0\nqmpstatus: stopped\nstatus: stopped\nuptime: 0\nvmid: 900\n"
    ), "")  # fmt: skip


# --- vm_is_paused's warnings (QS8 QemuServer.pm vm_is_paused, API2/Qemu.pm) ----------------


def test_shutdown_of_a_stopped_vm_warns_and_succeeds(run: Run) -> None:
    # mon_cmd dies "VM 900 not running\n", warn "$@\n"; _do_vm_stop returns without a pid
    assert run("shutdown", 900) == (0, "", "VM 900 not running\n\n")


def test_reboot_of_a_vm_without_config(run: Run) -> None:
    line = "unable to find configuration file for VM 901 on node 'pve'\n"
    assert run("reboot", 901) == (2, "", f"{line}\n{line}")


def test_wait_without_config_exits_2(run: Run) -> None:
    # qm.pm `wait`: check_running -> assert_config_exists_on_node: `-f` fails (ENOENT in $!)
    assert run("wait", 999) == (
        2, "", "unable to find configuration file for VM 999 on node 'pve'\n"
    )  # fmt: skip


# --- vm_start's parameter formats (QS8 API2/Qemu.pm vm_start, Machine.pm, JSONSchema.pm) ----


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("migration_network", "foo",
         "invalid format - value does not look like a valid CIDR network\n"),
        ("migratedfrom", "bad_node",
         "invalid format - value does not look like a valid node name\n"),
        ("machine", "bad machine!",
         "invalid format - format error\nmachine.type: value does not match the regex pattern\n"),
        ("nets-host-mtu", "net0", "value does not match the regex pattern"),
    ],
)  # fmt: skip
def test_start_option_formats(run: Run, option: str, value: str, error: str) -> None:
    assert run("start", 900, f"--{option}", value) == (255, "", (
        f"400 Parameter verification failed.\n{option}: {error}\nqm start <vmid> [OPTIONS]\n"
    ))  # fmt: skip


# --- qm set: the rest of $confdesc (QS8 API2/Qemu.pm update_vm_api) --------------------------


def test_set_balloon_above_memory_dies(run: Run) -> None:
    assert run("set", 900, "--balloon", 256) == (
        255, "", "balloon value too large (must be smaller than assigned memory)\n"
    )  # fmt: skip


def test_set_takes_keys_beyond_the_labs_first_subset(run: Run, lab: LabPaths) -> None:
    assert run("set", 900, "--balloon", 32, "--cpulimit", "1.5", "--startup", "order=2")[0] == 0
    assert "balloon: 32\n" in lab.conf(900).read_text()
    assert "startup: order=2\n" in lab.conf(900).read_text()


def test_set_checks_ranges_of_the_new_keys(run: Run) -> None:
    assert run("set", 900, "--cpuunits", 0) == (255, "", (
        "400 Parameter verification failed.\ncpuunits: value must have a minimum value of 1\n"
        "qm set <vmid> [OPTIONS]\n"
    ))  # fmt: skip


# --- HA (HA8 Tools.pm, QS8 vm_stop, PCL Cluster.pm $cfs_lock) -------------------------------


def test_ha_add_of_a_bad_sid(tmp_path: Path) -> None:
    assert ha(LabPaths(tmp_path), "add", "foo") == (255, "", (
        "400 Parameter verification failed.\n"
        "sid: invalid format - value does not look like a valid ha resource id\n\n"
        "ha-manager add <sid> [OPTIONS]\n"
    ))  # fmt: skip


def test_ha_config_lock_without_quorum_retries_then_fails(
    lab: LabPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # $cfs_lock: alarm(10), each failed mkdir leaves one second less: nine tries, then the
    # timeout, reported as "no quorum!" with the lock name
    monkeypatch.setattr(ha_config, "CFS_LOCK_SLEEP", 0)
    assert ha(lab, "add", "vm:900") == (0, "", "")
    cluster.set_quorum(lab, False)
    assert ha(lab, "crm-command", "stop", "vm:900", "0") == (255, "", (
        "trying to acquire cfs lock 'domain-ha' ...\n" * 9
        + "cfs-lock 'domain-ha' error: no quorum!\n"
    ))  # fmt: skip
