import numpy as np
import pytest

from lib.evaluation.lesion_report import lesion_report


def ellipsoid(shape, centre, radii_mm, spacing):
    idx = np.indices(shape).astype(float)
    d = sum(((idx[i] - centre[i]) * spacing[i] / radii_mm[i]) ** 2 for i in range(3))
    return d <= 1


def make(spacing=(0.8, 0.8, 2.5), shape=(80, 80, 30)):
    lab = np.zeros(shape, np.uint8)
    lab[5:75, 5:75, 2:28] = 1
    return lab, np.diag(list(spacing) + [1.0])


def test_sphere_volume_and_diameter():
    spacing = (0.8, 0.8, 2.5)
    lab, aff = make(spacing)
    s = ellipsoid(lab.shape, (40, 40, 15), (12, 12, 12), spacing)
    lab[s] = 2
    rep = lesion_report(lab, aff)
    les = rep["lesions"][0]
    assert les["volume_ml"] == pytest.approx(4 / 3 * np.pi * 12 ** 3 / 1000, rel=0.05)
    assert les["longest_axial_diameter_mm"] == pytest.approx(24, abs=2.0)
    assert les["perpendicular_diameter_mm"] == pytest.approx(24, abs=2.0)
    assert rep["tumour_burden_percent"] == pytest.approx(100 * rep["lesion_volume_ml"] / rep["liver_volume_ml"], rel=1e-3)


def test_ellipsoid_axes_and_order_and_min_volume():
    spacing = (0.8, 0.8, 2.5)
    lab, aff = make(spacing)
    lab[ellipsoid(lab.shape, (40, 30, 15), (20, 8, 10), spacing)] = 2  # 40 x 16 mm axially
    lab[ellipsoid(lab.shape, (40, 65, 15), (3, 3, 3), spacing)] = 2  # small
    rep = lesion_report(lab, aff)
    assert rep["n_lesions"] == 2
    big, small = rep["lesions"]
    assert big["id"] == 1 and big["volume_ml"] > small["volume_ml"]
    assert big["longest_axial_diameter_mm"] == pytest.approx(40, abs=2.0)
    assert big["perpendicular_diameter_mm"] == pytest.approx(16, abs=2.0)
    assert lesion_report(lab, aff, min_volume_ml=0.5)["n_lesions"] == 1


def test_lesion_cut_by_volume_edge():
    spacing = (1.0, 1.0, 2.0)
    lab, aff = make(spacing, shape=(60, 60, 20))
    lab[ellipsoid(lab.shape, (40, 40, 0), (6, 6, 6), spacing)] = 2  # centred on the first slice
    les = lesion_report(lab, aff)["lesions"][0]
    # what lies inside the volume: the first slice spans z in [-1, 1] mm, so the sphere above z = -1 mm
    inside = np.pi * ((36 * 6 - 6 ** 3 / 3) - (36 * -1 - (-1) ** 3 / 3)) / 1000
    assert les["volume_ml"] == pytest.approx(inside, rel=0.05)
    assert les["longest_axial_diameter_mm"] == pytest.approx(12, abs=1.5)


def test_permuted_flipped_affine_same_physics():
    spacing = (0.8, 0.8, 2.5)
    lab, aff = make(spacing)
    lab[ellipsoid(lab.shape, (30, 50, 12), (10, 6, 7), spacing)] = 2
    hu = np.where(lab == 2, 30, 60).astype(np.int16)
    a = lesion_report(lab, aff, image_hu=hu)
    # store as (z, y, x) with x flipped; the world geometry is unchanged
    perm = np.flip(np.transpose(lab, (2, 1, 0)), axis=2)
    nx = lab.shape[0]
    aff2 = np.zeros((4, 4))
    aff2[3, 3] = 1
    aff2[2, 0] = spacing[2]  # voxel axis 0 = world z
    aff2[1, 1] = spacing[1]
    aff2[0, 2] = -spacing[0]  # voxel axis 2 = world x, flipped
    aff2[0, 3] = (nx - 1) * spacing[0]
    b = lesion_report(perm, aff2, image_hu=np.flip(np.transpose(hu, (2, 1, 0)), axis=2))
    la, lb = a["lesions"][0], b["lesions"][0]
    assert lb["volume_ml"] == pytest.approx(la["volume_ml"])
    assert lb["longest_axial_diameter_mm"] == pytest.approx(la["longest_axial_diameter_mm"])
    assert np.allclose(lb["centroid_mm"], la["centroid_mm"], atol=0.05)
    assert np.allclose(la["centroid_mm"], [30 * 0.8, 50 * 0.8, 12 * 2.5], atol=0.5)
    assert lb["mean_hu"] == la["mean_hu"] == 30
