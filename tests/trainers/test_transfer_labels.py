"""scripts/transfer_labels.py: a label carried to the same patient's other contrast phase.

The phantom gives a ground truth: one seed in the early and the late phase is the
same anatomy, so after moving the late series on the table (a shift and a small
rotation in its affine, as between two acquisitions) the transferred early label
must land on the late series' own label.
"""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from support import ROOT

from lib.evaluation.metrics import dice, lesion_mask, liver_mask

sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "sample-data"))

import phantom  # noqa: E402
import transfer_labels  # noqa: E402

GEO = dict(shape_xy=(160, 160), spacing=(2.4, 2.4, 5.0), n_slices=40, orientation="RAS", n_lesions=3)


def _rotation_z(deg):
    a = np.radians(deg)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return r


@pytest.mark.parametrize("shift_mm,rot_deg", [((6.0, -4.0, 9.0), 2.0), ((0.0, 0.0, 0.0), 0.0)])
def test_transfer_recovers_a_table_move(tmp_path, shift_mm, rot_deg):
    early = phantom.generate_phantom(7, **GEO, phase="early")
    late = phantom.generate_phantom(7, **GEO, phase="late")
    assert np.array_equal(early.label, late.label)  # the same patient
    early.save_nifti(str(tmp_path / "early.nii.gz"), str(tmp_path / "early_label.nii.gz"))
    moved = _rotation_z(rot_deg) @ late.affine
    moved[:3, 3] += shift_mm
    nib.save(nib.Nifti1Image(late.image, moved), str(tmp_path / "late.nii.gz"))

    out = tmp_path / "late_label.nii.gz"
    report = transfer_labels.transfer(tmp_path / "early.nii.gz", tmp_path / "early_label.nii.gz",
                                      tmp_path / "late.nii.gz", out)
    got = np.asarray(nib.load(str(out)).dataobj)
    assert got.shape == late.label.shape
    assert set(np.unique(got)) <= {0, 1, 2}
    liver = dice(liver_mask(got), liver_mask(late.label))
    assert liver > 0.97, report
    assert dice(lesion_mask(got), lesion_mask(late.label)) > 0.8, report
    # the rotation found undoes the table's (the transform maps the late series into the early one)
    assert report["rotation_deg"][2] == pytest.approx(-rot_deg, abs=0.5)
    if any(shift_mm):  # without registration the label would be off by the table move
        assert report["dice_vs_unregistered"] < 0.9
