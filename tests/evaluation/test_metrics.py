"""LiTS metrics against hand-computed cases (and a brute-force cross-check)."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "apps" / "liver_cascade"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage  # noqa: E402
from scipy.spatial.distance import cdist  # noqa: E402

from lib.evaluation.metrics import (  # noqa: E402
    GlobalDice,
    detection,
    dice,
    evaluate_case,
    jaccard,
    lesion_mask,
    liver_mask,
    rvd,
    summarize,
    surface_distances,
    surface_voxels,
    tumour_burden,
    voe,
)
from lib.settings import LABELS  # noqa: E402

LIVER, LESION = LABELS["liver"], LABELS["lesion"]


def box(shape, sl):
    m = np.zeros(shape, bool)
    m[sl] = True
    return m


# ------------------------------------------------------------------ overlap


def test_dice_jaccard_voe_rvd_two_boxes():
    p = box((10, 1, 1), np.s_[0:6])  # 6 voxels
    r = box((10, 1, 1), np.s_[3:10])  # 7 voxels; overlap 3, union 10
    assert dice(p, r) == pytest.approx(2 * 3 / 13)
    assert jaccard(p, r) == pytest.approx(3 / 10)
    assert voe(p, r) == pytest.approx(7 / 10)
    assert rvd(p, r) == pytest.approx((6 - 7) / 7)
    assert rvd(r, p) == pytest.approx((7 - 6) / 6)


def test_empty_conventions():
    e = np.zeros((4, 4, 4), bool)
    m = box((4, 4, 4), np.s_[1:3, 1:3, 1:3])
    assert dice(e, e) == 1.0 and jaccard(e, e) == 1.0 and voe(e, e) == 0.0  # both empty: perfect
    assert dice(m, e) == 0.0 and dice(e, m) == 0.0 and jaccard(m, e) == 0.0
    assert math.isnan(rvd(m, e)) and math.isnan(rvd(e, e))  # empty reference: undefined
    assert rvd(e, m) == -1.0
    assert surface_distances(e, e, (1, 1, 1)) == {"assd": 0.0, "msd": 0.0}
    assert surface_distances(m, e, (1, 1, 1)) == {"assd": math.inf, "msd": math.inf}
    assert surface_distances(e, m, (1, 1, 1)) == {"assd": math.inf, "msd": math.inf}


def test_class_masks_follow_lits():
    lab = np.array([0, LIVER, LESION, 0])
    assert liver_mask(lab).tolist() == [False, True, True, False]  # liver includes lesions
    assert lesion_mask(lab).tolist() == [False, False, True, False]


def test_global_dice_accumulator():
    acc = GlobalDice()
    p1, r1 = box((10, 1, 1), np.s_[0:6]), box((10, 1, 1), np.s_[3:10])  # inter 3, sizes 6 + 7
    p2, r2 = np.zeros((10, 1, 1), bool), box((10, 1, 1), np.s_[0:5])  # inter 0, sizes 0 + 5
    assert GlobalDice().value == 1.0
    assert acc.update(p1, r1) == pytest.approx(6 / 13)
    assert acc.update(p2, r2) == 0.0
    assert acc.value == pytest.approx(2 * 3 / (13 + 5))  # not the mean of the per-case values
    acc.add(intersection=5, pred_size=5, ref_size=5)
    assert acc.value == pytest.approx(2 * 8 / 28)


# -------------------------------------------------------------- surface distances


def test_surface_voxels_connectivity_one():
    cube = box((5, 5, 5), np.s_[1:4, 1:4, 1:4])
    s = surface_voxels(cube)
    assert s.sum() == 26 and not s[2, 2, 2]  # 3x3x3 cube: all but the centre
    full = np.ones((3, 3, 3), bool)
    assert surface_voxels(full).sum() == 26  # the array border counts as background


def test_lines_along_z_hand_computed():
    # Lines are all surface. Spacing z = 5 mm; A at z 0..3, B at z 2..5.
    # A -> B: 10, 5, 0, 0 mm; B -> A: 0, 0, 5, 10 mm.  ASSD = 30 / 8, MSD = 10.
    spacing = (0.7, 0.7, 5.0)
    a = box((3, 3, 8), np.s_[1, 1, 0:4])
    b = box((3, 3, 8), np.s_[1, 1, 2:6])
    sd = surface_distances(a, b, spacing)
    assert sd["assd"] == pytest.approx(30 / 8)
    assert sd["msd"] == pytest.approx(10.0)


def test_slabs_offset_in_plane_hand_computed():
    # One-slice 4x4 slabs (all surface) offset by one voxel along x (0.7 mm):
    # 4 voxels of each are 0.7 mm from the other, the rest 0.  ASSD = 8 * 0.7 / 32.
    spacing = (0.7, 0.7, 5.0)
    a = box((10, 10, 5), np.s_[2:6, 2:6, 2])
    b = box((10, 10, 5), np.s_[3:7, 2:6, 2])
    sd = surface_distances(a, b, spacing)
    assert sd["assd"] == pytest.approx(8 * 0.7 / 32)
    assert sd["msd"] == pytest.approx(0.7)
    c = box((10, 10, 5), np.s_[2:6, 2:6, 4])  # the same slab 2 slices up: every distance 10 mm
    assert surface_distances(a, c, spacing) == pytest.approx({"assd": 10.0, "msd": 10.0})


def test_cubes_offset_anisotropic_spacing():
    spacing = (0.7, 0.7, 5.0)
    shape = (20, 20, 12)
    a = box(shape, np.s_[5:10, 5:10, 2:6])
    up = box(shape, np.s_[5:10, 5:10, 4:8])  # 2 slices = 10 mm along z
    side = box(shape, np.s_[7:12, 5:10, 2:6])  # 2 voxels = 1.4 mm along x
    assert surface_distances(a, up, spacing)["msd"] == pytest.approx(10.0)
    assert surface_distances(a, side, spacing)["msd"] == pytest.approx(1.4)
    assert surface_distances(a, a, spacing) == {"assd": 0.0, "msd": 0.0}
    # the same voxel offsets measure differently in mm with another spacing
    assert surface_distances(a, up, (1.0, 1.0, 1.0))["msd"] == pytest.approx(2.0)


def _brute_force(p, r, spacing):
    sp_, sr_ = np.argwhere(surface_voxels(p)) * spacing, np.argwhere(surface_voxels(r)) * spacing
    d = cdist(sp_, sr_)
    d_pr, d_rp = d.min(1), d.min(0)
    return (d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size), max(d_pr.max(), d_rp.max())


def test_surface_distances_match_brute_force():
    # ASSD/MSD from all pairwise surface-voxel distances (cdist) on the full arrays; the
    # same definition as MONAI's symmetric average surface distance / Hausdorff distance.
    rng = np.random.default_rng(3)
    spacing = (0.7, 0.9, 5.0)
    for _ in range(4):  # random blobs, some touching the array border (cropping must not matter)
        p = ndimage.binary_opening(rng.random((16, 14, 8)) > 0.5)
        r = ndimage.binary_opening(rng.random((16, 14, 8)) > 0.5)
        sd = surface_distances(p, r, spacing)
        assd, msd = _brute_force(p, r, spacing)
        assert sd["assd"] == pytest.approx(assd) and sd["msd"] == pytest.approx(msd)


# ---------------------------------------------------------------- detection


def test_detection_two_reference_three_predicted():
    shape = (30, 30, 5)
    ref = box(shape, np.s_[2:8, 2:8, 1:4]) | box(shape, np.s_[20:26, 20:26, 1:4])
    pred = box(shape, np.s_[2:8, 2:8, 1:4])  # lesion 1 exactly (IoU 1)
    pred |= box(shape, np.s_[20:22, 20:22, 1:2])  # inside lesion 2: IoU 4/108
    pred |= box(shape, np.s_[12:15, 12:15, 1:3])  # false positive
    d = detection(pred, ref)
    assert d["n_ref_lesions"] == 2 and d["n_pred_lesions"] == 3
    assert d["detected_iou0.5"] == 1 and d["tp_pred_iou0.5"] == 1
    assert d["lesion_recall_iou0.5"] == 0.5 and d["lesion_precision_iou0.5"] == pytest.approx(1 / 3)
    assert d["detected_iou0"] == 2 and d["tp_pred_iou0"] == 2
    assert d["lesion_recall_iou0"] == 1.0 and d["lesion_precision_iou0"] == pytest.approx(2 / 3)


def test_detection_merge_and_split():
    shape = (12, 14, 4)
    # One prediction bridging two reference lesions: pairwise IoU 32/72 each, merged 64/72.
    ref = box(shape, np.s_[2:6, 2:6, 1:3]) | box(shape, np.s_[2:6, 7:11, 1:3])
    pred = box(shape, np.s_[2:6, 2:11, 1:3])
    d = detection(pred, ref)
    assert (d["n_ref_lesions"], d["n_pred_lesions"]) == (2, 1)
    assert d["detected_iou0.5"] == 2 and d["tp_pred_iou0.5"] == 1
    assert d["lesion_recall_iou0.5"] == 1.0 and d["lesion_precision_iou0.5"] == 1.0
    # One reference lesion split in two predictions: pairwise IoU 24/64 each, merged 48/64.
    ref = box(shape, np.s_[2:10, 2:6, 1:3])
    pred = box(shape, np.s_[2:5, 2:6, 1:3]) | box(shape, np.s_[7:10, 2:6, 1:3])
    d = detection(pred, ref)
    assert (d["n_ref_lesions"], d["n_pred_lesions"]) == (1, 2)
    assert d["detected_iou0.5"] == 1 and d["tp_pred_iou0.5"] == 2


def test_detection_26_connectivity_and_empty():
    m = np.zeros((4, 4, 4), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # touching at a corner only: one lesion
    assert detection(m, m)["n_ref_lesions"] == 1
    e = np.zeros_like(m)
    d = detection(e, e)
    assert d["n_ref_lesions"] == d["n_pred_lesions"] == 0
    assert math.isnan(d["lesion_recall_iou0.5"]) and math.isnan(d["lesion_precision_iou0"])
    d = detection(m, e)  # only false positives
    assert d["tp_pred_iou0"] == 0 and d["lesion_precision_iou0"] == 0.0 and math.isnan(d["lesion_recall_iou0"])


# ---------------------------------------------------------------- burden, case, summary


def test_tumour_burden():
    lab = np.zeros((10, 10, 2), np.uint8)
    lab[0:5, 0:10, 0] = LIVER  # 50 liver voxels
    lab[0:2, 0:5, 0] = LESION  # 10 of them lesion
    assert tumour_burden(lab) == pytest.approx(10 / 50)
    assert tumour_burden(np.zeros_like(lab)) == 0.0


def test_evaluate_case_hand_computed():
    ref = np.zeros((10, 10, 4), np.uint8)
    ref[2:8, 2:8] = LIVER  # 144 liver voxels
    ref[4:6, 4:6, 1:3] = LESION  # 8 lesion voxels
    pred = ref.copy()
    pred[2, 2:8] = 0  # liver missing 24 voxels
    c = evaluate_case(pred, ref, (1.0, 1.0, 2.0))
    assert c["liver_dice"] == pytest.approx(2 * 120 / (120 + 144))
    assert c["liver_jaccard"] == pytest.approx(120 / 144) and c["liver_voe"] == pytest.approx(24 / 144)
    assert c["liver_rvd"] == pytest.approx(-24 / 144)
    assert c["liver_msd_mm"] == pytest.approx(1.0)  # the removed row is one voxel (1 mm) thick
    assert c["liver_ref_ml"] == pytest.approx(144 * 2.0 / 1000)
    assert c["lesion_dice"] == 1.0 and c["lesion_assd_mm"] == 0.0
    assert c["n_ref_lesions"] == c["detected_iou0.5"] == 1
    assert c["tumour_burden_error"] == pytest.approx(abs(8 / 120 - 8 / 144))
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(pred[:5], ref, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(pred, ref, (1, 1))
    fast = evaluate_case(pred, ref, (1.0, 1.0, 2.0), distances=False)
    assert math.isnan(fast["liver_assd_mm"]) and fast["liver_dice"] == c["liver_dice"]


def test_summarize_per_case_global_and_pooled_detection():
    ref = np.zeros((10, 10, 4), np.uint8)
    ref[2:8, 2:8] = LIVER
    ref[4:6, 4:6, 1:3] = LESION
    perfect = evaluate_case(ref, ref, (1, 1, 1))
    missed = ref.copy()
    missed[missed == LESION] = LIVER  # lesion missed: lesion Dice 0, distances inf
    miss = evaluate_case(missed, ref, (1, 1, 1))
    no_lesion = ref.copy()
    no_lesion[no_lesion == LESION] = LIVER
    clean = evaluate_case(no_lesion, no_lesion, (1, 1, 1))  # no lesion anywhere: lesion Dice 1
    s = summarize([perfect, miss, clean])
    assert s["n_cases"] == 3
    assert s["lesion_dice_per_case"] == pytest.approx((1 + 0 + 1) / 3)
    assert s["lesion_dice_global"] == pytest.approx(2 * 8 / (8 + 0 + 8 + 8))
    assert s["liver_dice_per_case"] == 1.0 and s["liver_dice_global"] == 1.0
    assert s["lesion_assd_mm_per_case"] == 0.0 and s["lesion_n_excluded_assd_msd"] == 1  # the inf case
    assert s["lesion_n_excluded_rvd"] == 1  # the lesion-free case
    assert (s["n_ref_lesions"], s["n_pred_lesions"]) == (2, 1)
    assert s["lesion_recall_iou0.5"] == 0.5 and s["lesion_precision_iou0.5"] == 1.0
    tb = miss["tumour_burden_error"]
    assert s["tumour_burden_error_max"] == pytest.approx(tb)
    assert s["tumour_burden_error_rmse"] == pytest.approx(math.sqrt(tb**2 / 3))
    empty = summarize([])
    assert empty["n_cases"] == 0 and math.isnan(empty["liver_dice_per_case"])
