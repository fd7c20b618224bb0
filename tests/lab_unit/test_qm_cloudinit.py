"""Cloud-init in the stand-in `qm`: the generated data, `qm cloudinit dump|pending|update`, the
cloud-init keys of `qm set`, the drive at `qm start`, and fault `cloudinit-changed`.

Expected texts are typed from qemu-server stable-bookworm `src/PVE/QemuServer/Cloudinit.pm`
(the function is named in each test), `API2/Qemu.pm` and `CLI/qm.pm`; the SHA-1 constants were
computed with `printf '<user-data><network-config>' | sha1sum` from those hand-written texts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path

import pytest
from pvelab.fleet import faults, roster
from pvelab.fleet.lab import Lab
from pvelab.paths import LabPaths
from pvelab.pve import node, pwcrypt, qemu, vmstate
from pvelab.pve.qm import cipending, cloudinit, power, version
from pvelab.pve.qm import cli as qm
from pvelab.pve.qm.context import Context
from pvelab.pve.vmconf import parse_conf

Run = Callable[..., tuple[int, str, str]]
MAC = "BC:24:11:00:01:01"
BASE = f"name: pbs\nostype: l26\nnet0: virtio={MAC},bridge=vmbr0\nvirtio0: local:vm-101-disk-0\n"
DRIVE = "ide2: local:vm-101-cloudinit,media=cdrom\n"
CI_CONF = BASE + DRIVE + "ciuser: root\nipconfig0: ip=dhcp\n"
KERNEL, INITRD = Path("/cache/abc/vmlinuz"), Path("/cache/abc/initrd.img")

# A small config and its texts, typed from cloudinit_userdata and nocloud_network.
SMALL = {
    "name": "t1", "ciuser": "root", "ciupgrade": "0", "nameserver": "192.0.2.53",
    "searchdomain": "lab", "net0": f"virtio={MAC},bridge=vmbr0",
    "ipconfig0": "ip=192.0.2.5/24,gw=192.0.2.1",
}  # fmt: skip
SMALL_USER = (
    "#cloud-config\nhostname: t1\nmanage_etc_hosts: true\nfqdn: t1.lab\nuser: root\n"
    "disable_root: False\nchpasswd:\n  expire: False\n"
)
SMALL_NETWORK = (
    "version: 1\nconfig:\n"
    "    - type: physical\n      name: eth0\n      mac_address: 'bc:24:11:00:01:01'\n"
    "      subnets:\n      - type: static\n        address: '192.0.2.5'\n"
    "        netmask: '255.255.255.0'\n        gateway: '192.0.2.1'\n"
    "    - type: nameserver\n      address:\n      - '192.0.2.53'\n      search:\n      - 'lab'\n"
)
SMALL_SHA1 = "1f12f4c23e5b0e0b2dfaa58237201992158b6ca4"
# CI_CONF's data with the node's resolv.conf pinned to `nameserver 10.255.255.53`.
CI_CONF_SHA1 = "b97ba72dfe6e0e1de6c8057aeaed2ac43fbbe547"


@pytest.fixture(autouse=True)
def resolv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The node's /etc/resolv.conf (get_dns_conf's fallback), pinned; PVE 8 texts."""
    monkeypatch.delenv(version.ENV_VERSION, raising=False)
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.255.255.53\n")
    monkeypatch.setattr(cloudinit, "RESOLV_CONF", path)
    return path


@pytest.fixture
def lab(tmp_path: Path) -> LabPaths:
    """A lab dir with VM 101 (stopped), a cloud-init drive, ciuser root, ipconfig0 dhcp."""
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(101).write_text(CI_CONF)
    return paths


@pytest.fixture
def run(lab: LabPaths) -> Run:
    """`qm <argv>` in-process on node pve: (rc, stdout, stderr)."""

    def call(*argv: str | int) -> tuple[int, str, str]:
        ctx = Context(lab, "pve", stdout=StringIO(), stderr=StringIO())
        rc = qm.run(ctx, [str(a) for a in argv])
        return rc, ctx.stdout.getvalue(), ctx.stderr.getvalue()  # type: ignore[attr-defined]

    return call


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> None:
    """VM 101 counts as running (the hotplug path of `qm set`)."""
    monkeypatch.setattr(vmstate, "running_pid", lambda _paths, _vmid: 4242)


