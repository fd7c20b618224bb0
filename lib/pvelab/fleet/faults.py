"""Faults the lab can inject: real changes inside a guest (over SSH as root), in its PVE conf,
and on the host (the lab's apt repository, a VM's disks).

Every fault is undone by `pvelab reset`: fresh overlay from the base image, fresh conf, the VM's
other disks removed, re-seed, the VM back on node `pve`, quorum restored, and (by `up`) the
image's repository back in place of an altered one. None of them needs an undo of its own.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pvelab.fleet.roster import VM
from pvelab.image import debs, recipe
from pvelab.paths import LabPaths
from pvelab.pve import cluster, vmstate
from pvelab.pve.qm import cipending, cloudinit
from pvelab.pve.vmconf import VMConf, edited_conf, load_conf, write_conf
from pvelab.sshcmd import LabError, local_run

AGENT_MISSING = """\
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get purge -y qemu-guest-agent
! dpkg-query -W -f '${Status}' qemu-guest-agent 2>/dev/null | grep -q 'install ok installed'
"""

# The lab boots its own initrd, which loads virtio_console before the root fs is mounted, so a
# module blacklist in the guest would not bite. udev makes the /dev/virtio-ports/<name> link:
# override the default rules without it (and drop the link should the initrd's udev make one).
VIRTIO_MISSING = """\
set -e
sed '/virtio-ports/d' /lib/udev/rules.d/50-udev-default.rules > /etc/udev/rules.d/50-udev-default.rules
cat > /etc/udev/rules.d/99-pvelab-virtio-missing.rules <<'EOF'
# pvelab fault virtio-missing: no /dev/virtio-ports/org.qemu.guest_agent.0 from the next boot on
SUBSYSTEM=="virtio-ports", ATTR{name}=="org.qemu.guest_agent.0", RUN+="/bin/rm -f /dev/virtio-ports/org.qemu.guest_agent.0"
EOF
"""

SSHD_BROKEN = """\
set -e
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/pvelab-sshd-broken.conf <<'EOF'
# pvelab fault sshd-broken: sshd refuses to start from the next boot on
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'echo "pvelab fault sshd-broken" >&2; exit 1'
EOF
# Reload so systemd knows the unit; the running sshd (and this session) keep working.
systemctl daemon-reload
"""

IGNORE_SHUTDOWN = """\
set -e
mkdir -p /etc/systemd/logind.conf.d /etc/systemd/system/qemu-guest-agent.service.d
cat > /etc/systemd/logind.conf.d/pvelab-ignore-shutdown.conf <<'EOF'
# pvelab fault ignore-shutdown: the ACPI power button (qm shutdown without agent) does nothing
[Login]
HandlePowerKey=ignore
EOF
cat > /etc/systemd/system/qemu-guest-agent.service.d/pvelab-ignore-shutdown.conf <<'EOF'
# pvelab fault ignore-shutdown: the agent refuses guest-shutdown
[Service]
ExecStart=
ExecStart=-/usr/sbin/qemu-ga --block-rpcs=guest-shutdown
EOF
systemctl daemon-reload
systemctl restart systemd-logind
systemctl restart qemu-guest-agent
"""

DNS_DOWN = """\
set -e
systemctl stop dnsmasq
systemctl mask dnsmasq
! systemctl is-active --quiet dnsmasq
"""

# apt holds /var/lib/dpkg/lock-frontend with a POSIX (fcntl) lock: find it in /proc/locks by inode.
DPKG_LOCK = """\
set -e
mkdir -p /etc/pvelab
echo {seconds} > /etc/pvelab/slow-seconds
systemctl reset-failed pvelab-dpkg-lock.service 2>/dev/null || true
systemd-run --unit=pvelab-dpkg-lock --collect --setenv=DEBIAN_FRONTEND=noninteractive \\
    sh -c 'apt-get update && apt-get install -y --reinstall pvelab-slow'
