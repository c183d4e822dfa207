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
