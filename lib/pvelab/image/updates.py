"""Real Debian updates for the lab's repository: the host's mirrors, a few small upgrades."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Log = Callable[[str], None]
Chroot = Callable[..., str]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
MAX_UPDATES = 4  # a few real updates prove the point; each costs seconds under TCG
MAX_UPDATE_KIB = 8 * 1024  # installed size: small packages install in seconds under TCG
# Kernels and anything that regenerates the initramfs take minutes under TCG.
EXCLUDED_NAMES = re.compile(r"^(linux-(image|headers|kbuild)|initramfs-tools|busybox|klibc)")
SLOW_PATHS = ("/usr/share/initramfs-tools/", "/etc/initramfs-tools/", "/lib/modules/", "/boot/")
_INST = re.compile(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+) ", re.M)


def host_mirrors() -> tuple[str, str]:
    """The Debian and Debian-security mirrors named in the host's apt sources (else defaults)."""
    text = ""
    for source in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if source.suffix in ("", ".list", ".sources") and source.is_file():
            text += source.read_text(errors="replace") + "\n"
    return parse_mirrors(text)


def parse_mirrors(text: str) -> tuple[str, str]:
    """(debian, debian-security) mirror URLs from apt sources text, one-line or deb822."""
    urls = re.findall(r"(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(https?://\S+)", text, re.M)
    main = next((u for u in urls if re.search(r"/debian/?$", u)), DEFAULT_MIRROR)
    security = next((u for u in urls if re.search(r"/debian-security/?$", u)), None)
    return main.rstrip("/"), (security or main.rstrip("/") + "-security").rstrip("/")


@dataclass(frozen=True)
class Upgrade:
    """One `Inst` line of an apt simulation."""

    name: str
    old: str | None  # None: a new package, not an upgrade
    new: str


def parse_simulation(text: str) -> list[Upgrade]:
    """The `Inst` lines of `apt-get -s ...` output (pure function)."""
    return [Upgrade(m[1], m[2] or None, m[3]) for m in _INST.finditer(text)]


def update_sources(mirror: str, security: str) -> str:
    """sources.list for the chroot while it looks for updates (never left in the image)."""
    return (
        f"deb {mirror} bookworm main\n"
        f"deb {mirror} bookworm-updates main\n"
        f"deb {security} bookworm-security main\n"
    )


def _slow_to_install(chroot: Chroot, name: str) -> str | None:
    """Why upgrading `name` would be slow under TCG, or None."""
    if EXCLUDED_NAMES.match(name):
        return "kernel or initramfs machinery"
    files = chroot("dpkg", "-L", name).splitlines()
    hit = next((f for f in files if f.startswith(SLOW_PATHS)), None)
    if hit:
        return f"ships {hit} (initramfs/kernel hook)"
    size = int(chroot("dpkg-query", "-W", "-f", "${Installed-Size}", name) or 0)
    if size > MAX_UPDATE_KIB:
        return f"installed size {size} KiB > {MAX_UPDATE_KIB} KiB"
    return None


def select_updates(chroot: Chroot, log: Log) -> tuple[list[Upgrade], dict[str, str]]:
    """Pick up to MAX_UPDATES small upgrades whose dependency closure is small too."""
    candidates = [u for u in parse_simulation(chroot("apt-get", "-s", "dist-upgrade")) if u.old]
    skipped: dict[str, str] = {}
    sizes = {}
    for up in candidates:
        reason = _slow_to_install(chroot, up.name)
        if reason:
            skipped[up.name] = reason
        else:
            sizes[up.name] = int(chroot("dpkg-query", "-W", "-f", "${Installed-Size}", up.name))
    chosen: dict[str, Upgrade] = {}
    for name in sorted(sizes, key=lambda n: (sizes[n], n)):
        if name in chosen or len(chosen) >= MAX_UPDATES:
            continue
        sim = chroot("apt-get", "-s", "install", "--only-upgrade", "--no-install-recommends", name)
        closure = parse_simulation(sim)
        bad = [u.name for u in closure if u.old is None or u.name in skipped or u.name not in sizes]
        if bad:
            skipped[name] = f"pulls {', '.join(bad)}"
        elif len(chosen) + len([u for u in closure if u.name not in chosen]) > MAX_UPDATES:
            skipped[name] = "over the cap"
        else:
            chosen.update({u.name: u for u in closure})
    log(f"[image]   {len(candidates)} pending updates, chose {len(chosen)}: {', '.join(chosen)}")
    return list(chosen.values()), skipped


def fetch_updates(
    chroot: Chroot, root: Path, dest: Path, mirror: str, security: str, log: Log
) -> None:
    """In the image's chroot: find real bookworm updates and download the chosen ones to dest."""
    (root / "etc/apt/sources.list").write_text(update_sources(mirror, security))
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    chroot("apt-get", "-o", "Acquire::Languages=none", "update")
    chosen, skipped = select_updates(chroot, log)
    workdir = root / "tmp" / "pvelab-updates"
    workdir.mkdir(parents=True, exist_ok=True)
    if chosen:
        args = [f"{u.name}={u.new}" for u in chosen]
        chroot("sh", "-c", 'cd /tmp/pvelab-updates && apt-get download "$@"', "sh", *args)
    dest.mkdir(parents=True, exist_ok=True)
    for deb in workdir.glob("*.deb"):
        shutil.move(deb, dest / deb.name)
    shutil.rmtree(workdir)
    record = {"chosen": {u.name: [u.old, u.new] for u in chosen}, "skipped": skipped}
    (dest / "updates.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
