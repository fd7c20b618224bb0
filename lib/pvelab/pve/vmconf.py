"""PVE VM config files: parse and format `<vmid>.conf`, property strings, the `lock` key."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# QS9 QemuServer.pm `lock` enum.
LOCK_VALUES = (
    "backup", "clone", "create", "migrate", "rollback", "snapshot", "snapshot-delete",
    "suspending", "suspended",
)  # fmt: skip

# QS9 Agent.pm $agent_fmt: default key `enabled`; aliases of `freeze-fs`.
AGENT_KEYS = ("enabled", "fstrim_cloned_disks", "freeze-fs", "type")
AGENT_ALIASES = {"freeze-fs-on-backup": "freeze-fs", "guest-fsfreeze": "freeze-fs"}
AGENT_BOOL_KEYS = ("enabled", "fstrim_cloned_disks", "freeze-fs")

_KEY_RE = re.compile(r"^([a-z][a-z_\-]*\d*):\s*(.*?)\s*$")
_SECTION_RE = re.compile(r"^\[([a-z][a-z0-9_\-]+|PENDING|special:cloudinit)\]\s*$", re.I)


class ConfError(ValueError):
    """A config file or property string that PVE would reject."""


@dataclass
class VMConf:
    """One `<vmid>.conf`: main section, `[PENDING]`, and the rest kept as raw sections."""

    main: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    sections: dict[str, dict[str, str]] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.main.get(key, default)

    @property
    def lock(self) -> str | None:
        return self.main.get("lock")

    def current(self, *, apply_pending: bool) -> dict[str, str]:
        """The config as `qm config` shows it: pending values applied unless `--current`."""
        conf = dict(self.main)
        if apply_pending:
            for key in self.pending.get("delete", "").split(","):
                conf.pop(key.strip().lstrip("!"), None)
            conf.update({k: v for k, v in self.pending.items() if k != "delete"})
        return conf

    @property
    def snapshots(self) -> dict[str, dict[str, str]]:
        """The snapshot sections (`[<name>]`), without `[special:...]` ones."""
        return {k: v for k, v in self.sections.items() if not k.startswith("special:")}

    def apply_pending(self) -> None:
        """Fold `[PENDING]` into the main section (what PVE does at VM start)."""
        self.main = self.current(apply_pending=True)
        self.pending = {}


def parse_conf(text: str) -> VMConf:
    """Parse PVE config text; `#` lines become the `description` of their section.

    As PVE's parse_vm_config: the main section, `[PENDING]` and each snapshot section each
    have their own description comments (a `description:` key in the main section wins).
    """
    conf = VMConf()
    target = conf.main
    desc: list[str] = []

    def finish_description() -> None:
        if desc and "description" not in target:
            target["description"] = "\n".join(desc).rstrip()
        desc.clear()

    for raw in text.splitlines():
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        section = _SECTION_RE.match(line)
        if section:
            finish_description()
            name = section.group(1)
            if name.upper() == "PENDING":
                target = conf.pending
            else:
                target = conf.sections.setdefault(name, {})
            continue
        if line.startswith("#"):
            desc.append(urllib.parse.unquote(line[1:]))
            continue
        match = _KEY_RE.match(line)
        if not match:
            raise ConfError(f"unable to parse config line: {line!r}")
        target[match.group(1)] = match.group(2)
    finish_description()
    return conf


def _format_section(values: dict[str, str]) -> str:
    lines = []
    for key in sorted(values):
        if key == "description":
            continue
        lines.append(f"{key}: {values[key]}\n")
    desc = values.get("description")
    head = "".join(f"#{encode_text(d)}\n" for d in desc.split("\n")) if desc else ""
    return head + "".join(lines)


def format_conf(conf: VMConf) -> str:
    """Render a config the way PVE writes it (description comments, sorted keys, sections)."""
    out = _format_section(conf.main)
    if conf.pending:
        out += "\n[PENDING]\n" + _format_section(conf.pending)
    # PVE writes `[special:...]` sections before the snapshots (write_vm_config).
    for name in sorted(conf.sections, key=lambda n: (not n.startswith("special:"), n)):
        out += f"\n[{name}]\n" + _format_section(conf.sections[name])
    return out


def edited_conf(text: str, key: str, value: str | None) -> str:
    """`text` with `key` set in the main section (None deletes it), written as PVE writes it."""
    conf = parse_conf(text)
    if value is None:
        conf.main.pop(key, None)
    else:
        conf.main[key] = value
    return format_conf(conf)


def encode_text(text: str) -> str:
    """PVE::Tools::encode_text: %-escape control, high-bit characters and ':' (qm config)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append(char if 0x20 <= byte <= 0x7E and char != ":" else f"%{byte:02X}")
    return "".join(out)