def conf_of(lab: LabPaths) -> str:
    return lab.conf(101).read_text()


def meta(run: Run) -> str:
    rc, out, _err = run("cloudinit", "dump", 101, "meta")
    assert rc == 0
    return out


# --- the generated data (Cloudinit.pm) -------------------------------------------------------


def test_small_config_user_data_network_config_and_known_sha1() -> None:
    assert cloudinit.userdata(SMALL, 101) == SMALL_USER
    assert cloudinit.nocloud_network(SMALL) == SMALL_NETWORK
    # nocloud_gen_metadata: "instance-id: " . sha1_hex($user . $network) . "\n"
    assert cloudinit.dump_config(SMALL, 101, "meta") == f"instance-id: {SMALL_SHA1}\n"


def test_non_root_user_gets_default_users_and_package_upgrade() -> None:
    # cloudinit_userdata: "users:\n  - default\n" unless root; package_upgrade unless ciupgrade 0
    text = cloudinit.userdata({"ciuser": "admin"}, 123)
    assert text == (
        "#cloud-config\nhostname: VM123\nmanage_etc_hosts: true\nfqdn: VM123\nuser: admin\n"
        "chpasswd:\n  expire: False\nusers:\n  - default\npackage_upgrade: true\n"
    )


def test_dotted_name_is_the_fqdn_and_its_first_label_the_hostname() -> None:
    # get_hostname_fqdn: a name with a dot wins over searchdomain
    assert cloudinit.hostname_fqdn({"name": "a.b.c", "searchdomain": "x"}, 1) == ("a", "a.b.c")


def test_password_and_ssh_keys_in_user_data() -> None:
    # cloudinit_userdata: uri_unescape'd keys, one per line, blank lines dropped
    conf = {"cipassword": "$5$s$h", "sshkeys": "ssh-ed25519%20AAAA%20a%40b%0A%0Assh-rsa%20BB%0A"}
    text = cloudinit.userdata(conf, 1)
    assert "password: $5$s$h\nssh_authorized_keys:\n  - ssh-ed25519 AAAA a@b\n  - ssh-rsa BB\n" in (
        text
    )
    assert "password: **********\n" in cloudinit.userdata(conf, 1, mask_password=True)


def test_host_resolv_conf_last_search_first_word_and_three_nameservers(resolv: Path) -> None:
    # INotify.pm read_etc_resolv_conf; get_dns_conf uses it only where the config has nothing
    resolv.write_text(
        "search one two\ndomain dom.example\nnameserver 192.0.2.1\nnameserver 2001:db8::1\n"
        "nameserver 192.0.2.3\nnameserver 192.0.2.4\n"
    )
    assert cloudinit.dns_conf({}) == (["dom.example"], ["192.0.2.1", "2001:db8::1", "192.0.2.3"])
    assert cloudinit.dns_conf({"nameserver": "10.1.1.1 10.1.1.2"}) == (
        ["dom.example"], ["10.1.1.1", "10.1.1.2"],
    )  # fmt: skip


def test_interfaces_in_string_order_and_only_with_ipconfig() -> None:
    # nocloud_network: `sort grep { /^net(\d+)$/ } keys`: net10 before net2; no ipconfig, no entry
    conf = {
        "net0": "virtio=AA:00:00:00:00:00", "net2": "e1000=AA:00:00:00:00:02",
        "net10": "virtio=AA:00:00:00:00:10", "net3": "virtio=AA:00:00:00:00:03",
        "ipconfig0": "ip6=auto", "ipconfig2": "ip=dhcp", "ipconfig10": "ip6=2001:db8::5/64",
    }  # fmt: skip
    names = [line for line in cloudinit.nocloud_network(conf).splitlines() if "name: eth" in line]
    assert names == ["      name: eth0", "      name: eth10", "      name: eth2"]
    text = cloudinit.nocloud_network(conf)
    assert "      - type: ipv6_slaac\n" in text
    assert "      - type: static6\n        address: '2001:db8::5/64'\n" in text


