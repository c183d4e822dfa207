"""Overlay PNG of a segmentation on CT slices (radiological display, HU window from settings).

    .venv/bin/python scripts/overlay.py --image CT.nii.gz --pred PRED.nii.gz [--ref REF.nii.gz] --out fig.png
    .venv/bin/python scripts/overlay.py --image CT.nii.gz --model-dir apps/liver_cascade/model [--ref REF.nii.gz] --out fig.png

With --model-dir instead of --pred, the app's liver_cascade (those weights, one scale) segments the
image first and the label is written beside the PNG (fig.nii.gz); `make overlay-real` draws the
held-out real patient this way, into data-local/ (real CT may not be committed, not even as a picture).

Shows the axial slices with the most liver (and the most lesion); prediction
filled (liver red, lesion yellow), reference as white/cyan contours.
"""

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "liver_cascade"))
from lib.settings import HU_WINDOW, LABEL_COLORS, LABELS  # noqa: E402


def canonical(path):
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred", help="a label file to draw")
    src.add_argument("--model-dir", help="segment the image with the app's liver_cascade and these weights")
    ap.add_argument("--ref")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="")
    ap.add_argument("--slices", default="", help="axial slices to draw (RAS order, comma-separated; default: the one "
                                                 "with the most liver and the one with the most lesion)")
    ap.add_argument("--params", default="{}", help="infer request options with --model-dir, e.g. '{\"grow_liver\": false}'")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.model_dir:
        from lib.evaluation.predict import make_task, predict_file

        args.pred = str(Path(args.out).with_suffix(".nii.gz"))
        predict_file(make_task("liver_cascade", args.model_dir), args.image, args.pred, json.loads(args.params))
    img, pred = canonical(args.image), np.rint(canonical(args.pred)).astype(np.uint8)
    ref = np.rint(canonical(args.ref)).astype(np.uint8) if args.ref else None
    src = ref if ref is not None else pred
    ks = [int(np.argmax((src > 0).sum((0, 1))))]
    if (src == LABELS["lesion"]).any():
        ks.append(int(np.argmax((src == LABELS["lesion"]).sum((0, 1)))))
    if args.slices:
        ks = [int(k) for k in args.slices.split(",")]
    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 5), squeeze=False)
    for ax, k in zip(axes[0], ks):
        view = lambda a: a[:, :, k].T[::-1, ::-1]  # noqa: E731  (anterior up, patient's right on the left)
        ax.imshow(np.clip(view(img), *HU_WINDOW), cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
        overlay = np.zeros(view(pred).shape + (4,))
        for name in ("liver", "lesion"):
            overlay[view(pred) == LABELS[name]] = list(np.array(LABEL_COLORS[name]) / 255) + [0.35]
        ax.imshow(overlay)
        if ref is not None:
            ax.contour(view(ref) > 0, levels=[0.5], colors="white", linewidths=0.8)
            ax.contour(view(ref) == LABELS["lesion"], levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(f"{args.title} slice {k}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=70)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
