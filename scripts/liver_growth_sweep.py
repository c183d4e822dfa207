"""How the liver growth's two settings move liver Dice: the sweep behind LIVER_GROW_SD and LIVER_GROW_MAX_MM.

    .venv/bin/python scripts/liver_growth_sweep.py --model-dir apps/liver_cascade/model \
        --image CT --ref LABEL [--image ... --ref ...] [--sd 2 2.5 3] [--max-mm 10 15 20] [--out result.json]

Segments each image with the app's cascade as served but without the growth (``grow_liver: false``;
``lib.evaluation.predict``), then grows that label's liver with ``lib.transforms.transforms.grow_liver``
for every (sd, max_mm) pair, the other settings as in lib/settings.py, and scores the liver Dice of each
against the reference. One difference from the app: the app grows the liver before the per-slice hole
filling, this sweep after it (on the returned label). Prints JSON: per case and per setting, and the
mean over the cases.
"""

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "liver_cascade"))


def main(argv=None) -> int:
    from lib.evaluation.metrics import dice, liver_mask
    from lib.evaluation.predict import make_task, predict_file
    from lib.transforms.transforms import grow_liver

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--image", action="append", required=True)
    ap.add_argument("--ref", action="append", required=True)
    ap.add_argument("--sd", type=float, nargs="+", default=[2.0, 2.5, 3.0])
    ap.add_argument("--max-mm", type=float, nargs="+", default=[10.0, 15.0, 20.0])
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if len(args.image) != len(args.ref):
        ap.error(f"give one --ref per --image ({len(args.image)} images, {len(args.ref)} references)")
    settings = list(itertools.product(args.sd, args.max_mm))
    task = make_task("liver_cascade", args.model_dir)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for image, ref in zip(args.image, args.ref):
            pred_path = str(Path(tmp) / "pred.nii.gz")
            predict_file(task, image, pred_path, {"grow_liver": False})
            # as the app sees them: RAS, axial last (grow_liver's in-plane axes are the first two)
            img = nib.as_closest_canonical(nib.load(image))
            label = np.rint(np.asarray(nib.as_closest_canonical(nib.load(pred_path)).dataobj)).astype(np.uint8)
            reference = liver_mask(np.rint(np.asarray(nib.as_closest_canonical(nib.load(ref)).dataobj)))
            hu = np.asarray(img.dataobj, dtype=np.float32)
            spacing = np.linalg.norm(img.affine[:3, :3], axis=0)
            row = {"case": Path(image).name, "no_growth": 100 * dice(liver_mask(label), reference)}
            for sd, max_mm in settings:
                grown = grow_liver(label, hu, spacing, sd=sd, max_mm=max_mm)
                row[f"sd {sd:g}, {max_mm:g} mm"] = 100 * dice(liver_mask(grown), reference)
            cases.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    keys = [k for k in cases[0] if k != "case"]
    result = {"settings": [{"sd": sd, "max_mm": mm} for sd, mm in settings], "cases": cases,
              "mean": {k: round(float(np.mean([c[k] for c in cases])), 2) for k in keys}}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps(result["mean"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