def test_gateway_with_dhcp_warns_and_the_interface_gets_no_subnet() -> None:
    # parse_ipconfig: warn 'gateway specified together with DHCP'; return (undef)
    warnings: list[str] = []
    conf = {"net0": f"virtio={MAC}", "ipconfig0": "ip=dhcp,gw=192.0.2.1"}
    text = cloudinit.nocloud_network(conf, warnings.append)
    assert "      subnets:\n    - type: nameserver\n" in text
    assert warnings == ["gateway specified together with DHCP"]


def test_configdrive2_network_and_uuid_metadata() -> None:
    # configdrive2_network, configdrive2_metadata (the heredoc, 5 spaces)
    conf = {**SMALL, "citype": "configdrive2"}
    network = cloudinit.dump_config(conf, 101, "network")
    assert network == (
        "auto lo\niface lo inet loopback\n\n        dns_nameservers 192.0.2.53\n"
        "        dns_search lab\nauto eth0\niface eth0 inet static\n        address 192.0.2.5\n"
        "        netmask 255.255.255.0\n        gateway 192.0.2.1\n"
    )
    uuid = cloudinit.sha1_hex(SMALL_USER, network)
    assert uuid != SMALL_SHA1
    assert cloudinit.dump_config(conf, 101, "meta") == (
        "{\n"
        f'     "uuid": "{uuid}",\n'
        '     "network_config": { "content_path": "/content/0000" }\n'
        "}\n"
    )


def test_windows_ostype_defaults_to_configdrive2() -> None:
    # get_cloudinit_format: windows_version($ostype) -> configdrive2, else nocloud
    assert cloudinit.citype({"ostype": "win11"}) == "configdrive2"
    assert cloudinit.citype({"ostype": "l26"}) == "nocloud"
    assert cloudinit.citype({"ostype": "win11", "citype": "nocloud"}) == "nocloud"


def test_sha256_crypt_matches_drepper_test_vector() -> None:
    # PVE::Tools::encrypt_pw uses crypt(..., '$5$<salt>$'); vector from the SHA-crypt spec
    assert pwcrypt.sha256_crypt("Hello world!", "saltstring") == (
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"
    )


# --- qm cloudinit dump|pending|update -------------------------------------------------------


def test_dump_meta_prints_the_instance_id_and_qm_pm_adds_a_newline(run: Run) -> None:
    # CLI/qm.pm cloudinit dump: sub { print "$_[0]\n"; }
    assert run("cloudinit", "dump", 101, "meta") == (0, f"instance-id: {CI_CONF_SHA1}\n\n", "")


def test_dump_user_and_network_of_the_fault_config(run: Run) -> None:
    assert run("cloudinit", "dump", 101, "user")[1] == (
        "#cloud-config\nhostname: pbs\nmanage_etc_hosts: true\nfqdn: pbs\nuser: root\n"
        "disable_root: False\nchpasswd:\n  expire: False\npackage_upgrade: true\n\n"
    )
    assert run("cloudinit", "dump", 101, "network")[1] == (
        "version: 1\nconfig:\n    - type: physical\n      name: eth0\n"
        "      mac_address: 'bc:24:11:00:01:01'\n      subnets:\n      - type: dhcp4\n"
        "    - type: nameserver\n      address:\n      - '10.255.255.53'\n\n"
    )


def test_dump_bad_type_is_a_parameter_error(run: Run) -> None:
    # API2/Qemu.pm cloudinit_generated_config_dump: type enum => ['user', 'network', 'meta']
    assert run("cloudinit", "dump", 101, "vendor") == (
        255,
        "",
        "400 Parameter verification failed.\n"
        "type: value 'vendor' does not have a value in the enumeration 'user, network, meta'\n"
        "qm cloudinit dump <vmid> <type>\n",
    )


def test_dump_of_unknown_vm_is_load_configs_error(run: Run) -> None:
    assert run("cloudinit", "dump", 999, "meta") == (
        2, "", "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist\n",
    )  # fmt: skip


def test_dump_does_not_need_a_cloud_init_drive(run: Run, lab: LabPaths) -> None:
    # dump_cloudinit_config never looks for the drive
    lab.conf(101).write_text(BASE)
    rc, out, _ = run("cloudinit", "dump", 101, "user")
    assert (rc, out.splitlines()[1]) == (0, "hostname: pbs")


