"""Down slots: how many VMs may be down at once, held where every controller sees them.

A slot is a `flock` on a file, held by a long-lived command (`cat` reading its stdin) that ends
when its holder goes: an SSH channel to the Proxmox host for the slots every run shares, a local
process for the run's own slots (shared by its pytest-xdist workers, across Proxmox hosts). A
crashed controller closes its channels and its processes die with it, so its slots are released
by the kernel; nothing is ever left to clean up by hand.

Admission is one script, run under `admit.lock`: a VM may go down only when fewer than the
budget's slots are held in total (by any run) and its redundancy group's lock is free; the script
then takes a free slot and the group lock and holds them until its stdin closes.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from pvepatch.errors import PvepatchError
from pvepatch.transport.command import Held, quote

# How many slot files are scanned: the largest --max-down any run may use.
MAX_SLOTS = 16
BUSY_EXIT = 75  # EX_TEMPFAIL
HOST_SLOT_DIR = "/run/lock/pvepatch"

# Shell functions both scripts use: who holds lock file $1 (its .who), and whether lock file $1
# can be opened (checked with `true`: dash exits on a failed redirection of `exec` or `:`).
_HELPERS = r"""
who() { if [ -r "$1.who" ]; then tr -d '\n' < "$1.who"; else printf 'a holder'; fi; }
opens() { true 2>/dev/null >>"$1" || { echo "ERROR cannot open $1"; exit 70; }; }
"""

# $1 directory, $2 budget, $3 redundancy group ("" for none), $4 who holds it (one line).
SLOT_SCRIPT = (
    r"""
set -u
dir=$1 budget=$2 group=$3 holder=$4
umask 077
@HELPERS@
mkdir -p "$dir" || { echo "ERROR cannot create $dir"; exit 70; }
opens "$dir/admit.lock"
exec 9>>"$dir/admit.lock"
flock -w 20 9 || { echo "ERROR $dir/admit.lock stayed busy for 20 s"; exit 71; }
busy=""
if [ -n "$group" ]; then
  opens "$dir/group-$group"
  exec 7>>"$dir/group-$group"
  flock -n 7 || busy="redundancy group $group is down: $(who "$dir/group-$group")"
fi
held=0 free="" holders=""
i=0
while [ "$i" -lt @MAX@ ]; do
  if flock -n "$dir/slot-$i" true 2>/dev/null; then
    [ -z "$free" ] && free=$i
  else
    held=$((held + 1))
    holders="$holders; $(who "$dir/slot-$i")"
    [ "$held" -ge "$budget" ] && break
  fi
  i=$((i + 1))
done
[ "$held" -ge "$budget" ] && busy="${busy:+$busy; }$held of $budget down$holders"
if [ -n "$busy" ] || [ -z "$free" ]; then
  echo "BUSY ${busy:-no free slot}"
  exit @BUSY@
fi
exec 8>>"$dir/slot-$free"
flock -n 8 || { echo "BUSY slot-$free was taken"; exit @BUSY@; }
printf '%s\n' "$holder" > "$dir/slot-$free.who"
[ -n "$group" ] && printf '%s\n' "$holder" > "$dir/group-$group.who"
exec 9>&-
echo "HELD slot-$free $held"
exec cat > /dev/null
""".replace("@MAX@", str(MAX_SLOTS))
    .replace("@BUSY@", str(BUSY_EXIT))
    .replace("@HELPERS@", _HELPERS)
)
SLOT_COMMAND = "sh -c %s pvepatch-slot %s %s %s %s"

# The VM lock: one run changes a VM at a time. $1 directory, $2 vmid, $3 who holds it.
VM_LOCK_SCRIPT = r"""
set -u
dir=$1 vmid=$2 holder=$3
umask 077
@HELPERS@
mkdir -p "$dir" || { echo "ERROR cannot create $dir"; exit 70; }
opens "$dir/vm-$vmid"
exec 8>>"$dir/vm-$vmid"
if ! flock -n 8; then
  echo "BUSY held by $(who "$dir/vm-$vmid")"
  exit @BUSY@
