"""Uncertainty of the cascade inside the predicted liver, per unlabeled image.

The score is the mean normalised voxel entropy of the fused background /
liver / lesion probabilities over the voxels predicted as liver or lesion
(0: certain, 1: uniform). Scores are stored in the datastore's image info
together with the model files' modification times, and recomputed only when
a model changes (e.g. after a training round).
"""

import logging
import math
import os
import time
from typing import Any, Dict, Optional

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.tasks.infer.basic_infer import CallBackTypes

from lib.scoring import each_image
from lib.validation import InputError

logger = logging.getLogger(__name__)

INFO_KEY = "liver_uncertainty"


def liver_entropy(probs: torch.Tensor) -> float:
    """Mean normalised entropy of (C, ...) probabilities where argmax > 0."""
    p = probs.float().clamp_min(1e-6)
    ent = -(p * p.log()).sum(0) / math.log(p.shape[0])
    mask = probs.argmax(0) > 0
    if not mask.any():
        return 1.0  # nothing found: the model is as unsure as it gets about this image
    return float(ent[mask].mean())


class LiverUncertainty(ScoringMethod):
    def __init__(self, infer_task: InferTask):
        super().__init__("Mean voxel entropy of the cascade inside the predicted liver (unlabeled images)")
        self.infer_task = infer_task

    def model_stamp(self) -> Optional[str]:
        paths = getattr(self.infer_task, "stage_paths", [])
        if not paths or not all(os.path.exists(p) for p in paths):
            return None
        return ";".join(f"{os.path.basename(p)}@{os.stat(p).st_mtime}" for p in paths)

    def score_image(self, image_path: str) -> float:
        holder: Dict[str, Any] = {}

        def keep_probs(data):
            holder["u"] = liver_entropy(data["probs"])
            return data

        self.infer_task(
            # the network's own probabilities: no CRF (it would also sharpen them)
            {"image": image_path, "skip_writer": True, "keep_probs": True, "crf": "off",
             "device": "cuda" if torch.cuda.is_available() else "cpu"},
            callbacks={CallBackTypes.INFERER: keep_probs},
        )
        return holder["u"]

    def __call__(self, request, datastore: Datastore):
        stamp = self.model_stamp()
        if stamp is None:
            logger.info("Uncertainty scoring skipped: model files are missing")
            return {}
        result = {}

        def score_one(image_id):
            info = datastore.get_image_info(image_id).get(INFO_KEY, {})
            if info.get("model") == stamp:
                if info.get("score") is not None:
                    result[image_id] = info["score"]
                return
            t0 = time.time()
            try:
                score = self.score_image(datastore.get_image_uri(image_id))
            except InputError as e:
                # an image the model refuses (not CT, NaN voxels, ...) is left out of the ranking, and
                # recorded so that it is not tried again with this model; the others are still served
                logger.warning(f"Uncertainty of {image_id}: not scored: {e}")
                datastore.update_image_info(image_id, {INFO_KEY: {"score": None, "error": str(e), "model": stamp,
                                                                  "ts": int(time.time())}})
                return
            datastore.update_image_info(image_id, {INFO_KEY: {"score": score, "model": stamp, "ts": int(time.time())}})
            logger.info(f"Uncertainty of {image_id}: {score:.4f} ({time.time() - t0:.1f} s)")
            result[image_id] = score

        each_image(datastore, datastore.get_unlabeled_images(), score_one, "uncertainty")
        return result