def test_dump_reads_the_current_config_not_pending_values(run: Run, lab: LabPaths) -> None:
    lab.conf(101).write_text(CI_CONF + "\n[PENDING]\nciuser: admin\n")
    assert meta(run) == f"instance-id: {CI_CONF_SHA1}\n\n"


def test_dump_with_a_manual_ipv4_dies_in_split_ip4(run: Run) -> None:
    assert run("set", 101, "--ipconfig0", "ip=manual")[0] == 0
    assert run("cloudinit", "dump", 101, "network") == (255, "", "not a CIDR: manual\n")


def test_incomplete_cloudinit_command_lists_its_subcommands(run: Run) -> None:
    assert run("cloudinit")[2] == (
        "ERROR: incomplete command 'qm cloudinit'\nUSAGE: qm <COMMAND> [ARGS] [OPTIONS]\n\n"
        "       qm cloudinit dump <vmid> <type>\n       qm cloudinit pending <vmid>\n"
        "       qm cloudinit update <vmid>\n"
    )
    assert run("cloudinit", "pend", 101) == (0, "cur ciuser: root\n", "")  # unique prefix


def test_pending_without_changes_lists_set_cloudinit_options_only(run: Run, lab: LabPaths) -> None:
    # cloudinit_pending: only $cloudinitoptions keys, Perl-true ones (ciupgrade 0 is skipped)
    lab.conf(101).write_text(CI_CONF + "ciupgrade: 0\nsearchdomain: lab\n")
    assert run("cloudinit", "pending", 101) == (0, "cur ciuser: root\ncur searchdomain: lab\n", "")


def test_update_regenerates_and_drops_the_record(run: Run, lab: LabPaths) -> None:
    lab.conf(101).write_text(CI_CONF + "\n[special:cloudinit]\nciuser: admin\n")
    assert run("cloudinit", "update", 101) == (0, "generating cloud-init ISO\n", "")
    assert "[special:cloudinit]" not in conf_of(lab)


def test_update_without_a_drive_does_nothing_and_a_lock_refuses(run: Run, lab: LabPaths) -> None:
    lab.conf(101).write_text(BASE)
    assert run("cloudinit", "update", 101) == (0, "", "")
    lab.conf(101).write_text(CI_CONF + "lock: backup\n")
    assert run("cloudinit", "update", 101) == (255, "", "VM is locked (backup)\n")


# --- qm set of cloud-init keys (API2/Qemu.pm update_vm_api, vmconfig_hotplug_pending) --------


def test_running_vm_takes_ciuser_at_once_and_records_the_drives_value(
    run: Run, lab: LabPaths, running: None
) -> None:
    before = meta(run)
    assert run("set", 101, "--ciuser", "admin")[0] == 0
    conf = parse_conf(conf_of(lab))
    assert (conf.main["ciuser"], conf.pending) == ("admin", {})
    assert conf.sections["special:cloudinit"] == {"ciuser": "root"}
    assert run("cloudinit", "pending", 101)[1] == "cur ciuser: root\nnew ciuser: admin\n"
    assert "new ciuser" not in run("pending", 101)[1]  # qm pending: nothing pending
    assert meta(run) != before


def test_running_vm_added_keys_are_new_and_a_revert_clears_the_record(
    run: Run, lab: LabPaths, running: None
) -> None:
    assert run("set", 101, "--searchdomain", "lab", "--ciuser", "admin")[0] == 0
    assert parse_conf(conf_of(lab)).sections["special:cloudinit"] == {
        "added": "searchdomain", "ciuser": "root",
    }  # fmt: skip
    assert run("cloudinit", "pending", 101)[1] == (
        "cur ciuser: root\nnew ciuser: admin\nnew searchdomain: lab\n"
    )
    assert run("set", 101, "--ciuser", "root", "--delete", "searchdomain")[0] == 0
    conf = parse_conf(conf_of(lab))
    assert conf.sections["special:cloudinit"] == {}  # written as an empty section
    assert not cipending.has_changes(conf)
    assert run("cloudinit", "pending", 101)[1] == "cur ciuser: root\n"


