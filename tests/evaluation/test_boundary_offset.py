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


def test_error_bands_tell_a_far_false_band_from_the_boundary(tmp_path):
    """A liver drawn 1 pixel too small, plus a false band 10 mm out in its middle slices (a leak along the
    wall) and false liver in the slice above the reference: each counted in its own band."""
    from boundary_offset import main

    ref = np.zeros((80, 80, 8), np.uint8)
    ref[20:60, 20:60, 1:7] = 1
    pred = np.zeros_like(ref)
    pred[21:59, 21:59, 1:7] = 1  # 1 pixel (0.8 mm) inside: missed voxels within 2 mm
    pred[70:72, 20:60, 3:5] = 1  # 10 pixels = 8 mm outside: a far false band, 160 voxels
    pred[30:40, 30:40, 7] = 1  # above the reference's last slice: 100 false voxels in the end slices
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    nib.save(nib.Nifti1Image(ref, affine), str(tmp_path / "ref.nii.gz"))
    nib.save(nib.Nifti1Image(pred, affine), str(tmp_path / "pred.nii.gz"))
    res = main(["--pred", str(tmp_path / "pred.nii.gz"), "--ref", str(tmp_path / "ref.nii.gz"), "--min-pixels", "100"])
    bands = res["error_bands"]
    assert bands["false"] == {"0-2mm": 0, "2-5mm": 0, "over_5mm": 160}
    assert bands["end_slices"]["false"] == 100
    ring = 40 * 40 - 38 * 38  # per slice
    assert bands["missed"]["0-2mm"] == 2 * ring and bands["end_slices"]["missed"] == 4 * ring
    assert bands["true"] == 6 * 38 * 38
    d = bands["liver_dice_without"]
    assert d["nothing"] < d["false_over_5mm"] < d["false_over_5mm_and_end_slices"]
    assert d["false_over_5mm_and_end_slices"] == round(100 * 2 * 6 * 38 * 38 / (2 * 6 * 38 * 38 + 2 * ring), 2)
