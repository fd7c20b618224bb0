"""The cloud-init drive's state: `[special:cloudinit]`, its regeneration, `qm cloudinit
pending|update`.

PVE records in `[special:cloudinit]` the values a running VM's cloud-init keys had when the drive
was last generated (QS8 QemuServer.pm vmconfig_hotplug_pending `$cloudinit_record_changed`;
`added` lists keys that were unset then). The drive is regenerated from the current config at
every start (vm_start_nolock -> Cloudinit.pm apply_cloudinit_config), by `qm cloudinit update`,
and after a hotplug when `hotplug` has `cloudinit`; each regeneration drops the section.
"""

from __future__ import annotations

import re
from typing import Any

from pvelab.pve import vmconf
from pvelab.pve.qm import cloudinit, quorum, schema
from pvelab.pve.qm.context import Context, QmError, check_lock
from pvelab.pve.storage import drive_volid, drives
from pvelab.pve.vmconf import VMConf

SECTION = "special:cloudinit"
# QS8 API2/Qemu.pm $cloudinitoptions: the keys `qm cloudinit pending` lists (no ipconfigN).
PENDING_OPTIONS = (
    "cicustom", "cipassword", "citype", "ciuser", "ciupgrade", "nameserver", "searchdomain",
    "sshkeys",
)  # fmt: skip
# Drive.pm drive_is_cloudinit ($QEMU_FORMAT_RE for the optional extension).
_DRIVE_RE = re.compile(r"[:/](?:vm-\d+-)?cloudinit(?:\.(?:raw|cow|qcow|qcow2|qed|vmdk|cloop))?$")
MASK = "**********"


def is_cloudinit_key(key: str) -> bool:
    """A key of QS8 $confdesc_cloudinit (all of them are in $fast_plug_option)."""
    return (
        key in PENDING_OPTIONS
        or re.fullmatch(r"ipconfig(\d+)", key) is not None
        and (int(key[8:]) < schema.MAX_NETS)
    )


def is_pending_property(key: str) -> bool:
    """cloudinit_pending_properties: the cloud-init keys, `name` and `net0`..`net31`."""
    match = re.fullmatch(r"net(\d+)", key)
    return (
        is_cloudinit_key(key)
        or key == "name"
        or (match is not None and int(match.group(1)) < schema.MAX_NETS)
    )


def has_cloudinit(conf: dict[str, str]) -> str | None:
    """QemuConfig has_cloudinit: the first drive whose volume is a cloud-init image."""
    for key, value in drives(conf):
        if _DRIVE_RE.search(drive_volid(value)):
            return key
    return None


def _section(conf: VMConf) -> dict[str, str]:
    return conf.sections.setdefault(SECTION, {})


def record_changed(conf: VMConf, opt: str, old: str | None, new: str | None) -> None:
    """$cloudinit_record_changed: remember what the drive was generated from."""
    if not is_pending_property(opt):
        return
    ci = _section(conf)
    recorded = ci.get(opt)
    added = set(schema.split_list(ci.pop("added", "")))
    if new is not None:
        if recorded is not None:
            if new == recorded:  # back to the drive's value
                del ci[opt]
                added.discard(opt)
        elif old is not None and opt not in added:
            ci[opt] = old  # first change of an existing value
        elif old is None and opt not in added:
            added.add(opt)  # a value the drive did not have
    elif old is not None and recorded is None:
        if opt in added:
            added.discard(opt)
        else:
            ci[opt] = old  # deleted: keep the drive's value
    if added:
        ci["added"] = ",".join(sorted(added))


def has_changes(conf: VMConf) -> bool:
    """Cloudinit.pm has_changes: a non-empty `[special:cloudinit]`."""
    return bool(conf.sections.get(SECTION))


def prune(conf: VMConf) -> None:
    """write_vm_config writes `[special:cloudinit]` only while the VM has a cloud-init drive."""
    if not has_cloudinit(conf.main):
        conf.sections.pop(SECTION, None)


def regenerate(ctx: Context, vmid: int, conf: VMConf) -> bool:
    """apply_cloudinit_config: generate every `vm-<vmid>-cloudinit` drive, then drop the
    section (and write the config) if it had changes. The lab builds no ISO: it computes the
    data (so PVE's errors surface) and prints PVE's line."""
    for _key, value in drives(conf.main):
        volid = drive_volid(value)
        if not _DRIVE_RE.search(volid) or f"vm-{vmid}-cloudinit" not in volid.partition(":")[2]:
            continue
        cloudinit.userdata(conf.main, vmid)
        cloudinit.network_data(conf.main, ctx.warn)
        ctx.out("generating cloud-init ISO\n")
    if not has_changes(conf):
        return False
    conf.sections.pop(SECTION, None)
    quorum.check_config_writable(ctx, vmid)
    vmconf.write_conf(ctx.paths.conf(vmid), conf)
    return True


def update_drive(ctx: Context, vmid: int, conf: VMConf) -> None:
    """vmconfig_update_cloudinit_drive: nothing without a cloud-init drive. PVE then swaps the
    medium of a running VM (eject + blockdev-change-medium); the lab attaches no medium."""
    if has_cloudinit(conf.main):
        regenerate(ctx, vmid, conf)


def pending_items(conf: VMConf) -> list[dict[str, str]]:
    """API cloudinit_pending: added keys (`pending` only), every set $cloudinitoptions key (with
    the drive's value if it changed), deleted keys (no value: format_pending prints nothing)."""
    main = dict(conf.main)
    ci = dict(conf.sections.get(SECTION, {}))
    if "cipassword" in main:
        main["cipassword"] = MASK
    if "cipassword" in ci:
        ci["cipassword"] = MASK
    added = ci.pop("added", "")
    items = [{"key": k, "pending": main[k]} for k in schema.split_list(added) if k in main]
    for opt in PENDING_OPTIONS:
        if not cloudinit.truthy(main.get(opt)) or opt in added:  # Perl: $added =~ m/$opt/
            continue
        if cloudinit.truthy(ci.get(opt)):
            items.append({"key": opt, "value": ci[opt], "pending": main[opt]})
        else:
            items.append({"key": opt, "value": main[opt]})
    return items


def format_pending(items: list[dict[str, str]]) -> str:
    """GuestHelpers.pm format_pending for items without `delete`."""
    out = ""
    for item in sorted(items, key=lambda i: i["key"]):
        key, value, new = item["key"], item.get("value"), item.get("pending")
        if value is not None:
            out += f"cur {key}: {value}\n" + (f"new {key}: {new}\n" if new is not None else "")
        elif new is not None:
            out += f"new {key}: {new}\n"
    return out


def pending(ctx: Context, p: dict[str, Any]) -> None:
    """`qm cloudinit pending <vmid>`: the main section against `[special:cloudinit]`."""
    ctx.out(format_pending(pending_items(ctx.load(p["vmid"]))))


def update(ctx: Context, p: dict[str, Any]) -> None:
    """`qm cloudinit update <vmid>` (API cloudinit_update): under the config lock."""
    vmid = p["vmid"]
    with ctx.lock_config(vmid):
        conf = ctx.load(vmid)
        check_lock(conf)
        update_drive(ctx, vmid, conf)


def regenerate_at_start(ctx: Context, vmid: int, conf: VMConf, migratedfrom: str | None) -> None:
    """vm_start_nolock: "don't regenerate the ISO if the VM is started as part of a live
    migration"; any other start regenerates it from the config."""
    if migratedfrom:
        return
    try:
        regenerate(ctx, vmid, conf)
    except ValueError as exc:  # a bad value in a hand-edited config
        raise QmError(str(exc)) from exc
