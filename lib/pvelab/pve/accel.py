"""Decide between KVM and TCG by really running a guest, cached per host boot."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pvelab.paths import LabPaths, default_cache_dir

ENV_OVERRIDE = "PVELAB_ACCEL"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MARKER = b"PVELAB-ACCEL-OK"
KERNEL_MARKER = b"Linux version"
CACHE_NAME = "accel.json"
CACHE_VERSION = 2  # verdicts with a short reason and QEMU's words apart
KVM_DEVICE = Path("/dev/kvm")

# A boot sector that prints MARKER on COM1 and halts: proves the vCPU executes guest code.
#   cli; xor ax,ax; mov ds,ax; mov si,msg; mov dx,0x3f8
#   next: lodsb; test al,al; jz done; out dx,al; jmp next
#   done: hlt; jmp done;  msg: db "PVELAB-ACCEL-OK",13,10,0
_CODE = bytes.fromhex("fa31c08ed8be167cbaf803ac84c07403eeebf8f4ebfd")
BOOT_SECTOR = (_CODE + MARKER + b"\r\n\0").ljust(510, b"\0") + b"\x55\xaa"


@dataclass(frozen=True)
class Verdict:
    """The acceleration to use, why in a few calm words, and QEMU's own words (for the files)."""

    accel: str  # "kvm" or "tcg"
    reason: str  # one short line, shown on the terminal
    detail: str = ""  # QEMU's stderr etc.: kept in accel.json and lab.json, never printed
    forced: bool = False  # chosen by $PVELAB_ACCEL, not probed

    def line(self) -> str:
        """The one line the lab prints about its acceleration."""
        if self.accel == "kvm" or self.forced:
            return f"[lab] using {self.accel.upper()} ({self.reason})"
        return (
            f"[lab] KVM is not usable here ({self.reason}); "
            "using TCG (software emulation: slower, fine)"
        )

    def record(self) -> dict[str, str]:
        return {"accel": self.accel, "reason": self.reason, "detail": self.detail}


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def probe(
    paths: LabPaths | None = None, *, kernel: Path | None = None, refresh: bool = False
) -> Verdict:
    """KVM if it really runs a guest here, else TCG. `$PVELAB_ACCEL` overrides; cached per boot."""
    forced = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if forced in ("kvm", "tcg"):
        return Verdict(forced, f"${ENV_OVERRIDE}={forced}", forced=True)
    cache = (paths or LabPaths.default()).root / CACHE_NAME
    if not refresh:
        cached = _read_cache(cache)
        if cached:
            return cached
    verdict = _probe_kvm(kernel if kernel is not None else find_cached_kernel())
    _write_cache(cache, verdict)
    return verdict


def _read_cache(cache: Path) -> Verdict | None:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if data.get("boot_id") != boot_id() or data.get("version") != CACHE_VERSION:
        return None
    if data.get("accel") not in ("kvm", "tcg"):
        return None
    return Verdict(data["accel"], str(data.get("reason", "")), str(data.get("detail", "")))


def _write_cache(cache: Path, verdict: Verdict) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    record = {"boot_id": boot_id(), "version": CACHE_VERSION, **verdict.record()}
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, cache)


def find_cached_kernel() -> Path | None:
    """A kernel from the image cache (`<cache>/<hash>/vmlinuz*`), if one was built."""
    found = sorted(default_cache_dir().glob("*/vmlinuz*"))
    return found[0] if found else None


def _probe_kvm(kernel: Path | None) -> Verdict:
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return Verdict("tcg", f"{KVM_DEVICE} missing or not accessible")
    with tempfile.TemporaryDirectory(prefix="pvelab-accel-") as tmp:
        disk = Path(tmp) / "boot.img"
        disk.write_bytes(BOOT_SECTOR)
        run = run_guest(
            ["-drive", f"file={disk},format=raw,if=ide"], Path(tmp) / "serial-boot", MARKER, 10.0
        )
        if not run.ok:
            return Verdict("tcg", f"a test guest under KVM {run.outcome}", run.stderr)
        if kernel is None:
            return Verdict("kvm", "KVM ran the probe boot sector (no cached kernel to try)")
        run = run_guest(
            ["-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=ttyS0"],
            Path(tmp) / "serial-kernel",
            KERNEL_MARKER,
            15.0,
        )
        if not run.ok:
            return Verdict("tcg", f"the lab's kernel under KVM {run.outcome}", run.stderr)
        return Verdict("kvm", f"KVM booted {kernel.name} to '{KERNEL_MARKER.decode()}' on serial")


@dataclass(frozen=True)
class GuestRun:
    """How a throwaway QEMU run ended: `outcome` in a few words, QEMU's stderr apart."""

    ok: bool
    outcome: str
    stderr: str = ""


def run_guest(
    extra: list[str],
    serial: Path,
    marker: bytes,
    wait: float,
    accel: tuple[str, ...] = ("-accel", "kvm", "-cpu", "host"),
) -> GuestRun:
    """Run a throwaway QEMU until `marker` shows on its serial port or `wait` runs out."""
    cmd = [
        "qemu-system-x86_64",
        *accel,
        "-m",
        "128",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{serial}",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            if serial.exists() and marker in serial.read_bytes():
                return GuestRun(True, "printed its marker")
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                return GuestRun(False, f"stopped at start, QEMU exit {proc.returncode}", err)
            time.sleep(0.1)
        return GuestRun(False, f"printed nothing on serial within {wait:.0f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
