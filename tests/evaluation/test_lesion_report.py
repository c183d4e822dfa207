"""Lesion report: volumes, RECIST-like diameters and centroids on masks of known size."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "apps" / "liver_cascade"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage  # noqa: E402

from lib.evaluation.lesion_report import (  # noqa: E402
    REPORT_CSV_FIELDS,
    axial_axis_from_affine,
    lesion_report,
    report_to_markdown,
    report_to_rows,
)
from lib.settings import LABELS  # noqa: E402

LIVER, LESION = LABELS["liver"], LABELS["lesion"]


def ellipsoid(shape, centre, radii_mm, spacing, angle_deg=0.0):
    """Voxels whose centres lie in an ellipsoid (semi-axes in mm), optionally rotated
    in the plane of axes 0 and 1 by ``angle_deg``."""
    idx = np.indices(shape).astype(float)
    x, y, z = ((idx[i] - centre[i]) * spacing[i] for i in range(3))
    a = math.radians(angle_deg)
    u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
    return (u / radii_mm[0]) ** 2 + (v / radii_mm[1]) ** 2 + (z / radii_mm[2]) ** 2 <= 1


def liver_volume(shape, spacing):
    lab = np.zeros(shape, np.uint8)
    lab[2:-2, 2:-2, 1:-1] = LIVER
    return lab, np.diag(list(spacing) + [1.0])


def test_sphere_volume_diameters_centroid():
    spacing = (0.8, 0.8, 2.5)
    lab, aff = liver_volume((80, 80, 30), spacing)
    lab[ellipsoid(lab.shape, (40, 40, 15), (12, 12, 12), spacing)] = LESION
    rep = lesion_report(lab, aff)
    assert rep["n_lesions"] == 1 and rep["axial_axis"] == 2
    les = rep["lesions"][0]
    assert les["id"] == 1
    assert les["volume_ml"] == pytest.approx(4 / 3 * math.pi * 12**3 / 1000, rel=0.05)
    assert les["longest_axial_diameter_mm"] == pytest.approx(24, abs=1.0)  # within about a pixel
    assert les["perpendicular_diameter_mm"] == pytest.approx(24, abs=1.0)
    assert les["axial_slice"] == 15 and les["n_slices"] == 9  # |z| <= 12 mm at 2.5 mm: 4 slices each side
    assert les["centroid_mm"] == pytest.approx([32.0, 32.0, 37.5])
    assert les["mean_hu"] is None and les["mean_confidence"] is None
    liver_ml = np.count_nonzero(lab) * 0.8 * 0.8 * 2.5 / 1000
    assert rep["liver_volume_ml"] == pytest.approx(liver_ml, abs=1e-3)  # liver includes the lesion
    assert rep["tumour_burden_percent"] == pytest.approx(100 * les["volume_ml"] / liver_ml, rel=1e-3)


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0])
def test_ellipsoid_long_and_short_axis_any_orientation(angle):
    spacing = (0.8, 0.8, 2.5)
    lab, aff = liver_volume((90, 90, 30), spacing)
    lab[ellipsoid(lab.shape, (45, 45, 15), (20, 8, 10), spacing, angle)] = LESION  # 40 x 16 mm axially
    les = lesion_report(lab, aff)["lesions"][0]
    assert les["longest_axial_diameter_mm"] == pytest.approx(40, abs=1.2)
    assert les["perpendicular_diameter_mm"] == pytest.approx(16, abs=1.2)
    assert les["volume_ml"] == pytest.approx(4 / 3 * math.pi * 20 * 8 * 10 / 1000, rel=0.05)


def test_anisotropic_in_plane_spacing():
    spacing = (0.6, 1.0, 3.0)  # an axis-aligned ellipse, 30 mm along x, 12 mm along y
    lab, aff = liver_volume((70, 30, 12), spacing)
    lab[ellipsoid(lab.shape, (35, 15, 6), (15, 6, 6), spacing)] = LESION
    les = lesion_report(lab, aff)["lesions"][0]
    assert les["longest_axial_diameter_mm"] == pytest.approx(30, abs=1.0)
    assert les["perpendicular_diameter_mm"] == pytest.approx(12, abs=1.0)


def test_single_voxel_lesion():
    spacing = (0.6, 1.0, 3.0)
    lab, aff = liver_volume((10, 10, 5), spacing)
    lab[5, 5, 2] = LESION
    les = lesion_report(lab, aff)["lesions"][0]
    assert les["volume_ml"] == pytest.approx(0.6 * 1.0 * 3.0 / 1000)
    assert (les["longest_axial_diameter_mm"], les["perpendicular_diameter_mm"]) == (1.0, 0.6)
    assert les["n_slices"] == 1 and les["n_voxels"] == 1


def test_ordering_ids_and_min_volume():
    spacing = (0.8, 0.8, 2.5)
    lab, aff = liver_volume((100, 80, 30), spacing)
    lab[ellipsoid(lab.shape, (25, 40, 15), (6, 6, 6), spacing)] = LESION  # middle (0.9 mL)
    lab[ellipsoid(lab.shape, (60, 40, 15), (12, 12, 10), spacing)] = LESION  # largest (6 mL)
    lab[ellipsoid(lab.shape, (90, 10, 15), (2, 2, 2), spacing)] = LESION  # tiny (0.03 mL)
    rep = lesion_report(lab, aff)
    vols = [les["volume_ml"] for les in rep["lesions"]]
    assert [les["id"] for les in rep["lesions"]] == [1, 2, 3]
    assert vols == sorted(vols, reverse=True)
    assert rep["lesions"][0]["centroid_mm"][0] == pytest.approx(60 * 0.8, abs=0.1)
    filtered = lesion_report(lab, aff, min_volume_ml=0.5)
    assert filtered["n_lesions"] == 2 and filtered["n_lesions_below_min_volume"] == 1
    assert [les["volume_ml"] for les in filtered["lesions"]] == vols[:2]
    assert filtered["lesion_volume_ml"] == rep["lesion_volume_ml"]  # totals keep every lesion voxel
    assert lesion_report(lab, aff, min_volume_ml=100)["n_lesions"] == 0


def test_mean_hu_and_confidence_are_each_lesions_own():
    """Components are labelled on the lesions' bounding box; what is read per lesion (HU, confidence)
    must still come from that lesion's voxels of the whole volume."""
    spacing = (0.8, 0.8, 2.5)
    lab, aff = liver_volume((100, 80, 30), spacing)
    hu = np.full(lab.shape, 60, np.int16)
    prob = np.zeros(lab.shape, np.float16)
    for (centre, value, p) in (((30, 50, 12), 20, 0.25), ((70, 20, 20), 110, 0.75)):
        m = ellipsoid(lab.shape, centre, (5, 5, 6), spacing)
        lab[m], hu[m], prob[m] = LESION, value, p
    rep = lesion_report(lab, aff, image_hu=hu, lesion_prob=prob)
    assert sorted((les["mean_hu"], les["mean_confidence"]) for les in rep["lesions"]) == [(20.0, 0.25), (110.0, 0.75)]
    by_hu = {les["mean_hu"]: les for les in rep["lesions"]}
    assert by_hu[20.0]["centroid_voxel"] == pytest.approx([30, 50, 12]) and by_hu[110.0]["axial_slice"] == 20


