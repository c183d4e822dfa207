"""Active learning: the unlabeled image on which the cascade is least certain."""

import logging
import time
from typing import Dict

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.scoring.uncertainty import INFO_KEY, LiverUncertainty
from lib.settings import SHARED_CLIENT_IDS

logger = logging.getLogger(__name__)


# the image info key where Next Sample records who was offered the image and when ({client: ts})
OFFERS_KEY = "next_sample_offers"
ANONYMOUS = "(no client_id)"


def client_key(request) -> str:
    """Who asks: the request's client_id; none, or Slicer's default that every install shares, is anonymous."""
    client = request.get("client_id")
    return ANONYMOUS if client is None or str(client) in SHARED_CLIENT_IDS else str(client)


class LiverUncertaintyStrategy(Strategy):
    """Ranks unlabeled images by :class:`LiverUncertainty`; scores missing for the
    current model are computed first (only those), so the answer is never stale.

    Two annotators clicking Next Sample must not both get the most uncertain image: an image offered
    less than ``hold_s`` seconds ago to another client (by this strategy, or by another one, which MONAI
    Label records) is passed over for the next one; a client asking again keeps its own. Requests
    without a ``client_id`` (or with Slicer's default one) cannot be told apart, so for them every
    recent offer holds an image: asking again gives the next one. When every candidate is held, the one
    offered longest ago is offered again."""

    def __init__(self, scoring: LiverUncertainty, hold_s: float = 600.0):
        super().__init__("Most uncertain unlabeled image (cascade entropy inside the predicted liver)")
        self.scoring = scoring
        self.hold_s = hold_s

    def recent_offers(self, info: dict, now: float) -> Dict[str, float]:
        """{client: ts} of the image's offers within the hold: this strategy's record and MONAI Label's."""
        offers: Dict[str, float] = {}
        records = [(c, ts) for c, ts in (info.get(OFFERS_KEY) or {}).items()]
        records += [(o.get("client_id"), o.get("ts")) for o in (info.get("strategy") or {}).values() if isinstance(o, dict)]
        for client, ts in records:
            try:
                ts = float(ts or 0)
            except (TypeError, ValueError):  # not a record of ours or MONAI Label's: no hold
                continue
            if now - ts < self.hold_s:
                key = client_key({"client_id": client})
                offers[key] = max(ts, offers.get(key, 0.0))
        return offers

    def held_since(self, client: str, offers: Dict[str, float]) -> float:
        """When another client was last offered the image within the hold, else 0 (free, or the client's own)."""
        if client != ANONYMOUS and client in offers:
            return 0.0
        return max(offers.values(), default=0.0)

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        scores = self.scoring(request, datastore)
        present = set(datastore.list_images())  # not one removed while the others were scored
        ranked = sorted(((scores[i], i) for i in images if i in scores and i in present), reverse=True)
        if not ranked:
            return None
        if self.hold_s <= 0:  # MONAI Label's behaviour: the most uncertain image for everyone
            score, image = ranked[0]
            logger.info(f"Uncertainty strategy: {image} (score {score:.4f}) of {len(ranked)} unlabeled")
            return {"id": image, "weight": score, INFO_KEY: score}
        now, client = time.time(), client_key(request)
        offers = {i: self.recent_offers(datastore.get_image_info(i), now) for _, i in ranked}
        held = {i: self.held_since(client, offers[i]) for _, i in ranked}
        free = [(s, i) for s, i in ranked if not held[i]]
        # all held: the one offered longest ago (the most uncertain of those)
        score, image = free[0] if free else min(ranked, key=lambda r: (held[r[1]], -r[0]))
        # recorded before answering: MONAI Label serves Next Sample one request at a time, so the next
        # request sees it; its own "strategy" record keeps only the last client per strategy
        try:
            datastore.update_image_info(image, {OFFERS_KEY: {**offers[image], client: now}})
        except Exception as e:  # as MONAI Label's own record: a sample without the hold beats no sample
            logger.warning(f"Uncertainty strategy: could not record the offer of {image}: {e}")
        logger.info(f"Uncertainty strategy: {image} (score {score:.4f}) of {len(ranked)} unlabeled for {client}, "
                    f"{len(ranked) - len(free)} offered to another client in the last {self.hold_s:g} s")
        return {"id": image, "weight": score, INFO_KEY: score}
