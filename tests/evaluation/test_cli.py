import json

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
    assert params["Cascaded ResNet + 3D-CRF"] == {"crf": "paper", "adapt_bn": False}
    assert params["Cascaded ResNet + liver CRF (default)"] == {"crf": "liver", "adapt_bn": False}
    assert params["Cascaded ResNet + BN adaptation + liver CRF"] == {"crf": "liver", "adapt_bn": True}
    # the paper's rows: no CRF, the training's batch-norm statistics
    assert all(r["params"] == {"crf": "off", "adapt_bn": False} for r in rows[:3])
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
