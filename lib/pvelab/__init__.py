"""pvelab: a small Proxmox VE stand-in with real QEMU VMs, for proving pvepatch end to end."""