def test_changed_ipconfig_is_not_listed_but_changes_the_instance_id(
    run: Run, lab: LabPaths, running: None
) -> None:
    # cloudinit_pending lists $cloudinitoptions only; the change is recorded all the same
    before = meta(run)
    assert run("set", 101, "--ipconfig0", "ip=10.0.2.15/24,gw=10.0.2.2")[0] == 0
    assert parse_conf(conf_of(lab)).sections["special:cloudinit"] == {"ipconfig0": "ip=dhcp"}
    assert run("cloudinit", "pending", 101)[1] == "cur ciuser: root\n"
    assert meta(run) != before


def test_deleted_key_is_recorded_and_printed_as_nothing(
    run: Run, lab: LabPaths, running: None
) -> None:
    # the {key, delete => 1} item has no value: format_pending prints no line for it
    assert run("set", 101, "--delete", "ciuser")[0] == 0
    assert parse_conf(conf_of(lab)).sections["special:cloudinit"] == {"ciuser": "root"}
    assert run("cloudinit", "pending", 101)[1] == ""


def test_stopped_vm_applies_without_a_record(run: Run, lab: LabPaths) -> None:
    # vmconfig_apply_pending has no $cloudinit_record_changed: nothing pending for cloud-init
    before = meta(run)
    assert run("set", 101, "--ciuser", "admin")[0] == 0
    assert "[special:cloudinit]" not in conf_of(lab)
    assert run("cloudinit", "pending", 101)[1] == "cur ciuser: admin\n"
    assert meta(run) != before


def test_no_record_is_written_without_a_cloud_init_drive(
    run: Run, lab: LabPaths, running: None
) -> None:
    # write_vm_config: next if $special eq 'cloudinit' && !has_cloudinit($conf)
    lab.conf(101).write_text(BASE + "ciuser: root\n")
    assert run("set", 101, "--ciuser", "admin")[0] == 0
    assert "special" not in conf_of(lab)


def test_cloudinit_hotplug_regenerates_at_once(run: Run, lab: LabPaths, running: None) -> None:
    # end of vmconfig_hotplug_pending: $hotplug_features->{cloudinit} && has_changes
    lab.conf(101).write_text(CI_CONF + "hotplug: network,disk,cloudinit\n")
    assert run("set", 101, "--ciuser", "admin") == (
        0, "update VM 101: -ciuser admin\ngenerating cloud-init ISO\n", "",
    )  # fmt: skip
    assert "[special:cloudinit]" not in conf_of(lab)


def test_cipassword_is_hashed_into_the_current_config(
    run: Run, lab: LabPaths, running: None
) -> None:
    # update_vm_api: encrypt_pw unless Windows or already hashed; $conf->{cipassword}, no pending
    rc, out, _ = run("set", 101, "--cipassword", "s3cret")
    assert (rc, out) == (0, "update VM 101: -cipassword <hidden>\n")
    conf = parse_conf(conf_of(lab))
    hashed = conf.main["cipassword"]
    assert hashed.startswith("$5$") and pwcrypt.sha256_crypt("s3cret", hashed[3:11]) == hashed
    assert (conf.pending, "special:cloudinit" in conf.sections) == ({}, False)
    assert "cur cipassword: **********\n" in run("cloudinit", "pending", 101)[1]
    assert f"password: {hashed}\n" in run("cloudinit", "dump", 101, "user")[1]


def test_cipassword_of_windows_or_prehashed_is_kept(run: Run, lab: LabPaths) -> None:
    lab.conf(101).write_text(CI_CONF.replace("ostype: l26", "ostype: win10"))
    assert run("set", 101, "--cipassword", "plain")[0] == 0
    assert "cipassword: plain\n" in conf_of(lab)
    lab.conf(101).write_text(CI_CONF)
    assert run("set", 101, "--cipassword", "$6$salt$hash")[0] == 0
    assert "cipassword: $6$salt$hash\n" in conf_of(lab)


