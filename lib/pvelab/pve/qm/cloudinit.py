"""The cloud-init data PVE generates from a VM config, and `qm cloudinit dump`.

A port of qemu-server 8.4 (stable-bookworm) `src/PVE/QemuServer/Cloudinit.pm`:
cloudinit_userdata, nocloud_network, configdrive2_network, nocloud_gen_metadata,
configdrive2_gen_metadata, get_dns_conf, get_hostname_fqdn, get_cloudinit_format and
dump_cloudinit_config; parse_net/parse_ipconfig from `QemuServer.pm`, the host's resolv.conf as
pve-common `INotify.pm` read_etc_resolv_conf reads it. Texts are PVE's, byte for byte: the
meta-data's instance-id is the SHA-1 of user-data followed by network-config.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvelab.pve.qm import schema
from pvelab.pve.qm.context import Context, QmError

Warn = Callable[[str], None]
DUMP_TYPES = ("user", "network", "meta")
# The node's resolver config: get_dns_conf falls back to it without nameserver/searchdomain.
RESOLV_CONF = Path("/etc/resolv.conf")
# QemuServer/Helpers.pm windows_version: every ostype that is a Windows.
WINDOWS_OSTYPES = ("wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11")
_NIC_MODELS = (
    "e1000", "e1000-82540em", "e1000-82544gc", "e1000-82545em", "e1000e", "i82551", "i82557b",
    "i82559er", "ne2k_isa", "ne2k_pci", "pcnet", "rtl8139", "virtio", "vmxnet3",
)  # fmt: skip
_NET_KEYS = (
    "macaddr", "model", "bridge", "queues", "rate", "tag", "trunks", "firewall", "link_down", "mtu",
)  # fmt: skip


def _ignore(_message: str) -> None:
    return None


def truthy(value: str | None) -> bool:
    """Perl truth of a config value: not undef, not '' and not '0'."""
    return value not in (None, "", "0")


def is_windows(ostype: str | None) -> bool:
    return ostype in WINDOWS_OSTYPES


def citype(conf: dict[str, str]) -> str:
    """get_cloudinit_format: `citype`, else configdrive2 for Windows, else nocloud."""
    if "citype" in conf:
        return conf["citype"]
    return "configdrive2" if is_windows(conf.get("ostype")) else "nocloud"


def _perl_split_ws(text: str) -> list[str]:
    """Perl `split(/\\s+/, $text)`: a leading empty field stays, trailing ones go."""
    fields = re.split(r"\s+", text) if text else []
    while fields and fields[-1] == "":
        fields.pop()
    return fields


def read_resolv_conf(path: Path) -> dict[str, str]:
    """read_etc_resolv_conf: the last `search`/`domain` (its first word), up to 3 nameservers."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    res: dict[str, str] = {}
    count = 0
    for line in lines:
        if match := re.match(r"(search|domain)\s+(\S+)", line):
            res["search"] = match.group(2)
        elif match := re.match(r"\s*nameserver\s+([0-9A-Fa-f:.]+)", line):
            if schema.is_ipv4(match.group(1)) or schema.is_ipv6(match.group(1)):
                count += 1
                if count <= 3:
                    res[f"dns{count}"] = match.group(1)
    return res


def dns_conf(conf: dict[str, str]) -> tuple[list[str], list[str]]:
    """get_dns_conf: (search domains, nameservers), the host's where the config has none."""
    host = read_resolv_conf(RESOLV_CONF)
    search = _perl_split_ws(conf.get("searchdomain", host.get("search", "")))
    if "nameserver" in conf:
        return search, _perl_split_ws(conf["nameserver"])
    return search, [host[k] for k in ("dns1", "dns2", "dns3") if host.get(k)]


def hostname_fqdn(conf: dict[str, str], vmid: int) -> tuple[str, str]:
    """get_hostname_fqdn: `name` (default `VM<vmid>`), the fqdn from it or `searchdomain`."""
    hostname = conf.get("name", f"VM{vmid}")
    if "." in hostname:
        return hostname.split(".", 1)[0], hostname
    if truthy(search := conf.get("searchdomain")):
        return hostname, f"{hostname}.{search}"
    return hostname, hostname


