"""Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) as a child process, and DICOM upload into it.

    python viewers/orthanc/orthanc_server.py --port 8042 --storage data-local/orthanc --upload DIR [DIR ...]

`viewers/orthanc/orthanc.json` is the configuration; port and storage folder are
overridden per run (tests choose free ports and a temporary folder). Orthanc has
no bind-address option: it listens on every interface but, with
RemoteAccessAllowed false, answers only clients on this machine.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, List

import requests

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "orthanc.json"
ORTHANC_BIN = "Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def missing_packages() -> List[str]:
    """Debian packages this needs that are not installed (empty when ready)."""
    missing = []
    if not shutil.which(ORTHANC_BIN):
        missing.append("orthanc")
    if not os.path.exists(DICOMWEB_PLUGIN):
        missing.append("orthanc-dicomweb")
    return missing


class OrthancServer:
    """One Orthanc with the DICOMweb plugin on 127.0.0.1:`port`, storing under `storage`."""

    def __init__(self, port: int, storage: Path, log: Path = None):
        self.port = port
        self.storage = Path(storage).resolve()
        self.url = f"http://127.0.0.1:{port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.log = Path(log) if log else self.storage / "orthanc.log"
        self.proc = None
        self._fh = None
        self.conf_dir = None  # a temporary folder for the configuration, removed by stop()

    def config(self) -> dict:
        conf = json.loads(CONFIG.read_text())
        conf.update(HttpPort=self.port, StorageDirectory=str(self.storage), IndexDirectory=str(self.storage))
        return conf

    def start(self, timeout: float = 60) -> "OrthancServer":
        missing = missing_packages()
        if missing:
            raise RuntimeError(f"Debian packages missing: {' '.join(missing)} (apt-get install {' '.join(missing)})")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.conf_dir = conf_dir = Path(tempfile.mkdtemp(prefix="orthanc-conf-"))
        (conf_dir / "orthanc.json").write_text(json.dumps(self.config(), indent=1))
        self._fh = open(self.log, "w")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(conf_dir / "orthanc.json")], stdout=self._fh,
                                     stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.dicomweb}/studies", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"Orthanc not ready on {self.url}:\n{self.log.read_text()[-3000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._fh:
            self._fh.close()
            self._fh = None
        if self.conf_dir:
            shutil.rmtree(self.conf_dir, ignore_errors=True)
            self.conf_dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def upload(self, paths: Iterable[Path]) -> int:
        """POST every DICOM file under `paths` (files or folders); returns how many Orthanc holds anew."""
        added = 0
        for f in _dicom_files(paths):
            r = requests.post(f"{self.url}/instances", data=f.read_bytes(), timeout=60)
            if r.status_code != 200:
                raise RuntimeError(f"Orthanc refused {f}: HTTP {r.status_code} {r.text[:300]}")
            added += r.json().get("Status") == "Success"
        return added

    def series(self, modality: str = None) -> List[dict]:
        """QIDO-RS series search (DICOM JSON), optionally by modality."""
        params = {"Modality": modality} if modality else {}
        r = requests.get(f"{self.dicomweb}/series", params=params, timeout=30)
        r.raise_for_status()
        return r.json() if r.text.strip() else []

    def instance_files(self, modality: str) -> List[bytes]:
        """Raw DICOM of every instance of the given modality (e.g. all SEG objects)."""
        ids = requests.post(f"{self.url}/tools/find", timeout=30,
                            json={"Level": "Instance", "Query": {"Modality": modality}}).json()
        return [requests.get(f"{self.url}/instances/{i}/file", timeout=60).content for i in ids]


def _dicom_files(paths: Iterable[Path]):
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and _is_dicom(f))
        elif p.is_file() and _is_dicom(p):
            yield p


def _is_dicom(f: Path) -> bool:
    with open(f, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=json.loads(CONFIG.read_text())["HttpPort"])
    ap.add_argument("--storage", default="data-local/orthanc")
    ap.add_argument("--upload", nargs="*", default=[], help="DICOM files or folders to upload")
    args = ap.parse_args(argv)
    with OrthancServer(args.port, Path(args.storage)) as orthanc:
        n = orthanc.upload(args.upload)
        print(f"Orthanc on {orthanc.dicomweb}: {n} new instances; Ctrl-C stops it", flush=True)
        try:
            orthanc.proc.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
