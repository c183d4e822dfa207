"""Active learning: the unlabeled image on which the cascade is least certain."""

import logging

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.scoring.uncertainty import INFO_KEY, LiverUncertainty

logger = logging.getLogger(__name__)


class LiverUncertaintyStrategy(Strategy):
    """Ranks unlabeled images by :class:`LiverUncertainty`; scores missing for the
    current model are computed first (only those), so the answer is never stale."""

    def __init__(self, scoring: LiverUncertainty):
        super().__init__("Most uncertain unlabeled image (cascade entropy inside the predicted liver)")
        self.scoring = scoring

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        scores = self.scoring(request, datastore)
        ranked = sorted(((scores[i], i) for i in images if i in scores), reverse=True)
        if not ranked:
            return None
        score, image = ranked[0]
        logger.info(f"Uncertainty strategy: {image} (score {score:.4f}) of {len(ranked)} unlabeled")
        return {"id": image, "weight": score, INFO_KEY: score}
