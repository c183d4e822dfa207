"""Active learning: the unlabeled image on which the cascade is least certain."""

import logging
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.scoring.uncertainty import INFO_KEY, LiverUncertainty

logger = logging.getLogger(__name__)


class LiverUncertaintyStrategy(Strategy):
    """Ranks unlabeled images by :class:`LiverUncertainty`; scores missing for the
    current model are computed first (only those), so the answer is never stale.

    Two annotators clicking Next Sample must not both get the most uncertain image: an image offered
    (by any strategy; MONAI Label records who and when in the image's info) less than ``hold_s``
    seconds ago to another client is passed over for the next one. A request without a ``client_id``
    cannot be told from another, so then any recent offer holds the image (asking again gives the next
    image). When every candidate is held, the one offered longest ago is offered again."""

    def __init__(self, scoring: LiverUncertainty, hold_s: float = 600.0):
        super().__init__("Most uncertain unlabeled image (cascade entropy inside the predicted liver)")
        self.scoring = scoring
        self.hold_s = hold_s

    def held_since(self, request, datastore: Datastore, image: str) -> float:
        """When the image was last offered to another client within the hold, else 0."""
        client = request.get("client_id")
        now, last = time.time(), 0.0
        for offer in (datastore.get_image_info(image).get("strategy") or {}).values():
            if not isinstance(offer, dict):
                continue
            ts = float(offer.get("ts") or 0)
            if now - ts < self.hold_s and (client is None or offer.get("client_id") != client):
                last = max(last, ts)
        return last

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        scores = self.scoring(request, datastore)
        ranked = sorted(((scores[i], i) for i in images if i in scores), reverse=True)
        if not ranked:
            return None
        held = {i: self.held_since(request, datastore, i) for _, i in ranked} if self.hold_s > 0 else {}
        free = [(s, i) for s, i in ranked if not held.get(i)]
        # all held: the one offered longest ago (the most uncertain of those)
        score, image = free[0] if free else min(ranked, key=lambda r: (held[r[1]], -r[0]))
        logger.info(f"Uncertainty strategy: {image} (score {score:.4f}) of {len(ranked)} unlabeled, "
                    f"{len(ranked) - len(free)} offered to another client in the last {self.hold_s:g} s")
        return {"id": image, "weight": score, INFO_KEY: score}
