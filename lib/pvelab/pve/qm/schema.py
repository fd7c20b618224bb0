"""PVE's schema for `qm set`: the config keys the lab takes, their formats and error texts.

Formats and texts from qemu-server 8.4 `QemuServer.pm` ($confdesc, $agent_fmt,
parse_hotplug_features), `QemuServer/Memory.pm` ($memory_fmt) and pve-common 8.3
`JSONSchema.pm` (parse_property_string, pve_verify_dns_name, pve_verify_tag, split_list).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from pvelab.pve.qm.options import Option, UsageError, check_value
from pvelab.pve.qm.version import flavour
from pvelab.pve.vmconf import parse_boolean

# QS8 QemuServer.pm $confdesc / $confdesc_cloudinit keys, plus the numbered ones below.
CONF_KEYS = frozenset(
    "acpi affinity agent amd-sev arch args audio0 autostart balloon bios boot bootdisk cdrom "
    "cores cpu cpulimit cpuunits description efidisk0 freeze hookscript hotplug hugepages "
    "ivshmem keephugepages keyboard kvm localtime lock machine memory meta migrate_downtime "
    "migrate_speed name numa onboot ostype parent protection reboot rng0 runningcpu "
    "runningmachine scsihw shares smbios1 smp snaptime sockets spice_enhancements startdate "
    "startup tablet tags tdf template tpmstate0 vcpus vga vmgenid vmstate vmstatestorage "
    "watchdog citype ciuser cipassword ciupgrade cicustom searchdomain nameserver "
    "sshkeys".split()
)
# (prefix, count): MAX_NETS 32, drives (Drive.pm), MAX_UNUSED_DISKS 256, MAX_USB_DEVICES 14, ...
_NUMBERED = (
    ("net", 32), ("ipconfig", 32), ("virtio", 16), ("scsi", 31), ("sata", 6), ("ide", 4),
    ("unused", 256), ("usb", 14), ("hostpci", 16), ("serial", 4), ("parallel", 3),
    ("numa", 8), ("virtiofs", 10),
)  # fmt: skip
_CONFIGID_RE = re.compile(r"[a-z][a-z0-9_-]+", re.IGNORECASE | re.ASCII)
_DNS_LABEL = r"([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)"
_DNS_RE = re.compile(rf"({_DNS_LABEL}\.)*{_DNS_LABEL}")
_TAG_RE = re.compile(r"[a-z0-9_][a-z0-9_\-+.]*", re.IGNORECASE)
OSTYPES = (
    "other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11", "l24",
    "l26", "solaris",
)  # fmt: skip
HOTPLUG_DEFAULT = "network,disk,usb"


def option_exists(key: str) -> bool:
    """QemuServer::option_exists: a key of $confdesc."""
    if key in CONF_KEYS:
        return True
    match = re.fullmatch(r"([a-z]+)(0|[1-9]\d*)", key)
    if match is None:
        return False
    prefix, index = match.group(1), int(match.group(2))
    return any(prefix == p and index < n for p, n in _NUMBERED)


def split_list(text: str) -> list[str]:
    """PVE::Tools::split_list: `,` `;` and whitespace separate."""
    return re.sub(r"[,;]", " ", text).split()


def configid_list_error(value: str) -> str | None:
    """Format `pve-configid-list` (delete, revert)."""
    for item in split_list(value):
        if not _CONFIGID_RE.fullmatch(item):
            return f"invalid format - invalid configuration ID '{item}'\n"
    return None


def dns_name_error(value: str) -> str | None:
    """Format `dns-name` (the `name` key)."""
    if not _DNS_RE.fullmatch(value):
        return "invalid format - value does not look like a valid DNS name\n"
    return None


def tag_list_error(value: str) -> str | None:
    """Format `pve-tag-list`."""
    for tag in split_list(value):
        if not _TAG_RE.fullmatch(tag):
            return "invalid format - invalid characters in tag\n"
    return None


def hotplug_features(value: str) -> set[str]:
    """parse_hotplug_features: `0` none, `1` the default; raises ValueError on a bad feature."""
    if value == "0":
        return set()
    features = set()
    for feature in split_list(HOTPLUG_DEFAULT if value == "1" else value):
        if feature not in ("network", "disk", "cpu", "memory", "usb", "cloudinit"):
            raise ValueError(f"invalid hotplug feature '{feature}'")
        features.add(feature)
    return features


def hotplug_error(value: str) -> str | None:
    """Format `pve-hotplug-features`."""
    try:
        hotplug_features(value)
    except ValueError as exc:
        return f"invalid format - {exc}\n"
    return None


def property_string(
    path: str,
    value: str,
    fmt: tuple[Option, ...],
    default_key: str,
    aliases: dict[str, str] | None = None,
) -> dict[str, str]:
    """JSONSchema::parse_property_string; raises ValueError with PVE's text (after `- `)."""
    keys = {o.name: o for o in fmt}
    aliases = aliases or {}
    res: dict[str, str] = {}
    for part in value.split(","):
        if not part.strip():
            continue
        match = re.fullmatch(r"([^=]+)=(.+)", part, re.DOTALL)
        if match:
            key, val = match.groups()
            if key in res:
                raise ValueError(f"duplicate key in comma-separated list property: {key}\n")
            key = aliases.get(key, key)
            if key not in keys:
                raise ValueError(f"invalid key in comma-separated list property: {key}\n")
            if keys[key].kind == "boolean":
                flag = parse_boolean(val)
                val = val if flag is None else str(int(flag))
            res[key] = val
        elif "=" not in part:
            if not default_key:
                raise ValueError("value without key, but schema does not define a default key\n")
            if res.get(default_key):
                raise ValueError(f"duplicate key in comma-separated list property: {default_key}\n")
            res[default_key] = part
        else:
            raise ValueError("missing key in comma-separated list property\n")
    errors = {
        f"{path}.{k}": error
        for k, v in res.items()
        if (error := check_value(keys[k], v)) is not None
    }
    for k in res:  # check_object: `requires` names another key of the same string
        if (needed := keys[k].requires) is not None and needed not in res:
            errors[f"{path}.{needed}"] = f"missing property - '{path}.{k}' requires this property"
    if errors:
        raise ValueError("format error\n" + "".join(f"{k}: {errors[k]}\n" for k in sorted(errors)))
    return res


