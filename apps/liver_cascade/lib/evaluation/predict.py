"""Run an infer task of the app offline on image files (for evaluation/ablation)."""

import os
from typing import Dict, Optional

import nibabel as nib
import numpy as np

from lib.conf import AppConf
from lib.infers.liver import LiverSegmentation

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
