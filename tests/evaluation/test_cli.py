import json

import nibabel as nib
import numpy as np
import pytest
import torch

from lib.evaluation import ablation, evaluate
from lib.model_io import save_checkpoint
from lib.networks import build_network


def test_ablation_and_evaluate_commands(tmp_path):
    import phantom

    data = tmp_path / "lits"
    data.mkdir()
    for i in range(2):
        p = phantom.generate_phantom(40 + i, shape_xy=(64, 64), spacing=(5.0, 5.0, 6.0), n_slices=7)
        p.save_nifti(str(data / f"volume-{i}.nii.gz"), str(data / f"segmentation-{i}.nii.gz"))
    models = tmp_path / "model"
    torch.manual_seed(0)
    for name, arch, c in (("vgg_fcn", "vgg", 1), ("liver_resnet", "resnet", 1), ("liver_cascade", "resnet", 3)):
        save_checkpoint(str(models / f"{name}_lite.pt"), build_network(arch, "lite", c), arch, "lite", c)

    out = tmp_path / "ablation"
    assert ablation.main(["--model-dir", str(models), "--data", str(data), "--out", str(out)]) == 0
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["method"] for r in rows][:5] == list(ablation.PAPER)
    assert all(0.0 <= r["liver_dice"] <= 1.0 and r["n_cases"] == 2 for r in rows)
    assert rows[4]["params"]["scales"].count(",") == 4  # the paper's five scales
    assert "| Cascaded ResNet + 3D-CRF |" in (out / "ablation.md").read_text()
    params = {r["method"]: r["params"] for r in rows}
    off = {"crf": "off", "adapt_bn": False, "grow_liver": False}
    assert params["Cascaded ResNet + 3D-CRF"] == {**off, "crf": "paper"}
    assert params["Cascaded ResNet + liver CRF"] == {**off, "crf": "liver"}
    assert params["Cascaded ResNet + liver CRF + liver growth (default)"] == {**off, "crf": "liver", "grow_liver": True}
    assert params["ResNet + liver CRF + liver growth"] == {**off, "crf": "liver", "grow_liver": True}
    assert {r["method"]: r["model"] for r in rows}["ResNet + liver CRF + liver growth"] == "liver_resnet"
    assert params["Cascaded ResNet + BN adaptation + liver CRF"] == {**off, "crf": "liver", "adapt_bn": True}
    # the paper's rows: no CRF, the training's batch-norm statistics, no liver growth
    assert all(r["params"] == off for r in rows[:3])
    # a subset of rows, e.g. to add one to a table without rerunning the slow ones
    sub = tmp_path / "sub"
    assert ablation.main(["--model-dir", str(models), "--data", str(data), "--out", str(sub), "--cases", "1",
                          "--method", "ResNet", "--method", "Cascaded ResNet, stage two on all slices"]) == 0
    assert [r["method"] for r in json.loads((sub / "ablation.json").read_text())] == [
        "ResNet", "Cascaded ResNet, stage two on all slices"]
    with pytest.raises(SystemExit, match="SegFormer"):
        ablation.main(["--model-dir", str(models), "--data", str(data), "--out", str(sub), "--method", "SegFormer"])
    # a row without its weights (no vgg_fcn ships) is skipped and named; the others still run
    (models / "vgg_fcn_lite.pt").unlink()
    assert ablation.main(["--model-dir", str(models), "--data", str(data), "--out", str(sub), "--cases", "1",
                          "--method", "VGG-FCN", "--method", "ResNet"]) == 0
    assert [r["method"] for r in json.loads((sub / "ablation.json").read_text())] == ["ResNet"]
    assert "Not run (no weights): VGG-FCN" in (sub / "ablation.md").read_text()
    with pytest.raises(SystemExit, match="no row could run"):
        ablation.main(["--model-dir", str(models), "--data", str(data), "--out", str(sub), "--method", "VGG-FCN"])

    preds = out / "predictions" / "Cascaded_ResNet"
    res = tmp_path / "eval"
    assert evaluate.main(["--pred", str(preds), "--ref", str(data), "--out", str(res), "--report",
                          "--images", str(data)]) == 0
    summary = json.loads((res / "summary.json").read_text())
    assert summary["n_cases"] == 2 and "liver_dice_global" in summary
    assert (res / "per_case.csv").read_text().count("\n") == 3
    assert (res / "lesion_report.md").exists() and (res / "summary.md").read_text().startswith("###")


def test_predict_command_segments_a_folder_for_the_evaluation(tmp_path, capsys):
    """No command turned a folder of CT into the folder of labels that the evaluation reads (only the Python
    functions); an unreadable file is named and the other volumes still run."""
    import phantom

    from lib.evaluation import predict

    data, images = tmp_path / "lits", tmp_path / "images"
    images.mkdir()
    p = phantom.generate_phantom(7, shape_xy=(64, 64), spacing=(5.0, 5.0, 6.0), n_slices=7)
    p.save_nifti(str(images / "volume-0.nii.gz"), str(tmp_path / "segmentation-0.nii.gz"))
    data.mkdir()
    (tmp_path / "segmentation-0.nii.gz").rename(data / "segmentation-0.nii.gz")
    (images / "volume-1.nii").write_bytes(b"not a volume")
    out = tmp_path / "pred"
    assert predict.main(["--images", str(images), "--out", str(out), "--params", '{"crf": "off"}']) == 1
    assert "volume-1.nii: error: could not read the image" in capsys.readouterr().err
    label = np.asarray(nib.load(str(out / "volume-0.nii.gz")).dataobj)
    assert label.shape == p.label.shape and set(np.unique(label)) <= {0, 1, 2} and (label > 0).any()
    assert not (out / "volume-1.nii.gz").exists()
    assert evaluate.main(["--pred", str(out), "--ref", str(data), "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["n_cases"] == 1
    for bad in (["--params", "[1]"], ["--preset", "bogus"], ["--model", "unet"]):
        with pytest.raises(SystemExit):
            predict.main(["--images", str(images), "--out", str(out)] + bad)
    assert predict.main(["--images", str(images), "--out", str(out), "--model", "vgg_fcn"]) == 2  # no weights ship
    assert "vgg_fcn_lite.pt is missing" in capsys.readouterr().err


def test_ablation_refuses_a_negative_case_count_and_unpaired_images(tmp_path, capsys):
    """--cases -1 ran all cases but the last; an --image without its --label, or an unknown preset, gave
    "no labelled case found" or a KeyError."""
    import phantom

    p = phantom.generate_phantom(8, shape_xy=(32, 32), spacing=(8.0, 8.0, 8.0), n_slices=3)
    p.save_nifti(str(tmp_path / "volume-0.nii.gz"), str(tmp_path / "segmentation-0.nii.gz"))
    for bad, message in ((["--cases", "-1"], "--cases must be >= 0"), (["--image", "a.nii.gz"], "one --label per --image"),
                         (["--preset", "bogus"], "invalid choice: 'bogus'")):
        with pytest.raises(SystemExit) as e:
            ablation.main(["--model-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--data", str(tmp_path)] + bad)
        assert e.value.code == 2 and message in capsys.readouterr().err, bad
