"""The rest of PVE's `$confdesc` for `qm set`, and `qm start`'s own parameter formats.

Sources: qemu-server 8.4.10 `QemuServer.pm` ($confdesc, json_config_properties, $MAX_* counts),
`QemuServer/Machine.pm` ($machine_fmt), `API2/Qemu.pm` (vm_start's parameters), pve-common
`JSONSchema.pm` (pve_verify_cidr, parse_id, parse_idmap, pve_parse_startup_order).

Types, ranges and enums are checked for every key; the formats of the property-string keys
are checked only for `machine`, `startup` and `vmstatestorage`. Stored as given (formats
unchecked): boot, bootdisk, cpu, vga, watchdog, smbios1, hookscript, ivshmem, audio0,
spice_enhancements, rng0, amd-sev, keyboard, startdate, affinity, netN, usbN, hostpciN,
serialN, parallelN, numaN, virtiofsN, unusedN. Disk keys are refused (DISK_KEYS).
"""

from __future__ import annotations

import re

from pvelab.pve.qm import schema
from pvelab.pve.qm.options import Option

_PATTERN_ERROR = "value does not match the regex pattern"
# Machine.pm $machine_fmt `type`: pattern, then maxLength 40.
_MACHINE_RE = re.compile(
    r"(pc|pc(-i440fx)?-\d+(\.\d+)+(\+pve\d+)?(\.pxe)?|q35|pc-q35-\d+(\.\d+)+(\+pve\d+)?(\.pxe)?"
    r"|virt(?:-\d+(\.\d+)+)?(\+pve\d+)?)"
)
MACHINE_FMT = (
    Option("type", check=lambda v: None if _MACHINE_RE.fullmatch(v) else _PATTERN_ERROR,
           max_length=40),
    Option("viommu", enum=("intel", "virtio")),
    Option("enable-s3", "boolean"),
    Option("enable-s4", "boolean"),
)  # fmt: skip
_STORAGE_ID_RE = re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]", re.IGNORECASE)


def machine_error(value: str) -> str | None:
    """Standard option `pve-qemu-machine` (format pve-qemu-machine-fmt)."""
    try:
        schema.property_string("machine", value, MACHINE_FMT, "type")
    except ValueError as exc:
        return f"invalid format - {exc}"
    return None


def cidr_error(value: str) -> str | None:
    """Format `CIDR`: pve_verify_cidrv4 or pve_verify_cidrv6."""
    if schema._cidr(value, schema.is_ipv4, 32) or schema._cidr(value, schema.is_ipv6, 128):
        return None
    return "invalid format - value does not look like a valid CIDR network\n"


def _storage_id(value: str) -> str | None:
    """parse_storage_id's die (without the newline)."""
    return None if _STORAGE_ID_RE.fullmatch(value) else (
        f"storage ID '{value}' contains illegal characters"
    )  # fmt: skip


def storage_id_error(value: str) -> str | None:
    """Format `pve-storage-id`."""
    error = _storage_id(value)
    return None if error is None else f"invalid format - {error}\n"


def storage_pair_list_error(value: str) -> str | None:
    """Format `storage-pair-list` (targetstorage): each entry through verify_storagepair, i.e.
    parse_idmap, whose error verify_idpair dies with once more (`die "$@\\n"`)."""
    for entry in schema.split_list(value):
        if entry == "1":
            continue
        pair = re.fullmatch(r"([^:]+):([^:]+)", entry)
        for part in pair.groups() if pair else (entry,):
            if (error := _storage_id(part)) is not None:
                return f"invalid format - entry '{entry}' contains invalid ID - {error}\n\n\n"
    return None


def nets_host_mtu_error(value: str) -> str | None:
    """Standard option `pve-qm-nets-host-mtu`: a pattern."""
    return None if re.fullmatch(r"net\d+=\d+(,net\d+=\d+)*", value) else _PATTERN_ERROR


def startup_error(value: str) -> str | None:
    """Format `pve-startup-order`."""
    for part in value.split(","):
        if part.strip() and not re.fullmatch(r"(order=)?\d+|up=\d+|down=\d+", part):
            return "invalid format - unable to parse startup options\n"
    return None


_BOOLEANS = "acpi autostart freeze keephugepages kvm localtime numa reboot tablet tdf template"
_STRINGS = (
    "amd-sev audio0 boot bootdisk cpu hookscript ivshmem keyboard rng0 smbios1 "
    "spice_enhancements startdate vga vmgenid watchdog affinity"
)
# (prefix, count) of the numbered keys stored as given: MAX_NETS, MAX_USB_DEVICES,
# MAX_HOSTPCI_DEVICES, MAX_SERIAL_PORTS, MAX_PARALLEL_PORTS, MAX_NUMA, max_virtiofs, unused.
_NUMBERED = (("net", 32), ("usb", 14), ("hostpci", 16), ("serial", 4), ("parallel", 3),
             ("numa", 8), ("virtiofs", 10), ("unused", 256))  # fmt: skip
# Drive.pm: disks are allocated/checked by $check_drive_param, which the lab does not model.
DISK_KEYS = frozenset(
    ["cdrom", "efidisk0", "tpmstate0"]
    + [f"{p}{i}" for p, n in (("ide", 4), ("sata", 6), ("scsi", 31), ("virtio", 16))
       for i in range(n)]
)  # fmt: skip

SET_OPTIONS: tuple[Option, ...] = (
    *(Option(k, "boolean") for k in _BOOLEANS.split()),
    *(Option(k) for k in _STRINGS.split()),
    Option("arch", enum=("x86_64", "aarch64")),
    Option("balloon", "integer", minimum=0),
    Option("bios", enum=("seabios", "ovmf")),
    Option("cpulimit", "number", minimum=0, maximum=128),
    Option("cpuunits", "integer", minimum=1, maximum=262144),
    Option("hugepages", enum=("any", "2", "1024")),
    Option("lock", enum=("backup", "clone", "create", "migrate", "rollback", "snapshot",
                         "snapshot-delete", "suspending", "suspended")),
    Option("machine", check=machine_error),
    Option("migrate_downtime", "number", minimum=0),
    Option("migrate_speed", "integer", minimum=0),
    Option("scsihw", enum=("lsi", "lsi53c810", "virtio-scsi-pci", "virtio-scsi-single", "megasas",
                           "pvscsi")),
    Option("shares", "integer", minimum=0, maximum=50000),
    Option("smp", "integer", minimum=1),
    Option("startup", check=startup_error),
    Option("vcpus", "integer", minimum=1),
    Option("vmstatestorage", check=storage_id_error),
    *(Option(f"{p}{i}") for p, n in _NUMBERED for i in range(n)),
    *(Option(k) for k in sorted(DISK_KEYS)),
)  # fmt: skip
