"""Unit tests resolve no name but localhost (the network rule), whatever they test."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def no_name_resolution(monkeypatch):
    """Tests never resolve a name other than localhost (the network rule): fail if they try."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1"):
            asked.append(host)
            raise OSError(f"test guard: refused to resolve {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield
    assert asked == [], f"the code tried to resolve {asked}"
