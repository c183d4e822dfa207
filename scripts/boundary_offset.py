"""Does a prediction draw the liver systematically inside or outside the reference?

    .venv/bin/python scripts/boundary_offset.py --pred <label.nii.gz> --ref <reference.nii.gz>

For every axial slice where both have liver (reference at least --min-pixels), the signed
in-plane distance (mm, negative = inside the reference liver) from each boundary pixel of the
predicted liver to the reference boundary; then the liver Dice of the prediction grown (+k) or
shrunk (-k) in-plane by k pixels. A median offset of a few mm with Dice rising on one side
is a systematic boundary placement, not noise.

Then where the errors lie (``error_bands``): the false liver voxels by their in-plane distance to the
reference liver (0-2, 2-5, over 5 mm), the missed ones by their distance to the reference's boundary, and
both in the reference liver's first and last 2 slices (``end_slices``, counted apart); with the liver
Dice that removing each kind would give (an oracle: it needs the reference). Prints JSON.
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


def boundary_offsets_mm(pred: np.ndarray, ref: np.ndarray, signed_mm: np.ndarray, min_pixels: int) -> np.ndarray:
    """The signed distance (``signed_mm``: in-plane, to the reference boundary, negative inside) at each
    boundary pixel of the predicted liver, in the slices with at least ``min_pixels`` of reference liver."""
    out = []
    for z in range(ref.shape[2]):
        r, p = ref[..., z], pred[..., z]
        if r.sum() < min_pixels or not p.any():
            continue
        out.append(signed_mm[..., z][p & ~ndimage.binary_erosion(p)])
    return np.concatenate(out) if out else np.zeros(0)


def grown_dice(pred: np.ndarray, ref: np.ndarray, ks=(-3, -2, -1, 0, 1, 2, 3)) -> dict:
    plane = np.zeros((3, 3, 1), bool)
    plane[..., 0] = ndimage.generate_binary_structure(2, 1)  # in-plane only
    res = {}
    for k in ks:
        m = pred if k == 0 else (ndimage.binary_dilation(pred, plane, k) if k > 0
                                 else ndimage.binary_erosion(pred, plane, -k))
        res[f"{k:+d}"] = round(100 * dice(m, ref), 2)
    return res


def in_plane_distance_mm(mask: np.ndarray, zooms) -> np.ndarray:
    """Per axial slice, each voxel's in-plane distance (mm) to the nearest voxel of ``mask`` (0 inside it)."""
    out = np.zeros(mask.shape)
    for z in range(mask.shape[2]):
        out[..., z] = ndimage.distance_transform_edt(~mask[..., z], sampling=zooms[:2])
    return out


def error_bands(pred: np.ndarray, ref: np.ndarray, out_d: np.ndarray, in_d: np.ndarray, end: int = 2) -> dict:
    """``out_d`` / ``in_d``: each voxel's in-plane distance (mm) to the reference liver / to its outside."""
    false, missed = pred & ~ref, ref & ~pred
    tp = int((pred & ref).sum())
    zs = np.flatnonzero(ref.any(axis=(0, 1)))
    ends = np.zeros(ref.shape, bool)
    if zs.size:
        ends[..., : zs[0] + end] = True
        ends[..., zs[-1] - end + 1:] = True
    def bands(m, d):
        m = m & ~ends
        return {"0-2mm": int((m & (d <= 2)).sum()), "2-5mm": int((m & (d > 2) & (d <= 5)).sum()),
                "over_5mm": int((m & (d > 5)).sum())}

    res = {"true": tp, "false": bands(false, out_d), "missed": bands(missed, in_d),
           "end_slices": {"slices": end, "false": int((false & ends).sum()), "missed": int((missed & ends).sum())}}
    nf, nm = int(false.sum()), int(missed.sum())

    def dice_without(f=0, m=0):
        return round(100 * 2 * tp / (2 * tp + nf - f + nm - m), 2) if tp else 0.0

    far = res["false"]["over_5mm"]
    res["liver_dice_without"] = {
        "nothing": dice_without(),
        "false_over_5mm": dice_without(f=far),
        "false_over_5mm_and_end_slices": dice_without(f=far + res["end_slices"]["false"],
                                                      m=res["end_slices"]["missed"]),
    }
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
    outside = in_plane_distance_mm(ref, zooms)  # how far outside the reference liver (0 inside)
    inside = in_plane_distance_mm(~ref, zooms)  # how far inside its boundary (0 outside)
    off = boundary_offsets_mm(pred, ref, outside - inside, args.min_pixels)
    result = {
        "median_offset_mm": round(float(np.median(off)), 2) if off.size else None,
        "mean_offset_mm": round(float(off.mean()), 2) if off.size else None,
        "fraction_inside": round(float((off < 0).mean()), 3) if off.size else None,
        "liver_dice_grown_by_k_pixels": grown_dice(pred, ref),
        "error_bands": error_bands(pred, ref, outside, inside),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
