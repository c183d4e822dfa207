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


def phantom_as_patient(tmp_path):
    """A sample phantom standing in for patient 0697 (files named as ../shared/real-ct's)."""
    from train_demo_weights import REAL

    lits = ROOT / "sample-data" / "generated" / "lits"
    real = tmp_path / "real"
    real.mkdir()
    img, lab = REAL["hcc_0697"]
    shutil.copy(lits / "volume-1.nii.gz", real / img)
    shutil.copy(lits / "segmentation-1.nii.gz", real / lab)
    return real


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
    real = phantom_as_patient(tmp_path)
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


def test_a_stage_two_at_its_own_size():
    """AtSize runs a network on its input resized to the size it was trained at and brings its softmax back."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1)).eval()
    x = torch.randn(2, 1, 24, 16)
    with torch.no_grad():
        got = am.AtSize(net, 12)(x)
        small = torch.nn.functional.interpolate(x, size=(12, 8), mode="bilinear", align_corners=False)
        back = torch.nn.functional.interpolate(torch.softmax(net(small), 1), size=(24, 16), mode="bilinear",
                                               align_corners=False)
        assert got.shape == (2, 3, 24, 16)
        assert torch.allclose(torch.softmax(got, 1), back, atol=1e-5)
        assert torch.equal(am.AtSize(net, 24)(x), net(x))  # already at that size: the network as it is


def test_another_stage_two_file_is_the_one_run(tmp_path):
    """--stage2 replaces the model folder's stage two: the same file gives the same result, untrained weights
    another one."""
    from support import write_untrained_weights
    real = phantom_as_patient(tmp_path)
    stage1 = tmp_path / "stage1"  # only stage one's file: the task needs no stage two of its own there
    stage1.mkdir()
    shutil.copy(APP / "model" / "liver_resnet_lite.pt", stage1)
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    write_untrained_weights(untrained)
    args = ["--holdout", "hcc_0697", "--real-dir", str(real), "--models", "liver_cascade", "--preset", "lite"]
    shipped = am.main(args + ["--model-dirs", str(APP / "model"), "--out", str(tmp_path / "a")])["liver_cascade"]
    same = am.main(args + ["--model-dirs", str(stage1), "--stage2", str(APP / "model" / "liver_cascade_lite.pt"),
                           "--stage2-size", "192", "--out", str(tmp_path / "b")])["liver_cascade"]
    other = am.main(args + ["--model-dirs", str(stage1), "--stage2", str(untrained / "liver_cascade_lite.pt"),
                            "--out", str(tmp_path / "c")])["liver_cascade"]
    assert shipped["liver_dice"] > 0.5
    assert same["liver_dice"] == pytest.approx(shipped["liver_dice"], abs=1e-6)
    assert (other["liver_dice"], other["lesion_dice"]) != (shipped["liver_dice"], shipped["lesion_dice"])
