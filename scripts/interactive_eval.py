"""Measure the interactive cascade: lesion Dice without / with the annotator's (reference) liver,
and after 1, 3 and 5 simulated lesion clicks; and the latency of a corrected-liver re-inference.

    .venv/bin/python scripts/interactive_eval.py --model-dir apps/liver_cascade/model \\
        --image CT.nii.gz --label REF.nii.gz [--image ... --label ...] --out docs/results/interactive.json \\
        [--request '{"adapt_bn": false}']

Clicks are simulated like an annotator would place them: each click goes to the
centre (the voxel deepest inside, in mm, as the lesion report's click_voxel) of the largest remaining error component:
a missed reference lesion (foreground click) or a false lesion (background click).
Clicks accumulate; each count re-runs the cascade with all clicks so far and the
corrected liver.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "liver_cascade"))
from lib.evaluation.lesion_report import interior_voxel, voxel_spacing  # noqa: E402
from lib.evaluation.metrics import dice  # noqa: E402
from lib.evaluation.predict import load_label, make_task, predict_file  # noqa: E402
from lib.settings import LABELS  # noqa: E402
from lib.transforms.interaction import BACKGROUND_CLICK_MODES  # noqa: E402

LES = LABELS["lesion"]


def next_click(pred, ref, spacing=(1.0, 1.0, 1.0)):
    """(kind, voxel) for the largest error component, or None when there is no error. The voxel is the
    component's deepest in mm (``spacing``): on 5 mm slices, the centre of the middle slice, where an
    annotator would click, not a voxel near the edge that counts as deep in voxel units."""
    best = None
    for kind, err in (("foreground", (ref == LES) & (pred != LES)), ("background", (pred == LES) & (ref != LES))):
        comps, n = ndimage.label(err, structure=np.ones((3, 3, 3)))
        if not n:
            continue
        sizes = np.bincount(comps.ravel())[1:]
        c = int(np.argmax(sizes)) + 1
        if best is None or sizes[c - 1] > best[0]:
            mask = comps == c
            voxel = interior_voxel(mask, spacing, np.argwhere(mask).mean(0))
            best = (sizes[c - 1], kind, tuple(int(v) for v in voxel))
    return None if best is None else best[1:]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--image", action="append", required=True)
    ap.add_argument("--label", action="append", required=True)
    ap.add_argument("--clicks", default="1,3,5")
    ap.add_argument("--background-click", default=None, choices=BACKGROUND_CLICK_MODES,
                    help="what a background click removes (the app's default: the first)")
    ap.add_argument("--request", default="{}", type=json.loads,
                    help="infer request keys added to every request (JSON), e.g. '{\"adapt_bn\": false}'")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.clicks.split(",")]
    task = make_task("liver_cascade", args.model_dir)
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for img_path, lab_path in zip(args.image, args.label):
        ref = load_label(lab_path)
        lab_img = nib.load(lab_path)
        spacing = voxel_spacing(lab_img.affine)
        liver_file = tmp / "liver.nii.gz"
        nib.save(nib.Nifti1Image((ref > 0).astype(np.uint8), lab_img.affine), str(liver_file))
        row = {"case": Path(img_path).name.split(".")[0]}
        out = tmp / "pred.nii.gz"
        t0 = time.time()
        predict_file(task, img_path, str(out), args.request)
        row["seconds_automatic"] = round(time.time() - t0, 2)
        row["lesion_dice_automatic"] = dice(load_label(str(out)) == LES, ref == LES)
        t0 = time.time()
        predict_file(task, img_path, str(out), {**args.request, "label": str(liver_file)})
        row["seconds_corrected_liver"] = round(time.time() - t0, 2)
        pred = load_label(str(out))
        row["lesion_dice_corrected_liver"] = dice(pred == LES, ref == LES)
        clicks = {"foreground": [], "background": []}
        for n in range(1, max(counts) + 1):
            c = next_click(pred, ref, spacing)
            if c is not None:
                clicks[c[0]].append(list(c[1]))
                mode = {"background_click": args.background_click} if args.background_click else {}
                predict_file(task, img_path, str(out), {**args.request, "label": str(liver_file), **clicks, **mode})
                pred = load_label(str(out))
            if n in counts:
                row[f"lesion_dice_{n}_clicks"] = dice(pred == LES, ref == LES)
        row["clicks"] = clicks
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "clicks"}), flush=True)
    keys = [k for k in rows[0] if k.startswith("lesion_dice")]
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"background_click": args.background_click or BACKGROUND_CLICK_MODES[0],
                                          "request": args.request, "rows": rows, "mean": summary}, indent=2))
    print("| cases | automatic | corrected liver | " + " | ".join(f"+{n} clicks" for n in counts) + " |")
    print("|---" * (3 + len(counts)) + "|")
    print(f"| {len(rows)} | " + " | ".join(f"{100 * summary[k]:.2f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
