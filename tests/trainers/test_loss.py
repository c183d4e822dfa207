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
