"""Does a prediction draw the liver systematically inside or outside the reference?

    .venv/bin/python scripts/boundary_offset.py --pred <label.nii.gz> --ref <reference.nii.gz>

For every axial slice where both have liver (reference at least --min-pixels), the signed
in-plane distance (mm, negative = inside the reference liver) from each boundary pixel of the
predicted liver to the reference boundary; then the liver Dice of the prediction grown (+k) or
shrunk (-k) in-plane by k pixels. A median offset of a few mm with Dice rising on one side
is a systematic boundary placement, not noise. Prints JSON.
"""

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "liver_cascade"))

from lib.evaluation.metrics import dice, liver_mask  # noqa: E402


def load_ras(path: str):
    img = nib.as_closest_canonical(nib.load(path))  # axial = last axis, as the app works
    return np.rint(np.asarray(img.dataobj)).astype(np.uint8), img.header.get_zooms()[:2]


def boundary_offsets_mm(pred: np.ndarray, ref: np.ndarray, pixel_mm: float, min_pixels: int) -> np.ndarray:
    out = []
    for z in range(ref.shape[2]):
        r, p = ref[..., z], pred[..., z]
        if r.sum() < min_pixels or not p.any():
            continue
        signed = ndimage.distance_transform_edt(~r) - ndimage.distance_transform_edt(r)
        out.append(signed[p & ~ndimage.binary_erosion(p)])
    return np.concatenate(out) * pixel_mm if out else np.zeros(0)


def grown_dice(pred: np.ndarray, ref: np.ndarray, ks=(-3, -2, -1, 0, 1, 2, 3)) -> dict:
    plane = np.zeros((3, 3, 1), bool)
    plane[..., 0] = ndimage.generate_binary_structure(2, 1)  # in-plane only
    res = {}
    for k in ks:
        m = pred if k == 0 else (ndimage.binary_dilation(pred, plane, k) if k > 0
                                 else ndimage.binary_erosion(pred, plane, -k))
        res[f"{k:+d}"] = round(100 * dice(m, ref), 2)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--min-pixels", type=int, default=5000, help="slices with less reference liver are skipped")
    args = ap.parse_args(argv)
    pred, _ = load_ras(args.pred)
    ref, zooms = load_ras(args.ref)
    pred, ref = liver_mask(pred), liver_mask(ref)
    off = boundary_offsets_mm(pred, ref, float(zooms[0]), args.min_pixels)
    result = {
        "median_offset_mm": round(float(np.median(off)), 2) if off.size else None,
        "mean_offset_mm": round(float(off.mean()), 2) if off.size else None,
        "fraction_inside": round(float((off < 0).mean()), 3) if off.size else None,
        "liver_dice_grown_by_k_pixels": grown_dice(pred, ref),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
