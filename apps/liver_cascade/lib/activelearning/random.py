"""MONAI Label's random strategy, without its HTTP 500 on quick clicks."""

import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.random import Random


class RandomStrategy(Random):
    """MONAI Label's Random weighs each unlabeled image by the seconds since this strategy last offered
    it; when every candidate was offered within the current second (Next Sample clicked twice, one image
    left) all weights are 0 and random.choices raised (HTTP 500). Then any candidate is drawn."""

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        now = int(time.time())
        offered = [datastore.get_image_info(i).get("strategy", {}).get(request["strategy"], {}).get("ts", 0)
                   for i in images]
        if images and all(now - ts <= 0 for ts in offered):
            return {"id": random.choice(images), "weight": 0}
        return super().__call__(request, datastore)