def parse_property_string(value: str, default_key: str | None = None) -> dict[str, str]:
    """Split `a=1,b=2` (a first bare value belongs to `default_key`) into a dict."""
    result: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            key, _, val = part.partition("=")
        elif default_key is not None and default_key not in result:
            key, val = default_key, part
        else:
            raise ConfError(f"value without key, but schema does not define a default key: {part}")
        if key in result:
            raise ConfError(f"duplicate key in comma-separated list property: {key}")
        result[key] = val
    return result


def parse_boolean(value: str) -> bool | None:
    """PVE::JSONSchema::parse_boolean: 1/on/yes/true and 0/off/no/false, else None."""
    low = value.strip().lower()
    if low in ("1", "on", "yes", "true"):
        return True
    if low in ("0", "off", "no", "false"):
        return False
    return None


@dataclass(frozen=True)
class AgentOptions:
    """The parsed `agent` property (`1`, `enabled=1,freeze-fs=1,type=virtio`, ...)."""

    enabled: bool = False
    fstrim_cloned_disks: bool = False
    freeze_fs: bool = True
    type: str = "virtio"


def parse_agent(value: str | None) -> AgentOptions:
    """Parse the `agent` key as PVE's `$agent_fmt` does; None (absent) means disabled."""
    if value is None:
        return AgentOptions()
    props = parse_property_string(value, default_key="enabled")
    flags: dict[str, bool] = {}
    kind = "virtio"
    for key, val in props.items():
        key = AGENT_ALIASES.get(key, key)
        if key == "type":
            if val not in ("virtio", "isa"):
                raise ConfError(
                    f"type: value '{val}' does not have a value in the enumeration 'virtio, isa'"
                )
            kind = val
        elif key in AGENT_BOOL_KEYS:
            flag = parse_boolean(val)
            if flag is None:
                raise ConfError(f"{key}: type check ('boolean') failed - got '{val}'")
            flags[key.replace("-", "_")] = flag
        else:
            raise ConfError(
                f"{key}: property is not defined in schema and the schema "
                "does not allow additional properties"
            )
    return AgentOptions(type=kind, **flags)


def agent_enabled(conf: dict[str, str]) -> bool:
    """True when the config's `agent` key enables the guest agent."""
    try:
        return parse_agent(conf.get("agent")).enabled
    except ConfError:
        return False


def parse_size(value: str) -> int:
    """A PVE disk size (`2G`, `512M`, `32`) in bytes; bare numbers are bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", value.strip())
    if not match:
        raise ConfError(f"unable to parse size '{value}'")
    power = " KMGT".index(match.group(2) or " ")
    return int(float(match.group(1)) * 1024**power)


def load_conf(path: Path) -> VMConf | None:
    """Read and parse a config file; None when it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_conf(text)


def write_conf(path: Path, conf: VMConf) -> None:
    """Replace a config file atomically (like pmxcfs: readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(format_conf(conf))
    os.replace(tmp, path)


class LockTimeout(Exception):
    """The config flock could not be taken in time (PVE: `can't lock file ... got timeout`)."""


@contextmanager
def config_lock(
    lockfile: Path, timeout: float = 10.0, notify: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the flock PVE's lock_config holds; `notify` gets `trying to acquire lock...`."""
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_flock(fd):
            if notify:
                notify("trying to acquire lock...")
            deadline = time.monotonic() + timeout
            while not _try_flock(fd):
                if time.monotonic() >= deadline:
                    if notify:
                        notify("\n")
                    raise LockTimeout(f"can't lock file '{lockfile}' - got timeout")
                time.sleep(0.1)
            if notify:
                notify(" OK\n")
        yield
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True
