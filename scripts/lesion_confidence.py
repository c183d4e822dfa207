"""Would the network's own confidence remove false lesions? Each predicted lesion's mean lesion probability.

    .venv/bin/python scripts/lesion_confidence.py --model-dir apps/liver_cascade/model \
        --image CT --ref LABEL [--image ... --ref ...] [--params '{}'] [--out result.json]

Segments each image with the app's cascade as served (``lib.evaluation.predict``; ``--params`` adds
infer options), then reads the lesion report the app returns: for every lesion it lists (0.05 mL or
more by default) its ``mean_confidence`` (the mean lesion probability inside it) and a voxel inside it.
A lesion is true when its component touches a reference lesion (IoU > 0). For a few thresholds, how
many true and false lesions a filter "draw lesions whose mean confidence is under T as liver" keeps,
how many reference lesions stay found, and the lesion Dice (per case and global) after the filter.
Prints JSON.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "liver_cascade"))

THRESHOLDS = (0.0, 0.4, 0.45, 0.5, 0.55, 0.6)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def case_lesions(pred: np.ndarray, ref: np.ndarray, report: dict):
    """(component mask, mean confidence, true?) per reported lesion of ``pred``."""
    comps, _ = ndimage.label(pred == 2, structure=np.ones((3, 3, 3)))
    rows = []
    for lesion in report["lesions"]:
        c = comps[tuple(lesion["click_voxel"])]
        if c == 0:
            raise ValueError(f"lesion {lesion['id']}: its click voxel is not a lesion voxel of the label")
        mask = comps == c
        rows.append((mask, float(lesion["mean_confidence"]), bool((ref[mask] == 2).any()), float(lesion["volume_ml"])))
    return rows


def filtered(pred: np.ndarray, lesions, threshold: float) -> np.ndarray:
    out = pred.copy()
    for mask, conf, _, _ in lesions:
        if conf < threshold:
            out[mask] = 1
    return out


def ref_found(pred_lesion: np.ndarray, ref_lesion: np.ndarray) -> tuple:
    comps, n = ndimage.label(ref_lesion, structure=np.ones((3, 3, 3)))
    return sum(bool(pred_lesion[comps == k].any()) for k in range(1, n + 1)), n


def main(argv=None) -> int:
    from lib.evaluation.predict import load_label, make_task, predict_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--image", action="append", required=True)
    ap.add_argument("--ref", action="append", required=True)
    ap.add_argument("--params", default="{}", help="infer options as JSON")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if len(args.image) != len(args.ref):
        ap.error("give one --ref per --image")
    task = make_task("liver_cascade", args.model_dir)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for image, ref_path in zip(args.image, args.ref):
            out = str(Path(tmp) / "pred.nii.gz")
            result = predict_file(task, image, out, json.loads(args.params))
            pred, ref = load_label(out), load_label(ref_path)
            lesions = case_lesions(pred, ref, result["lesion_report"])
            cases.append((Path(image).name, pred, ref, lesions))
            print(Path(image).name, [(round(c, 3), t, v) for _, c, t, v in lesions], file=sys.stderr, flush=True)
    table = []
    for t in THRESHOLDS:
        row = {"threshold": t, "true_kept": 0, "false_kept": 0, "ref_found": 0, "ref_total": 0, "per_case_dice": []}
        inter = total = 0
        for _, pred, ref, lesions in cases:
            row["true_kept"] += sum(1 for _, c, true, _ in lesions if true and c >= t)
            row["false_kept"] += sum(1 for _, c, true, _ in lesions if not true and c >= t)
            les = filtered(pred, lesions, t) == 2
            found, n = ref_found(les, ref == 2)
            row["ref_found"] += found
            row["ref_total"] += n
            row["per_case_dice"].append(round(100 * dice(les, ref == 2), 2))
            inter += int((les & (ref == 2)).sum())
            total += int(les.sum()) + int((ref == 2).sum())
        row["mean_case_dice"] = round(float(np.mean(row["per_case_dice"])), 2)
        row["global_dice"] = round(100 * 2 * inter / total, 2) if total else 100.0
        table.append(row)
    summary = {
        "model_dir": args.model_dir,
        "params": json.loads(args.params),
        "lesions": [{"case": name, "mean_confidence": round(c, 4), "true": true, "volume_ml": v}
                    for name, _, _, lesions in cases for _, c, true, v in lesions],
        "thresholds": table,
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