@pytest.mark.parametrize("layout", ["z_flipped", "axial_first"])
def test_infer_report_gives_voxel_indices_in_the_files_order(tmp_path, layout):
    """The infer task reports on the RAS-reoriented label; the indices it returns must be those of
    the label it returns, which has the file's voxel order."""
    import nibabel as nib
    from monai.transforms import EnsureChannelFirstd, LoadImaged, Orientationd

    from lib.infers.liver import LesionReportd

    lab = np.zeros((20, 20, 6), np.uint8)
    lab[2:18, 2:18] = LIVER
    lab[5:10, 5:9, 0] = LESION
    lab[4:11, 5:9, 1] = LESION  # the lesion's longest axial diameter is on file slice 1
    if layout == "z_flipped":
        arr, aff = lab, np.diag([0.8, 0.7, -2.5, 1.0])
    else:
        arr, aff = np.ascontiguousarray(lab.transpose(2, 1, 0)), np.array(
            [[0, 0, 0.8, 0], [0, 0.7, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])
    path = str(tmp_path / "label.nii.gz")
    nib.save(nib.Nifti1Image(arr, aff), path)
    d = {"pred": path}
    for t in (LoadImaged("pred", image_only=False), EnsureChannelFirstd("pred"), Orientationd("pred", axcodes="RAS")):
        d = t(d)
    got = LesionReportd(0.0)(d)["lesion_report"]
    want = lesion_report(arr, aff)  # the same label in the file's own order
    assert got["axial_axis"] == want["axial_axis"] == (2 if layout == "z_flipped" else 0)
    assert got["voxel_spacing_mm"] == want["voxel_spacing_mm"]
    (g,), (w,) = got["lesions"], want["lesions"]
    for key in ("centroid_voxel", "click_voxel", "centroid_mm", "axial_slice", "longest_axial_diameter_mm", "volume_ml"):
        assert g[key] == pytest.approx(w[key], abs=1e-6), key
    assert arr[tuple(g["click_voxel"])] == LESION
    assert w["axial_slice"] == 1


def test_click_voxel_is_inside_the_lesion_even_when_its_centroid_is_not():
    """A crescent's centroid lies in the liver it wraps around: a click there would miss the lesion.
    ``click_voxel`` is the lesion voxel deepest inside it (mm), nearest the centroid among equals."""
    spacing = (0.8, 0.8, 2.5)
    lab, aff = liver_volume((100, 80, 30), spacing)
    ball = ellipsoid(lab.shape, (30, 40, 15), (8, 8, 8), spacing)
    lab[ball] = LESION
    shell = ellipsoid(lab.shape, (70, 40, 15), (12, 12, 10), spacing) & ~ellipsoid(lab.shape, (70, 40, 15), (7, 7, 6), spacing)
    crescent = shell & (np.arange(lab.shape[0])[:, None, None] < 70)  # the left half of a hollow shell
    lab[crescent] = LESION
    rep = lesion_report(lab, aff)
    by_size = {les["n_voxels"]: les for les in rep["lesions"]}
    arc, sphere = by_size[int(crescent.sum())], by_size[int(ball.sum())]
    assert lab[tuple(np.round(arc["centroid_voxel"]).astype(int))] != LESION  # the centroid misses it
    assert lab[tuple(arc["click_voxel"])] == LESION and all(isinstance(c, int) for c in arc["click_voxel"])
    assert sphere["click_voxel"] == [30, 40, 15]  # a ball's deepest voxel is its centre
    # the deepest: no lesion voxel is farther from the border than the one reported
    depth = ndimage.distance_transform_edt(np.pad(crescent, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    assert depth[tuple(arc["click_voxel"])] == depth.max()


def test_lesion_cut_by_volume_edge():
    spacing = (1.0, 1.0, 2.0)
    lab, aff = liver_volume((60, 60, 20), spacing)
    lab[ellipsoid(lab.shape, (40, 40, 0), (6, 6, 6), spacing)] = LESION  # centred on the first slice
    les = lesion_report(lab, aff)["lesions"][0]
    # inside the volume: the first slice covers z in [-1, 1] mm, so the sphere above z = -1 mm
    inside = math.pi * ((36 * 6 - 6**3 / 3) - (36 * -1 - (-1) ** 3 / 3)) / 1000
    assert les["volume_ml"] == pytest.approx(inside, rel=0.05)
    assert les["axial_slice"] == 0 and les["n_slices"] == 4  # z = 0, 2, 4, 6 mm
    assert les["longest_axial_diameter_mm"] == pytest.approx(12, abs=1.0)


def test_permuted_flipped_affine_same_physics_and_world_centroid():
    spacing = (0.8, 0.8, 2.5)
    lab, aff = liver_volume((80, 80, 30), spacing)
    aff[:3, 3] = [-100.0, 50.0, 20.0]
    lab[ellipsoid(lab.shape, (30, 50, 12), (10, 6, 7), spacing)] = LESION
    hu = np.where(lab == LESION, 30.0, 60.0)
    prob = np.where(lab == LESION, 0.9, 0.1)
    a = lesion_report(lab, aff, image_hu=hu, lesion_prob=prob)
    la = a["lesions"][0]
    assert la["centroid_mm"] == pytest.approx([-100 + 30 * 0.8, 50 + 50 * 0.8, 20 + 12 * 2.5], abs=0.05)
    assert la["mean_hu"] == 30.0 and la["mean_confidence"] == pytest.approx(0.9)

    # Store as (z, y, x) with x reversed; the world geometry is unchanged.
    def permute(x):
        return np.flip(np.transpose(x, (2, 1, 0)), axis=2)

    nx = lab.shape[0]
    aff2 = np.zeros((4, 4))
    aff2[3, 3] = 1.0
    aff2[2, 0] = spacing[2]  # voxel axis 0 -> world z
    aff2[1, 1] = spacing[1]  # voxel axis 1 -> world y
    aff2[0, 2] = -spacing[0]  # voxel axis 2 -> world x, reversed
    aff2[:3, 3] = [-100.0 + (nx - 1) * spacing[0], 50.0, 20.0]
    assert axial_axis_from_affine(aff2) == 0
    b = lesion_report(permute(lab), aff2, image_hu=permute(hu), lesion_prob=permute(prob))
    lb = b["lesions"][0]
    assert b["axial_axis"] == 0 and b["liver_volume_ml"] == pytest.approx(a["liver_volume_ml"])
    for key in ("volume_ml", "longest_axial_diameter_mm", "perpendicular_diameter_mm", "n_slices", "mean_hu",
                "mean_confidence"):
        assert lb[key] == pytest.approx(la[key]), key
    assert lb["centroid_mm"] == pytest.approx(la["centroid_mm"], abs=0.05)
    assert lb["axial_slice"] == la["axial_slice"]


def test_rotated_oblique_affine_keeps_measurements():
    spacing = (0.8, 0.8, 2.5)
    lab, aff = liver_volume((80, 80, 30), spacing)
    lab[ellipsoid(lab.shape, (40, 40, 15), (20, 8, 10), spacing, 30.0)] = LESION
    ref = lesion_report(lab, aff)["lesions"][0]
    t = math.radians(25)  # rotate the whole grid about world z, then tilt it 10 degrees about x
    rz = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    s = math.radians(10)
    rx = np.array([[1, 0, 0], [0, math.cos(s), -math.sin(s)], [0, math.sin(s), math.cos(s)]])
    rot = np.eye(4)
    rot[:3, :3] = rx @ rz @ np.diag(spacing)
    rot[:3, 3] = [5.0, -7.0, 11.0]
    rep = lesion_report(lab, rot)
    les = rep["lesions"][0]
    assert rep["axial_axis"] == 2
    for key in ("volume_ml", "longest_axial_diameter_mm", "perpendicular_diameter_mm"):
        assert les[key] == pytest.approx(ref[key], abs=0.02), key
    expected = rot[:3, :3] @ np.array(les["centroid_voxel"]) + rot[:3, 3]
    assert les["centroid_mm"] == pytest.approx(expected, abs=0.02)


def test_empty_label_and_checks():
    lab, aff = liver_volume((10, 10, 5), (1.0, 1.0, 1.0))
    rep = lesion_report(np.zeros_like(lab), aff)
    assert rep["liver_volume_ml"] == 0 and rep["tumour_burden_percent"] == 0.0 and rep["lesions"] == []
    assert "No lesion." in report_to_markdown(rep, "empty")
    rows = report_to_rows(rep, "empty")
    assert len(rows) == 1 and rows[0]["case"] == "empty" and rows[0]["lesion_id"] is None
    with pytest.raises(ValueError, match="image_hu"):
        lesion_report(lab, aff, image_hu=np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="affine"):
        lesion_report(lab, np.eye(3))


def test_markdown_and_rows():
    spacing = (0.8, 0.8, 2.5)
    lab, aff = liver_volume((80, 80, 30), spacing)
    lab[ellipsoid(lab.shape, (25, 40, 15), (6, 6, 6), spacing)] = LESION
    lab[ellipsoid(lab.shape, (55, 40, 15), (10, 10, 10), spacing)] = LESION
    rep = lesion_report(lab, aff, image_hu=np.full(lab.shape, 45.0))
    md = report_to_markdown(rep, "case-7")
    assert md.startswith("### Lesion report: case-7")
    assert md.count("\n| 1 |") == 1 and md.count("\n| 2 |") == 1 and "45.0" in md
    rows = report_to_rows(rep, "case-7")
    assert [r["lesion_id"] for r in rows] == [1, 2]
    assert all(list(r) == REPORT_CSV_FIELDS for r in rows)
    assert rows[0]["centroid_x_mm"] == rep["lesions"][0]["centroid_mm"][0]
    assert rows[0]["liver_volume_ml"] == rep["liver_volume_ml"] and rows[1]["mean_hu"] == 45.0