def test_sshkeys_take_a_file_and_are_stored_uri_escaped(
    run: Run, lab: LabPaths, tmp_path: Path
) -> None:
    # qm.pm param_mapping: URI::Escape::uri_escape(file_get_contents($_[0]))
    keys = tmp_path / "keys.pub"
    keys.write_text("ssh-ed25519 AAAA+/= a@b\n")
    assert run("set", 101, "--sshkeys", keys)[0] == 0
    assert "sshkeys: ssh-ed25519%20AAAA%2B%2F%3D%20a%40b%0A\n" in conf_of(lab)
    assert run("set", 101, "--sshkeys", tmp_path / "none") == (
        255, "", f"can't open '{tmp_path / 'none'}' - No such file or directory\n",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--ipconfig0", "gw=192.0.2.1"],  # $ipconfig_fmt gw: requires => 'ip'
         "ipconfig0: invalid format - format error\n"
         "ipconfig0.ip: missing property - 'ipconfig0.gw' requires this property\n\n"),
        (["--ipconfig1", "ip=192.0.2.1"],  # pve-ipv4-config: CIDR, dhcp or manual
         "ipconfig1: invalid format - format error\nipconfig1.ip: invalid format - "
         "value does not look like a valid ipv4 network configuration\n\n\n"),
        (["--ipconfig0", "dhcp"],  # no default key in $ipconfig_fmt
         "ipconfig0: invalid format - value without key, but schema does not define a "
         "default key\n\n"),
        (["--nameserver", "1.1.1.1 no_dns"],  # address-list
         "nameserver: invalid format - value does not look like a valid address: no_dns\n\n"),
        (["--citype", "cloud"],
         "citype: value 'cloud' does not have a value in the enumeration "
         "'configdrive2, nocloud, opennebula'\n"),
        (["--ciupgrade", "2"], None),  # boolean: Getopt's own check
    ],
)  # fmt: skip
def test_set_checks_cloud_init_formats(run: Run, argv: list[str], error: str | None) -> None:
    rc, _out, err = run("set", 101, *argv)
    assert rc == 255
    if error is None:
        assert err == "400 unable to parse boolean option\nqm set <vmid> [OPTIONS]\n"
    else:
        assert err == f"400 Parameter verification failed.\n{error}qm set <vmid> [OPTIONS]\n"


def test_nameserver_list_and_cicustom_are_stored_as_given(run: Run, lab: LabPaths) -> None:
    # a `-list` format: repeated options joined with ","; get_dns_conf splits on whitespace only
    assert run("set", 101, "--nameserver", "1.1.1.1", "--nameserver", "9.9.9.9")[0] == 0
    assert "nameserver: 1.1.1.1,9.9.9.9\n" in conf_of(lab)
    assert "      - '1.1.1.1,9.9.9.9'\n" in run("cloudinit", "dump", 101, "network")[1]
    assert run("set", 101, "--cicustom", "user=local:snippets/u.yaml")[0] == 0
    assert "cicustom: user=local:snippets/u.yaml\n" in conf_of(lab)


# --- the drive at qm start ---------------------------------------------------------------------


