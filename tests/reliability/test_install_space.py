"""`make install` says how much disk it needs before pip starts (CI once failed half-way, on a full disk,
with pip's "OSError: [Errno 28] No space left on device")."""

import shutil
import subprocess

import pytest

from support import ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_install_stops_at_once_when_the_disk_is_too_small():
    installed = ROOT / ".venv" / ".installed"
    before = installed.stat().st_mtime_ns if installed.exists() else None
    # -W: as if requirements.txt had changed, so the install step runs; no disk has a million GB free
    r = subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", "-W", "requirements.txt", "install",
                        "NEED_GB=1000000"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "installing needs about 1000000 GB" in r.stderr and "GB free" in r.stderr, r.stderr
    assert "pip" not in r.stdout  # stopped before pip ran
    assert (installed.stat().st_mtime_ns if installed.exists() else None) == before
