"""known_hosts read as OpenSSH reads it, and the host-key policy checked before any connection."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from pvepatch.errors import InventoryError
from pvepatch.inventory import load_inventory
from pvepatch.transport import known_hosts
from pvepatch.transport.known_hosts import (
    check_host_key_policy,
    host_keys,
    lookup_name,
    match_patterns,
    parse_line,
)

KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOTr2YHZ9kqQiN0z1R4s7TQd0X2QkzkAj3bdO8MdXAaN"


def hashed(name: str, salt: bytes = b"0123456789abcdef0123") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(
    "patterns, name, expected",
    [
        ("pve", "pve", True),
        ("PVE", "pve", True),
        ("pve", "pve2", False),
        ("pve,pbs", "pbs", True),
        ("*.lan", "pve.lan", True),
        ("pv?", "pve", True),
        ("pv?", "pvee", False),
        ("[127.0.0.1]:2222", "[127.0.0.1]:2222", True),
        ("[127.0.0.1]:2222", "127.0.0.1", False),
        ("[127.0.0.1]:*", "[127.0.0.1]:2201", True),
        ("*,!pve", "pve", False),
        ("*,!pve", "pbs", True),
        ("!pve", "pbs", False),
    ],
)
def test_pattern_matching(patterns, name, expected):
    assert match_patterns(patterns, name) is expected


def test_lookup_name():
    assert (lookup_name("pve", 22), lookup_name("127.0.0.1", 2201)) == ("pve", "[127.0.0.1]:2201")


def test_hashed_entry_matches_only_its_name():
    entry = parse_line(Path("kh"), 1, f"{hashed('[127.0.0.1]:2201')} ssh-ed25519 {KEY}")
    assert entry is not None
    assert entry.matches("[127.0.0.1]:2201") and not entry.matches("[127.0.0.1]:2202")
    broken = parse_line(Path("kh"), 1, f"|1|!!|!! ssh-ed25519 {KEY}")
    assert broken is not None and not broken.matches("x")


@pytest.mark.parametrize(
    "text, marker",
    [
        (f"pve ssh-ed25519 {KEY}", ""),
        (f"@revoked * ssh-ed25519 {KEY}", "revoked"),
        (f"@cert-authority *.lan ssh-ed25519 {KEY}", "cert-authority"),
        (f"pve ssh-ed25519 {KEY} a comment", ""),
    ],
)
def test_key_lines(text, marker):
    entry = parse_line(Path("kh"), 7, text)
    assert entry is not None
    assert (entry.marker, entry.key_type, entry.key, entry.where) == (
        marker,
        "ssh-ed25519",
        KEY,
        "kh line 7",
    )


@pytest.mark.parametrize(
    "text", ["", "   ", "# comment", "pve ssh-ed25519", f"@bogus pve ssh-ed25519 {KEY}", "@revoked"]
)
def test_skipped_lines(text):
    assert parse_line(Path("kh"), 1, text) is None


def test_revoked_key_is_left_out_for_every_host(tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(
        f"pve ssh-ed25519 {KEY}\npve ssh-rsa AAAAB3Nza\n@revoked other ssh-ed25519 {KEY}\n"
        f"@cert-authority *.lan ssh-ed25519 {KEY}\n"
    )
    keys = host_keys(known_hosts.read(kh), "pve")
    assert [(e.key_type, e.line) for e in keys.known] == [("ssh-rsa", 2)]
    assert keys.revocation("ssh-ed25519", KEY) is not None
    assert keys.revocation("ssh-rsa", "AAAAB3Nza") is None
    assert keys.cert_note() == ""
    assert (
        f"{kh} line 4 trusts a @cert-authority"
        in host_keys(known_hosts.read(kh), "x.lan").cert_note()
    )


INVENTORY = """
all:
  children:
    proxmox:
      hosts:
        pve: {ansible_host: 192.0.2.10%s}
    ubuntu_vms:
      hosts:
        pbs: {ansible_host: 192.0.2.21, vmid: 101, proxmox_host: pve%s}
"""


def inventory(tmp_path: Path, pve_args: str = "", pbs_args: str = ""):
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY % (pve_args, pbs_args))
    return load_inventory(path)


@pytest.mark.parametrize("field", ["ansible_ssh_common_args", "ansible_ssh_extra_args"])
def test_accept_new_with_dev_null_known_hosts_is_refused(tmp_path, field):
    inv = inventory(tmp_path, pbs_args=f", {field}: '-o UserKnownHostsFile=/dev/null'")
    check_host_key_policy(inv, accept_new=False)  # strict checking: /dev/null only adds nothing
    with pytest.raises(InventoryError) as excinfo:
        check_host_key_policy(inv, accept_new=True)
    assert str(excinfo.value) == (
        f"{tmp_path / 'inventory.yaml'}: host 'pbs': '{field}' sets UserKnownHostsFile=/dev/null: "
        "with --accept-new-host-keys every host key would be accepted as new, on every run (never "
        "verified); drop --accept-new-host-keys or name a real known_hosts file"
    )


def test_every_host_with_a_forgetful_known_hosts_is_named(tmp_path):
    args = ", ansible_ssh_common_args: '-o UserKnownHostsFile=/dev/null'"
    with pytest.raises(InventoryError) as excinfo:
        check_host_key_policy(inventory(tmp_path, args, args), accept_new=True)
    lines = str(excinfo.value).splitlines()
    assert lines[0].endswith("inventory.yaml: 2 problems:")
    assert [line.split(": ")[1] for line in lines[1:]] == ["host 'pbs'", "host 'pve'"]


def test_a_directory_as_known_hosts_is_refused_too(tmp_path):
    args = f", ansible_ssh_common_args: '-o UserKnownHostsFile={tmp_path}'"
    with pytest.raises(InventoryError, match=f"host 'pve': .* sets UserKnownHostsFile={tmp_path}:"):
        check_host_key_policy(inventory(tmp_path, args), accept_new=True)


def test_accept_new_with_a_real_known_hosts_is_fine(tmp_path):
    kh = tmp_path / "kh"
    inv = inventory(tmp_path, pbs_args=f", ansible_ssh_common_args: '-o UserKnownHostsFile={kh}'")
    assert check_host_key_policy(inv, accept_new=True, extra_known_hosts=[kh]) is None


def test_known_hosts_option_dev_null_with_accept_new_is_refused(tmp_path):
    with pytest.raises(InventoryError, match="--known-hosts /dev/null keeps no keys"):
        check_host_key_policy(inventory(tmp_path), True, extra_known_hosts=[Path("/dev/null")])
