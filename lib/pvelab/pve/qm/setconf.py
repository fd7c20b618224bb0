"""`qm set` and `qm pending`: PVE's update_vm_api, hotplug of pending changes, format_pending.

Sources: qemu-server 8.4 `API2/Qemu.pm` ($update_vm_api, vm_pending), `QemuServer.pm`
(vmconfig_hotplug_pending with its cloud-init records, vmconfig_apply_pending,
vmconfig_update_agent, $fast_plug_option),
pve-guest-common `AbstractConfig.pm` (pending delete helpers, cleanup_pending) and
`GuestHelpers.pm` (format_pending).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

from pvelab.pve import pwcrypt, vmconf, vmstate
from pvelab.pve.qm import cipending, cloudinit, confdesc, quorum, schema
from pvelab.pve.qm.context import Context, QmError, check_lock
from pvelab.pve.qm.options import ParamErrors
from pvelab.pve.vmconf import VMConf

# QS8 QemuServer.pm $fast_plug_option (+ every $confdesc_cloudinit key): applied while running.
FAST_PLUG = frozenset(
    "description hookscript lock migrate_downtime migrate_speed name onboot protection shares "
    "startup tags vmstatestorage".split()
)


def is_fast_plug(key: str) -> bool:
    return key in FAST_PLUG or cipending.is_cloudinit_key(key)


SET_KEYS = tuple(o.name for o in (*schema.SET_OPTIONS, *confdesc.SET_OPTIONS))


def _current_memory(value: str | None) -> int:
    """Memory.pm get_current_memory: `current` of the property string, default 512 MiB."""
    if not value:
        return 512
    return int(schema.property_string("memory", value, schema.MEMORY_FMT, "current")["current"])


def check_balloon(conf: VMConf, params: dict[str, str]) -> None:
    """update_vm_api, in the locked update: `balloon` may not exceed the memory."""
    if not params.get("memory") and "balloon" not in params:
        return
    maxmem = _current_memory(
        params.get("memory") or conf.pending.get("memory") or conf.main.get("memory")
    )
    balloon = params.get("balloon") or conf.pending.get("balloon") or conf.main.get("balloon")
    if balloon and int(balloon) > maxmem:
        raise QmError("balloon value too large (must be smaller than assigned memory)")


# --- [PENDING] bookkeeping (AbstractConfig.pm) ----------------------------------------------


def pending_deletes(conf: VMConf) -> dict[str, bool]:
    """parse_pending_delete: key -> force (`!key`)."""
    result = {}
    for entry in schema.split_list(conf.pending.get("delete", "")):
        result[entry.lstrip("!")] = entry.startswith("!")
    return result


def _write_deletes(conf: VMConf, deletes: dict[str, bool]) -> None:
    """print_pending_delete: sorted, `!` for force; no `delete` key when empty."""
    if deletes:
        conf.pending["delete"] = ",".join(
            f"{'!' if deletes[k] else ''}{k}" for k in sorted(deletes)
        )
    else:
        conf.pending.pop("delete", None)


def add_to_pending_delete(conf: VMConf, key: str, force: bool) -> None:
    deletes = pending_deletes(conf)
    deletes[key] = force
    _write_deletes(conf, deletes)


def remove_from_pending_delete(conf: VMConf, key: str) -> None:
    deletes = pending_deletes(conf)
    if deletes.pop(key, None) is not None:
        _write_deletes(conf, deletes)


def cleanup_pending(conf: VMConf) -> bool:
    """Drop pending values equal to the current ones and deletes of unset keys."""
    changes = False
    for key in [k for k in conf.pending if k != "delete"]:
        if key in conf.main and conf.pending[key] == conf.main[key]:
            del conf.pending[key]
            changes = True
    deletes = pending_deletes(conf)
    kept = {k: f for k, f in deletes.items() if k in conf.main}
    changes = changes or len(kept) != len(deletes)
    _write_deletes(conf, kept)
    return changes


def apply_pending(conf: VMConf) -> None:
    """vmconfig_apply_pending (cold plug): deletes first, then the new values."""
    for key in sorted(pending_deletes(conf)):
        conf.main.pop(key, None)
        remove_from_pending_delete(conf, key)
    cleanup_pending(conf)
    for key in [k for k in conf.pending if k != "delete"]:
        conf.main[key] = conf.pending.pop(key)


# --- hotplug (vmconfig_hotplug_pending) -----------------------------------------------------


def _agent(value: str | None) -> dict[str, str]:
    """parse_guest_agent: a bad or disabled agent string is `{}` (PVE warns and goes on)."""
    if value is None:
        return {}
    try:
        parsed = schema.parse_agent(value)
    except ValueError:
        return {}
    return parsed if parsed.get("enabled") == "1" else {}


def _agent_hotpluggable(old: str | None, new: str) -> bool:
    """vmconfig_update_agent: only `fstrim_cloned_disks` may change while running."""
    if not old or old == "0":
        return False
    before, after = _agent(old), _agent(new)
    keys = (set(before) | set(after)) - {"fstrim_cloned_disks"}
    return all(before.get(k) == after.get(k) for k in keys)


def _features(conf: VMConf) -> set[str]:
    try:
        return schema.hotplug_features(conf.main.get("hotplug", "1"))
    except ValueError:
        return set()


def hotplug_pending(conf: VMConf, selection: set[str]) -> None:
    """What a running VM takes at once; the rest stays in [PENDING] until the next stop.

    The lab's QEMU cannot hotplug memory or CPUs, so with `memory`/`cpu` in `hotplug` those
    stay pending here (PVE would plug DIMMs/vCPUs); every other key the lab sets behaves as PVE.
    """
    for key in [k for k in conf.pending if is_fast_plug(k)]:
        new = conf.pending.pop(key)
        cipending.record_changed(conf, key, conf.main.get(key), new)
        conf.main[key] = new
    current_hotplug = conf.main.get("hotplug", "")
    for key in sorted(pending_deletes(conf)):
        if key not in selection:
            continue
        if is_fast_plug(key) or (key == "hotplug" and not re.search("cpu|memory", current_hotplug)):
            cipending.record_changed(conf, key, conf.main.pop(key, None), None)
            remove_from_pending_delete(conf, key)
    for key in [k for k in conf.pending if k != "delete" and k in selection]:
        value = conf.pending[key]
        if key == "hotplug":
            plugged = not re.search("cpu|memory", value + " " + current_hotplug)
        else:
            plugged = key == "agent" and _agent_hotpluggable(conf.main.get("agent"), value)
        if plugged:
            cipending.record_changed(conf, key, conf.main.get(key), value)
            conf.main[key] = conf.pending.pop(key)


# --- qm set -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def update_line(vmid: int, p: dict[str, Any]) -> str:
    """The `update VM <vmid>: -key value ...` line: every parameter but vmid/digest, sorted."""
    words = [
        f"-{k} {'<hidden>' if k == 'cipassword' else _text(p[k])}"
        for k in sorted(p)
        if k not in ("vmid", "digest")
    ]
    return f"update VM {vmid}: {' '.join(words)}\n"


def _check_delete_revert(params: dict[str, str], deletes: list[str], reverts: list[str]) -> None:
    for opt in reverts:
        if not schema.option_exists(opt):
            raise ParamErrors({"revert": f"unknown option '{opt}'"})
        if opt in params:
            raise ParamErrors(
                {"delete": f"you can't use '-{opt}' and -revert {opt}' at the same time"}
            )
    for opt in deletes:
        if opt in params:
            raise ParamErrors(
                {"delete": f"you can't use '-{opt}' and -delete {opt}' at the same time"}
            )
        if opt in reverts:
            raise ParamErrors(
                {"revert": f"you can't use '-delete {opt}' and -revert {opt}' at the same time"}
            )
        if not schema.option_exists(opt):
            raise ParamErrors({"delete": f"unknown option '{opt}'"})


def digest(ctx: Context, vmid: int) -> str:
    """The config's `digest`: SHA1 of the file as read (PVE's parse_vm_config)."""
    return hashlib.sha1(ctx.paths.conf(vmid).read_bytes()).hexdigest()  # noqa: S324


def set_(ctx: Context, p: dict[str, Any]) -> None:
    """`qm set <vmid> [OPTIONS]` (API update_vm, synchronous: its output is the CLI's own)."""
    vmid = p["vmid"]
    params = {k: _text(p[k]) for k in SET_KEYS if k in p}
    deletes = ["ide2" if o == "cdrom" else o for o in schema.split_list(p.get("delete", ""))]
    reverts = schema.split_list(p.get("revert", ""))
    if not deletes and not reverts and not params:
        raise QmError("no options specified")
    if disks := sorted(confdesc.DISK_KEYS & set(params)):
        raise QmError(f"pvelab: disk keys ({', '.join(disks)}) are not implemented by `qm set`")
    if params.get("vmgenid") == "1":  # update_vm_api: `1` asks for a new UUID
        params["vmgenid"] = str(uuid.uuid4())
    _check_delete_revert(params, deletes, reverts)
    with ctx.lock_config(vmid):
        conf = ctx.load(vmid)
        if p.get("digest") and p["digest"] != digest(ctx, vmid):
            raise QmError("checksum mismatch (file change by other user?)")
        if not p.get("skiplock"):
            check_lock(conf)
        for opt in reverts:
            if opt in conf.main:
                params[opt] = conf.main[opt]
            elif opt in conf.pending:
                deletes.append(opt)
        check_balloon(conf, params)
        ctx.out(update_line(vmid, p))
        modified = _write_pending(ctx, conf, params, deletes, bool(p.get("force")))
        cleanup_pending(conf)
        hotplugged = bool(conf.pending) and vmstate.running_pid(ctx.paths, vmid) is not None
        if hotplugged:
            hotplug_pending(conf, modified)
        elif conf.pending:
            apply_pending(conf)
        cipending.prune(conf)
        quorum.check_config_writable(ctx, vmid)
        vmconf.write_conf(ctx.paths.conf(vmid), conf)
        if hotplugged and "cloudinit" in _features(conf) and cipending.has_changes(conf):
            cipending.update_drive(ctx, vmid, conf)


def _write_pending(
    ctx: Context, conf: VMConf, params: dict[str, str], deletes: list[str], force: bool
) -> set[str]:
    """The worker's two loops: deletes to [PENDING] `delete`, values to [PENDING]."""
    modified = set()
    for opt in deletes:
        modified.add(opt)
        if opt not in conf.main and opt not in conf.pending:
            ctx.stderr.write(f"cannot delete '{opt}' - not set in current configuration!\n")
            modified.discard(opt)
            continue
        conf.pending.pop(opt, None)
        if opt == "tags" or opt.startswith("unused"):
            conf.main.pop(opt, None)
        else:
            add_to_pending_delete(conf, opt, force)
    for opt, value in params.items():
        modified.add(opt)
        if conf.pending.get(opt) == value:
            continue
        if opt == "cipassword":  # straight into the current config, hashed for non-Windows
            if not cloudinit.is_windows(conf.main.get("ostype")):
                if not pwcrypt.HASHED_RE.match(value):
                    value = pwcrypt.encrypt_pw(value)
            conf.main[opt] = value
            remove_from_pending_delete(conf, opt)
            continue
        if opt == "tags":  # GuestHelpers::get_unique_tags (default tag-style: sorted, lower case)
            value = ";".join(sorted({t.lower() for t in schema.split_list(value)}))
        conf.pending[opt] = value
        remove_from_pending_delete(conf, opt)
    return modified


# --- qm pending, qm config ----------------------------------------------------------------


def _shown(key: str, value: str | None) -> str | None:
    return vmconf.encode_text(value) if key == "description" and value is not None else value


def pending_lines(conf: VMConf) -> str:
    """vm_pending + format_pending: `cur`/`new`/`del` lines sorted by key."""
    main = dict(conf.main)
    pending = {k: v for k, v in conf.pending.items() if k != "delete"}
    if "cipassword" in main:
        main["cipassword"] = "**********"
    if "cipassword" in pending:
        pending["cipassword"] = "********** "  # sic: QS8 vm_pending masks with a trailing space
    deletes = pending_deletes(conf)
    out = ""
    for key in sorted(set(main) | set(pending)):
        value, new = _shown(key, main.get(key)), _shown(key, pending.get(key))
        if value is not None:
            if key in deletes:
                out += f"del {key}: {value}\n"
            elif new is not None:
                out += f"cur {key}: {value}\nnew {key}: {new}\n"
            else:
                out += f"cur {key}: {value}\n"
        elif new is not None:
            out += f"new {key}: {new}\n"
    return out


def pending(ctx: Context, p: dict[str, Any]) -> None:
    """`qm pending <vmid>`."""
    ctx.out(pending_lines(ctx.load(p["vmid"])))


def current_config(conf: VMConf, current: bool) -> dict[str, str]:
    """AbstractConfig::load_current_config: pending values in unless `current`; a pending
    delete hides a key only when its value is Perl-true (`delete ... if $conf->{$opt}`)."""
    result = dict(conf.main)
    if not current:
        result.update({k: v for k, v in conf.pending.items() if k != "delete"})
        for key in pending_deletes(conf):
            if result.get(key) not in (None, "", "0"):
                del result[key]
    if result.get("cipassword"):
        result["cipassword"] = "**********"
    return result
