"""scripts/train_demo_weights.py: which volumes train and which validate, and the LiTS path
(`--lits` on a fetch_msd.py datastore, `--holdout all`) run end to end on small phantoms
standing in for LiTS and for the two real patients."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import fetch_msd  # noqa: E402
import train_demo_weights as tdw  # noqa: E402

LITS = ROOT / "sample-data" / "generated" / "lits"


def _phantoms(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"volume-{i}.nii.gz").touch()
        (folder / f"segmentation-{i}.nii.gz").touch()
    return folder


def _names(items):
    return [Path(i["image"]).name for i in items]


def test_other_phase_validates_instead_of_training(tmp_path):
    phantoms = _phantoms(tmp_path / "ph", 4)
    train_ds, val_ds = tdw.datalists(tmp_path / "real", phantoms, "hcc_0697", 3, 2, tmp_path / "work",
                                     transfer_dir=tmp_path / "transfer", val_other_phase=True)
    train, val = json.loads(train_ds.read_text()), json.loads(val_ds.read_text())
    other_img, other_lab = tdw.OTHER_PHASE["hcc_2022"]
    assert val == [{"image": str(tmp_path / "real" / other_img), "label": str(tmp_path / "transfer" / other_lab)}]
    # the labelled phase trains (x3) with the phantoms not kept for validation; nothing of 0697 is used
    assert _names(train) == ["volume-2.nii.gz", "volume-3.nii.gz"] + [tdw.REAL["hcc_2022"][0]] * 3
    assert not any("0697" in i["image"] for i in train + val)
    with pytest.raises(ValueError):
        tdw.datalists(tmp_path / "real", phantoms, "hcc_0697", 3, 2, tmp_path / "work", val_other_phase=True)


def test_lits_cases_validate_and_train_and_holdout_all_keeps_every_patient_out(tmp_path):
    phantoms = _phantoms(tmp_path / "ph", 3)
    lits = [{"image": f"/lits/liver_{i:03d}.nii.gz", "label": f"/lits/labels/final/liver_{i:03d}.nii.gz"}
            for i in range(4)]
    train_ds, val_ds = tdw.datalists(tmp_path / "real", phantoms, "all", 6, 2, tmp_path / "work",
                                     lits=lits, n_val_lits=1)
    train, val = json.loads(train_ds.read_text()), json.loads(val_ds.read_text())
    assert val == lits[:1]  # real CT chooses the epoch, not phantoms
    assert _names(train) == [f"volume-{i}.nii.gz" for i in range(3)] + _names(lits[1:])
    with pytest.raises(ValueError, match="need more than"):
        tdw.datalists(tmp_path / "real", phantoms, "all", 6, 2, tmp_path / "work", lits=lits, n_val_lits=4)
    with pytest.raises(ValueError, match="no LiTS set"):  # one validation set at a time
        tdw.datalists(tmp_path / "real", phantoms, "hcc_0697", 6, 2, tmp_path / "work", tmp_path / "transfer",
                      val_other_phase=True, lits=lits, n_val_lits=1)
    with pytest.raises(SystemExit):  # --holdout all trains on no real patient: no other phase to add
        tdw.main(["--holdout", "all", "--other-phase", "--skip-train"])


def test_lits_path_end_to_end(tmp_path, capfd, monkeypatch):
    """A fake Task03_Liver (3 sample phantoms) laid out by fetch_msd, trained on with --lits and
    --holdout all, and evaluated on both stand-in real patients."""
    task = tmp_path / "Task03_Liver"
    for d in ("imagesTr", "labelsTr"):
        (task / d).mkdir(parents=True)
    for i in range(3):
        shutil.copy(LITS / f"volume-{i}.nii.gz", task / "imagesTr" / f"liver_{i}.nii.gz")
        shutil.copy(LITS / f"segmentation-{i}.nii.gz", task / "labelsTr" / f"liver_{i}.nii.gz")
    (task / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"}
                     for i in range(3)]}))
    store = tmp_path / "store"
    assert fetch_msd.main(["--task-dir", str(task), "--out", str(store)]) == 0
    real = tmp_path / "real"  # phantom 3 stands in for both real patients
    real.mkdir()
    for img, lab in tdw.REAL.values():
        shutil.copy(LITS / "volume-3.nii.gz", real / img)
        shutil.copy(LITS / "segmentation-3.nii.gz", real / lab)
    model_dir, results = tmp_path / "model", tmp_path / "results"
    monkeypatch.chdir(tmp_path)  # a relative --model-dir is the caller's, though the trainer runs in the app
    assert tdw.main(["--lits", str(store), "--lits-val", "1", "--holdout", "all", "--phantoms", str(tmp_path / "none"),
                     "--real-dir", str(real), "--num-workers", "2", "--epochs1", "1", "--epochs2", "1", "--model-dir", "model",
                     "--models", "vgg_fcn,liver_resnet,liver_cascade",
                     "--work", str(tmp_path / "work"), "--results", str(results),
                     "--dice-batch", "--lesion-weight", "3", "--lesion-ratio", "2", "--crf", "off"]) == 0
    log = capfd.readouterr()
    assert "liver_resnet: 2 training volumes" in log.err + log.out and "2 loader worker(s)" in log.err + log.out
    # the recipe options reach the trainer's request and name the run
    assert "'dice_batch': 1" in log.err + log.out and "'lesion_weight': 3.0" in log.err + log.out
    assert "'publish': 'best'" in log.err + log.out  # rebuilt weights replace the ones in place
    out = json.loads((results / "demo_unseen_both_lits_db1_lw3_lesr2.json").read_text())
    assert out["holdout"] == "all" and out["lits"] == {"cases": 3, "validate": 1}
    assert sorted(out["rows"]) == sorted(tdw.REAL)
    for rows in out["rows"].values():
        assert set(rows) == {"vgg_fcn", "liver_resnet", "liver_cascade"}  # the ablation's baseline too
        assert all(0.0 <= r["liver_dice"] <= 1.0 for r in rows.values())
        assert all(r["crf"] == "off" for r in rows.values())  # --crf reached every scoring request
    assert out["crf"] == "off"
    train = json.loads((tmp_path / "work" / "holdout_all" / "lits_db1_lw3_lesr2" / "train.json").read_text())
    val = json.loads((tmp_path / "work" / "holdout_all" / "lits_db1_lw3_lesr2" / "val.json").read_text())
    assert _names(val) == ["liver_000.nii.gz"] and _names(train) == ["liver_001.nii.gz", "liver_002.nii.gz"]
    assert {p.name for p in model_dir.glob("*.pt")} == {"vgg_fcn_lite.pt", "liver_resnet_lite.pt", "liver_cascade_lite.pt"}
    stats = json.loads((model_dir / "liver_resnet_lite_stats.json").read_text())
    assert stats["history"] and "val_liver_dice" in stats["history"][-1]


def test_pseudo_other_phase_labels_the_held_out_patients_other_series_with_the_teacher(tmp_path):
    """--pseudo-other-phase: the held-out patient's unlabeled other phase trains, with the label the
    cascade in --model-dir gives it; the held-out labelled series never trains."""
    real = tmp_path / "real"
    real.mkdir()
    other_img, other_lab = tdw.OTHER_PHASE["hcc_0697"]
    shutil.copy(LITS / "volume-3.nii.gz", real / other_img)  # a phantom stands in for the unlabeled series
    ns = type("Args", (), {"holdout": "hcc_0697", "real_dir": str(real), "repeat_real": 3,
                           "model_dir": str(ROOT / "apps" / "liver_cascade" / "model"), "preset": "lite"})
    items = tdw.pseudo_labelled(ns, tmp_path / "work")
    label = tmp_path / "work" / "pseudo" / "model" / other_lab
    assert items == [{"image": str(real / other_img), "label": str(label)}] * 3
    import nibabel as nib
    import numpy as np

    seg, img = nib.load(str(label)), nib.load(str(real / other_img))
    assert seg.shape == img.shape and np.allclose(seg.affine, img.affine)
    values = set(np.unique(np.asarray(seg.dataobj)).tolist())
    assert values <= {0, 1, 2} and 1 in values  # the shipped cascade finds the phantom's liver
    mtime = label.stat().st_mtime
    assert tdw.pseudo_labelled(ns, tmp_path / "work") == items and label.stat().st_mtime == mtime  # labelled once
    train_ds, _ = tdw.datalists(real, _phantoms(tmp_path / "ph", 3), "hcc_0697", 3, 2, tmp_path / "work",
                                extra_train=items)
    train = json.loads(train_ds.read_text())
    assert _names(train)[-3:] == [other_img] * 3
    assert tdw.REAL["hcc_0697"][0] not in _names(train)  # the held-out labelled series: never
    ns.holdout = "all"
    with pytest.raises(SystemExit, match="one held-out"):
        tdw.pseudo_labelled(ns, tmp_path / "work")
