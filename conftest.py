"""Wiring only. The pvepatch plugin is installed with the package (`pip install .`: the pytest11
entry point `pvepatch.plugin`); this line also loads it from a plain checkout with PYTHONPATH=lib,
and is a no-op when the entry point already did."""

pytest_plugins = ["pvepatch.plugin"]
