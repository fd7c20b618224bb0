"""The lab's fleet: its VMs, bringing them up and down, faults, inventory, boot waits."""
