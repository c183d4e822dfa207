"""Shared fixtures; the helpers they use live in support.py."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import Server, copy_app, untrained_app  # noqa: E402


@pytest.fixture
def server_factory(tmp_path):
    servers = []

    def make(studies, conf=None, weights="untrained", name="app"):
        if weights == "untrained":
            app = untrained_app(tmp_path / name)
        else:
            app = copy_app(tmp_path / name, with_weights=(weights == "demo"))
        s = Server(app, Path(studies), conf or {}, tmp_path / f"{name}_server.log")
        s.app_dir = app
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()