fi
printf '%s\n' "$holder" > "$dir/vm-$vmid.who"
echo "HELD vm-$vmid 0"
exec cat > /dev/null
""".replace("@BUSY@", str(BUSY_EXIT)).replace("@HELPERS@", _HELPERS)
VM_LOCK_COMMAND = "sh -c %s pvepatch-vm-lock %s %s %s"
_SAFE = re.compile(r"[^A-Za-z0-9 ._:@()/,=+-]")


Opener = Callable[[str, tuple[object, ...]], Held]  # (command with %s, args) -> held command


class SlotError(PvepatchError):
    """A slot could not be taken (not "busy": broken)."""


@dataclass
class Slot:
    """One held slot: released when closed, or when its holder process ends."""

    place: str
    name: str
    held_before: int  # how many other slots were held when this one was taken
    held: Held

    def release(self) -> None:
        self.held.close()

    def alive(self) -> bool:
        """Still held: the command holding it runs (its connection did not end)."""
        return self.held.alive()

    def __str__(self) -> str:
        return f"{self.name} on {self.place}"


@dataclass(frozen=True)
class Busy:
    """Not admitted now: who holds what."""

    place: str
    why: str

    def __str__(self) -> str:
        return f"{self.place}: {self.why}"


class SlotTable:
    """The slots in one directory of one place (this machine, or a Proxmox host)."""

    def __init__(self, place: str, directory: str, opener: Opener):
        self.place, self.directory, self.opener = place, directory, opener

    def try_take(self, budget: int, group: str | None, holder: str) -> Slot | Busy:
        args = (SLOT_SCRIPT, self.directory, budget, group or "", _one_line(holder))
        return self._answer(self.opener(SLOT_COMMAND, args), "a down slot")

    def try_lock_vm(self, vmid: int, holder: str) -> Slot | Busy:
        """The lock of VM `vmid` (held while this run may change it), or who holds it."""
        args = (VM_LOCK_SCRIPT, self.directory, int(vmid), _one_line(holder))
        return self._answer(self.opener(VM_LOCK_COMMAND, args), f"the lock of VM {vmid}")

    def _answer(self, held: Held, what: str) -> Slot | Busy:
        line = held.readline(timeout=60.0)
        noise = []  # what a login shell or a warning printed before the script's answer
        while line is not None and not line.startswith(("HELD ", "BUSY ", "ERROR ")):
            noise.append(line)
            line = held.readline(timeout=60.0) if len(noise) < 20 else None
        if line is not None and line.startswith("HELD "):
            _, name, before = (line.split() + ["", ""])[:3]
            return Slot(self.place, name, int(before) if before.isdigit() else 0, held)
        held.close()
        if line is not None and line.startswith("BUSY "):
            return Busy(self.place, line[5:].strip())
        raise SlotError(
            f"cannot take {what} in {self.directory} on {self.place}: "
            f"{(line or ' / '.join(noise) or 'no answer').strip()}"
        )


def take(
    table: SlotTable,
    budget: int,
    group: str | None,
    holder: str,
    timeout: float,
    progress: Callable[[str], None],
    stop: Callable[[], str | None] = lambda: None,
    every: float = 30.0,
    interval: float = 2.0,
) -> Slot:
    """Wait (saying for what and who holds it, every `every` s) until a slot is admitted, up to
    `timeout` s; raise SlotError naming the holders then, or when `stop()` gives a reason."""
    started = time.monotonic()
    said = started - every
    while True:
        got = table.try_take(budget, group, holder)
        if isinstance(got, Slot):
            return got
        waited = time.monotonic() - started
        why = stop()
        if why:
            raise SlotError(f"not taken down: {why} (waiting for a down slot: {got})")
        if waited >= timeout:
            raise SlotError(f"no down slot within --lock-timeout {timeout:.0f} s: {got}")
        if time.monotonic() - said >= every:
            progress(f"waiting for a down slot ({waited:.0f} s of {timeout:.0f} s): {got}")
            said = time.monotonic()
        time.sleep(interval)


def local_opener(command: str, args: tuple[object, ...]) -> Held:
    """Run the slot command on this machine (the run's own slots)."""
    return LocalHeld(quote(command, *args))


class LocalHeld:
    """A local process held open through its stdin (ends when closed or when we die)."""

    def __init__(self, text: str):
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed sh script, arguments quoted
            ["/bin/sh", "-c", text],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a Ctrl-C to our group must not release the slot
        )

    def readline(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        return line or None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _one_line(text: str) -> str:
    return _SAFE.sub("_", text)[:200]
