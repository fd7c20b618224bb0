"""The Proxmox VE stand-in: the `qm` CLI, VM configs and state, QEMU, QMP/QGA, the PVE host sshd."""
