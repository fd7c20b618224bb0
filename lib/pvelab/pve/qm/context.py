"""What every stand-in `qm` command shares: paths, node name, output, PVE's common checks."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from pvelab.paths import LabPaths
from pvelab.pve import cluster, vmconf
from pvelab.pve.qm.version import flavour
from pvelab.pve.qmp import QGAClient, QMPClient
from pvelab.pve.vmconf import VMConf

ENV_NODE = "PVELAB_NODE"


class QmError(Exception):
    """A `die` in PVE: the message goes to stderr; `rc` is the exit code (255 unless known)."""

    def __init__(self, message: str, rc: int = 255) -> None:
        super().__init__(message)
        self.rc = rc


def node_name() -> str:
    """PVE's nodename: the short hostname ($PVELAB_NODE overrides for odd lab hosts)."""
    return os.environ.get(ENV_NODE) or socket.gethostname().split(".")[0]


@dataclass
class Context:
    """One `qm` invocation: lab paths, node name, and the two output streams."""

    paths: LabPaths
    node: str
    stdout: TextIO = sys.stdout
    stderr: TextIO = sys.stderr
    task: bool = False  # task commands merge worker output (warnings too) into stdout

    def out(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def warn(self, text: str) -> None:
        """Perl `warn` in the current context: task log (stdout) in workers, else stderr."""
        stream = self.stdout if self.task else self.stderr
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()

    def qmp(self, vmid: int) -> QMPClient:
        return QMPClient(self.paths.qmp_socket(vmid), vmid)

    def qga(self, vmid: int) -> QGAClient:
        client = QGAClient(self.paths.qga_socket(vmid), vmid)
        client.kind = flavour().qga_error_kind  # PVE 8 says "qmp command" for the agent too
        return client

    def conf_missing(self, vmid: int) -> QmError:
        """load_config's message; exit 2 (ENOENT left in $! when Perl dies)."""
        return QmError(
            f"Configuration file 'nodes/{self.node}/qemu-server/{vmid}.conf' does not exist", rc=2
        )

    def load(self, vmid: int) -> VMConf:
        """PVE::QemuConfig->load_config: only a VM this node holds (cluster.py, .vmlist)."""
        if not cluster.on_node(self.paths, vmid, self.node):
            raise self.conf_missing(vmid)
        try:
            conf = vmconf.load_conf(self.paths.conf(vmid))
        except vmconf.ConfError as exc:
            raise QmError(f"{self.paths.conf(vmid)}: {exc}") from exc
        if conf is None:
            raise self.conf_missing(vmid)
        return conf

    def assert_config_exists_on_node(self, vmid: int) -> None:
        """QemuConfig.pm assert_config_exists_on_node (stop/shutdown/reboot/wait): a different
        text from load_config's; exit 2 where it ends qm, as its failed `-f` left ENOENT in $!."""
        if not cluster.on_node(self.paths, vmid, self.node):
            raise QmError(
                f"unable to find configuration file for VM {vmid} on node '{self.node}'", rc=2
            )

    @contextmanager
    def lock_config(self, vmid: int) -> Iterator[None]:
        """The config flock (10 s, PVE's messages), as lock_config around every change."""
        try:
            with vmconf.config_lock(self.paths.lockfile(vmid), 10.0, self._lock_notice):
                yield
        except vmconf.LockTimeout as exc:
            raise QmError(str(exc)) from exc

    def _lock_notice(self, text: str) -> None:
        stream = self.stdout if self.task else self.stderr
        stream.write(text)
        stream.flush()


def check_lock(conf: VMConf) -> None:
    """AbstractConfig::check_lock: `VM is locked (<lock>)`."""
    if conf.lock:
        raise QmError(f"VM is locked ({conf.lock})")
