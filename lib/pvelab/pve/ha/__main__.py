"""`python -m pvelab.pve.ha --lab DIR <ha-manager args>`: the stand-in ha-manager."""

import sys

from pvelab.pve.ha.cli import main

sys.exit(main())
