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