def test_start_regenerates_and_drops_the_record(
    run: Run, lab: LabPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vm_start_nolock -> apply_cloudinit_config; QEMU itself is not run here
    launched: list[dict[str, str]] = []
    monkeypatch.setattr(power, "launch", lambda _c, _v, conf, _t: launched.append(conf.main))
    lab.conf(101).write_text(CI_CONF + "\n[special:cloudinit]\nciuser: admin\n")
    assert run("start", 101) == (0, "generating cloud-init ISO\n", "")
    assert "[special:cloudinit]" not in conf_of(lab)
    assert launched[0]["ide2"] == "local:vm-101-cloudinit,media=cdrom"


def test_start_as_migration_target_keeps_the_drive(
    run: Run, lab: LabPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "don't regenerate the ISO if the VM is started as part of a live migration"
    monkeypatch.setattr(power, "launch", lambda *_a: None)
    lab.conf(101).write_text(CI_CONF + "\n[special:cloudinit]\nciuser: admin\n")
    assert run("start", 101, "--migratedfrom", "pve2") == (0, "", "")
    assert "[special:cloudinit]" in conf_of(lab)


def test_qemu_gets_no_device_for_the_cloud_init_drive(lab: LabPaths) -> None:
    argv = qemu.qemu_command(parse_conf(CI_CONF).main, 101, lab)
    assert not [a for a in argv if "cloudinit" in a or "ide2" in a]
    assert (
        f"file={lab.disks_dir / 'vm-101-disk-0.qcow2'},if=none,id=drive-virtio0,format=qcow2"
        in (argv)
    )


# --- fault cloudinit-changed ------------------------------------------------------------------


def fault_lab(tmp_path: Path) -> Lab:
    """A Lab whose VMs have their confs, and node pve's real `qm` wrapper (nothing running)."""
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    for vm in roster.FLEET:
        paths.conf(vm.vmid).write_text(roster.render_conf(paths, vm, KERNEL, INITRD))
    wrapper = paths.node_bin_dir("pve") / "qm"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(node.qm_wrapper_text(paths, 22000))
    wrapper.chmod(0o755)
    return Lab(paths, base=22000)


def dump_meta(paths: LabPaths) -> str:
    ctx = Context(paths, "pve", stdout=StringIO(), stderr=StringIO())
    assert qm.run(ctx, ["cloudinit", "dump", "101", "meta"]) == 0
    return ctx.stdout.getvalue()  # type: ignore[attr-defined]


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Iterator[None]:
    """A process vmstate takes for VM 101's QEMU (argv0 `qemu-…`, `-pidfile <its pidfile>`),
    so the wrapper's own `qm set` sees the VM running; no QEMU is started."""
    paths = LabPaths(tmp_path / "lab")
    pidfile = paths.pidfile(101)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    argv = ["qemu-system-x86_64", "-c", "/bin/sleep 30; true", "-pidfile", str(pidfile)]
    proc = subprocess.Popen(argv, executable="/bin/sh")
    pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 5
    while vmstate.running_pid(paths, 101) != proc.pid:
        assert time.monotonic() < deadline, "fake QEMU not seen as running"
        time.sleep(0.02)
    yield
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def apply_fault(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Lab.fault with the guest's SSH replaced by a recorder of the scripts it would run."""
    scripts: list[str] = []

    def guest_result(vm: roster.VM, cmd: list[str], timeout: float) -> object:
        assert (vm.name, cmd[:2]) == ("pbs", ["sh", "-c"])
        scripts.append(cmd[2])
        return type("Result", (), {"ok": True})()

    monkeypatch.setattr(lab, "guest_result", guest_result)
    lab.fault("cloudinit-changed", "pbs", log=lambda _: None)
    return scripts


def test_fault_host_part_gives_the_vm_a_drive_and_keys(tmp_path: Path) -> None:
    lab = fault_lab(tmp_path)
    before = parse_conf(lab.paths.conf(101).read_text()).main
    faults.attach_cloudinit(lab.paths, roster.by_name("pbs"))
    conf = parse_conf(lab.paths.conf(101).read_text())
    assert conf.main == {
        **before, "ide2": "local:vm-101-cloudinit,media=cdrom", "ciuser": "root",
        "ipconfig0": "ip=dhcp",
    }  # fmt: skip
    assert conf.sections == {}
    script = faults.instance_id_script(lab.paths, roster.by_name("pbs"))
    assert script == (
        f"set -e\nmkdir -p /var/lib/cloud/data\necho {CI_CONF_SHA1} > "
        "/var/lib/cloud/data/instance-id\n"
    )
    assert dump_meta(lab.paths) == f"instance-id: {CI_CONF_SHA1}\n\n"


def test_fault_on_a_running_vm_leaves_a_visible_cloudinit_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_qemu: None
) -> None:
    lab = fault_lab(tmp_path)
    scripts = apply_fault(lab, monkeypatch)
    guest_id = scripts[0].split("echo ")[1].split()[0]
    assert guest_id == CI_CONF_SHA1  # the id of the drive before the change
    conf = parse_conf(lab.paths.conf(101).read_text())
    assert conf.main["ciuser"] == "pvelab"
    assert conf.sections["special:cloudinit"] == {"ciuser": "root"}
    assert dump_meta(lab.paths) != f"instance-id: {guest_id}\n\n"
    assert lab.qm_log()[-1]["argv"] == ["set", "101", "--ciuser", "pvelab"]


def test_fault_on_a_stopped_vm_changes_the_id_without_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = fault_lab(tmp_path)
    scripts = apply_fault(lab, monkeypatch)
    conf = parse_conf(lab.paths.conf(101).read_text())
    assert (conf.main["ciuser"], conf.sections) == ("pvelab", {})
    assert f"echo {CI_CONF_SHA1} > " in scripts[0]
    assert dump_meta(lab.paths) != f"instance-id: {CI_CONF_SHA1}\n\n"