def agent_format() -> tuple[tuple[Option, ...], dict[str, str]]:
    """$agent_fmt of the PVE version in effect: its keys and key aliases."""
    kinds = {"type": Option("type", enum=("virtio", "isa"))}
    fmt = tuple(kinds.get(k, Option(k, "boolean")) for k in flavour().agent_keys)
    return fmt, dict(flavour().agent_aliases)


def parse_agent(value: str) -> dict[str, str]:
    """The `agent` key as this PVE version parses it; ValueError with PVE's text."""
    fmt, aliases = agent_format()
    return property_string("agent", value, fmt, "enabled", aliases)


def _formatted(parse: Callable[[str], object]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        try:
            parse(value)
        except ValueError as exc:
            return f"invalid format - {exc}"
        return None

    return check


MEMORY_FMT = (Option("current", "integer", minimum=16),)

# --- cloud-init keys (QS8 QemuServer.pm $confdesc_cloudinit, $ipconfig_fmt, $cicustom_fmt) ----

_IPV4_OCTET = r"(?:25[0-5]|(?:2[0-4]|1[0-9]|[1-9])?[0-9])"
_IPV4_RE = re.compile(rf"(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}")
_VOLUME_ID_RE = re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]:.+", re.IGNORECASE | re.DOTALL)
_URLENCODED_RE = re.compile(r"[-%a-zA-Z0-9_.!~*'()]*")
CITYPES = ("configdrive2", "nocloud", "opennebula")
MAX_NETS = 32


def is_ipv4(text: str) -> bool:
    """pve-common Tools.pm $IPV4RE."""
    return _IPV4_RE.fullmatch(text) is not None


