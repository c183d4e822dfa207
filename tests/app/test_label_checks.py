"""Labels saved to the datastore: what the save check lets through is what training, scoring and a
rebuilt index can use (findings of a black-box round; no server needed)."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from fastapi import HTTPException
from support import file_datastore, small_phantom_studies

from lib.validation import InputError, check_label_array, check_label_matches

SUB_MM = np.diag([0.75, 0.75, 5.0, 1.0])  # the real CT's voxels


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def test_a_label_one_sub_mm_voxel_off_its_image_is_refused(tmp_path):
    label = np.zeros((32, 32, 4), np.uint8)
    label[8:20, 8:20, 1:3] = 1
    image = _save(tmp_path / "ct.nii.gz", np.zeros((32, 32, 4), np.int16), SUB_MM)
    off = SUB_MM.copy()
    off[0, 3] += 0.75  # one voxel: 0.75 mm, within the fixed 1 mm tolerance that let it pass
    with pytest.raises(InputError, match="origin"):
        check_label_matches(_save(tmp_path / "off.nii.gz", label, off), image)
    rounding = SUB_MM.copy()
    rounding[:3, 3] += 0.01  # a writer's rounding still passes
    check_label_matches(_save(tmp_path / "ok.nii.gz", label, rounding), image)


def test_values_that_are_almost_label_values_are_shown_as_they_are():
    almost = np.zeros((4, 4, 4), np.float32)
    almost[1, 1, 1] = np.float32(0.99999994)
    with pytest.raises(InputError) as e:
        check_label_array(almost)
    assert "0.99999994" in str(e.value)  # it read "values other than [0, 1, 2] (1)"


@pytest.fixture()
def studies(tmp_path):
    return small_phantom_studies(tmp_path, seed=40)


def _datastore(path):
    return file_datastore(path, ("*.nii.gz", "*.nii", "*.nrrd"))


def test_a_label_extension_in_capitals_is_stored_as_the_datastore_lists_it(studies, tmp_path_factory):
    upload = tmp_path_factory.mktemp("upload") / "label0.NII.GZ"
    shutil.copy(studies / "label0.nii.gz", upload)
    ds = _datastore(studies)
    ds.save_label("case0", str(upload), "final", {})
    assert [p.name for p in (studies / "labels" / "final").iterdir() if not p.name.startswith(".")] == ["case0.nii.gz"]
    # still labelled when the index is rebuilt from the folders (it was stored as case0.NII.GZ and lost)
    (studies / "datastore_v2.json").write_text("{not json")
    assert _datastore(studies).get_labeled_images() == ["case0"]


def test_a_label_format_the_datastore_does_not_list_is_refused(studies, tmp_path_factory):
    import SimpleITK as sitk

    upload = tmp_path_factory.mktemp("upload") / "label0.mha"
    sitk.WriteImage(sitk.ReadImage(str(studies / "label0.nii.gz")), str(upload))
    ds = _datastore(studies)
    with pytest.raises(HTTPException) as e:
        ds.save_label("case0", str(upload), "final", {})
    assert e.value.status_code == 400 and ".mha" in e.value.detail and "not saved" in e.value.detail
    assert ds.get_labeled_images() == [] and not (studies / "labels" / "final" / "case0.mha").exists()


def test_correction_scoring_reads_a_label_with_a_trailing_axis_of_one(studies):
    """An (X, Y, Z, 1) final label passes the save check and trains; scoring skipped it."""
    from lib.scoring.correction import INFO_KEY, CorrectionDice

    ds = _datastore(studies)
    img = nib.load(str(studies / "label0.nii.gz"))
    label = np.asarray(img.dataobj).astype(np.uint8)
    four_d = _save(studies / "final4d.nii.gz", label[..., None], img.affine)
    ds.save_label("case0", str(studies / "label0.nii.gz"), "original", {})
    ds.save_label("case0", four_d, "final", {})
    result = CorrectionDice()({}, ds)
    assert result["case0"]["liver"] == 1.0  # the same label: nothing corrected
    index = json.loads((studies / "datastore_v2.json").read_text())
    assert index["objects"]["case0"]["image"]["info"][INFO_KEY]["liver"] == 1.0


def test_the_info_of_a_label_that_is_not_there_is_a_404(tmp_path):
    """GET /datastore/label/info answered 200 {} for a missing label (a PUT of its info answered 404)."""
    small_phantom_studies(tmp_path, seed=11, n=1)
    ds = file_datastore(tmp_path)
    with pytest.raises(HTTPException) as e:
        ds.get_label_info("case0", "final")
    assert e.value.status_code == 404
    ds.save_label("case0", str(tmp_path / "label0.nii.gz"), "final", {"who": "test"})
    assert ds.get_label_info("case0", "final")["who"] == "test"
