"""Every inventory error: one parametrized case each, naming file, host and field; all at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pvepatch.errors import InventoryError, InventoryProblems
from pvepatch.inventory import load_inventory

HEAD = """all:
  children:
    proxmox:
      hosts:
        pve: {ansible_host: 192.0.2.10}
    ubuntu_vms:
      hosts:
"""
PIHOLES = """    pihole:
      vars:
        ansible_host: 192.0.2.22
      hosts:
        pihole:
"""


def load(tmp_path: Path, text: str | bytes, **kw) -> InventoryError:
    path = tmp_path / "inventory.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InventoryError) as excinfo:
        load_inventory(path, **kw)
    return excinfo.value


def not_resolvable(name: str) -> str:
    raise LookupError(f"[Errno -2] Name or service not known: {name}")


HOST_CASES = {
    "vmid-missing": ("pbs: {proxmox_host: pve}", "host 'pbs': 'vmid' is missing"),
    "vmid-not-int": ("pbs: {vmid: 10a, proxmox_host: pve}", "'vmid' must be an integer, got '10a'"),
    "vmid-too-small": ("pbs: {vmid: 99, proxmox_host: pve}", "'vmid' must be between 100 and"),
    "vmid-bool": ("pbs: {vmid: yes, proxmox_host: pve}", "'vmid' must be an integer, got True"),
    "vmid-list": ("pbs: {vmid: [1], proxmox_host: pve}", "'vmid' must be an integer, got a list"),
    "vmid-yaml-octal": (
        "pbs: {vmid: 0144, proxmox_host: pve}",
        "'vmid' is written as 0144, which YAML 1.1 reads as 100, not 144",
    ),
    "vmid-leading-zero": (
        "pbs: {vmid: 0900, proxmox_host: pve}",
        "'vmid' is written as '0900' with a leading zero: Proxmox refuses",
    ),
    "vmid-quoted-leading-zero": (
        "pbs: {vmid: '0101', proxmox_host: pve}",
        "'vmid' is written as '0101' with a leading zero",
    ),
    "vmid-hex": ("pbs: {vmid: 0x65, proxmox_host: pve}", "'vmid' is written as 0x65, which YAML"),
    "vmid-sexagesimal": (
        "pbs: {vmid: 1:41, proxmox_host: pve}",
        "'vmid' is written as 1:41, which YAML 1.1 reads as 101:",
    ),
    "vmid-vault": (
        "pbs: {vmid: !vault '$ANSIBLE_VAULT;1.1;AES256', proxmox_host: pve}",
        "host 'pbs': 'vmid' is vault-encrypted: vault-encrypted values are not supported for 'vmid'",
    ),
    "proxmox-host-missing": ("pbs: {vmid: 101}", "host 'pbs': 'proxmox_host' is missing"),
    "proxmox-host-unknown": (
        "pbs: {vmid: 101, proxmox_host: pve2}",
        "host 'pbs': 'proxmox_host' names 'pve2', which is not a host of the inventory",
    ),
    "proxmox-host-is-target": (
        "pbs: {vmid: 101, proxmox_host: ca}\n        ca: {vmid: 104, proxmox_host: pve}",
        "host 'pbs': 'proxmox_host' names 'ca', which is itself a target VM",
    ),
    "duplicate-vmid": (
        "pbs: {vmid: 101, proxmox_host: pve}\n        ca: {vmid: 101, proxmox_host: pve}",
        "host 'ca': 'vmid' 101 on Proxmox host 'pve' is also the vmid of 'pbs'",
    ),
    "port-not-int": (
        "pbs: {vmid: 101, proxmox_host: pve, ansible_port: http}",
        "host 'pbs': 'ansible_port' must be an integer, got 'http'",
    ),
    "port-out-of-range": (
        "pbs: {vmid: 101, proxmox_host: pve, ansible_port: 70000}",
        "'ansible_port' must be between 1 and 65535, got 70000",
    ),
    "key-file-missing": (
        "pbs: {vmid: 101, proxmox_host: pve, ansible_ssh_private_key_file: /nonexistent/key}",
        "host 'pbs': 'ansible_ssh_private_key_file' file not found: /nonexistent/key",
    ),
    "key-file-vault": (
        "pbs: {vmid: 101, proxmox_host: pve, ansible_ssh_private_key_file: !vault 'x'}",
        "not supported for 'ansible_ssh_private_key_file'",
    ),
    "ssh-args-unparsable": (
        "pbs: {vmid: 101, proxmox_host: pve, ansible_ssh_common_args: '-o \"x'}",
        "'ansible_ssh_common_args' cannot be parsed: No closing quotation",
    ),
    "user-with-space": (
        "pbs: {vmid: 101, proxmox_host: pve, ansible_user: 'ro ot'}",
        "'ansible_user' must not contain spaces or control characters",
    ),
    "become-not-bool": (
        "pbs: {vmid: 101, proxmox_host: pve, ansible_become: maybe}",
        "'ansible_become' must be a boolean, got 'maybe'",
    ),
    "host-name-dotdot": (
        "../../etc/x: {vmid: 101, proxmox_host: pve}",
        "group 'ubuntu_vms': host name '../../etc/x' is not safe",
    ),
    "host-name-slash": ("a/b: {vmid: 101, proxmox_host: pve}", "host name 'a/b' is not safe"),
    "host-name-leading-dash": (
        "-oProxyCommand: {vmid: 101, proxmox_host: pve}",
        "host name '-oProxyCommand' is not safe",
    ),
    "host-name-space": ("'pb s': {vmid: 101, proxmox_host: pve}", "host name 'pb s' is not safe"),
    "host-name-control": ('"pb\\x07": {vmid: 101, proxmox_host: pve}', "host name 'pb\\x07'"),
    "host-name-dot": (".hidden: {vmid: 101, proxmox_host: pve}", "host name '.hidden' is not safe"),
    "host-vars-not-mapping": ("pbs: [101, pve]", "host 'pbs': host variables must be a mapping"),
}
PIHOLE_CASES = {
    "service-leading-dash": ("pihole_service: --now", "'pihole_service' must be a plain systemd"),
    "service-shell": ("pihole_service: 'ftl;reboot'", "got 'ftl;reboot'"),
    "service-space": ("pihole_service: 'a b'", "'pihole_service' must be a plain systemd unit"),
    "dns-port": ("pihole_dns_port: 0", "'pihole_dns_port' must be between 1 and 65535, got 0"),
    "dns-protocol": ("pihole_dns_protocol: doh", "'pihole_dns_protocol' must be one of udp, tcp"),
    "resolve-name-space": ("pihole_resolve_name: 'pi hole'", "'pihole_resolve_name' must not"),
    "blocked-name-empty": ("pihole_blocked_name: ''", "'pihole_blocked_name' must be a non-empty"),
    "blocked-name-vault": (
        "pihole_blocked_name: !vault x",
        "not supported for 'pihole_blocked_name'",
    ),
    "dns-server-unresolvable": (
        "pihole_dns_server: dns.example",
        "host 'pihole': 'pihole_dns_server' 'dns.example' (the Pi-hole's DNS server) does not "
        "resolve: [Errno -2] Name or service not known: dns.example; write its IP address",
    ),
}


@pytest.mark.parametrize("hosts, message", HOST_CASES.values(), ids=HOST_CASES.keys())
def test_host_error_names_file_host_and_field(tmp_path, hosts, message):
    exc = load(tmp_path, HEAD + f"        {hosts}\n")
    assert f"{tmp_path / 'inventory.yaml'}: " in str(exc)
    assert message in str(exc)


@pytest.mark.parametrize("pihole_vars, message", PIHOLE_CASES.values(), ids=PIHOLE_CASES.keys())
def test_pihole_error_names_file_host_and_field(tmp_path, pihole_vars, message):
    text = HEAD + "        pihole: {vmid: 102, proxmox_host: pve}\n" + PIHOLES
    text = text.replace(
        "        ansible_host: 192.0.2.22\n",
        f"        ansible_host: 192.0.2.22\n        {pihole_vars}\n",
    )
    exc = load(tmp_path, text, resolve=not_resolvable)
    assert str(exc).startswith(f"{tmp_path / 'inventory.yaml'}: host 'pihole': ")
    assert message in str(exc)


DEEP = "all:\n  vars:\n    x: " + "[" * 5000 + "]" * 5000 + "\n"
BOMB = "all:\n  vars:\n    a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9)
)
FILE_CASES = {
    "empty": ("", "the inventory is empty"),
    "only-a-comment": ("# nothing\n", "the inventory is empty"),
    "top-level-list": ("- pbs\n- pihole\n", "the top level is a list; it must be a mapping"),
    "top-level-scalar": ("pbs\n", "the top level must be a mapping of groups"),
    "yaml-syntax": ("all:\n  children: [\n", "YAML syntax error at line 3, column 1"),
    "unknown-tag": (
        "all:\n  vars: {x: !foo 1}\n",
        "could not determine a constructor for the tag '!foo'",
    ),
    "ini": (
        "[proxmox]\npve ansible_host=192.0.2.10\n\n[ubuntu_vms]\npbs vmid=101\n",
        "this is an INI inventory ('[proxmox]' is an INI section header); pvepatch reads the YAML "
        "format: convert it with `ansible-inventory -i {path} --list -y > inventory.yaml`",
    ),
    "ini-one-section": ("[ubuntu_vms]\n", "this is an INI inventory"),
    "not-utf8": (b"all:\n  vars:\n    x: caf\xe9\n", "not UTF-8 text: byte 0xe9 at line 3"),
    "utf16": ("all:\n".encode("utf-16"), "not UTF-8 text: byte 0xff at line 1"),
    "deep-nesting": (DEEP, "nested deeper than 40 levels at line 3"),
    "alias-bomb": (BOMB, "YAML aliases expand to more than 100000 values (an alias bomb?)"),
    "recursive-alias": ("all: &a\n  children:\n    x: *a\n", "an alias refers to its own anchor"),
    "group-not-mapping": (
        "all:\n  children:\n    ubuntu_vms: [pbs]\n",
        "group 'ubuntu_vms' must be a mapping",
    ),
    "hosts-a-list": (
        "all:\n  children:\n    ubuntu_vms:\n      hosts:\n        - pbs\n",
        "group 'ubuntu_vms': 'hosts' must be a mapping of host names (write 'pbs:' on its own "
        "line, not '- pbs'), got a list",
    ),
    "vars-a-list": ("all:\n  vars: [a]\n", "group 'all': 'vars' must be a mapping, got a list"),
    "unknown-group-key": ("all:\n  host: {}\n", "group 'all': unknown key(s) ['host']"),
    "children-cycle": (
        "all:\n  children:\n    a:\n      children:\n        b:\n          children:\n            a:\n",
        "group 'a' is its own descendant",
    ),
    "no-target-group": ("all:\n  hosts:\n    pbs:\n", "target group 'ubuntu_vms' not found"),
    "empty-target-group": (
        "all:\n  children:\n    ubuntu_vms:\n",
        "target group 'ubuntu_vms' has no hosts",
    ),
}


@pytest.mark.parametrize("text, message", FILE_CASES.values(), ids=FILE_CASES.keys())
def test_file_error_is_clear_and_quick(tmp_path, text, message):
    started = time.monotonic()
    exc = load(tmp_path, text)
    assert time.monotonic() - started < 0.5
    path = tmp_path / "inventory.yaml"
    assert str(exc).startswith(f"{path}: ")
    assert message.format(path=path) in str(exc)


def test_missing_file(tmp_path):
    with pytest.raises(InventoryError, match="nope.yaml: cannot read inventory: No such file"):
        load_inventory(tmp_path / "nope.yaml")


def test_a_directory_is_not_an_inventory(tmp_path):
    with pytest.raises(InventoryError, match="cannot read inventory: Is a directory"):
        load_inventory(tmp_path)


LIMIT_CASES = {
    "unknown": ("web1", "--limit: 'web1' is neither a host nor a group"),
    "unknown-excluded": ("pbs,!web1", "--limit: 'web1' is neither a host nor a group"),
    "wildcard": ("pb*", "--limit: 'pb*': wildcards, regular expressions and '&' are not supported"),
    "intersection": ("ubuntu_vms,&pihole", "'&pihole': wildcards, regular expressions and '&'"),
    "nothing-selected": ("pve", "--limit 'pve' selects no host of group 'ubuntu_vms'"),
}


@pytest.mark.parametrize("limit, message", LIMIT_CASES.values(), ids=LIMIT_CASES.keys())
def test_limit_error(tmp_path, limit, message):
    exc = load(tmp_path, HEAD + "        pbs: {vmid: 101, proxmox_host: pve}\n", limit=limit)
    assert message in str(exc)


def test_same_host_given_two_vmids_by_two_groups(tmp_path):
    text = (
        HEAD
        + "        pbs: {vmid: 101, proxmox_host: pve}\n    backup:\n      hosts:\n        pbs: {vmid: 110}\n"
    )
    exc = load(tmp_path, text)
    assert str(exc) == (
        f"{tmp_path / 'inventory.yaml'}: host 'pbs': 'vmid' is 101 under group 'ubuntu_vms' but "
        "110 under group 'backup': a VM has exactly one vmid"
    )


def test_same_binding_repeated_by_two_groups_is_fine(tmp_path):
    text = (
        HEAD
        + "        pbs: {vmid: 101, proxmox_host: pve}\n    backup:\n      hosts:\n        pbs: {vmid: 101}\n"
    )
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    assert [(t.name, t.vmid) for t in load_inventory(path).targets] == [("pbs", 101)]


def test_every_problem_is_reported_at_once_one_per_line(tmp_path):
    hosts = (
        "        pbs: {proxmox_host: pve}\n"
        "        ca: {vmid: 0144, proxmox_host: pve, ansible_port: x}\n"
        "        ../x: {vmid: 105, proxmox_host: pve}\n"
        "        grafana: {vmid: 106, proxmox_host: nowhere}\n"
    )
    exc = load(tmp_path, HEAD + hosts)
    assert isinstance(exc, InventoryProblems)
    path = tmp_path / "inventory.yaml"
    assert str(exc).splitlines() == [
        f"{path}: 5 problems:",
        f"{path}: group 'ubuntu_vms': host name '../x' is not safe (it names report files and "
        "test ids): use letters, digits and . _ - : @ + = % only, not starting with '-' or '.', "
        "without '..'",
        f"{path}: host 'pbs': 'vmid' is missing: every target VM must define vmid and proxmox_host",
        f"{path}: host 'ca': 'vmid' is written as 0144, which YAML 1.1 reads as 100, not 144: "
        "write the integer in plain decimal, without leading zeros",
        f"{path}: host 'grafana': 'proxmox_host' names 'nowhere', which is not a host of the "
        "inventory",
        f"{path}: host 'ca': 'ansible_port' must be an integer, got 'x'",
    ]
    assert [(p.host, p.field) for p in exc.problems] == [
        (None, None),
        ("pbs", "vmid"),
        ("ca", "vmid"),
        ("grafana", "proxmox_host"),
        ("ca", "ansible_port"),
    ]


def test_limit_and_host_problems_come_together(tmp_path):
    exc = load(tmp_path, HEAD + "        pbs: {proxmox_host: pve}\n", limit="web1")
    assert str(exc).splitlines()[1:] == [
        f"{tmp_path / 'inventory.yaml'}: --limit: 'web1' is neither a host nor a group",
        f"{tmp_path / 'inventory.yaml'}: host 'pbs': 'vmid' is missing: every target VM must "
        "define vmid and proxmox_host",
    ]


def test_many_problems_stop_at_fifty_saying_how_many_more(tmp_path):
    hosts = "".join(f"        vm{i}: {{proxmox_host: pve}}\n" for i in range(60))
    lines = str(load(tmp_path, HEAD + hosts)).splitlines()
    assert lines[0].endswith(": 60 problems:")
    assert len(lines) == 52
    assert lines[50].endswith(
        "host 'vm49': 'vmid' is missing: every target VM must define vmid and proxmox_host"
    )
    assert lines[51] == "... and 10 more problem(s) not shown"
