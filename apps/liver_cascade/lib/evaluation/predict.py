"""Run an infer task of the app offline on image files (for evaluation/ablation).

A folder of CT volumes to a folder of labels, each named as its image (what ``lib.evaluation.evaluate``
matches: ``volume-N`` in a LiTS folder, the image's name in a datastore)::

    python apps/liver_cascade/lib/evaluation/predict.py --images DIR --out PRED_DIR \
        [--model liver_cascade] [--model-dir apps/liver_cascade/model] [--params '{"crf": "off"}']

``--params`` takes the infer request's options (docs/USAGE.md); ``--model-dir`` a folder of weights
trained by ``lib.trainers.cli``.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional

if not __package__:  # run as a script: make the app folder importable, as MONAI Label does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from lib.conf import AppConf  # noqa: E402
from lib.infers.liver import LiverSegmentation  # noqa: E402

TASKS = {
    # name: (arch, cascade)
    "vgg_fcn": ("vgg", False),
    "liver_resnet": ("resnet", False),
    "liver_cascade": ("resnet", True),
}


def make_task(model: str, model_dir: str, conf: Optional[Dict[str, str]] = None) -> LiverSegmentation:
    arch, cascade = TASKS[model]
    app_conf = AppConf.from_conf(conf or {}, model_dir)
    return LiverSegmentation(model_dir, app_conf, cascade=cascade, arch=arch, task_name=model)


def predict_file(task: LiverSegmentation, image: str, out_path: str, params: Optional[dict] = None) -> dict:
    """Segment ``image`` and write the label to ``out_path``; returns the result JSON."""
    request = {"image": image, "device": "cpu", "result_extension": ".nii.gz"}
    request.update(params or {})
    path, result = task(request)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    os.replace(path, out_path)
    return result


def load_label(path: str) -> np.ndarray:
    return np.rint(np.asarray(nib.load(path).dataobj)).astype(np.uint8)


def lits_images(files):
    """The images among a folder's NIfTI ``files``: in a LiTS layout (a folder with ``(test-)volume-N`` files)
    only those, its ``segmentation-N`` labels are no CT; in any other folder every file."""
    from lib.evaluation.evaluate import _LITS_IMAGE, nifti_stem

    volumes = [p for p in files if _LITS_IMAGE.fullmatch(nifti_stem(p) or "")]
    return volumes or list(files)


def main(argv=None) -> int:
    from lib.evaluation.evaluate import nifti_stem
    from lib.model_io import ModelNotReadyError
    from lib.settings import PRESETS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="folder of CT volumes (.nii.gz, .nii)")
    ap.add_argument("--out", required=True, help="folder for the labels (uint8 0/1/2, named as the images)")
    ap.add_argument("--model", default="liver_cascade", choices=sorted(TASKS))
    ap.add_argument("--model-dir", default=str(Path(__file__).resolve().parents[2] / "model"))
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS), help="the weights' preset (default: lite)")
    ap.add_argument("--params", default="{}", help="infer options as JSON, e.g. '{\"crf\": \"off\"}'")
    args = ap.parse_args(argv)
    try:
        params = json.loads(args.params)
        if not isinstance(params, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        ap.error(f"--params: {e}")
    folder = Path(args.images)
    if not folder.is_dir():
        ap.error(f"--images {folder} is not a folder")
    images = lits_images(sorted(p for p in folder.iterdir() if p.is_file() and nifti_stem(p)))
    if not images:
        ap.error(f"no .nii.gz or .nii file in {folder}")
    try:
        task = make_task(args.model, args.model_dir, {"preset": args.preset} if args.preset else {})
        task.check_weights()
    except (ValueError, ModelNotReadyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    failed = []
    for img in images:
        t0 = time.time()
        try:
            predict_file(task, str(img), str(out / f"{nifti_stem(img)}.nii.gz"), params)
        except (ValueError, ModelNotReadyError) as e:  # an unreadable or non-CT file; the others still run
            failed.append(img.name)
            print(f"{img.name}: error: {e}", file=sys.stderr, flush=True)
            continue
        print(f"{img.name}: {time.time() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
