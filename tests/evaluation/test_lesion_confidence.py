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


def test_the_liver_growth_sweep_scores_each_setting_against_the_app_without_growth(tmp_path):
    """scripts/liver_growth_sweep.py: its no-growth column is the app's answer with grow_liver off, and its
    setting at the app's defaults is within a point of the app's default answer (which fills holes after)."""
    from liver_growth_sweep import main

    from lib.evaluation.metrics import dice, liver_mask
    from lib.evaluation.predict import load_label, make_task, predict_file
    from lib.settings import LIVER_GROW_MAX_MM, LIVER_GROW_SD

    lits = ROOT / "sample-data" / "generated" / "lits"
    image, ref = lits / "volume-1.nii.gz", lits / "segmentation-1.nii.gz"
    assert main(["--model-dir", str(APP / "model"), "--image", str(image), "--ref", str(ref),
                 "--sd", str(LIVER_GROW_SD), "--max-mm", "5", str(LIVER_GROW_MAX_MM), "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [s["max_mm"] for s in result["settings"]] == [5.0, LIVER_GROW_MAX_MM]
    (case,) = result["cases"]
    task = make_task("liver_cascade", str(APP / "model"))
    reference = liver_mask(load_label(str(ref)))
    for params, column in (({"grow_liver": False}, "no_growth"), ({}, f"sd {LIVER_GROW_SD:g}, {LIVER_GROW_MAX_MM:g} mm")):
        predict_file(task, str(image), str(tmp_path / "p.nii.gz"), params)
        app = 100 * dice(liver_mask(load_label(str(tmp_path / "p.nii.gz"))), reference)
        assert abs(case[column] - app) < (0.01 if column == "no_growth" else 1.0), (column, case[column], app)
    assert case[f"sd {LIVER_GROW_SD:g}, {LIVER_GROW_MAX_MM:g} mm"] > case["no_growth"]
