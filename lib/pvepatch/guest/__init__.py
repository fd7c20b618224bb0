"""Inside the guest: facts through pytest-testinfra, unattended apt, DNS checks of a Pi-hole."""