def userdata(conf: dict[str, str], vmid: int, mask_password: bool = False) -> str:
    """cloudinit_userdata: the `#cloud-config` user-data."""
    hostname, fqdn = hostname_fqdn(conf, vmid)
    text = f"#cloud-config\nhostname: {hostname}\nmanage_etc_hosts: true\nfqdn: {fqdn}\n"
    user, password = conf.get("ciuser"), conf.get("cipassword")
    if user is not None:
        text += f"user: {user}\n"
        if user == "root":
            text += "disable_root: False\n"
    if password is not None:
        text += "password: **********\n" if mask_password else f"password: {password}\n"
    if "sshkeys" in conf:
        keys = urllib.parse.unquote(conf["sshkeys"]).split("\n")
        text += "ssh_authorized_keys:\n" + "".join(f"  - {k}\n" for k in keys if k.strip())
    text += "chpasswd:\n  expire: False\n"
    if user != "root":
        text += "users:\n  - default\n"
    if conf.get("ciupgrade") is None or truthy(conf.get("ciupgrade")):
        text += "package_upgrade: true\n"
    return text


def parse_net(value: str, warn: Warn) -> dict[str, str] | None:
    """parse_net: `virtio=<MAC>,bridge=...` (a model name is an alias of `macaddr`)."""
    res: dict[str, str] = {}
    for part in value.split(","):
        key, eq, val = part.partition("=")
        if not part.strip():
            continue
        if not eq:
            res["model"] = part
        elif key in _NIC_MODELS:
            res["model"], res["macaddr"] = key, val
        elif key in _NET_KEYS:
            res[key] = val
        else:
            warn(f"invalid key in comma-separated list property: {key}\n")
            return None
    return res


def parse_ipconfig(value: str, warn: Warn) -> dict[str, str] | None:
    """parse_ipconfig: None (after PVE's warning) for a string cloud-init cannot use."""
    try:
        res = schema.parse_ipconfig("ipconfig", value)
    except ValueError as exc:
        warn(str(exc))
        return None
    problems = (
        (res.get("gw") and not res.get("ip"), "gateway specified without specifying an IP address"),
        (res.get("gw6") and not res.get("ip6"),
         "IPv6 gateway specified without specifying an IPv6 address"),
        (res.get("gw") and res.get("ip") == "dhcp", "gateway specified together with DHCP"),
        (res.get("gw6") and not re.match(r"[0-9A-Fa-f:]*:", res.get("ip6", "")),
         f"IPv6 gateway specified together with {res.get('ip6')} address"),
    )  # fmt: skip
    for bad, message in problems:
        if bad:
            warn(message)
            return None
    if not res.get("ip") and not res.get("ip6"):
        return {"ip": "dhcp", "ip6": "dhcp"}
    return res


def _split_ip4(ip: str) -> tuple[str, str]:
    """split_ip4: address and dotted netmask ($PVE::Network::ipv4_reverse_mask)."""
    addr, slash, prefix = ip.partition("/")
    if not slash:
        raise QmError(f"not a CIDR: {ip}")
    return addr, str(ipaddress.IPv4Network(f"0.0.0.0/{prefix.split('/')[0]}").netmask)


def _interfaces(conf: dict[str, str]) -> list[tuple[str, str]]:
    """`sort grep { /^net(\\d+)$/ } keys %$conf` (a string sort: net10 before net2) with the
    ids of those that have a Perl-true `ipconfig<id>`."""
    names = sorted(k for k in conf if re.fullmatch(r"net\d+", k))
    return [(n, n[3:]) for n in names if truthy(conf.get(f"ipconfig{n[3:]}"))]


def nocloud_network(conf: dict[str, str], warn: Warn = _ignore) -> str:
    """nocloud_network: network-config version 1."""
    text = "version: 1\nconfig:\n"
    for iface, nid in _interfaces(conf):
        i = "    "
        net = parse_net(conf[iface], warn) or {}
        ipconfig = parse_ipconfig(conf[f"ipconfig{nid}"], warn) or {}
        mac = net.get("macaddr", "").lower()
        if not mac:
            raise QmError(f"network interface '{iface}' has no mac address")
        text += f"{i}- type: physical\n{i}  name: eth{nid}\n{i}  mac_address: '{mac}'\n"
        text += f"{i}  subnets:\n"
        i += "  "
        if (ip := ipconfig.get("ip")) is not None:
            if ip == "dhcp":
                text += f"{i}- type: dhcp4\n"
            else:
                addr, mask = _split_ip4(ip)
                text += f"{i}- type: static\n{i}  address: '{addr}'\n{i}  netmask: '{mask}'\n"
                if (gw := ipconfig.get("gw")) is not None:
                    text += f"{i}  gateway: '{gw}'\n"
        if (ip6 := ipconfig.get("ip6")) is not None:
            if ip6 == "dhcp":
                text += f"{i}- type: dhcp6\n"
            elif ip6 == "auto":
                text += f"{i}- type: ipv6_slaac\n"
            else:
                text += f"{i}- type: static6\n{i}  address: '{ip6}'\n"
                if (gw6 := ipconfig.get("gw6")) is not None:
                    text += f"{i}  gateway: '{gw6}'\n"
    search, nameservers = dns_conf(conf)
    text += "    - type: nameserver\n"  # `if ($searchdomains || $nameservers)`: array refs, true
    if nameservers:
        text += "      address:\n" + "".join(f"      - '{n}'\n" for n in nameservers)
    if search:
        text += "      search:\n" + "".join(f"      - '{s}'\n" for s in search)
    return text


