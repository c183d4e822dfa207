"""The evaluation CLI end to end on tiny NIfTI folders (LiTS and datastore layouts)."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "apps" / "liver_cascade"
sys.path.insert(0, str(APP))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lib.evaluation import evaluate  # noqa: E402
from lib.settings import LABELS  # noqa: E402

LIVER, LESION = LABELS["liver"], LABELS["lesion"]
SPACING = (0.8, 0.8, 2.5)
AFFINE = np.diag(list(SPACING) + [1.0])


def label_volume(lesion=True):
    lab = np.zeros((24, 20, 8), np.uint8)
    lab[4:20, 4:16, 1:7] = LIVER  # 16 * 12 * 6 = 1152 voxels
    if lesion:
        lab[8:12, 8:12, 2:5] = LESION  # 48 voxels
    return lab


def save(arr, path, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def lits(tmp_path):
    """References in "Training Batch 1", CT next to them; predictions named as the ablation writes them."""
    ref = tmp_path / "lits"
    preds = tmp_path / "pred"
    for n in (0, 1, 2):
        save(label_volume(), ref / "Training Batch 1" / f"segmentation-{n}.nii.gz")
        save(np.where(label_volume() == LESION, 40, 100).astype(np.int16), ref / "Training Batch 1" / f"volume-{n}.nii")
    save(label_volume(), preds / "volume-0.nii.gz")  # perfect
    save(label_volume(lesion=False), preds / "test-segmentation-1.nii.gz")  # lesion missed
    save(label_volume(), preds / "volume-7.nii.gz")  # no reference
    return ref, preds


def test_lits_layout_end_to_end(lits, tmp_path):
    ref, preds = lits
    out = tmp_path / "eval"
    argv = ["--pred", str(preds), "--ref", str(ref), "--out", str(out), "--report", "--images", str(ref),
            "--title", "tiny"]
    assert evaluate.main(argv) == 0
    rows = read_csv(out / "per_case.csv")
    assert [r["case"] for r in rows] == ["segmentation-0", "segmentation-1"]
    assert [r["prediction"] for r in rows] == ["volume-0.nii.gz", "test-segmentation-1.nii.gz"]
    assert float(rows[0]["liver_dice"]) == 1.0 and float(rows[1]["lesion_dice"]) == 0.0
    assert rows[1]["lesion_assd_mm"] == "inf"
    assert float(rows[0]["liver_ref_ml"]) == pytest.approx(1152 * 0.8 * 0.8 * 2.5 / 1000)  # spacing from the header

    text = (out / "summary.json").read_text()
    s = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert s["layout"] == "lits" and s["n_cases"] == 2
    assert s["missing_predictions"] == ["segmentation-2.nii.gz"]
    assert s["unmatched_predictions"] == ["volume-7.nii.gz"]
    assert s["lesion_dice_per_case"] == pytest.approx(0.5)
    assert s["lesion_dice_global"] == pytest.approx(2 * 48 / (48 + 48 + 48))
    assert s["lesion_recall_iou0.5"] == 0.5 and s["lesion_precision_iou0.5"] == 1.0
    assert s["lesion_n_excluded_assd_msd"] == 1 and s["cases"][1]["lesion_assd_mm"] is None
    assert s["tumour_burden_error_max"] == pytest.approx(48 / 1152)

    md = (out / "summary.md").read_text()
    assert md.startswith("### tiny") and "| Dice per case % | 100.00 | 50.00 |" in md
    assert "| segmentation-1 |" in md and "segmentation-2.nii.gz" in md

    report = read_csv(out / "lesion_report.csv")  # every predicted volume, also volume-7
    assert {r["case"] for r in report} == {"segmentation-0", "segmentation-1", "volume-7"}
    first = next(r for r in report if r["case"] == "segmentation-0")
    assert float(first["volume_ml"]) == pytest.approx(48 * 1.6 / 1000)
    assert float(first["mean_hu"]) == 40.0  # from volume-0 in --images
    assert next(r for r in report if r["case"] == "segmentation-1")["lesion_id"] == ""
    assert (out / "lesion_report.md").read_text().count("### Lesion report:") == 3


def test_datastore_layout_and_function_api(tmp_path):
    store = tmp_path / "datastore"
    preds = tmp_path / "pred"
    for name in ("liver_a", "liver_b"):
        save(np.full(label_volume().shape, 50, np.int16), store / f"{name}.nii.gz")  # images
        save(label_volume(), store / "labels" / "final" / f"{name}.nii.gz")
    shifted = np.roll(label_volume(), 1, axis=0)  # liver and lesion one voxel (0.8 mm) off
    save(shifted.astype(np.float32), preds / "liver_a.nii.gz")  # float labels are rounded
    save(label_volume(), preds / "liver_b.nii.gz")
    summary = evaluate.evaluate_folders(preds, store, tmp_path / "out", report=True, images=store)
    assert summary["layout"] == "datastore" and summary["n_cases"] == 2
    a = summary["cases"][0]
    assert a["case"] == "liver_a" and a["liver_msd_mm"] == pytest.approx(0.8)
    assert a["lesion_dice"] == pytest.approx(2 * 36 / 96)
    assert summary["missing_predictions"] == [] and summary["warnings"] == []
    assert Path(summary["outputs"]["lesion_report_md"]).exists()
    report = read_csv(tmp_path / "out" / "lesion_report.csv")
    assert [float(r["mean_hu"]) for r in report] == [50.0, 50.0]
    # explicit layout: without labels/final, references are the files of REF_DIR itself
    flat = evaluate.evaluate_folders(preds, store / "labels" / "final", tmp_path / "out2", layout="datastore")
    assert flat["n_cases"] == 2 and flat["liver_dice_per_case"] == summary["liver_dice_per_case"]
    # one folder of images and labels (X and X_label, as ../shared/real-ct): every file was a reference, and
    # a prediction named after its image failed as "an image, not a label?"
    pairs = tmp_path / "pairs"
    for name in ("liver_a", "liver_b"):
        save(np.full(label_volume().shape, 70, np.int16), pairs / f"{name}.nii.gz")
        save(label_volume(), pairs / f"{name}_label.nii.gz")
    paired = evaluate.evaluate_folders(preds, pairs, tmp_path / "out3", report=True, images=pairs)
    assert paired["n_cases"] == 2 and paired["liver_dice_per_case"] == summary["liver_dice_per_case"]
    assert [float(r["mean_hu"]) for r in read_csv(tmp_path / "out3" / "lesion_report.csv")] == [70.0, 70.0]


def test_errors(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    save(label_volume(), ref / "segmentation-3.nii.gz")
    save(label_volume(), ref / "segmentation-4.nii.gz")
    save(label_volume()[:, :, :6], pred / "segmentation-3.nii.gz")
    with pytest.raises(ValueError, match=r"segmentation-3.*shape \(24, 20, 6\).*\(24, 20, 8\)"):
        evaluate.evaluate_folders(pred, ref, tmp_path / "out")
    assert evaluate.main(["--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "o")]) == 2
    save(label_volume(), pred / "segmentation-3.nii.gz")
    with pytest.raises(ValueError, match="without a prediction"):
        evaluate.evaluate_folders(pred, ref, tmp_path / "out", require_all=True)
    save(label_volume(), tmp_path / "other" / "liver_x.nii.gz")
    with pytest.raises(ValueError, match="no prediction"):
        evaluate.evaluate_folders(pred, tmp_path / "other", tmp_path / "out")
    save(label_volume(), pred / "segmentation-3.nii.gz", affine=np.diag([-0.8, 0.8, 2.5, 1.0]))
    s = evaluate.evaluate_folders(pred, ref, tmp_path / "out")
    assert any("affine" in w for w in s["warnings"])


def test_a_corrupt_file_a_foreign_name_and_a_negative_minimum_are_reported(tmp_path, capsys):
    """A corrupt reference gave nibabel's traceback; a LiTS prediction under another name (seg-1) was
    skipped without a word; --min-lesion-ml -5 was taken."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    save(label_volume(), ref / "segmentation-1.nii.gz")
    save(label_volume(), ref / "segmentation-2.nii.gz")
    save(label_volume(), pred / "segmentation-1.nii.gz")
    save(label_volume(), pred / "seg-2.nii.gz")
    s = evaluate.evaluate_folders(pred, ref, tmp_path / "out")
    assert any("seg-2.nii.gz: not a LiTS prediction name" in w for w in s["warnings"]), s["warnings"]
    (ref / "segmentation-1.nii.gz").write_bytes(b"not a gzip file")
    assert evaluate.main(["--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "segmentation-1.nii.gz: cannot be read as NIfTI" in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):
        evaluate.main(["--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "o"), "--min-lesion-ml", "-5"])
    assert "must be a number >= 0" in capsys.readouterr().err


def test_runs_as_script_and_as_module(lits, tmp_path):
    ref, preds = lits
    script = [sys.executable, str(APP / "lib" / "evaluation" / "evaluate.py")]
    module = [sys.executable, "-m", "lib.evaluation.evaluate"]
    for cmd, cwd, out in ((script, ROOT, tmp_path / "a"), (module, APP, tmp_path / "b")):
        res = subprocess.run(cmd + ["--pred", str(preds), "--ref", str(ref), "--out", str(out), "--layout", "lits",
                                    "--no-distances"], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "### LiTS evaluation" in res.stdout
        s = json.loads((out / "summary.json").read_text())
        assert s["n_cases"] == 2 and s["liver_assd_mm_per_case"] is None  # distances skipped
        assert not math.isnan(s["liver_dice_global"])


def test_labels_other_than_lits_values_are_errors_and_other_voxel_orders_are_reoriented(tmp_path):
    """A label of 3s, 0.6/1.6 floats or a CT image once scored quietly (rounded, clipped, or counted as
    background); a prediction in LPS order against RAS references scored 80 % liver Dice for a
    perfect answer."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    save(label_volume(), ref / "segmentation-3.nii.gz")
    for name, bad in (("3s", label_volume() * 3), ("floats", label_volume().astype(np.float32) - 0.4),
                      ("CT", (label_volume().astype(np.int16) * 60 - 100))):
        save(bad, pred / "segmentation-3.nii.gz")
        with pytest.raises(ValueError, match="0, 1 and 2 only"):
            evaluate.evaluate_folders(pred, ref, tmp_path / "out")
    flipped = np.ascontiguousarray(label_volume()[::-1])  # the same voxels, x stored the other way
    lps = AFFINE.copy()
    lps[0, 0], lps[0, 3] = -AFFINE[0, 0], AFFINE[0, 3] + AFFINE[0, 0] * (flipped.shape[0] - 1)
    save(flipped, pred / "segmentation-3.nii.gz", affine=lps)
    s = evaluate.evaluate_folders(pred, ref, tmp_path / "out")
    assert s["liver_dice_per_case"] == 1.0 and s["lesion_dice_per_case"] == 1.0
    assert any("reoriented" in w for w in s["warnings"])
