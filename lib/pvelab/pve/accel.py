"""Decide between KVM and TCG by really running a guest, cached per host boot."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from pvelab.paths import LabPaths

ENV_OVERRIDE = "PVELAB_ACCEL"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MARKER = b"PVELAB-ACCEL-OK"
KERNEL_MARKER = b"Linux version"
CACHE_NAME = "accel.json"

# A boot sector that prints MARKER on COM1 and halts: proves the vCPU executes guest code.
#   cli; xor ax,ax; mov ds,ax; mov si,msg; mov dx,0x3f8
#   next: lodsb; test al,al; jz done; out dx,al; jmp next
#   done: hlt; jmp done;  msg: db "PVELAB-ACCEL-OK",13,10,0
_CODE = bytes.fromhex("fa31c08ed8be167cbaf803ac84c07403eeebf8f4ebfd")
BOOT_SECTOR = (_CODE + MARKER + b"\r\n\0").ljust(510, b"\0") + b"\x55\xaa"


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def probe(
    paths: LabPaths | None = None, *, kernel: Path | None = None, refresh: bool = False
) -> tuple[str, str]:
    """Return ("kvm"|"tcg", reason). `$PVELAB_ACCEL` overrides; verdicts cached per boot."""
    forced = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced, f"${ENV_OVERRIDE}={forced}"
    cache = (paths or LabPaths.default()).root / CACHE_NAME
    if not refresh:
        cached = _read_cache(cache)
        if cached:
            return cached
    verdict = _probe_kvm(kernel if kernel is not None else find_cached_kernel())
    _write_cache(cache, verdict)
    return verdict


def _read_cache(cache: Path) -> tuple[str, str] | None:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if data.get("boot_id") != boot_id() or data.get("accel") not in ("kvm", "tcg"):
        return None
    return data["accel"], data.get("reason", "")


def _write_cache(cache: Path, verdict: tuple[str, str]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    record = {"boot_id": boot_id(), "accel": verdict[0], "reason": verdict[1]}
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, cache)


def find_cached_kernel() -> Path | None:
    """A kernel from the image cache (`<cache>/<hash>/vmlinuz*`), if one was built."""
    from pvelab.paths import default_cache_dir

    found = sorted(default_cache_dir().glob("*/vmlinuz*"))
    return found[0] if found else None


def _probe_kvm(kernel: Path | None) -> tuple[str, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="pvelab-accel-") as tmp:
        disk = Path(tmp) / "boot.img"
        disk.write_bytes(BOOT_SECTOR)
        ok, detail = run_guest(
            ["-drive", f"file={disk},format=raw,if=ide"],
            Path(tmp) / "serial-boot",
            MARKER,
            wait=10.0,
        )
        if not ok:
            return "tcg", f"kvm boot-sector probe failed: {detail}"
        if kernel is None:
            return "kvm", "kvm ran the probe boot sector (no cached kernel to try)"
        ok, detail = run_guest(
            ["-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=ttyS0"],
            Path(tmp) / "serial-kernel",
            KERNEL_MARKER,
            wait=15.0,
        )
        if not ok:
            return "tcg", f"kvm kernel probe failed: {detail}"
        return "kvm", f"kvm booted {kernel.name} to '{KERNEL_MARKER.decode()}' on serial"


def run_guest(
    extra: list[str],
    serial: Path,
    marker: bytes,
    wait: float,
    accel: tuple[str, ...] = ("-accel", "kvm", "-cpu", "host"),
) -> tuple[bool, str]:
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
                return True, "marker seen"
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                return False, f"qemu exited with {proc.returncode}: {err[-300:]}"
            time.sleep(0.1)
        return False, f"no '{marker.decode()}' on serial within {wait:.0f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
