"""The lab's flat apt repository: the image's debs, real Debian updates, the test packages."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pvelab import debs

if TYPE_CHECKING:
    from pvelab.image import Image

Log = Callable[[str], None]
Chroot = Callable[..., str]

MAX_UPDATES = 4  # a few real updates prove the point; each costs seconds under TCG
MAX_UPDATE_KIB = 8 * 1024  # installed size: small packages install in seconds under TCG
# Kernels and anything that regenerates the initramfs take minutes under TCG.
EXCLUDED_NAMES = re.compile(r"^(linux-(image|headers|kbuild)|initramfs-tools|busybox|klibc)")
SLOW_PATHS = ("/usr/share/initramfs-tools/", "/etc/initramfs-tools/", "/lib/modules/", "/boot/")
_INST = re.compile(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+) ", re.M)


class RepoError(Exception):
    """The repository could not be built; `.command` and `.output` say why."""

    def __init__(self, command: list[str], output: str) -> None:
        super().__init__(f"repo: `{' '.join(command)}` failed:\n{output[-2000:]}")
        self.command = command
        self.output = output


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


def write_indexes(repo_dir: Path) -> None:
    """Packages, Packages.gz and a Release with their hashes (flat repository, `./`)."""
    proc = subprocess.run(
        ["dpkg-scanpackages", "-m", "."], cwd=repo_dir, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RepoError(["dpkg-scanpackages", "-m", "."], proc.stderr)
    (repo_dir / "Packages").write_text(proc.stdout)
    with gzip.GzipFile(repo_dir / "Packages.gz", "wb", mtime=0) as gz:
        gz.write(proc.stdout.encode())
    lines = [
        "Origin: pvelab", "Label: pvelab", "Suite: pvelab", "Codename: pvelab",
        time.strftime("Date: %a, %d %b %Y %H:%M:%S UTC", time.gmtime()),
        "Architectures: amd64 all", "Description: pvelab lab repository",
    ]  # fmt: skip
    for algo, field in (("md5", "MD5Sum"), ("sha256", "SHA256")):
        lines.append(f"{field}:")
        for name in ("Packages", "Packages.gz"):
            data = (repo_dir / name).read_bytes()
            lines.append(f" {hashlib.new(algo, data).hexdigest()} {len(data)} {name}")
    (repo_dir / "Release").write_text("\n".join(lines) + "\n")


def repo_key(image: Image) -> str:
    """Cache key of the built repository: the image recipe (which covers this file)."""
    return image.recipe


def _build_cached(image: Image, log: Log) -> Path:
    cached = image.dir / f"repo-{repo_key(image)}"
    if (cached / "Release").is_file():
        return cached
    tmp = image.dir / f"repo.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    began = time.monotonic()
    for sub in ("base", "updates"):
        for deb in sorted((image.pool / sub).glob("*.deb")):
            os.link(deb, tmp / deb.name)
    debs.build_all(debs.ALL, debs.UPDATE_VERSION, tmp)
    write_indexes(tmp)
    os.rename(tmp, cached)
    count = len(list(cached.glob("*.deb")))
    log(f"[repo] built {cached} ({count} packages) in {time.monotonic() - began:.1f} s")
    return cached


def ensure_repo(image: Image, repo_dir: Path, log: Log = print) -> None:
    """Make `repo_dir` the lab's flat apt repository (hard links into the image cache)."""
    cached = _build_cached(image, log)
    stamp = repo_dir / ".pvelab-repo"
    if stamp.is_file() and stamp.read_text().strip() == cached.name:
        return
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo_dir.mkdir(parents=True)
    for path in cached.iterdir():
        try:
            os.link(path, repo_dir / path.name)
        except OSError:  # another filesystem: copy instead
            shutil.copy2(path, repo_dir / path.name)
    stamp.write_text(cached.name + "\n")
    log(f"[repo] {repo_dir} ready")


def start_repo_server(repo_dir: Path, port: int, log_file: Path) -> int:
    """Serve `repo_dir` on 127.0.0.1:port in a detached process; returns its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
             "--directory", str(repo_dir), str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    return proc.pid
