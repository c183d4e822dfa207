"""CPU speed targets of liver_cascade, measured through a real `monailabel start_server`.

    .venv/bin/python benchmarks/cpu_benchmark.py [--slices 100,200,400] [--segresnet]

Volume: the real 512x512 CT of ../shared/real-ct (hcc_2022, 50 slices of 5 mm)
resampled along z to N slices (real anatomy at N slices; spacing 250/N mm),
or a 512x512 phantom when ../shared is absent. Written to a temporary folder,
never into the project. For each N: POST /infer/liver_cascade (lite preset,
NIfTI in and out, everything included) single-scale and with 3 scales; the
client's wall time, MONAI Label's latencies and the server's peak RSS
(VmHWM of the server process). With --segresnet, MONAI Label's radiology
`segmentation` SegResNet pipeline (1.5 mm spacing, 96^3 sliding window,
overlap 0.4, sw_batch 2, 26 outputs; random weights) times pre-processing +
network on the 200-slice volume, for the ratio. The table is printed last.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "liver_cascade"
sys.path.insert(0, str(APP))
from lib.settings import PRESETS  # noqa: E402

REAL = ROOT.parent / "shared" / "real-ct" / "nifti" / "hcc_2022_ap.nii.gz"


def make_volume(n: int, out: Path) -> str:
    if REAL.exists():
        img = nib.load(str(REAL))
        data = np.asarray(img.dataobj).astype(np.float32)
        zoom = n / data.shape[2]
        data = ndimage.zoom(data, (1, 1, zoom), order=1)[:, :, :n]
        aff = img.affine.copy()
        aff[:3, 2] *= img.shape[2] / n
        src = f"real CT hcc_2022 resampled to {n} slices"
    else:
        sys.path.insert(0, str(ROOT / "sample-data"))
        import phantom

        p = phantom.generate_phantom(0, n_slices=n, spacing=(0.75, 0.75, 250.0 / n), orientation="LPS")
        data, aff, src = p.image, p.affine, f"phantom 512x512x{n}"
    nib.save(nib.Nifti1Image(np.rint(data).astype(np.int16), aff), str(out))
    return src


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    best = 0
    for p in [pid] + [int(c) for c in _children(pid)]:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM"):
                    best = max(best, int(line.split()[1]))
        except FileNotFoundError:
            pass
    return best / 1024


def _children(pid):
    try:
        return open(f"/proc/{pid}/task/{pid}/children").read().split()
    except FileNotFoundError:
        return []


def run_server(studies: Path, log: Path, preset: str = "lite"):
    port = free_port()
    # no background scoring (MONAI Label re-scores unlabeled images at start): the timing is the request alone
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
               MONAI_LABEL_AUTO_UPDATE_SCORING="false", MONAI_LABEL_TRACKING_ENABLED="false")
    cmd = [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(APP), "--studies",
           str(studies), "--host", "127.0.0.1", "--port", str(port), "--conf", "models", "liver_resnet,liver_cascade",
           "--conf", "skip_trainers", "true", "--conf", "preset", preset]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            if requests.get(url + "/info/", timeout=2).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(1)
    raise RuntimeError(log.read_text()[-3000:])


def infer(url, image, scales=None):
    params = {"scales": scales} if scales else {}
    t0 = time.time()
    r = requests.post(f"{url}/infer/liver_cascade", params={"image": image},
                      data={"params": json.dumps(params)}, timeout=1800)
    wall = time.time() - t0
    r.raise_for_status()
    from requests_toolbelt.multipart import decoder

    res = {}
    for part in decoder.MultipartDecoder.from_response(r).parts:
        if b'name="params"' in part.headers[b"Content-Disposition"]:
            res = json.loads(part.content)
    return wall, res


def segresnet_seconds(path: str) -> dict:
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import SegResNet
    from monai.transforms import (Compose, EnsureChannelFirstd, GaussianSmoothd, LoadImaged, NormalizeIntensityd,
                                  Orientationd, ScaleIntensityd, Spacingd)

    t0 = time.time()
    pre = Compose([LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS"),
                   Spacingd(keys="image", pixdim=(1.5, 1.5, 1.5)), NormalizeIntensityd(keys="image", nonzero=True),
                   GaussianSmoothd(keys="image", sigma=0.4), ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0)])
    d = pre({"image": path})
    t_pre = time.time() - t0
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=26, init_filters=32, blocks_down=(1, 2, 2, 4),
                    blocks_up=(1, 1, 1), dropout_prob=0.2).eval()
    inferer = SlidingWindowInferer(roi_size=(96, 96, 96), sw_batch_size=2, overlap=0.4, padding_mode="replicate",
                                   mode="gaussian")
    t0 = time.time()
    with torch.inference_mode():
        out = inferer(d["image"][None].as_tensor(), net)
        out.argmax(1)
    return {"pre": t_pre, "network": time.time() - t0, "shape": list(d["image"].shape[1:])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", default="100,200,400")
    ap.add_argument("--segresnet", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--preset", default="lite", choices=sorted(PRESETS),
                    help="network preset (its weights must be in apps/liver_cascade/model)")
    ap.add_argument("--multi", type=int, default=3, help="also time the first N sizes of the preset's ladder (0 or 1: single-scale rows only)")
    args = ap.parse_args(argv)
    counts = [int(s) for s in args.slices.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="lc_bench_"))
    studies = tmp / "studies"
    studies.mkdir()
    sources = {n: make_volume(n, studies / f"ct_{n}.nii.gz") for n in counts}
    proc, url = run_server(studies, tmp / "server.log", args.preset)
    rows = []
    try:
        infer(url, f"ct_{counts[0]}")  # warm-up: model load
        preset = PRESETS[args.preset]  # its base size, then the first sizes of its ladder
        multi = [",".join(str(x) for x in preset.all_scales[:args.multi])] if args.multi > 1 else []
        for n in counts:
            for scales in [None] + multi:
                wall, res = infer(url, f"ct_{n}", scales)
                lat = res.get("latencies", {})
                rows.append({"slices": n, "scales": res.get("scales"), "wall_s": round(wall, 2),
                             "pre": lat.get("pre"), "infer": lat.get("infer"), "post": lat.get("post"),
                             "write": lat.get("write"), "stage2_slices": res.get("timings", {}).get("stage2_slices"),
                             "peak_rss_mib": round(peak_rss_mib(proc.pid))})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    seg = None
    if args.segresnet:
        n = 200 if 200 in counts else counts[0]
        seg = segresnet_seconds(str(studies / f"ct_{n}.nii.gz"))
        seg["slices"] = n
        print(json.dumps({"segresnet": seg}), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nliver_cascade CPU benchmark, preset {args.preset}, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; volume: {sources[counts[0]].split(' resampled')[0]}")
    print("| slices | scales | wall s | pre | infer | post | write | stage-2 slices | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['slices']} | {','.join(map(str, r['scales'] or []))} | {r['wall_s']} | {r['pre']} | {r['infer']} | "
              f"{r['post']} | {r['write']} | {r['stage2_slices']} | {r['peak_rss_mib']} |")
    if seg:
        ours = next(r["wall_s"] for r in rows if r["slices"] == seg["slices"] and len(r["scales"]) == 1)
        total = seg["pre"] + seg["network"]
        print(f"\nSegResNet (radiology `segmentation` config) on {seg['slices']} slices: pre {seg['pre']:.1f} s + "
              f"network {seg['network']:.1f} s = {total:.1f} s; liver_cascade end to end {ours:.1f} s: "
              f"ratio {ours / total:.3f} (ours / SegResNet)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "segresnet": seg, "sources": sources}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
