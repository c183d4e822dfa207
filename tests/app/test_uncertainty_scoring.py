"""The uncertainty strategy ranks what it can score: an unlabeled image the model refuses (not CT, NaN
voxels) once made "Next Sample" answer HTTP 500 for everyone until the image was deleted."""

import time

import nibabel as nib
import numpy as np

from support import APP


class FakeDatastore:
    def __init__(self, images):
        self.images, self.info = images, {k: {} for k in images}

    def get_unlabeled_images(self, *args):
        return sorted(self.images)

    def list_images(self):
        return sorted(self.images)

    def get_image_uri(self, image_id):
        return self.images[image_id]

    def get_image_info(self, image_id):
        return self.info[image_id]

    def update_image_info(self, image_id, info):
        self.info[image_id].update(info)


def test_uncertainty_skips_images_the_model_refuses_and_ranks_the_rest(tmp_path):
    import phantom

    from lib.activelearning.uncertainty import LiverUncertaintyStrategy
    from lib.evaluation.predict import make_task
    from lib.scoring.uncertainty import INFO_KEY, LiverUncertainty

    ct = phantom.generate_phantom(seed=3, orientation="LPS", n_slices=16, shape_xy=(128, 128), spacing=(2.7, 2.7, 5.0))
    paths = {k: tmp_path / f"{k}.nii.gz" for k in ("ct", "mr", "nan", "complex")}
    nib.save(nib.Nifti1Image(ct.image, ct.affine), str(paths["ct"]))
    nib.save(nib.Nifti1Image((ct.image.astype(np.float32) + 1100) / 10, ct.affine), str(paths["mr"]))  # no air
    nan = ct.image.astype(np.float32)
    nan[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, ct.affine), str(paths["nan"]))
    nib.save(nib.Nifti1Image(ct.image.astype(np.complex64), ct.affine), str(paths["complex"]))  # was a 500 for all
    ds = FakeDatastore({k: str(v) for k, v in paths.items()})
    scoring = LiverUncertainty(make_task("liver_cascade", str(APP / "model")))
    picked = LiverUncertaintyStrategy(scoring)({}, ds)
    assert picked["id"] == "ct" and 0.0 <= picked["weight"] <= 1.0
    for bad in ("mr", "nan", "complex"):  # recorded with the reason, not tried again with the same model
        assert ds.info[bad][INFO_KEY]["score"] is None and ds.info[bad][INFO_KEY]["error"]
        assert ds.info[bad][INFO_KEY]["model"] == scoring.model_stamp()
    scoring.score_image = None  # a second round reads the stored scores only
    assert LiverUncertaintyStrategy(scoring)({}, ds)["id"] == "ct"


def test_next_sample_does_not_offer_two_annotators_the_same_image():
    """Two annotators clicking Next Sample at once both got the most uncertain image."""
    from lib.activelearning.uncertainty import OFFERS_KEY, LiverUncertaintyStrategy

    scores = {"a": 0.9, "b": 0.5, "c": 0.1}
    ds = FakeDatastore({k: k for k in scores})
    strategy = LiverUncertaintyStrategy(lambda request, datastore: scores, hold_s=600)

    def next_sample(client=None, name="uncertainty", pick=None):
        """as MONAI Label's /activelearning endpoint does: pick, then record who got it and when"""
        request = {"strategy": name, **({"client_id": client} if client is not None else {})}
        image = pick or strategy(request, ds)["id"]
        ds.info[image].setdefault("strategy", {})[name] = {"ts": int(time.time()), "client_id": client or "admin"}
        return image

    def age(image, seconds):
        for offer in ds.info[image].get("strategy", {}).values():
            offer["ts"] -= seconds
        for client in ds.info[image].get(OFFERS_KEY, {}):
            ds.info[image][OFFERS_KEY][client] -= seconds

    assert next_sample("ann1") == "a"
    assert next_sample("ann2") == "b"  # "a" is with ann1
    assert next_sample("ann1") == "a"  # ann1 asking again keeps its image
    assert next_sample("ann3") == "c"
    # every image is with someone else: the one offered longest ago
    age("b", 300)
    assert next_sample("ann4") == "b"
    # ... and its first holder still keeps it (MONAI Label's record now names ann4 only)
    assert next_sample("ann2") == "b"
    # an offer by another strategy holds an image too, and does not take it from its holder
    next_sample("ann9", name="first", pick="c")
    assert next_sample("ann3") == "c"
    # a hold ends
    age("a", 601)
    assert next_sample("ann5") == "a"
    # clients without an id, or with Slicer's default one, cannot be told apart: each request gets the next image
    for anonymous in (None, "user-xyz"):
        ds.info = {k: {} for k in scores}
        assert [next_sample(anonymous), next_sample(anonymous), next_sample("ann1")] == ["a", "b", "c"]
    # hold 0: MONAI Label's behaviour, the most uncertain image for everyone
    ds.info = {k: {} for k in scores}
    strategy.hold_s = 0
    assert [next_sample("ann1"), next_sample("ann2")] == ["a", "a"]


def test_an_image_removed_while_it_is_scored_is_skipped(tmp_path):
    """An annotator deleting an image while the scoring runs (Next Sample's, or the scoring process after a
    save) failed the whole run: a 500 for that Next Sample, the remaining images unscored."""
    from support import file_datastore, small_phantom_studies

    from lib.evaluation.predict import make_task
    from lib.scoring.correction import CorrectionDice
    from lib.scoring.uncertainty import LiverUncertainty

    studies = small_phantom_studies(tmp_path, seed=50, n=3)
    ds = file_datastore(studies)
    uncertainty = LiverUncertainty(make_task("liver_cascade", str(APP / "model")))

    def score_image(path):  # case1 is deleted while the network segments it
        if path.endswith("case1.nii.gz"):
            ds.remove_image("case1")
            raise FileNotFoundError(path)
        return 0.5

    uncertainty.score_image = score_image
    scores = uncertainty({}, ds)  # (the labels beside the cases are images of this datastore too)
    assert "case1" not in scores and scores["case0"] == scores["case2"] == 0.5

    ds2 = file_datastore(studies)
    for i in (0, 2):
        for tag in ("final", "original"):
            ds2.save_label(f"case{i}", str(studies / f"label{i}.nii.gz"), tag, {"model": "liver_cascade"})
    read, deleted = ds2.get_label_uri, []

    def get_label_uri(label_id, tag):  # case0 is deleted between the reads of its two labels
        if (label_id, tag) == ("case0", "original") and not deleted:
            deleted.append(label_id)
            ds2.remove_image("case0")
        return read(label_id, tag)

    ds2.get_label_uri = get_label_uri
    scores = CorrectionDice()({}, ds2)
    assert sorted(scores) == ["case2"] and scores["case2"]["liver"] == 1.0
