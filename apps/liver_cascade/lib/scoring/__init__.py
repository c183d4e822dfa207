"""Scoring methods (MONAI Label's ScoringMethod): per-image scores written to the datastore's image info."""

import logging

logger = logging.getLogger(__name__)


def each_image(datastore, image_ids, score_one, method: str):
    """``score_one(image_id)`` for each image. An image removed from the datastore while the scoring runs
    (an annotator's delete) is skipped, whatever its scoring then raised: it failed the whole run (a 500
    for the Next Sample that scored, a traceback in the scoring process, the other images unscored)."""
    for image_id in image_ids:
        try:
            score_one(image_id)
        except Exception:
            if image_id in datastore.list_images():
                raise
            logger.info(f"{method}: {image_id} was removed while it was scored; skipped")
