"""scripts/boundary_offset.py finds a prediction drawn systematically inside the reference."""

import sys

import nibabel as nib
import numpy as np

from support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))


def disks(radius, shape=(80, 80, 6), spacing=0.8):
    x, y = np.mgrid[: shape[0], : shape[1]]
    disk = (x - 40) ** 2 + (y - 40) ** 2 <= radius**2
    lab = np.repeat(disk[..., None], shape[2], axis=2).astype(np.uint8)
    return nib.Nifti1Image(lab, np.diag([spacing, spacing, 5.0, 1.0]))


def test_a_liver_three_pixels_too_small(tmp_path):
    from boundary_offset import main

    nib.save(disks(20), str(tmp_path / "ref.nii.gz"))
    nib.save(disks(17), str(tmp_path / "pred.nii.gz"))
    res = main(["--pred", str(tmp_path / "pred.nii.gz"), "--ref", str(tmp_path / "ref.nii.gz"), "--min-pixels", "100"])
    assert -3.6 < res["median_offset_mm"] < -2.0  # 3 pixels of 0.8 mm inside (boundary pixels sit half a pixel in)
    assert res["fraction_inside"] == 1.0
    grown = res["liver_dice_grown_by_k_pixels"]
    assert grown["+3"] > grown["+0"] > grown["-3"]  # growing the prediction is what fixes it
    assert grown["+3"] > 97
