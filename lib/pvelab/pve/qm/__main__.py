"""`python -m pvelab.pve.qm`: the entry the PVE host's `qm` wrapper execs."""

import sys

from pvelab.pve.qm.cli import main

sys.exit(main())
