"""How much did annotators correct the model? Dice between the model's original
prediction (label tag ``original``) and the annotator's ``final`` label, per
class (liver incl. lesions, lesion), stored in the image info with the model
that made that prediction (MONAI Label keeps the last inference run on the image
as ``original``, whichever model it was)."""

import logging

import numpy as np
from monai.transforms import LoadImage
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lib.scoring import each_image
from lib.settings import LABELS

logger = logging.getLogger(__name__)

INFO_KEY = "correction_dice"


def class_dice(pred: np.ndarray, ref: np.ndarray) -> dict:
    out = {}
    for name, mask in (("liver", lambda x: x >= LABELS["liver"]), ("lesion", lambda x: x == LABELS["lesion"])):
        p, r = mask(pred), mask(ref)
        denom = int(p.sum()) + int(r.sum())
        out[name] = 1.0 if denom == 0 else float(2.0 * np.logical_and(p, r).sum() / denom)
    return out


def spatial(label) -> np.ndarray:
    """A label's voxels without trailing axes of length 1 (an (X, Y, Z, 1) label passes the save check)."""
    a = np.asarray(label)
    while a.ndim > 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


class CorrectionDice(ScoringMethod):
    def __init__(self):
        super().__init__("Per-class Dice between the model's original prediction and the final label")

    def __call__(self, request, datastore: Datastore):
        loader = LoadImage(image_only=True)
        result = {}

        def score_one(image_id):
            final_id = datastore.get_label_by_image_id(image_id, DefaultLabelTag.FINAL)
            orig_id = datastore.get_label_by_image_id(image_id, DefaultLabelTag.ORIGINAL)
            if not final_id or not orig_id:
                return
            ref = spatial(loader(datastore.get_label_uri(final_id, DefaultLabelTag.FINAL)))
            pred = spatial(loader(datastore.get_label_uri(orig_id, DefaultLabelTag.ORIGINAL)))
            if ref.shape != pred.shape:
                logger.warning(f"{image_id}: original {pred.shape} and final {ref.shape} differ in shape; skipped")
                return
            dice = class_dice(np.rint(pred).astype(np.int16), np.rint(ref).astype(np.int16))
            dice["model"] = datastore.get_label_info(orig_id, DefaultLabelTag.ORIGINAL).get("model")
            datastore.update_image_info(image_id, {INFO_KEY: dice})
            result[image_id] = dice

        each_image(datastore, datastore.get_labeled_images(DefaultLabelTag.FINAL), score_one, "correction_dice")
        return result
