"""pvepatch: patch and verify VMs on Proxmox VE, as ordered pytest stages."""

__version__ = "0.1.0"
