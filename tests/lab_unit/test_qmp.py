"""QMP/QGA clients: against scripted unix-socket peers that replay the LAB transcripts, and
against a real QEMU (no guest OS)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pvelab.pve.qmp import (
    MonitorCommandError,
    MonitorConnectError,
    MonitorTimeout,
    QGAClient,
    QMPClient,
)

Handler = Callable[[socket.socket], None]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Handler], Path]]:
    """Start a one-connection-at-a-time unix server running `handler` per client."""
    servers: list[socket.socket] = []

    def start(handler: Handler) -> Path:
        path = tmp_path / f"peer{len(servers)}.sock"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        srv.listen(1)
        servers.append(srv)

        def loop() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    try:
                        handler(conn)
                    except OSError:
                        pass

        threading.Thread(target=loop, daemon=True).start()
        return path

    yield start
    for srv in servers:
        srv.close()


def _lines(conn: socket.socket) -> Iterator[bytes]:
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield line


def fake_qga(replies: dict[str, object], stale: bytes = b"", close_on: str = "") -> Handler:
    """qemu-ga 7.2 as in the LAB transcript: parse error for the leading 0xFF, then sync."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(stale)
        for raw in _lines(conn):
            if raw.startswith(b"\xff"):
                conn.sendall(b'{"error": {"class": "GenericError", "desc": "JSON parse error"}}\n')
                raw = raw[1:]
            req = json.loads(raw)
            name = req["execute"]
            if name == "guest-sync-delimited":
                conn.sendall(b"\xff" + json.dumps({"return": req["arguments"]["id"]}).encode())
                conn.sendall(b"\n")
            elif name == close_on:
                return
            elif name in replies:
                conn.sendall(json.dumps(replies[name]).encode() + b"\n")

    return handler


def test_qga_sync_then_command(serve: Callable[[Handler], Path]) -> None:
    path = serve(fake_qga({"guest-get-host-name": {"return": {"host-name": "pbs"}}}))
    assert QGAClient(path, 101).command("guest-get-host-name") == {"host-name": "pbs"}


def test_qga_skips_stale_replies_of_an_earlier_client(serve: Callable[[Handler], Path]) -> None:
    stale = b'\xff{"return": 7}\n{"return": {"host-name": "old"}}\n'
    path = serve(fake_qga({"guest-get-host-name": {"return": {"host-name": "new"}}}, stale))
    assert QGAClient(path, 101).command("guest-get-host-name") == {"host-name": "new"}


def test_qga_error_reply_raises_with_desc(serve: Callable[[Handler], Path]) -> None:
    err = {"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}}
    path = serve(fake_qga({"guest-exec-status": err}))
    with pytest.raises(MonitorCommandError) as info:
        QGAClient(path, 101).command("guest-exec-status", {"pid": 1})
    assert info.value.desc == "Invalid parameter 'pid'"


def test_qga_silence_times_out_with_pve_text(serve: Callable[[Handler], Path]) -> None:
    path = serve(fake_qga({}))  # syncs, but never answers guest-ping
    started = time.monotonic()
    with pytest.raises(MonitorTimeout) as info:
        QGAClient(path, 101).command("guest-ping", timeout=1)
    assert str(info.value) == "VM 101 qga command 'guest-ping' failed - got timeout"
    assert 0.9 < time.monotonic() - started < 2


def test_qga_shutdown_eof_is_success(serve: Callable[[Handler], Path]) -> None:
    path = serve(fake_qga({}, close_on="guest-shutdown"))
    assert QGAClient(path, 101).command("guest-shutdown", timeout=2) is None


def test_qga_missing_socket_is_connect_error(tmp_path: Path) -> None:
    with pytest.raises(MonitorConnectError) as info:
        QGAClient(tmp_path / "none.qga", 101).command("guest-ping")
    assert str(info.value) == "unable to connect to VM 101 qga socket - No such file or directory"


def fake_qmp(log: list[dict[str, object]]) -> Handler:
    """QEMU monitor: greeting, capabilities, an event before each reply, CRLF line ends."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(b'{"QMP": {"version": {}, "capabilities": ["oob"]}}\r\n')
        for raw in _lines(conn):
            req = json.loads(raw)
            log.append(req)
            conn.sendall(b'{"timestamp": {"seconds": 1}, "event": "POWERDOWN"}\r\n')
            reply = {"return": {"status": "running"}, "id": req.get("id")}
            conn.sendall(json.dumps(reply).encode() + b"\r\n")

    return handler


def test_qmp_negotiates_then_runs_command(serve: Callable[[Handler], Path]) -> None:
    log: list[dict[str, object]] = []
    path = serve(fake_qmp(log))
    assert QMPClient(path, 101).command("query-status") == {"status": "running"}
    assert [r["execute"] for r in log] == ["qmp_capabilities", "query-status"]
    assert all("id" in r for r in log)


# --- against a real QEMU with PVE-style sockets and no guest OS ---------------------------


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Path]:
    """qemu-system-x86_64 -daemonize with .qmp/.qga sockets like the LAB transcript."""
    run = Path(f"/tmp/pvelab-qmp-{os.getpid()}")
    run.mkdir(exist_ok=True)
    pidfile = run / "900.pid"
    cmd = ["qemu-system-x86_64", "-name", "vm900",
           "-chardev", f"socket,id=qmp,path={run}/900.qmp,server=on,wait=off",
           "-mon", "chardev=qmp,mode=control", "-pidfile", str(pidfile), "-daemonize",
           "-nodefaults", "-display", "none", "-m", "64", "-accel", "tcg",
           "-chardev", f"socket,path={run}/900.qga,server=on,wait=off,id=qga0",
           "-device", "virtio-serial,id=qga0",
           "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=30)
    yield run
    try:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    for f in run.iterdir():
        f.unlink()
    run.rmdir()


def test_real_qmp_query_status(qemu: Path) -> None:
    assert QMPClient(qemu / "900.qmp", 900).command("query-status")["status"] == "running"


def test_real_qmp_one_connection_per_command(qemu: Path) -> None:
    client = QMPClient(qemu / "900.qmp", 900)
    for _ in range(3):  # would block on the 2nd call if a connection were left open
        client.command("query-status", timeout=2)


def test_real_qga_without_agent_inside_times_out(qemu: Path) -> None:
    with pytest.raises(MonitorTimeout):
        QGAClient(qemu / "900.qga", 900).command("guest-ping", timeout=1)


def test_real_qmp_quit_ends_qemu(qemu: Path) -> None:
    QMPClient(qemu / "900.qmp", 900).command("quit")
    deadline = time.monotonic() + 5
    while (qemu / "900.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (qemu / "900.pid").exists()
