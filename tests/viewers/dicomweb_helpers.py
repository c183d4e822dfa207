"""Helpers shared by tests/viewers."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "viewers" / "orthanc"))
sys.path.insert(0, str(ROOT / "tests"))

import support as helpers  # noqa: E402  (Server, copy_app, free_port)
from orthanc_server import missing_packages  # noqa: E402


def require_orthanc():
    missing = missing_packages()
    if missing:
        pytest.skip(f"Debian packages not installed: {' '.join(missing)} (.ci/run installs them with apt-get)")


def series_uid(phantom_series, name: str) -> str:
    return phantom_series[1][name]["series_uid"]


def label_values(path) -> dict:
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return {int(v): int(n) for v, n in zip(*np.unique(arr, return_counts=True))}