def is_ipv6(text: str) -> bool:
    """$IPV6RE (no zone index), via the standard library's parser."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return "%" not in text


def _cidr(text: str, is_ip: Callable[[str], bool], bits: int) -> bool:
    """pve_verify_cidrv4/v6: an address and a prefix above 7."""
    addr, slash, prefix = text.partition("/")
    return bool(slash) and prefix.isdigit() and 7 < int(prefix) <= bits and is_ip(addr)


def _format(test: Callable[[str], bool], message: str) -> Callable[[str], str | None]:
    return lambda value: None if test(value) else f"invalid format - {message}\n"


IPCONFIG_FMT = (
    Option("ip", check=_format(
        lambda v: v in ("dhcp", "manual") or _cidr(v, is_ipv4, 32),
        "value does not look like a valid ipv4 network configuration")),
    Option("gw", check=_format(is_ipv4, "value does not look like a valid IPv4 address"),
           requires="ip"),
    Option("ip6", check=_format(
        lambda v: v in ("auto", "dhcp", "manual") or _cidr(v, is_ipv6, 128),
        "value does not look like a valid ipv6 network configuration")),
    Option("gw6", check=_format(is_ipv6, "value does not look like a valid IPv6 address"),
           requires="ip6"),
)  # fmt: skip
CICUSTOM_FMT = tuple(
    Option(key, check=lambda v: None if _VOLUME_ID_RE.fullmatch(v) else
           f"invalid format - unable to parse volume ID '{v}'\n")
    for key in ("meta", "network", "user", "vendor")
)  # fmt: skip


def parse_ipconfig(key: str, value: str) -> dict[str, str]:
    """The `ipconfigN` property string; ValueError with PVE's text."""
    return property_string(key, value, IPCONFIG_FMT, "")


def address_list_error(value: str) -> str | None:
    """Format `address-list` (nameserver): split_list, each an IP or a DNS name."""
    for item in split_list(value):
        if not (is_ipv4(item) or is_ipv6(item) or _DNS_RE.fullmatch(item)):
            return f"invalid format - value does not look like a valid address: {item}\n"
    return None


def urlencoded_error(value: str) -> str | None:
    """Format `urlencoded` (sshkeys)."""
    if not _URLENCODED_RE.fullmatch(value):
        return f"invalid format - invalid urlencoded string: {value}\n"
    return None


def read_sshkeys(path: str) -> str:
    """qm.pm param_mapping `sshkeys`: the CLI takes a file, the API its uri_escape'd text."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"can't open '{path}' - {exc.strerror}\n") from exc
    return urllib.parse.quote(data, safe="")


CLOUDINIT_OPTIONS: tuple[Option, ...] = (
    Option("cicustom", check=_formatted(
        lambda v: property_string("cicustom", v, CICUSTOM_FMT, ""))),
    Option("cipassword"),
    Option("citype", enum=CITYPES),
    Option("ciupgrade", "boolean"),
    Option("ciuser"),
    *(Option(f"ipconfig{n}", check=_formatted(functools.partial(parse_ipconfig, f"ipconfig{n}")))
      for n in range(MAX_NETS)),
    Option("nameserver", check=address_list_error, is_list=True),
    Option("searchdomain"),
    Option("sshkeys", check=urlencoded_error, mapping=read_sshkeys),
)  # fmt: skip

# The `qm set` keys the lab takes (the rest of $confdesc exists for --delete/--revert only).
SET_OPTIONS: tuple[Option, ...] = (
    Option("agent", check=_formatted(parse_agent)),
    Option("args"),
    Option("cores", "integer", minimum=1),
    Option("description", max_length=8192),
    Option("hotplug", check=hotplug_error),
    Option(
        "memory", check=_formatted(lambda v: property_string("memory", v, MEMORY_FMT, "current"))
    ),
    Option("name", check=dns_name_error),
    Option("onboot", "boolean"),
    Option("ostype", enum=OSTYPES),
    Option("protection", "boolean"),
    Option("sockets", "integer", minimum=1),
    Option("tags", check=tag_list_error, is_list=True),
    *CLOUDINIT_OPTIONS,
)
