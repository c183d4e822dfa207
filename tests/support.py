"""Test support: the app's lib on sys.path (as MONAI Label puts it), and a real
`monailabel start_server` subprocess. Imported as ``support`` (every test folder's
conftest.py is a module named ``conftest``, so tests do not import from it)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "liver_cascade"
SAMPLE = ROOT / "sample-data"
SHARED_CT = ROOT.parent / "shared" / "real-ct"
for p in (str(APP), str(SAMPLE)):
    if p not in sys.path:
        sys.path.insert(0, p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `monailabel start_server` on a copy of the app (own model dir)."""

    def __init__(self, app_dir: Path, studies: Path, conf: dict, log: Path, extra_env: dict = None, ready=(200,)):
        self.port = free_port()
        self.ready = ready
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")  # monailabel runs `python` from PATH
        env["MONAI_LABEL_TRACKING_ENABLED"] = "false"
        env.update(extra_env or {})
        if "TMPDIR" not in (extra_env or {}):  # what the server leaves in its temporary folder goes with the test's
            env["TMPDIR"] = str(log.parent / f"{log.stem}_tmp")  # files (MONAI Label's logging config: one per start)
            os.makedirs(env["TMPDIR"], exist_ok=True)
        cmd = [str(Path(venv_bin) / "monailabel"), "start_server", "--app", str(app_dir), "--studies", str(studies),
               "--host", "127.0.0.1", "--port", str(self.port)]
        for k, v in conf.items():
            cmd += ["--conf", k, str(v)]
        self.log = log
        self._fh = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=str(app_dir.parent))
        self.wait_ready()

    def wait_ready(self, timeout=120):
        import requests

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-4000:]}")
            try:
                if requests.get(self.url + "/info/", timeout=2).status_code in self.ready:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not ready:\n{self.log.read_text()[-4000:]}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._fh.close()


def copy_app(dst: Path, with_weights: bool = True) -> Path:
    """The app's code in a temporary folder; model/ starts empty unless asked."""
    shutil.copytree(APP, dst, ignore=shutil.ignore_patterns("__pycache__", "model", "logs", "*.db"))
    (dst / "model").mkdir()
    if with_weights:
        for f in (APP / "model").glob("*_lite.pt"):
            shutil.copy(f, dst / "model" / f.name)
    return dst


def write_untrained_weights(model_dir: Path, preset="lite"):
    from lib.model_io import save_checkpoint
    from lib.networks import build_network

    import torch

    torch.manual_seed(0)
    save_checkpoint(str(model_dir / f"liver_resnet_{preset}.pt"), build_network("resnet", preset, 1), "resnet", preset, 1)
    save_checkpoint(str(model_dir / f"liver_cascade_{preset}.pt"), build_network("resnet", preset, 3), "resnet", preset, 3)


def untrained_app(dst: Path) -> Path:
    """A copy of the app with freshly initialised (untrained, seeded) weights: quick servers for tests."""
    app = copy_app(dst, with_weights=False)
    write_untrained_weights(app / "model")
    return app


def layered_seg_nrrd(label, affine) -> bytes:
    """A Slicer-style multi-layer segmentation: one component per layer (liver, lesion), each 0/1."""
    import tempfile

    import numpy as np
    import SimpleITK as sitk

    layers = [sitk.GetImageFromArray(np.ascontiguousarray((label == v).astype(np.uint8).transpose(2, 1, 0)))
              for v in (1, 2)]
    img = sitk.Compose(layers)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    with tempfile.TemporaryDirectory() as tmp:
        sitk.WriteImage(img, f"{tmp}/layers.seg.nrrd")
        with open(f"{tmp}/layers.seg.nrrd", "rb") as f:
            return f.read()


def label_bytes(label, affine) -> bytes:
    """A label as the bytes of a gzipped NIfTI file (uint8), for an upload."""
    import gzip

    import nibabel as nib
    import numpy as np

    return gzip.compress(nib.Nifti1Image(label.astype(np.uint8), affine).to_bytes())


def small_phantom_studies(folder: Path, seed: int, n: int = 2) -> Path:
    """``n`` tiny phantoms ``case<i>.nii.gz`` with their labels ``label<i>.nii.gz`` (outside labels/)."""
    import nibabel as nib
    import phantom

    for i in range(n):
        p = phantom.generate_phantom(seed + i, shape_xy=(48, 48), spacing=(7.0, 7.0, 8.0), n_slices=5)
        p.save_nifti(str(folder / f"case{i}.nii.gz"), None)
        nib.save(nib.Nifti1Image(p.label, p.affine), str(folder / f"label{i}.nii.gz"))
    return folder


def file_datastore(folder, extensions=("*.nii.gz",)):
    """The app's datastore on ``folder``, without the file watcher."""
    from lib.datastore import SafeLocalDatastore

    return SafeLocalDatastore(str(folder), max_voxels=10**8, extensions=tuple(extensions), auto_reload=False)


def repeatedly(seconds: float, **jobs) -> dict:
    """Each job (a function of no argument) called over and over on its own thread for ``seconds``, all at
    once: {job name: [what each call returned]}. For writers and readers of one file at the same time."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    stop = time.time() + seconds

    def run(job):
        results = []
        while time.time() < stop:
            results.append(job())
        return results

    with ThreadPoolExecutor(len(jobs)) as pool:
        return dict(zip(jobs, pool.map(run, jobs.values())))
