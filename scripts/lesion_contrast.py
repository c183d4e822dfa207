"""Would a density or an edge test remove false lesions? Each predicted lesion's contrast with the liver around it,
and how much of it lies on the liver's edge.

    .venv/bin/python scripts/lesion_contrast.py --pred <label.nii.gz> --image <ct.nii.gz> --ref <reference.nii.gz> \
        [--pred ... --image ... --ref ...] [--out result.json]

For every predicted lesion component of at least --min-ml (26-connectivity): the median HU (smoothed over
1 mm) inside it, the median HU of the predicted liver 2-10 mm around it, their difference (the contrast),
and whether it touches a reference lesion (a true lesion at IoU > 0); its ``edge_share``: the share of the
voxels next to it in-plane (8-neighbours) that the prediction calls background, not liver (0 for a lesion
inside the liver). Then, for a few thresholds, how many true and false lesions a filter "drop lesions whose
|contrast| is under T HU" would keep, and one "drop lesions whose edge share is over S". Prints JSON.
"""

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

THRESHOLDS_HU = (3, 5, 8, 10, 15)
EDGE_SHARES = (0.1, 0.2, 0.3, 0.5)


def lesion_contrasts(pred: np.ndarray, hu: np.ndarray, ref: np.ndarray, spacing, min_ml: float):
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), 1.0 / np.asarray(spacing, float))
    comps, n = ndimage.label(pred == 2, structure=np.ones((3, 3, 3)))
    voxel_ml = float(np.prod(spacing)) / 1000
    rows = []
    for c in range(1, n + 1):
        lesion = comps == c
        if lesion.sum() * voxel_ml < min_ml:
            continue
        dist = ndimage.distance_transform_edt(~lesion, sampling=spacing)
        ring = (dist > 2) & (dist <= 10) & (pred == 1)
        inside, around = float(np.median(smooth[lesion])), float(np.median(smooth[ring])) if ring.sum() > 20 else None
        beside = ndimage.binary_dilation(lesion, np.ones((3, 3, 1), bool)) & ~lesion
        rows.append({"ml": round(float(lesion.sum()) * voxel_ml, 2), "lesion_hu": round(inside, 1),
                     "liver_hu": None if around is None else round(around, 1),
                     "contrast_hu": None if around is None else round(inside - around, 1),
                     "edge_share": round(float((pred[beside] == 0).mean()), 3) if beside.any() else 0.0,
                     "true": bool((ref[lesion] == 2).any())})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", action="append", required=True)
    ap.add_argument("--image", action="append", required=True)
    ap.add_argument("--ref", action="append", required=True)
    ap.add_argument("--min-ml", type=float, default=0.05)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if not len(args.pred) == len(args.image) == len(args.ref):
        ap.error("give one --image and one --ref per --pred")
    rows = []
    for pred_path, image_path, ref_path in zip(args.pred, args.image, args.ref):
        # RAS, so that the axial axis is the last one (the edge share is in-plane)
        img = nib.as_closest_canonical(nib.load(image_path))
        spacing = np.linalg.norm(img.affine[:3, :3], axis=0)
        pred = np.rint(np.asarray(nib.as_closest_canonical(nib.load(pred_path)).dataobj)).astype(np.uint8)
        ref = np.rint(np.asarray(nib.as_closest_canonical(nib.load(ref_path)).dataobj)).astype(np.uint8)
        for row in lesion_contrasts(pred, np.asarray(img.dataobj), ref, spacing, args.min_ml):
            rows.append({"case": Path(image_path).name, **row})
    true = [r for r in rows if r["true"]]
    false = [r for r in rows if not r["true"]]
    kept = lambda group, t: sum(1 for r in group if r["contrast_hu"] is None or abs(r["contrast_hu"]) >= t)  # noqa: E731
    result = {"lesions": rows, "true": len(true), "false": len(false),
              "filter": [{"min_contrast_hu": t, "true_kept": kept(true, t), "false_kept": kept(false, t)}
                         for t in THRESHOLDS_HU],
              "edge_filter": [{"max_edge_share": s, "true_kept": sum(1 for r in true if r["edge_share"] <= s),
                               "false_kept": sum(1 for r in false if r["edge_share"] <= s)} for s in EDGE_SHARES]}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "lesions"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
