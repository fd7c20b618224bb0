"""Proxmox VE: the `qm` client and its parsers, and the preconditions proven before every action."""
