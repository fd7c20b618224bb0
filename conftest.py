"""Wiring only. pvepatch's plugin is installed with the package (`pip install .`: the pytest11
entry point `pvepatch.plugin`, which `./run-tests` and `./run-demo` install); from a checkout
that was not installed (PYTHONPATH=lib), or with plugin autoloading off, this loads it."""

import os
from importlib.metadata import entry_points

if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or not entry_points(
    group="pytest11", name="pvepatch.plugin"
):
    pytest_plugins = ["pvepatch.plugin"]
