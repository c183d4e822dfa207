"""Next Sample (random) clicked twice within a second with one unlabeled image left: MONAI Label's
Random raised (all weights 0, HTTP 500); ours offers that image again."""

import time


class OneImageLeft:
    def __init__(self, offered_ts):
        self.offered_ts = offered_ts

    def get_unlabeled_images(self, label_tag=None, labels=None):
        return ["case3"]

    def get_image_info(self, image_id):
        return {"strategy": {"random": {"ts": self.offered_ts}}}


def test_random_offers_the_last_image_again_within_the_same_second():
    from lib.activelearning.random import RandomStrategy

    assert RandomStrategy()({"strategy": "random"}, OneImageLeft(int(time.time()) + 1))["id"] == "case3"
    assert RandomStrategy()({"strategy": "random"}, OneImageLeft(0))["id"] == "case3"  # MONAI Label's path


def test_monai_labels_random_fails_there():  # why ours exists; if this starts passing, drop ours
    import pytest
    from monailabel.tasks.activelearning.random import Random

    with pytest.raises(ValueError):
        Random()({"strategy": "random"}, OneImageLeft(int(time.time()) + 1))
