import math

import numpy as np
import pytest

from lib.evaluation.metrics import detection, dice, evaluate_case, jaccard, rvd, summarize, surface_distances


def box(shape, sl):
    m = np.zeros(shape, bool)
    m[sl] = True
    return m


def test_dice_jaccard_rvd_hand_computed():
    p = box((10, 1, 1), np.s_[0:6])  # 6 voxels
    r = box((10, 1, 1), np.s_[3:10])  # 7 voxels, overlap 3
    assert dice(p, r) == pytest.approx(6 / 13)
    assert jaccard(p, r) == pytest.approx(3 / 10)
    assert rvd(p, r) == pytest.approx(-1 / 7)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0  # both empty: 1 (LiTS lesion convention)
    assert math.isnan(rvd(p, np.zeros_like(r)))


def test_surface_distances_in_mm_anisotropic():
    spacing = (0.7, 0.7, 5.0)
    a = box((20, 20, 12), np.s_[5:10, 5:10, 2:6])
    b = box((20, 20, 12), np.s_[5:10, 5:10, 4:8])  # shifted by 2 slices = 10 mm along z
    sd = surface_distances(a, b, spacing)
    assert sd["msd"] == pytest.approx(10.0)
    same = surface_distances(a, a, spacing)
    assert same == {"assd": 0.0, "msd": 0.0}
    c = box((20, 20, 12), np.s_[8:13, 5:10, 2:6])  # 3 voxels along x = 2.1 mm
    assert surface_distances(a, c, spacing)["msd"] == pytest.approx(2.1)
    assert surface_distances(a, np.zeros_like(a), spacing)["assd"] == float("inf")


def test_detection_counts():
    shape = (30, 30, 5)
    ref = box(shape, np.s_[2:8, 2:8, 1:4]) | box(shape, np.s_[20:26, 20:26, 1:4])
    pred = box(shape, np.s_[2:8, 2:8, 1:4])  # exact match of lesion 1
    pred |= box(shape, np.s_[20:22, 20:22, 1:2])  # tiny overlap with lesion 2 (IoU < 0.5)
    pred |= box(shape, np.s_[12:15, 12:15, 1:3])  # false positive
    d = detection(pred, ref)
    assert d["n_ref_lesions"] == 2 and d["n_pred_lesions"] == 3
    assert d["detected_iou0.5"] == 1 and d["detected_iou0"] == 2
    assert d["tp_pred_iou0.5"] == 1 and d["tp_pred_iou0"] == 2


def test_evaluate_case_and_summary():
    ref = np.zeros((10, 10, 4), np.uint8)
    ref[2:8, 2:8] = 1
    ref[4:6, 4:6, 1:3] = 2
    pred = ref.copy()
    pred[2, 2:8] = 0  # liver slightly under-segmented
    c = evaluate_case(pred, ref, (1.0, 1.0, 2.0))
    assert c["lesion_dice"] == 1.0 and c["liver_dice"] < 1.0
    assert c["tumour_burden_error"] == pytest.approx(abs(8 / 120 - 8 / 144))
    empty = evaluate_case(np.zeros_like(ref), np.zeros_like(ref), (1, 1, 1))
    s = summarize([c, empty])
    assert s["lesion_dice_per_case"] == 1.0
    # global Dice sums over cases
    inter = c["liver_intersection"]
    assert s["liver_dice_global"] == pytest.approx(2 * inter / (c["liver_pred_voxels"] + c["liver_ref_voxels"]))
    with pytest.raises(ValueError):
        evaluate_case(pred[:5], ref, (1, 1, 1))
