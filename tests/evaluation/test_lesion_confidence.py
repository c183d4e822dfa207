"""scripts/lesion_confidence.py: which lesions a confidence filter keeps, and the lesion Dice after it."""

import json
import sys

import numpy as np

from support import APP, ROOT

sys.path.insert(0, str(ROOT / "scripts"))


def test_lesions_are_matched_to_the_report_and_filtered_by_confidence():
    from lesion_confidence import case_lesions, filtered

    pred = np.zeros((40, 40, 6), np.uint8)
    pred[2:38, 2:38, :] = 1
    pred[5:10, 5:10, 1:4] = 2  # true
    pred[25:30, 25:30, 1:4] = 2  # false
    ref = np.where(pred > 0, 1, 0).astype(np.uint8)
    ref[6:12, 6:12, 1:4] = 2
    report = {"lesions": [{"id": 1, "click_voxel": [27, 27, 2], "mean_confidence": 0.42, "volume_ml": 0.1},
                          {"id": 2, "click_voxel": [7, 7, 2], "mean_confidence": 0.61, "volume_ml": 0.1}]}
    lesions = case_lesions(pred, ref, report)
    assert [(c, t) for _, c, t, _ in lesions] == [(0.42, False), (0.61, True)]
    out = filtered(pred, lesions, 0.5)
    assert (out[25:30, 25:30, 1:4] == 1).all() and (out[5:10, 5:10, 1:4] == 2).all()
    assert ((out > 0) == (pred > 0)).all()  # a dropped lesion is drawn as liver, nothing else changes


def test_the_script_runs_the_app_and_tabulates_thresholds(tmp_path):
    from lesion_confidence import THRESHOLDS, main

    lits = ROOT / "sample-data" / "generated" / "lits"
    assert main(["--model-dir", str(APP / "model"), "--image", str(lits / "volume-0.nii.gz"),
                 "--ref", str(lits / "segmentation-0.nii.gz"), "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    rows = result["thresholds"]
    assert [r["threshold"] for r in rows] == list(THRESHOLDS)
    n = len(result["lesions"])
    assert n >= 2 and any(r["true"] for r in result["lesions"])  # this phantom: true lesions found, and false ones
    assert rows[0]["true_kept"] + rows[0]["false_kept"] == n  # threshold 0 keeps every reported lesion
    kept = [r["true_kept"] + r["false_kept"] for r in rows]
    assert kept == sorted(kept, reverse=True)
    assert all(0 <= r["global_dice"] <= 100 for r in rows)
