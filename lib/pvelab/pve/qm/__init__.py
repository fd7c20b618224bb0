"""The stand-in `qm` (`python -m pvelab.pve.qm --lab DIR ...`), one module per command family."""
