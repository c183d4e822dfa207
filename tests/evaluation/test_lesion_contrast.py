"""scripts/lesion_contrast.py tells a lesion drawn over plain liver from a hypodense one."""

import json
import sys

import nibabel as nib
import numpy as np

from support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))


def test_a_false_lesion_over_plain_liver_has_no_contrast(tmp_path):
    from lesion_contrast import main

    rng = np.random.default_rng(0)
    shape, affine = (60, 60, 8), np.diag([1.0, 1.0, 3.0, 1.0])
    hu = 60 + rng.normal(0, 5, shape)
    pred = np.zeros(shape, np.uint8)
    pred[5:55, 5:55, 1:7] = 1
    hu[12:20, 12:20, 2:6] = 20  # a hypodense true lesion, 40 HU under the liver
    pred[12:20, 12:20, 2:6] = 2
    pred[38:46, 38:46, 2:6] = 2  # drawn over plain liver
    ref = np.where(pred > 0, 1, 0).astype(np.uint8)
    ref[12:20, 12:20, 2:6] = 2
    for name, arr in (("pred", pred), ("ct", hu.astype(np.int16)), ("ref", ref)):
        nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / f"{name}.nii.gz"))
    assert main(["--pred", str(tmp_path / "pred.nii.gz"), "--image", str(tmp_path / "ct.nii.gz"),
                 "--ref", str(tmp_path / "ref.nii.gz"), "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    true, false = sorted(result["lesions"], key=lambda r: not r["true"])
    assert true["true"] and -45 < true["contrast_hu"] < -30
    assert not false["true"] and abs(false["contrast_hu"]) < 3
    assert result["filter"][1] == {"min_contrast_hu": 5, "true_kept": 1, "false_kept": 0}


def test_a_false_lesion_on_the_liver_edge_has_an_edge_share(tmp_path):
    """A lesion inside the liver has no background beside it; one drawn half outside the liver's edge (fat
    taken for lesion) has about half; the edge filter keeps the first and drops the second."""
    from lesion_contrast import main

    shape, affine = (60, 60, 6), np.diag([1.0, 1.0, 3.0, 1.0])
    hu = np.full(shape, 60, np.int16)
    pred = np.zeros(shape, np.uint8)
    pred[10:50, 10:50, 1:5] = 1
    pred[20:28, 20:28, 1:5] = 2  # inside
    pred[44:50, 30:38, 1:5] = 2  # its outer side is the liver's edge (x = 49), beyond it background
    hu[pred == 2] = 20
    ref = np.where(pred > 0, 1, 0).astype(np.uint8)
    ref[20:28, 20:28, 1:5] = 2
    for name, arr in (("pred", pred), ("ct", hu), ("ref", ref)):
        nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / f"{name}.nii.gz"))
    assert main(["--pred", str(tmp_path / "pred.nii.gz"), "--image", str(tmp_path / "ct.nii.gz"),
                 "--ref", str(tmp_path / "ref.nii.gz"), "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    true, false = sorted(result["lesions"], key=lambda r: not r["true"])
    assert true["edge_share"] == 0.0
    assert false["edge_share"] == round(10 / 32, 3)  # 10 of its 32 in-plane neighbours lie beyond the edge
    assert result["edge_filter"][2] == {"max_edge_share": 0.3, "true_kept": 1, "false_kept": 0}
    assert result["edge_filter"][3] == {"max_edge_share": 0.5, "true_kept": 1, "false_kept": 1}

    # the same volumes stored with the axial axis second (as some phantoms are): the same shares
    for name, arr in (("pred", pred), ("ct", hu), ("ref", ref)):
        nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.transpose(0, 2, 1)), affine[:, [0, 2, 1, 3]]),
                 str(tmp_path / f"{name}_t.nii.gz"))
    assert main(["--pred", str(tmp_path / "pred_t.nii.gz"), "--image", str(tmp_path / "ct_t.nii.gz"),
                 "--ref", str(tmp_path / "ref_t.nii.gz"), "--out", str(tmp_path / "t.json")]) == 0
    shares = sorted(r["edge_share"] for r in json.loads((tmp_path / "t.json").read_text())["lesions"])
    assert shares == [0.0, round(10 / 32, 3)]
