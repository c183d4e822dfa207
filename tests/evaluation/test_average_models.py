"""scripts/average_models.py: the averaged network is the mean of its members' softmax, over
flips too, and run inside the app's infer task it changes nothing when its members agree."""

import shutil
import sys

import pytest
import torch

from support import APP, ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import average_models as am  # noqa: E402


def _net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 1)).eval()


def test_mean_of_softmax_over_members_and_flips():
    x = torch.randn(2, 1, 12, 10)
    a, b = _net(0), _net(1)
    with torch.no_grad():
        got = torch.softmax(am.Averaged([a, b])(x), 1)
        assert torch.allclose(got, (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2, atol=1e-5)
        flipped = torch.softmax(am.Averaged([a], am.FLIPS)(x), 1)
        manual = sum(torch.softmax(a(x.flip(f)), 1).flip(f) if f else torch.softmax(a(x), 1) for f in am.FLIPS) / 4
        assert torch.allclose(flipped, manual, atol=1e-5)
        assert not torch.allclose(flipped, torch.softmax(a(x), 1), atol=1e-3)  # a 3x3 conv is not flip-invariant


def test_members_that_agree_give_the_single_model_result(tmp_path):
    """The shipped weights twice, on a sample phantom standing in for a real patient."""
    from train_demo_weights import REAL

    lits = ROOT / "sample-data" / "generated" / "lits"
    real = tmp_path / "real"
    real.mkdir()
    img, lab = REAL["hcc_0697"]
    shutil.copy(lits / "volume-1.nii.gz", real / img)
    shutil.copy(lits / "segmentation-1.nii.gz", real / lab)
    model = str(APP / "model")
    args = ["--holdout", "hcc_0697", "--real-dir", str(real)]
    single = am.main(args + ["--model-dirs", model, "--out", str(tmp_path / "one")])
    twice = am.main(args + ["--model-dirs", f"{model},{model}", "--out", str(tmp_path / "two")])
    for stage in ("liver_resnet", "liver_cascade"):
        assert single[stage]["liver_dice"] > 0.5  # the shipped weights find the phantom's liver
        assert twice[stage]["liver_dice"] == pytest.approx(single[stage]["liver_dice"], abs=2e-3)
    # one stage, a named preset, a folder holding only that stage's file (as for the GPU runs' weights)
    only = tmp_path / "stage1"
    only.mkdir()
    shutil.copy(APP / "model" / "liver_resnet_lite.pt", only)
    one_stage = am.main(args + ["--model-dirs", str(only), "--preset", "lite", "--models", "liver_resnet",
                                "--out", str(tmp_path / "three")])
    assert list(one_stage) == ["liver_resnet"]
    assert one_stage["liver_resnet"]["liver_dice"] == pytest.approx(single["liver_resnet"]["liver_dice"], abs=1e-6)
