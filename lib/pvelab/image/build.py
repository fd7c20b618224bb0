"""The lab's guest image: Debian 12 built once with debootstrap, cached by recipe hash."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pvelab.image import debs, updates
from pvelab.image.recipe import GUEST_DIR, INCLUDE, SUITE, recipe_hash
from pvelab.paths import default_cache_dir

Log = Callable[[str], None]

DISK_SIZE = "2G"
# Slow or useless under TCG (lab-measurements.md); the apt timers must not race the suite.
MASKED_UNITS = (
    "e2scrub_reap.service", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    "dev-hugepages.mount", "dev-mqueue.mount", "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount", "modprobe@drm.service", "modprobe@fuse.service",
    "modprobe@loop.service", "modprobe@dm_mod.service", "modprobe@configfs.service",
    "modprobe@efi_pstore.service", "systemd-pstore.service", "systemd-network-generator.service",
    "systemd-networkd-wait-online.service", "systemd-firstboot.service", "fstrim.timer",
    "e2scrub_all.timer", "dpkg-db-backup.timer", "apt-daily.timer", "apt-daily-upgrade.timer",
)  # fmt: skip
ENABLED_UNITS = ("systemd-networkd.service", "pvelab-seed.service")
CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
}


class ImageBuildError(Exception):
    """A build step failed; `.command` and `.output` (its last lines) say which and why."""

    def __init__(self, command: Sequence[str], rc: int, output: str) -> None:
        tail = "\n".join(output.splitlines()[-25:])
        super().__init__(f"image build: `{' '.join(command)}` exited {rc}:\n{tail}")
        self.command = list(command)
        self.rc = rc
        self.output = output


@dataclass(frozen=True)
class Image:
    """A built, cached guest image (never modified once built: VMs use qcow2 overlays)."""

    dir: Path
    base: Path
    kernel: Path
    initrd: Path
    recipe: str
    packages: dict[str, str]

    @property
    def pool(self) -> Path:
        """Debs kept for the lab's apt repository (debootstrap's, updates, test packages)."""
        return self.dir / "pool"

    @classmethod
    def load(cls, directory: Path) -> Image:
        meta = json.loads((directory / "image.json").read_text())
        return cls(
            dir=directory,
            base=directory / "base.qcow2",
            kernel=directory / "vmlinuz",
            initrd=directory / "initrd.img",
            recipe=meta["recipe"],
            packages=dict(meta["packages"]),
        )


class _Builder:
    """One build in a temporary directory; steps log their elapsed time."""

    def __init__(self, work: Path, log: Log) -> None:
        self.work = work
        self.root = work / "root"
        self.log = log
        self.started = time.monotonic()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        began = time.monotonic()
        self.log(f"[image] {what} ...")
        yield
        now = time.monotonic()
        self.log(f"[image] {what}: done in {now - began:.1f} s (total {now - self.started:.0f} s)")

    def run(self, cmd: Sequence[str], env: dict[str, str] | None = None) -> str:
        """Run a command, log a progress line every 10 s, raise ImageBuildError on failure."""
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
        reader.start()
        while reader.is_alive():
            reader.join(10)
            if reader.is_alive():
                last = lines[-1].rstrip()[:110] if lines else "(no output yet)"
                self.log(f"[image]   {time.monotonic() - self.started:4.0f} s: {last}")
        rc = proc.wait()
        if rc != 0:
            raise ImageBuildError(cmd, rc, "".join(lines))
        return "".join(lines)

    def chroot(self, *cmd: str) -> str:
        return self.run(["chroot", str(self.root), *cmd], env=CHROOT_ENV)

    @contextmanager
    def proc_mounted(self) -> Iterator[None]:
        target = self.root / "proc"
        subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True)
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", str(target)], check=False)


def _deb_cache(cache_dir: Path) -> Path:
    path = cache_dir / "debootstrap-debs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _debootstrap(b: _Builder, cache_dir: Path, mirror: str) -> None:
    with b.step(f"debootstrap {SUITE} from {mirror}"):
        b.run([
            "debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}",
            f"--cache-dir={_deb_cache(cache_dir)}", SUITE, str(b.root), mirror,
        ])  # fmt: skip


def installed_packages(b: _Builder) -> dict[str, tuple[str, str]]:
    """name -> (version, arch) from dpkg-query in the chroot."""
    out = b.chroot("dpkg-query", "-W", "-f", "${Package}\t${Version}\t${Architecture}\n")
    rows = (line.split("\t") for line in out.splitlines() if line.count("\t") == 2)
    return {name: (version, arch) for name, version, arch in rows}


def _keep_base_debs(b: _Builder, cache_dir: Path) -> None:
    """Every .deb debootstrap installed goes to pool/base (to reinstall e.g. qemu-guest-agent)."""
    with b.step("keep debootstrap's packages for the repository"):
        pool = b.work / "pool" / "base"
        pool.mkdir(parents=True)
        places = [b.root / "var/cache/apt/archives", _deb_cache(cache_dir)]
        missing = []
        for name, (version, arch) in installed_packages(b).items():
            filename = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
            found = next((p / filename for p in places if (p / filename).is_file()), None)
            if found is None:
                missing.append(filename)
                continue
            shutil.copy2(found, pool / filename)
        if missing:
            b.log(f"[image]   not found in debootstrap's caches: {', '.join(missing)}")


def _install_guest_files(b: _Builder) -> None:
    with b.step("install the lab's guest files"):
        for src in sorted(GUEST_DIR.rglob("*")):
            dst = b.root / src.relative_to(GUEST_DIR)
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                dst.chmod(0o755 if src.stat().st_mode & 0o111 else 0o644)


def _install_test_packages(b: _Builder) -> None:
    with b.step(f"install the lab's test packages {debs.IMAGE_VERSION}"):
        built = debs.build_all(debs.IN_IMAGE, debs.IMAGE_VERSION, b.root / "tmp" / "pvelab-debs")
        b.chroot("dpkg", "-i", *(f"/tmp/pvelab-debs/{d.name}" for d in built))
        shutil.rmtree(b.root / "tmp" / "pvelab-debs")
        conffile = b.root / debs.MODIFIED_CONFFILE
        conffile.write_text(conffile.read_text() + debs.LOCAL_EDIT)


def _configure_system(b: _Builder) -> None:
    with b.step("configure units, sshd, network, machine-id"):
        system = b.root / "etc/systemd/system"
        for unit in MASKED_UNITS:
            (system / unit).unlink(missing_ok=True)
            (system / unit).symlink_to("/dev/null")
        b.chroot("systemctl", "enable", *ENABLED_UNITS)
        b.chroot("systemctl", "disable", "dnsmasq.service")
        for key in (b.root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        (b.root / "etc/machine-id").write_text("")  # systemd makes one per VM on first boot
        (b.root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
        (b.root / "etc/hostname").write_text("pvelab\n")
        (b.root / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 0\n")
        resolv = b.root / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.write_text("nameserver 10.0.2.3\n")  # QEMU user-net DNS (unreachable: restrict=on)


def _small_initrd(b: _Builder) -> None:
    with b.step("make the small initrd (MODULES=list)"), b.proc_mounted():
        b.chroot("update-initramfs", "-u", "-k", "all")


def _export_boot_files(b: _Builder) -> None:
    kernels = sorted((b.root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageBuildError(["ls", "/boot/vmlinuz-*"], 1, "no kernel installed in the image")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = b.root / f"boot/initrd.img-{version}"
    for src, name in ((kernels[-1], "vmlinuz"), (initrd, "initrd.img")):
        shutil.copyfile(src, b.work / name)
        (b.work / name).chmod(0o644)


def _clean_root(b: _Builder) -> None:
    with b.step("clean caches, lists and logs"):
        b.chroot("apt-get", "clean")
        for pattern in ("var/lib/apt/lists/*", "var/log/*.log", "var/log/apt/*", "run/*", "tmp/*"):
            for path in b.root.glob(pattern):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _make_disk(b: _Builder) -> None:
    with b.step(f"mke2fs -d (ext4, {DISK_SIZE}) and convert to qcow2"):
        raw = b.work / "base.raw"
        label = ["-L", "pvelab-root"]
        b.run(["mke2fs", "-q", "-t", "ext4", *label, "-d", str(b.root), str(raw), DISK_SIZE])
        b.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(b.work / "base.qcow2")])
        raw.unlink()


def _build(work: Path, cache_dir: Path, log: Log) -> dict[str, str]:
    mirror, security = updates.host_mirrors()
    b = _Builder(work, log)
    _debootstrap(b, cache_dir, mirror)
    _keep_base_debs(b, cache_dir)
    _install_guest_files(b)
    _install_test_packages(b)
    with b.step("pick real Debian updates (bookworm-updates, bookworm-security)"):
        updates.fetch_updates(b.chroot, b.root, work / "pool" / "updates", mirror, security, log)
        shutil.copyfile(GUEST_DIR / "etc/apt/sources.list", b.root / "etc/apt/sources.list")
    _configure_system(b)
    _small_initrd(b)
    _export_boot_files(b)
    packages = {name: version for name, (version, _) in installed_packages(b).items()}
    _clean_root(b)
    _make_disk(b)
    with b.step("remove the build tree"):
        if any(p.is_mount() for p in (b.root / "proc", b.root / "sys", b.root / "dev")):
            raise ImageBuildError(["umount"], 1, f"{b.root} still has mounts; not deleting it")
        shutil.rmtree(b.root)
    return packages


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """One builder at a time per cache (others wait, then find the image built)."""
    with open(cache_dir / ".image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_stale(cache_dir: Path) -> None:
    for tmp in cache_dir.glob("image-*.tmp-*"):
        if not any(p.is_mount() for p in tmp.glob("root/*")):
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_image(cache_dir: Path | None = None, log: Log = print) -> Image:
    """The guest image for the current recipe: built once (about 4 min), then reused."""
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    recipe = recipe_hash()
    final = cache_dir / f"image-{recipe}"
    if (final / "image.json").is_file():
        return Image.load(final)
    with _locked(cache_dir):
        if (final / "image.json").is_file():
            return Image.load(final)
        _remove_stale(cache_dir)
        work = cache_dir / f"image-{recipe}.tmp-{os.getpid()}"
        work.mkdir()
        log(f"[image] building {final} (recipe {recipe})")
        began = time.monotonic()
        try:
            packages = _build(work, cache_dir, log)
        except BaseException:
            _remove_stale(cache_dir)  # keeps a tree that still has mounts: never rm through them
            raise
        meta = {"recipe": recipe, "suite": SUITE, "packages": packages,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": round(time.monotonic() - began, 1)}  # fmt: skip
        (work / "image.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.rename(work, final)  # atomic: a half-built image is never found under `final`
        log(f"[image] built {final} in {time.monotonic() - began:.0f} s")
    return Image.load(final)