def configdrive2_network(conf: dict[str, str], warn: Warn = _ignore) -> str:
    """configdrive2_network: an /etc/network/interfaces text."""
    text = "auto lo\niface lo inet loopback\n\n"
    search, nameservers = dns_conf(conf)
    if nameservers:
        text += f"        dns_nameservers {' '.join(nameservers)}\n"
    if search:
        text += f"        dns_search {' '.join(search)}\n"
    for _iface, nid in _interfaces(conf):
        net = parse_ipconfig(conf[f"ipconfig{nid}"], warn) or {}
        eth = f"eth{nid}"
        text += f"auto {eth}\n"
        if truthy(ip := net.get("ip")):
            if ip == "dhcp":
                text += f"iface {eth} inet dhcp\n"
            else:
                addr, mask = _split_ip4(str(ip))
                text += f"iface {eth} inet static\n        address {addr}\n        netmask {mask}\n"
                if truthy(net.get("gw")):
                    text += f"        gateway {net['gw']}\n"
        if truthy(ip6 := net.get("ip6")):
            if ip6 in ("auto", "dhcp"):
                text += f"iface {eth} inet6 {ip6}\n"
            else:
                addr6, _slash, mask6 = str(ip6).partition("/")
                text += f"iface {eth} inet6 static\n        address {addr6}\n"
                text += f"        netmask {mask6.split('/')[0]}\n"
                if truthy(net.get("gw6")):
                    text += f"        gateway {net['gw6']}\n"
    return text


def sha1_hex(user: str, network: str) -> str:
    """Digest::SHA::sha1_hex($user . $network): the instance-id (nocloud) or uuid."""
    return hashlib.sha1((user + network).encode()).hexdigest()  # noqa: S324


def nocloud_metadata(uuid: str) -> str:
    return f"instance-id: {uuid}\n"


def configdrive2_metadata(uuid: str) -> str:
    return (
        "{\n"
        f'     "uuid": "{uuid}",\n'
        '     "network_config": { "content_path": "/content/0000" }\n'
        "}\n"
    )


def network_data(conf: dict[str, str], warn: Warn = _ignore) -> str:
    """The network-config dump_cloudinit_config shows: nocloud's, else configdrive2's."""
    if citype(conf) == "nocloud":
        return nocloud_network(conf, warn)
    return configdrive2_network(conf, warn)


def instance_id(conf: dict[str, str], vmid: int, warn: Warn = _ignore) -> str:
    """The id the next generated drive carries (meta-data without `cicustom`)."""
    return sha1_hex(userdata(conf, vmid), network_data(conf, warn))


def dump_config(conf: dict[str, str], vmid: int, kind: str, warn: Warn = _ignore) -> str:
    """dump_cloudinit_config: `user`, `network` or (else) the meta-data; `cicustom` ignored."""
    if kind == "user":
        return userdata(conf, vmid)  # root@pam holds VM.Config.Cloudinit: nothing masked
    if kind == "network":
        return network_data(conf, warn)
    uuid = instance_id(conf, vmid, warn)  # "Don't mask password here to get correct uuid."
    return nocloud_metadata(uuid) if citype(conf) == "nocloud" else configdrive2_metadata(uuid)


def dump(ctx: Context, p: dict[str, Any]) -> None:
    """`qm cloudinit dump <vmid> <user|network|meta>` (API cloudinit_generated_config_dump;
    qm.pm prints the result and a newline). The current config: pending values not applied."""
    conf = ctx.load(p["vmid"]).main
    ctx.out(dump_config(conf, p["vmid"], p["type"], ctx.warn) + "\n")
