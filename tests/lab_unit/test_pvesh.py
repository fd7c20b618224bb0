"""The stand-in `pvesh`: /cluster/resources, storage and backup listings, VM status, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from pvelab import __main__ as pvelab_cli
from pvelab.paths import LabPaths
from pvelab.pve import backups, cluster, pvesh, vmstate

LIB = str(Path(__file__).resolve().parents[2] / "lib")
PBS = "name: pbs\nmemory: 384\ncores: 1\nagent: 1\nvirtio0: local:vm-101-disk-0,size=2G\n"
PIHOLE = (
    "name: pihole\nmemory: 384\ncores: 1\nvirtio0: local:vm-102-disk-0,size=2G\n"
    "tags: pvelab-dns\nlock: backup\n"
)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Backup ctimes are the file name read in the node's local time: pin it."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def paths(tmp_path: Path) -> LabPaths:
    """VM 101 on pve, VM 102 (tags, lock) on pve2, both stopped."""
    lab = LabPaths(tmp_path / "lab")
    lab.pve_conf_dir.mkdir(parents=True)
    lab.conf(101).write_text(PBS)
    lab.conf(102).write_text(PIHOLE)
    cluster.register(lab, 101)
    cluster.register(lab, 102)
    cluster.move(lab, 102, "pve2")
    return lab


def pvesh_run(paths: LabPaths, *argv: str, node: str = "pve") -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    rc = pvesh.run(paths, node, list(argv), out, err)
    return rc, out.getvalue(), err.getvalue()


def get_json(paths: LabPaths, *argv: str, node: str = "pve") -> object:
    rc, out, err = pvesh_run(paths, "get", *argv, "--output-format", "json", node=node)
    assert (rc, err) == (0, ""), err
    assert out.endswith("\n") and out.count("\n") == 1  # one line
    return json.loads(out)


# --- /cluster/resources ------------------------------------------------------------------------


def test_resources_vm_line_is_canonical_json(paths: LabPaths) -> None:
    rc, out, _ = pvesh_run(
        paths, "get", "/cluster/resources", "--type", "vm", "--output-format", "json"
    )
    assert rc == 0
    # PM8 API2/Cluster.pm resources + API2Tools.pm extract_vm_stats; PC CLIFormatter.pm json
    assert out.split("},{")[0] == (
        '[{"cpu":0,"disk":0,"diskread":0,"diskwrite":0,"id":"qemu/101","maxcpu":1,'
        '"maxdisk":2147483648,"maxmem":402653184,"mem":0,"name":"pbs","netin":0,"netout":0,'
        '"node":"pve","status":"stopped","template":0,"type":"qemu","uptime":0,"vmid":101'
    )


def test_resources_node_lock_and_tags_from_the_cluster(paths: LabPaths) -> None:
    vms = get_json(paths, "/cluster/resources", "--type", "vm")
    assert isinstance(vms, list)
    assert [(v["vmid"], v["node"]) for v in vms] == [(101, "pve"), (102, "pve2")]
    assert "lock" not in vms[0] and "tags" not in vms[0]
    assert (vms[1]["lock"], vms[1]["tags"]) == ("backup", "pvelab-dns")
    assert all("memhost" not in v and "hastate" not in v for v in vms)  # PVE 8


def test_resources_follow_a_migration(paths: LabPaths) -> None:
    cluster.move(paths, 101, "pve2")
    vms = get_json(paths, "/cluster/resources", "--type", "vm", node="pve2")
    assert [v["node"] for v in vms] == ["pve2", "pve2"]  # type: ignore[index, union-attr]


def test_resources_hastate_comes_from_the_ha_hook(
    paths: LabPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pvelab.pve.ha import config as ha_config

    monkeypatch.setattr(ha_config, "hastate", lambda p, vmid: "started" if vmid == 102 else None)
    vms = get_json(paths, "/cluster/resources", "--type", "vm")
    assert [v.get("hastate") for v in vms] == [None, "started"]  # type: ignore[union-attr]


def wait_seen(paths: LabPaths, pid: int) -> None:
    """/proc/<pid>/cmdline is empty for a moment after exec: wait until vmstate sees the VM."""
    deadline = time.monotonic() + 5
    while vmstate.running_pid(paths, 101) != pid:
        assert time.monotonic() < deadline, f"fake QEMU {pid} not seen as running"
        time.sleep(0.02)


def test_resources_running_vm(paths: LabPaths) -> None:
    pidfile = paths.pidfile(101)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    argv = ["qemu-system-x86_64", "-c", "/bin/sleep 30; true", "-pidfile", str(pidfile)]
    proc = subprocess.Popen(argv, executable="/bin/sh")
    pidfile.write_text(f"{proc.pid}\n")
    try:
        wait_seen(paths, proc.pid)
        vm = get_json(paths, "/cluster/resources", "--type", "vm")[0]  # type: ignore[index]
    finally:
        proc.kill()
        proc.wait()
    assert vm["status"] == "running"
    assert vm["mem"] > 0


def test_resources_nodes(paths: LabPaths) -> None:
    nodes = get_json(paths, "/cluster/resources", "--type", "node")
    assert [(n["id"], n["node"], n["type"], n["status"]) for n in nodes] == [  # type: ignore[union-attr]
        ("node/pve", "pve", "node", "online"),
        ("node/pve2", "pve2", "node", "online"),
    ]
    cluster.set_quorum(paths, False)
    nodes = get_json(paths, "/cluster/resources", "--type", "node")
    assert [n["status"] for n in nodes] == ["online", "offline"]  # type: ignore[union-attr]
    assert "uptime" not in nodes[1] and nodes[1]["cgroup-mode"] == 2  # type: ignore[index]


def test_resources_without_type_lists_vms_nodes_storages(paths: LabPaths) -> None:
    ids = [r["id"] for r in get_json(paths, "/cluster/resources")]  # type: ignore[union-attr]
    assert ids == [
        "qemu/101", "qemu/102", "node/pve", "node/pve2", "storage/pve/local", "storage/pve2/local",
    ]  # fmt: skip


def test_json_pretty_is_perl_pretty(paths: LabPaths) -> None:
    rc, out, _ = pvesh_run(
        paths, "get", "/cluster/resources", "--type", "vm", "--output-format", "json-pretty"
    )
    assert rc == 0
    assert out.startswith('[\n   {\n      "cpu" : 0,\n      "disk" : 0,\n')
    assert out.endswith('      "vmid" : 102\n   }\n]\n')


def test_json_numbers_as_perl_prints_them() -> None:
    assert pvesh.perl_compact_json({"b": 0.1 + 0.2, "a": [1, "x", None]}) == (
        '{"a":[1,"x",null],"b":0.3}'
    )


# --- storage and backups (reference §5) ----------------------------------------------------------


def test_storage_index_for_backups(paths: LabPaths) -> None:
    [local] = get_json(paths, "/nodes/pve/storage", "--content", "backup")  # type: ignore[misc]
    # PS8 Storage.pm storage_info + API2/Storage/Status.pm index
    assert {k: local[k] for k in ("storage", "type", "content", "active", "enabled", "shared")} == {
        "storage": "local", "type": "dir", "content": "backup,images,iso,vztmpl",
        "active": 1, "enabled": 1, "shared": 1,
    }  # fmt: skip
    assert local["total"] >= local["used"] > 0 and local["avail"] > 0
    assert get_json(paths, "/nodes/pve2/storage", "--content", "rootdir") == []


def test_backup_listing(paths: LabPaths) -> None:
    backups.create(paths, 101, datetime(2026, 1, 10, 2, 0, 3), notes="nightly")
    backups.create(paths, 102, datetime(2026, 1, 11, 2, 0, 0))
    listing = get_json(
        paths, "/nodes/pve/storage/local/content", "--content", "backup", "--vmid", "101"
    )
    size = len(backups.PLACEHOLDER.format(vmid=101))
    # PS8 Plugin.pm get_subdir_files, Storage.pm archive_info (timelocal of the name)
    assert listing == [
        {
            "volid": "local:backup/vzdump-qemu-101-2026_01_10-02_00_03.vma.zst",
            "vmid": 101, "ctime": 1768010403, "size": size, "format": "vma.zst",
            "subtype": "qemu", "content": "backup", "notes": "nightly",
        }
    ]  # fmt: skip
    every = get_json(paths, "/nodes/pve2/storage/local/content", "--content", "backup")
    assert [b["vmid"] for b in every] == [101, 102]  # type: ignore[union-attr]


def test_backup_listing_of_unknown_storage(paths: LabPaths) -> None:
    rc, _, err = pvesh_run(
        paths, "get", "/nodes/pve/storage/nfs/content", "--output-format", "json"
    )
    assert (rc, err) == (255, "storage 'nfs' does not exist\n")


def test_non_standard_archive_names(paths: LabPaths) -> None:
    paths.dump_dir.mkdir()
    (paths.dump_dir / "vzdump-qemu-101-manual.vma.zst").write_text("x")
    (paths.dump_dir / "notes.txt").write_text("x")
    [item] = get_json(paths, "/nodes/pve/storage/local/content")  # type: ignore[misc]
    assert (item["vmid"], item["subtype"], item["size"]) == (101, "qemu", 1)
    assert item["ctime"] == int((paths.dump_dir / "vzdump-qemu-101-manual.vma.zst").stat().st_ctime)


def test_pvelab_backup_at_and_age(paths: LabPaths) -> None:
    lab = ["--lab", str(paths.root)]
    assert pvelab_cli.main([*lab, "backup", "pbs", "--at", "2026-01-10T02:00:03"]) == 0
    assert (paths.dump_dir / "vzdump-qemu-101-2026_01_10-02_00_03.vma.zst").is_file()
    assert pvelab_cli.main([*lab, "backup", "pihole", "--age", "3d"]) == 0
    [made] = paths.dump_dir.glob("vzdump-qemu-102-*.vma.zst")
    ctime = backups.archive_info(made.name)["ctime"]
    expected = (datetime.now() - timedelta(days=3)).timestamp()
    assert abs(ctime - expected) < 60


# --- /nodes/<node>/qemu/<vmid>/status/current ----------------------------------------------------


def test_status_current_has_ha_and_agent(paths: LabPaths) -> None:
    status = get_json(paths, "/nodes/pve/qemu/101/status/current")
    assert isinstance(status, dict)
    assert (status["status"], status["qmpstatus"], status["ha"], status["agent"]) == (
        "stopped", "stopped", {"managed": 0}, 1,
    )  # fmt: skip


def test_status_current_on_the_wrong_node(paths: LabPaths) -> None:
    rc, _, err = pvesh_run(paths, "get", "/nodes/pve/qemu/102/status/current")
    assert (rc, err) == (2, "Configuration file 'nodes/pve/qemu-server/102.conf' does not exist\n")


# --- errors ------------------------------------------------------------------------------------


def test_unknown_path(paths: LabPaths) -> None:
    # PM8 CLI/pvesh.pm extract_path_info
    assert pvesh_run(paths, "get", "/cluster/nothing") == (
        1, "", "No 'get' handler defined for '/cluster/nothing'\n",
    )  # fmt: skip


def test_bad_type_is_a_parameter_error(paths: LabPaths) -> None:
    rc, _, err = pvesh_run(paths, "get", "/cluster/resources", "--type", "vms")
    assert (rc, err) == (
        255,
        "400 Parameter verification failed.\n"
        "type: value 'vms' does not have a value in the enumeration 'vm, storage, node, sdn'\n"
        "pvesh get <api_path> [OPTIONS] [FORMAT_OPTIONS]\n",
    )


def test_unknown_options(paths: LabPaths) -> None:
    rc, _, err = pvesh_run(paths, "get", "/cluster/resources", "--bogus", "1")
    assert (rc, err) == (
        255,
        "Unknown option: bogus\n400 unable to parse option\n"
        "pvesh get <api_path> [OPTIONS] [FORMAT_OPTIONS]\n",
    )


def test_unknown_node(paths: LabPaths) -> None:
    rc, _, err = pvesh_run(paths, "get", "/nodes/pve7/storage", "--output-format", "json")
    assert rc == 255
    assert err.startswith("hostname lookup 'pve7' failed - failed to get address info for: pve7")


def test_text_format_is_not_faked(paths: LabPaths) -> None:
    rc, out, err = pvesh_run(paths, "get", "/cluster/resources")
    assert (rc, out) == (255, "")
    assert "not implemented by the lab's pvesh" in err


def test_wrapper_module_runs_as_the_node(paths: LabPaths) -> None:
    env = {"PYTHONPATH": LIB, "PVELAB_NODE": "pve2", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "pvelab.pve.pvesh", "--lab", str(paths.root), "get",
           "/nodes/localhost/qemu/102/status/current", "--output-format", "json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"] == "pihole"


VMID_FORMAT = (
    "400 Parameter verification failed.\n"
    "vmid: invalid format - value does not look like a valid VM ID\n\n"  # the message's own \n
    "pvesh get <api_path> [OPTIONS] [FORMAT_OPTIONS]\n"
)


@pytest.mark.parametrize("vmid", ["99", "1000000000", "0101", "-101"])
def test_vmid_in_the_path_has_pve_vmid_format(paths: LabPaths, vmid: str) -> None:
    # PC JSONSchema.pm pve_verify_vmid `^[1-9][0-9]{2,8}$`; PM8 pvesh.pm: an uncaught die
    assert pvesh_run(paths, "get", f"/nodes/pve/qemu/{vmid}/status/current") == (
        255, "", VMID_FORMAT,
    )  # fmt: skip


def test_vmid_option_of_storage_content_has_pve_vmid_format(paths: LabPaths) -> None:
    argv = ("get", "/nodes/pve/storage/local/content", "--output-format", "json")
    assert pvesh_run(paths, *argv, "--vmid", "99") == (255, "", VMID_FORMAT)
    assert pvesh_run(paths, *argv, "--vmid", "x1")[2].startswith(
        "400 Parameter verification failed.\nvmid: type check ('integer') failed - got 'x1'\n"
    )
    assert pvesh_run(paths, *argv, "--vmid", "999999999")[0] == 0
