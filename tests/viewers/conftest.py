"""Orthanc (DICOMweb) with the small phantom series, and a real MONAI Label server on it.

One Orthanc and one server for the whole tests/viewers session (each test uses its own
series); both are started here as child processes on free ports and stopped at the end.
"""

import json
import subprocess
import sys

import pytest

from dicomweb_helpers import ROOT, helpers, require_orthanc
from orthanc_server import OrthancServer  # viewers/orthanc, on sys.path by dicomweb_helpers


@pytest.fixture(scope="session")
def phantom_series(tmp_path_factory):
    """Two small phantom cases (160x160, 17-21 slices): DICOM series, ground-truth labels and cases.json."""
    out = tmp_path_factory.mktemp("phantoms")
    subprocess.run([sys.executable, str(ROOT / "sample-data" / "make_sample_data.py"), "--out", str(out), "--small",
                    "--n", "2", "--unlabelled", "0"], check=True, capture_output=True)
    cases = {c["name"]: c for c in json.loads((out / "cases.json").read_text())}
    return out, cases


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, phantom_series):
    require_orthanc()
    storage = tmp_path_factory.mktemp("orthanc")
    server = OrthancServer(helpers.free_port(), storage, log=storage.parent / "orthanc.log").start()
    server.upload([phantom_series[0] / "dicom"])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dicomweb_server(tmp_path_factory, orthanc):
    """`monailabel start_server --studies http://127.0.0.1:<port>/dicom-web` with the demo weights."""
    base = tmp_path_factory.mktemp("dicomweb_server")
    app = helpers.copy_app(base / "app", with_weights=True)
    with pytest.MonkeyPatch.context() as mp:  # the server's environment
        mp.setenv("MONAI_LABEL_DATASTORE_CACHE_PATH", str(base / "cache"))
        mp.setenv("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")  # no start-up scoring competing for the 2 cores
        server = helpers.Server(app, orthanc.dicomweb, {"models": "liver_resnet,liver_cascade"}, base / "server.log")
    server.app_dir = app
    yield server
    server.stop()