inode=$(stat -c %i /var/lib/dpkg/lock-frontend)
i=0
while [ $i -lt 120 ]; do
    if grep -q ":$inode " /proc/locks; then echo "dpkg lock held"; exit 0; fi
    sleep 0.5; i=$((i + 1))
done
echo "pvelab fault dpkg-lock: dpkg lock not taken within 60 s" >&2
systemctl status --no-pager pvelab-dpkg-lock.service >&2 || true
exit 1
"""

DPKG_HALFCONF = """\
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
dir=$(mktemp -d)
cd "$dir"
apt-get download pvelab-halfconf
dpkg --unpack ./pvelab-halfconf_*.deb
rm -rf "$dir"
dpkg --audit || true
"""

DPKG_LOCK_SECONDS = 75

# A unit started now and at every boot whose ExecStop sleeps: every shutdown from now on (the
# agent's guest-shutdown or the ACPI power button) waits for it before the guest powers off.
# systemd's default 90 s stop timeout would cut the sleep short, hence TimeoutStopSec above it.
SLOW_SHUTDOWN = """\
set -e
cat > /etc/systemd/system/pvelab-slow-shutdown.service <<'EOF'
# pvelab fault slow-shutdown: the guest takes ~{seconds} s to power off from the next shutdown on
[Unit]
Description=pvelab fault slow-shutdown (stopping takes {seconds} s)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sleep {seconds}
TimeoutStopSec={stop_timeout}

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now pvelab-slow-shutdown.service
systemctl is-active --quiet pvelab-slow-shutdown.service
"""

# Longer than 90 s, so a restart that stops waiting at 90 s is caught.
SLOW_SHUTDOWN_SECONDS = 110

# bad-update: the repository offers both versions; the guest gets the harmless one, so its next
# dist-upgrade installs the one whose postinst masks the agent (other VMs never had the package).
BAD_UPDATE = "pvelab-bad-update"
BAD_UPDATE_GOOD = "1.0-1"
BAD_UPDATE_BAD = "1.1-1"  # its postinst stops, disables and masks qemu-guest-agent.service
BAD_UPDATE_SCRIPT = f"""\
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y {BAD_UPDATE}={BAD_UPDATE_GOOD}
test "$(dpkg-query -W -f '${{Status}} ${{Version}}' {BAD_UPDATE})" = "install ok installed {BAD_UPDATE_GOOD}"
if ! systemctl is-active --quiet qemu-guest-agent; then
    echo "pvelab fault bad-update: qemu-guest-agent is not running before the update" >&2
    exit 1
fi
echo "{BAD_UPDATE} {BAD_UPDATE_GOOD} installed; the repository offers {BAD_UPDATE_BAD}"
"""
# repo.ensure_repo's stamp: which cached repository the directory holds. A fault that alters the
# directory rewrites it, so the next `pvelab up` (and so `reset`) restores the image's repository.
REPO_STAMP = ".pvelab-repo"
REPO_INDEXES = ("Packages", "Packages.gz", "Release")

# snapshot-unsupported: a data disk on raw storage, as a PBS VM may have; PVE cannot snapshot it.
RAW_DISK_BYTES = 8 * 1024 * 1024
RAW_DISK_CONF = "local:vm-{vmid}-disk-1.raw,size=8M"


def raw_disk(paths: LabPaths, vmid: int) -> Path:
    """The file behind `local:vm-<vmid>-disk-1.raw`."""
    return paths.disks_dir / f"vm-{vmid}-disk-1.raw"


def add_raw_disk(paths: LabPaths, vm: VM) -> None:
    """Create the VM's second disk: an 8 MiB raw file (sparse) beside its overlay."""
    disk = raw_disk(paths, vm.vmid)
    disk.parent.mkdir(parents=True, exist_ok=True)
    with open(disk, "wb") as out:
        out.truncate(RAW_DISK_BYTES)


