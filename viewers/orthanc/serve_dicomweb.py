"""`make serve-dicomweb`: Orthanc with DICOMweb on 127.0.0.1, the DICOM series uploaded, then MONAI Label on it.

    python viewers/orthanc/serve_dicomweb.py [--orthanc-port 8042] [--port 8000] [-- monailabel options]

Uploads sample-data/generated/dicom/ (the phantom CT series) and, when present,
../shared/real-ct/dicom/hcc_2022 (a real series with its liver and tumour SEG), read in
place. OHIF: http://127.0.0.1:<port>/ohif/. Ctrl-C stops both servers.
"""

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from orthanc_server import OrthancServer

ROOT = Path(__file__).resolve().parents[2]
SERIES = [ROOT / "sample-data" / "generated" / "dicom", ROOT.parent / "shared" / "real-ct" / "dicom" / "hcc_2022"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orthanc-port", type=int, default=8042)
    ap.add_argument("--storage", default=str(ROOT / "data-local" / "orthanc"), help="Orthanc's storage folder")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("monailabel_args", nargs="*", help="passed to monailabel start_server (after --)")
    args = ap.parse_args(argv)

    with OrthancServer(args.orthanc_port, Path(args.storage)) as orthanc:
        present = [p for p in SERIES if p.is_dir()]
        print(f"Orthanc {orthanc.dicomweb}: {orthanc.upload(present)} new instances from "
              f"{', '.join(str(p) for p in present)}", flush=True)
        venv_bin = Path(sys.executable).parent
        env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
                   MONAI_LABEL_TRACKING_ENABLED="false")
        cmd = [str(venv_bin / "monailabel"), "start_server", "--app", str(ROOT / "apps" / "liver_cascade"),
               "--studies", orthanc.dicomweb, "--host", args.host, "--port", str(args.port), *args.monailabel_args]
        print(f"OHIF: http://{args.host}:{args.port}/ohif/", flush=True)
        server = subprocess.Popen(cmd, env=env)
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops both servers, as Ctrl-C does
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
