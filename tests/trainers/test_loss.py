"""The class-weighted loss equals MONAI's DiceCELoss at equal weights, and weights the lesion class."""

import torch
from monai.losses import DiceCELoss

from lib.trainers.liver import ClassWeightedDiceCELoss


def test_equal_weights_match_monai_dice_ce():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4, 1, 16, 16))
    ours = ClassWeightedDiceCELoss(1.0, [1.0, 1.0, 1.0])(logits, target)
    monai = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=1.0, include_background=False)(logits, target)
    assert torch.allclose(ours, monai, atol=1e-6)


def test_lesion_errors_cost_more():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target[0, 0, 2:4, 2:4] = 2  # a lesion, predicted as background
    logits = torch.zeros(1, 3, 8, 8)
    logits[:, 0] = 3.0
    plain = ClassWeightedDiceCELoss(0.0, [1.0, 1.0, 1.0])(logits, target)
    weighted = ClassWeightedDiceCELoss(0.0, [1.0, 1.0, 10.0])(logits, target)
    assert weighted > 2 * plain


def test_intensity_augmentation_is_opt_in_and_stage_one_only(tmp_path):
    from lib.conf import AppConf
    from lib.trainers.liver import RECIPE, LiverSliceTrainer

    class Ctx:
        request = dict(RECIPE)

    def names(in_channels, **kw):
        ctx = Ctx()
        ctx.request = dict(RECIPE, **kw)
        task = LiverSliceTrainer(str(tmp_path), AppConf.from_conf({}), "liver_resnet", "resnet", in_channels)
        return [type(t).__name__ for t in task.train_pre_transforms(ctx)]

    assert "RandShiftIntensityd" not in names(1)
    assert {"RandShiftIntensityd", "RandScaleIntensityd"} <= set(names(1, hu_shift=30, contrast_scale=0.1))
    assert "RandShiftIntensityd" not in names(3, hu_shift=30, contrast_scale=0.1)


def test_rotation_and_elastic_deformation_are_opt_in_and_keep_image_and_label_aligned(tmp_path):
    import nibabel as nib
    import numpy as np
    from monai.transforms import Compose

    from lib.conf import AppConf
    from lib.trainers.liver import RECIPE, LiverSliceTrainer

    # a 'liver' block (label 1, 60 HU) with a 'lesion' (label 2, 0 HU) in fat (-100 HU)
    lab = np.zeros((64, 48, 6), np.uint8)
    lab[14:50, 10:30, :] = 1
    lab[20:28, 14:22, :] = 2
    img = np.where(lab == 1, 60, np.where(lab == 2, 0, -100)).astype(np.int16)
    for name, arr in (("img", img), ("lab", lab)):
        nib.save(nib.Nifti1Image(arr, np.diag([0.8, 0.8, 5.0, 1.0])), str(tmp_path / f"{name}.nii.gz"))
    data = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}

    class Ctx:
        request = None

    def run(**kw):
        ctx = Ctx()
        ctx.request = dict(RECIPE, zoom="1,1", flip_prob=0.0, liver_ratio=1.0, samples_per_volume=4, **kw)
        task = LiverSliceTrainer(str(tmp_path / "m"), AppConf.from_conf({}), "liver_resnet", "resnet", 1)
        names = [type(t).__name__ for t in task.train_pre_transforms(ctx)]
        pipeline = Compose(task.train_pre_transforms(ctx))
        pipeline.set_random_state(0)
        return names, pipeline(dict(data))

    names, plain = run()
    assert "Rand2DElasticd" not in names  # the paper's recipe: off by default
    names, deformed = run(rotate_deg=30, elastic=3, deform_prob=1.0)
    assert "Rand2DElasticd" in names
    moved = [float((p["label"] != d["label"]).float().mean()) for p, d in zip(plain, deformed)]
    assert min(moved) > 0 and np.mean(moved) > 0.02  # every slice moved
    for d in deformed:
        dl, di = d["label"][0].numpy(), d["image"][0].numpy()
        assert set(np.unique(dl)) <= {0, 1, 2}  # nearest-neighbour labels, no blends
        # image and label moved together: liver pixels keep the liver's intensity
        liver_hu, fat_hu = 60, -100
        window = lambda hu: (hu + 160) / 400  # noqa: E731  (HU_WINDOW scaled to [0, 1])
        inner = dl == 1
        assert abs(np.median(di[inner]) - window(liver_hu)) < 0.02
        assert abs(np.median(di[(dl == 0) & (di > 0.01)]) - window(fat_hu)) < 0.02


def test_dice_batch_scores_the_lesion_over_the_batch(tmp_path):
    """Per slice, a slice without lesion costs ~1 of lesion Dice loss unless the network's lesion
    probabilities there sum to well under MONAI's 1e-5 smoothing; with dice_batch the batch's lesion
    pixels count together, so a confident right answer costs little."""
    from lib.conf import AppConf
    from lib.trainers.liver import RECIPE, LiverSliceTrainer

    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[0, 0, 2:6, 2:6] = 1
    target[0, 0, 3:5, 3:5] = 2  # slice 0: liver with a lesion; slice 1: neither
    logits = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 5  # right everywhere, p ~0.99

    class Ctx:
        request = None

    def loss(**kw):
        ctx = Ctx()
        ctx.request = dict(RECIPE, dice_weight=1.0, **kw)
        task = LiverSliceTrainer(str(tmp_path), AppConf.from_conf({}), "liver_resnet", "resnet", 1)
        return float(task.loss_function(ctx)(logits, target))

    assert RECIPE["dice_batch"] is False  # MONAI's default (per slice) unless asked
    per_slice, batch = loss(), loss(dice_batch="true")
    assert per_slice > 0.4  # slice 1's liver and lesion Dice terms: ~1 each, of the 4 averaged
    assert batch < 0.15
    # the class-weighted variant follows the option too
    assert loss(dice_batch=True, lesion_weight=5.0) < 0.15 < 0.4 < loss(lesion_weight=5.0)