def build_bad_update(version: str, out_dir: Path) -> Path:
    """`pvelab-bad-update_<version>_all.deb` from its sources in debs/, @VERSION@ filled in.

    Built here rather than by `debs.build_deb`: the debs module and the packages it builds are
    part of the image recipe, and a package only this fault uses must not rebuild the image."""
    src = debs.SOURCE_DIR / BAD_UPDATE
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{BAD_UPDATE}_{version}_all.deb"
    with tempfile.TemporaryDirectory(prefix=f"{BAD_UPDATE}-") as tmp:
        tree = Path(tmp) / BAD_UPDATE
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            target = tree / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text().replace("@VERSION@", version))
            target.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)
        local_run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)])
    return deb


def bad_update_debs(paths: LabPaths) -> list[Path]:
    """Both versions of pvelab-bad-update, built once per content of their sources (<lab>/faults/)."""
    src = debs.SOURCE_DIR / BAD_UPDATE
    files = sorted(p for p in src.rglob("*") if p.is_file())
    cache = paths.root / "faults" / f"{BAD_UPDATE}-{recipe.recipe_hash(files, root=src)}"
    versions = (BAD_UPDATE_GOOD, BAD_UPDATE_BAD)
    built = [cache / f"{BAD_UPDATE}_{version}_all.deb" for version in versions]
    if not all(deb.is_file() for deb in built):
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for version in versions:
            build_bad_update(version, tmp)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    return built


def offer_bad_update(paths: LabPaths, vm: VM) -> None:
    """Add both versions of pvelab-bad-update to the lab's live repository and re-index it."""
    from pvelab.image import repo  # pulls in the image build: only this fault needs it

    repo_dir = paths.repo_dir
    if not (repo_dir / REPO_STAMP).is_file():
        raise LabError(f"no lab repository in {repo_dir}: bring the lab up first")
    new = bad_update_debs(paths)
    (repo_dir / REPO_STAMP).unlink()  # a new file: the stamp says the repository is altered
    (repo_dir / REPO_STAMP).write_text(f"altered by pvelab fault bad-update ({vm.name})\n")
    for deb in new:
        shutil.copyfile(deb, repo_dir / deb.name)
    # The indexes are hard links into the image cache: new files, never writes through the links.
    for name in REPO_INDEXES:
        (repo_dir / name).unlink(missing_ok=True)
    repo.write_indexes(repo_dir)


# no-quorum / migrated: the cluster's faults (DESIGN.md "Cluster").
MIGRATE_TARGET = "pve2"
MIGRATE_SHUTDOWN_TIMEOUT = 120


def lose_quorum(paths: LabPaths) -> None:
    """Every node alone in its partition: `pvecm status` says `Quorate: No`, qm refuses
    start/migrate/config writes (qm/quorum.py). `reset` restores quorum."""
    cluster.set_quorum(paths, False, "pvelab fault no-quorum")


def _node_qm(paths: LabPaths, node: str, *args: str | int, timeout: float) -> None:
    """The node's own `qm` wrapper, exactly what its sshd runs for an admin's `qm ...`."""
    wrapper = paths.node_bin_dir(node) / "qm"
    if not wrapper.exists():
        raise LabError(f"no {wrapper}: bring the lab up first")
    local_run([str(wrapper), *map(str, args)], timeout=timeout)


def migrate_away(paths: LabPaths, vm: VM) -> None:
    """As an admin would: shut the VM down if it runs (forced after 120 s), then the stand-in's
    own offline `qm migrate <vmid> pve2` on its node. `reset` brings it back to pve, running."""
    owner = cluster.vm_node(paths, vm.vmid)
    if owner is None:
        raise LabError(f"{vm.name}: no config {paths.conf(vm.vmid)}: bring the lab up first")
    if owner == MIGRATE_TARGET:
        raise LabError(f"{vm.name}: already on {MIGRATE_TARGET}")
    if vmstate.running_pid(paths, vm.vmid) is not None:
        _node_qm(paths, owner, "shutdown", vm.vmid, "--timeout", MIGRATE_SHUTDOWN_TIMEOUT,
                 "--forceStop", "1", timeout=MIGRATE_SHUTDOWN_TIMEOUT + 60)  # fmt: skip
    _node_qm(paths, owner, "migrate", vm.vmid, MIGRATE_TARGET, timeout=120)


