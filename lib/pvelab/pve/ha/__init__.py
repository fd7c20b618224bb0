"""The lab's Proxmox VE HA stack: `ha-manager` (cli.py), its files (config.py), the CRM
(manager.py) and LRM (lrm.py) run by one daemon (daemon.py), and qm's HA branch (qmbranch.py).

The `hastate` of /cluster/resources is `pvelab.pve.ha.config.hastate`. This package imports
nothing itself: its modules import each other by name."""
