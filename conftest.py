"""Wiring only: load the pvepatch plugin (lib/pvepatch/plugin.py) for the stages in tests_patch/."""

pytest_plugins = ["pvepatch.plugin", "pvepatch.audit.reporting"]