def ha_manage(paths: LabPaths, vm: VM) -> None:
    """As an admin would: `ha-manager add vm:<vmid> --state started` on the VM's node (the HA
    daemon then owns its power state). `reset` removes the resource again."""
    owner = cluster.vm_node(paths, vm.vmid) or cluster.FIRST_NODE
    wrapper = paths.node_bin_dir(owner) / "ha-manager"
    if not wrapper.exists():
        raise LabError(f"no {wrapper}: bring the lab up first")
    local_run([str(wrapper), "add", f"vm:{vm.vmid}", "--state", "started"], timeout=30)


# cloudinit-changed: a VM whose cloud-init drive was generated at its last start (the guest holds
# that drive's instance-id), then a cloud-init key changed: the next PVE start regenerates the
# drive with another instance-id, and cloud-init in the guest makes new SSH host keys.
CLOUDINIT_DRIVE = "local:vm-{vmid}-cloudinit,media=cdrom"
CLOUDINIT_DRIVE_KEY = "ide2"
CLOUDINIT_KEYS = {"ciuser": "root", "ipconfig0": "ip=dhcp"}
CLOUDINIT_NEW_USER = "pvelab"
INSTANCE_ID_FILE = "/var/lib/cloud/data/instance-id"


def _load_conf(paths: LabPaths, vm: VM) -> VMConf:
    conf = load_conf(paths.conf(vm.vmid))
    if conf is None:
        raise LabError(f"{vm.name}: no config {paths.conf(vm.vmid)}: bring the lab up first")
    return conf


def attach_cloudinit(paths: LabPaths, vm: VM) -> None:
    """The conf of a VM set up for cloud-init whose drive was generated at its last start: the
    drive line and the keys, no `[special:cloudinit]` (nothing changed since)."""
    conf = _load_conf(paths, vm)
    conf.main[CLOUDINIT_DRIVE_KEY] = CLOUDINIT_DRIVE.format(vmid=vm.vmid)
    conf.main.update(CLOUDINIT_KEYS)
    conf.sections.pop(cipending.SECTION, None)
    write_conf(paths.conf(vm.vmid), conf)


def instance_id_script(paths: LabPaths, vm: VM) -> str:
    """The guest's side: cloud-init's record of the instance it last ran as (`<id>\n`, as
    cloud-init's stages.py writes it), the id of the drive the conf generates now."""
    iid = cloudinit.instance_id(_load_conf(paths, vm).main, vm.vmid)
    return f"set -e\nmkdir -p {Path(INSTANCE_ID_FILE).parent}\necho {iid} > {INSTANCE_ID_FILE}\n"


