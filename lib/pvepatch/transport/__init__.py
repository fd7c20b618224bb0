"""Talking to hosts: commands and results, SSH with verified host keys, the read-only guard."""
