"""Infer request options that need no segmentation to judge are refused before the volume is read and
segmented (they got their 400 after a whole inference, seconds later, holding the infer slot)."""

import nibabel as nib
import pytest

from support import APP, ROOT

IMAGE = ROOT / "sample-data" / "generated" / "lits" / "volume-0.nii.gz"


@pytest.fixture(scope="module")
def cascade():
    from lib.evaluation.predict import make_task

    return make_task("liver_cascade", str(APP / "model"))


def test_bad_clicks_and_result_extension_are_refused_before_inference(cascade, monkeypatch):
    from lib.infers.liver import InvalidRequestError

    def segmented(*args, **kwargs):
        raise AssertionError("the volume was segmented")

    monkeypatch.setattr(cascade, "run_inferer", segmented)
    nx, ny, nz = nib.load(str(IMAGE)).shape[:3]
    for params, words in [({"result_extension": ".exe"}, "result_extension"),
                          ({"foreground": "abc"}, "foreground must be"),
                          ({"foreground": [[1, 2]]}, "foreground must be"),
                          ({"background": [[0, 0, float("nan")]]}, "finite"),
                          ({"foreground": [[nx, 0, 0]]}, "outside the image"),
                          ({"background": [[0, ny - 0.4, 0]]}, "outside the image"),  # rounds to ny
                          ({"foreground": [[0, 0, -1]]}, "outside the image")]:
        with pytest.raises(InvalidRequestError, match=words):
            cascade({"image": str(IMAGE), **params})


def test_clicks_on_the_image_pass_the_early_check():
    from lib.infers.liver import check_points_in

    nx, ny, nz = nib.load(str(IMAGE)).shape[:3]
    check_points_in({"foreground": [[nx - 1, ny - 1, nz - 1]], "background": "[[0, 0, 0]]"}, str(IMAGE))
    check_points_in({"foreground": [[nx + 5, 0, 0]]}, "/no/such/file.nii.gz")  # the image's own check answers


def test_missing_weights_say_how_to_train_that_model(tmp_path):
    """make weights builds only lite's stage one and cascade: the 503 for vgg_fcn or another preset must
    not point there."""
    from lib.evaluation.predict import make_task

    assert "make weights" in make_task("liver_cascade", str(tmp_path)).how_to_train()
    vgg = make_task("vgg_fcn", str(tmp_path)).how_to_train()
    assert "POST /train/vgg_fcn" in vgg and "make weights" not in vgg
    paper = make_task("liver_cascade", str(tmp_path), {"preset": "paper"}).how_to_train()
    assert "POST /train/liver_resnet` then `POST /train/liver_cascade" in paper and "make weights" not in paper


def test_a_result_whose_label_cannot_be_saved_leaves_no_file(tmp_path):
    """The image was deleted while it was segmented: saving its label answers 404, and the result file,
    which the endpoint removes only after an answer, stayed in the temp folder (one per such request)."""
    from fastapi import HTTPException
    from main import save_result

    class Datastore:
        def __init__(self, fail):
            self.fail, self.saved = fail, []

        def save_label(self, image_id, path, tag, info):
            if self.fail:
                raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
            self.saved.append((image_id, path, tag, info["model"]))
            return image_id

    result = tmp_path / "liver_cascade_result.nii.gz"
    result.write_bytes(b"label")
    answer = {"label": None, "file": str(result), "params": {"model": "liver_cascade"}}
    with pytest.raises(HTTPException) as e:
        save_result(Datastore(fail=True), {"image": "gone", "model": "liver_cascade"}, answer)
    assert e.value.status_code == 404 and not result.exists()
    result.write_bytes(b"label")
    ds = Datastore(fail=False)
    saved = save_result(ds, {"image": "case0", "model": "liver_cascade"}, answer)
    assert saved["label"] == "case0" and saved["file"] == str(result) and result.exists()
    assert ds.saved == [("case0", str(result), "original", "liver_cascade")]