def change_ciuser(paths: LabPaths, vm: VM) -> None:
    """As an admin would: the node's own `qm set <vmid> --ciuser pvelab`. Running, the VM takes
    it at once and `[special:cloudinit]` keeps `ciuser: root` (`qm cloudinit pending` shows
    the change); stopped, it is simply applied. Either way the next start's instance-id differs."""
    owner = cluster.vm_node(paths, vm.vmid) or cluster.FIRST_NODE
    _node_qm(paths, owner, "set", vm.vmid, "--ciuser", CLOUDINIT_NEW_USER, timeout=60)


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    # A text, or built from the lab after the `host` step (its VM's conf as that left it).
    guest_script: str | Callable[[LabPaths, VM], str] | None = None
    # Value None deletes the key; "{vmid}" in a value is the VM's id.
    conf: dict[str, str | None] = field(default_factory=dict)
    role: str | None = None  # only VMs of this role can take the fault
    timeout: float = 180
    host: Callable[[LabPaths, VM], None] | None = None  # host-side step, before the guest's
    after: Callable[[LabPaths, VM], None] | None = None  # host-side step, after guest and conf
    # A fault of the whole cluster: takes no VM (one named is ignored).
    whole_cluster: Callable[[LabPaths], None] | None = None


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("agent-missing", "qemu-guest-agent purged in the guest, `agent` off in the conf",
              AGENT_MISSING, {"agent": None}),
        Fault("virtio-missing", "udev makes no /dev/virtio-ports link: no virtio port after the next boot",
              VIRTIO_MISSING),
        Fault("sshd-broken", "ssh.service drop-in: sshd fails to start from the next boot on",
              SSHD_BROKEN),
        Fault("lock-backup", "`lock: backup` in the VM's conf", None, {"lock": "backup"}),
        Fault("ignore-shutdown", "guest ignores ACPI power button and the agent's guest-shutdown",
              IGNORE_SHUTDOWN),
        Fault("dns-down", "dnsmasq stopped and masked", DNS_DOWN, role="pihole"),
        Fault("dpkg-lock", f"pvelab-slow installing: dpkg lock held ~{DPKG_LOCK_SECONDS} s",
              DPKG_LOCK.format(seconds=DPKG_LOCK_SECONDS)),
        Fault("dpkg-halfconf", "pvelab-halfconf unpacked, not configured (dpkg --audit)",
              DPKG_HALFCONF),
        Fault("slow-shutdown", f"guest takes ~{SLOW_SHUTDOWN_SECONDS} s to power off (a unit's ExecStop sleeps)",
              SLOW_SHUTDOWN.format(seconds=SLOW_SHUTDOWN_SECONDS,
                                   stop_timeout=SLOW_SHUTDOWN_SECONDS + 120)),
        Fault("bad-update", f"{BAD_UPDATE} {BAD_UPDATE_GOOD} installed; the repository offers "
              f"{BAD_UPDATE_BAD}, whose postinst masks qemu-guest-agent",
              BAD_UPDATE_SCRIPT, host=offer_bad_update),
        Fault("snapshot-unsupported", "second disk virtio1 on raw storage: PVE cannot snapshot the VM",
              None, {"virtio1": RAW_DISK_CONF}, host=add_raw_disk),
        Fault("ha-managed", "HA resource vm:<vmid> (state started): qm start/stop/shutdown only queue requests",
              host=ha_manage),
        Fault("no-quorum", "the cluster loses quorum: qm start/migrate/set/snapshot fail on every node",
              whole_cluster=lose_quorum),
        Fault("migrated", f"shut down if running, then offline-migrated to {MIGRATE_TARGET} (qm migrate)",
              host=migrate_away, timeout=MIGRATE_SHUTDOWN_TIMEOUT + 180),
        Fault("cloudinit-changed", "cloud-init drive + ciuser root, guest holds its instance-id; then "
              f"qm set --ciuser {CLOUDINIT_NEW_USER}: the next start brings a new instance-id",
              instance_id_script, host=attach_cloudinit, after=change_ciuser),
    )
}  # fmt: skip


def get(name: str) -> Fault:
    try:
        return FAULTS[name]
    except KeyError:
        raise LabError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None


def check_applicable(fault: Fault, vm: VM) -> None:
    if fault.role is not None and vm.role != fault.role:
        raise LabError(
            f"fault {fault.name} needs a VM of role {fault.role}; {vm.name} is {vm.role}"
        )


def apply_conf(fault: Fault, text: str, vmid: int) -> str:
    """The VM's conf text with the fault's host-side edits made."""
    for key, value in fault.conf.items():
        text = edited_conf(text, key, None if value is None else value.format(vmid=vmid))
    return text
