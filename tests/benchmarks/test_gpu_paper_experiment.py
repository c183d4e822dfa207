"""scripts/gpu_paper_experiment.py: its augmentation, loss and post-processing, and a tiny CPU run end to end."""

import json
import sys

import numpy as np
import torch

from support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import gpu_paper_experiment as gx  # noqa: E402


def disk_volume(n=6, size=64, radius=18, hole=False):
    x, y = np.mgrid[:size, :size]
    disk = (x - size // 2) ** 2 + (y - size // 3) ** 2 <= radius**2
    label = np.repeat(disk[..., None], n, axis=2).astype(np.uint8)
    label[..., 0] = 0  # one slice without liver
    label[30:33, 18:21, 2] = 2  # a small lesion on one slice
    image = np.where(label > 0, 140, 40).astype(np.uint8)
    return image, label


def test_augment_moves_image_and_label_together():
    torch.manual_seed(0)
    image, label = disk_volume()
    img = torch.from_numpy(image).permute(2, 0, 1)[:, None].float() / 255
    lab = torch.from_numpy(label).permute(2, 0, 1)[:, None].float()
    for _ in range(3):
        x, y = gx.augment(img, lab, zoom=(0.8, 1.2), flip_prob=0.5)
        assert x.shape == img.shape and y.dtype == torch.long
        inside, outside = x[y >= 1], x[(y == 0) & (x > 0)]  # zero: padding where the zoom shrank the slice
        assert inside.mean() > 0.5 and outside.mean() < 0.2  # 140/255 inside, 40/255 outside
    flipped, _ = gx.augment(img, lab, zoom=(1.0, 1.0), flip_prob=1.0)
    assert torch.allclose(flipped, img.flip(2, 3), atol=1e-5)


def test_to_square_keeps_aspect_and_pads():
    x = torch.ones(2, 1, 40, 80)
    y = gx.to_square(x, 64, "nearest")
    assert y.shape == (2, 1, 64, 64)
    assert y[0, 0, :, 0].sum() == 32  # 40 rows scaled to 32, 16 rows of padding on each side


def test_loss_prefers_the_right_answer():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target[..., 2:6, 2:6] = 1
    target[..., 3, 3] = 2  # every class present: the Dice term of an absent class is ~1 (as MONAI's)
    right = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 10
    wrong = right[:, [1, 2, 0]]
    assert gx.dice_ce(right, target) < 0.01 and gx.dice_ce(wrong, target) > 5


def test_postprocess_keeps_the_largest_component_and_fills_holes():
    liver = np.zeros((20, 20, 3), bool)
    liver[2:12, 2:12] = True
    liver[5:7, 5:7, 1] = False  # a hole in one slice
    liver[16:18, 16:18] = True  # a smaller island
    out = gx.postprocess(liver.copy())
    assert out[5:7, 5:7, 1].all() and not out[16:18, 16:18].any()
    assert gx.dice(out, out) == 1.0 and gx.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_tiny_run_end_to_end(tmp_path):
    image, label = disk_volume()
    for name, group in (("hcc_0697_manual", "hcc_0697"), ("hcc_2022_manual", "hcc_2022"),
                        ("hcc_2022_transfer", "hcc_2022"), ("phantom_3", "phantom")):
        np.savez_compressed(tmp_path / f"{name}.npz", image=image, label=label, group=group)
    out = tmp_path / "result.json"
    assert gx.main(["train", "--pack", str(tmp_path), "--holdout", "hcc_0697", "--preset", "lite", "--size", "64",
                    "--minutes", "0.05", "--batch", "4", "--out", str(out),
                    "--save", str(tmp_path / "stage1.pt")]) == 0
    res = json.loads(out.read_text())
    assert sorted(res["train_cases"]) == ["hcc_2022_manual", "hcc_2022_transfer", "phantom_3"]  # never the held-out
    assert res["steps"] >= 1 and res["size"] == 64 and res["device"] == "cpu"
    assert list(res["rows"]) == ["1 scale", "5 scales"] and res["rows"]["5 scales"]["scales"][0] == 64
    for row in res["rows"].values():
        assert 0.0 <= row["liver_dice"] <= 1.0 and 0.0 <= row["lesion_dice"] <= 1.0
    from lib.model_io import load_checkpoint  # the app loads what the experiment saved

    net, ckpt = load_checkpoint(str(tmp_path / "stage1.pt"))
    assert ckpt["preset"] == "lite" and ckpt["meta"]["holdout"] == "hcc_0697" and ckpt["meta"]["size"] == 64
    assert ckpt["meta"]["steps"] == res["steps"] and "hcc_0697_manual" not in ckpt["meta"]["trained_on"]


def test_a_run_by_steps_stops_at_that_step(tmp_path):
    image, label = disk_volume()
    for name, group in (("hcc_0697_manual", "hcc_0697"), ("hcc_2022_manual", "hcc_2022")):
        np.savez_compressed(tmp_path / f"{name}.npz", image=image, label=label, group=group)
    out = tmp_path / "result.json"
    assert gx.main(["train", "--pack", str(tmp_path), "--holdout", "hcc_2022", "--preset", "lite", "--size", "64",
                    "--steps", "3", "--batch", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["steps"] == 3 and res["steps_asked"] == 3 and res["minutes"] is None
    assert res["train_cases"] == ["hcc_0697_manual"]


def test_neighbours_are_a_distance_away_and_clamped():
    lo, hi = gx.neighbours(6, 5.0, 5.0)  # 5 mm slices, 5 mm context: the next slice
    assert lo.tolist() == [0, 0, 1, 2, 3, 4] and hi.tolist() == [1, 2, 3, 4, 5, 5]
    lo, hi = gx.neighbours(10, 1.0, 5.0)  # 1 mm slices: five slices away
    assert lo[7] == 2 and hi[2] == 7 and hi[7] == 9
    lo, hi = gx.neighbours(4, 5.0, 1.0)  # never the slice itself
    assert lo[2] == 1 and hi[2] == 3


def test_a_context_run_takes_three_slices_and_needs_whole_volumes(tmp_path):
    image, label = disk_volume()
    for name, group in (("hcc_0697_manual", "hcc_0697"), ("hcc_2022_manual", "hcc_2022")):
        np.savez_compressed(tmp_path / f"{name}.npz", image=image, label=label, group=group, spacing_z=2.5, whole=True)
    out = tmp_path / "result.json"
    assert gx.main(["train", "--pack", str(tmp_path), "--holdout", "hcc_2022", "--preset", "lite", "--size", "64",
                    "--steps", "2", "--batch", "2", "--context-mm", "5", "--out", str(out),
                    "--save", str(tmp_path / "s.pt")]) == 0
    res = json.loads(out.read_text())
    assert res["context_mm"] == 5 and res["steps"] == 2
    from lib.model_io import load_checkpoint

    net, ckpt = load_checkpoint(str(tmp_path / "s.pt"))
    assert net.conv1.in_channels == 3 and ckpt["meta"]["context_mm"] == 5
    np.savez_compressed(tmp_path / "phantom_1.npz", image=image, label=label, group="phantom", spacing_z=2.5,
                        whole=False)  # a few slices of a phantom: their neighbours are not there
    import pytest

    with pytest.raises(SystemExit, match="whole volumes"):
        gx.main(["train", "--pack", str(tmp_path), "--holdout", "hcc_2022", "--preset", "lite", "--size", "64",
                 "--steps", "1", "--batch", "2", "--context-mm", "5", "--out", str(out)])
