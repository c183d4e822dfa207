"""VGG16 FCN-8s (Long et al.), the baseline row of the paper's ablation.

Same contract as :class:`lib.networks.resnet_fcn.ResNetFCN`: ``in_channels``
in, background/liver/lesion logits out at the input resolution. Skips from
pool3 and pool4 are fused with the fc7 score map (FCN-8s).
"""

import torch.nn.functional as F
from torch import Tensor, nn

from lib.settings import NUM_CLASSES, VGG_PRESETS, VGGPreset


def _stage(inplanes: int, width: int, depth: int) -> nn.Sequential:
    layers = []
    for i in range(depth):
        layers += [nn.Conv2d(inplanes if i == 0 else width, width, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    return nn.Sequential(*layers)


class VGGFCN(nn.Module):
    output_stride = 32

    def __init__(self, preset: VGGPreset, in_channels: int = 1, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.in_channels = in_channels
        stages, inplanes = [], in_channels
        for width, depth in zip(preset.widths, preset.depths):
            stages.append(_stage(inplanes, width, depth))
            inplanes = width
        self.stages = nn.ModuleList(stages)
        k = preset.fc6_kernel
        self.fc = nn.Sequential(
            nn.Conv2d(inplanes, preset.fc, k, padding=k // 2), nn.ReLU(inplace=True), nn.Dropout2d(0.5),
            nn.Conv2d(preset.fc, preset.fc, 1), nn.ReLU(inplace=True), nn.Dropout2d(0.5),
            nn.Conv2d(preset.fc, num_classes, 1),
        )
        for m in self.modules():  # as torchvision's VGG: without it, from scratch it never leaves background
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.score_pool3 = nn.Conv2d(preset.widths[2], num_classes, 1)
        self.score_pool4 = nn.Conv2d(preset.widths[3], num_classes, 1)
        for m in (self.score_pool3, self.score_pool4):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        score = self.fc(x)
        pool4, pool3 = feats[3], feats[2]
        score = F.interpolate(score, size=pool4.shape[-2:], mode="bilinear", align_corners=False)
        score = score + self.score_pool4(pool4)
        score = F.interpolate(score, size=pool3.shape[-2:], mode="bilinear", align_corners=False)
        score = score + self.score_pool3(pool3)
        score = F.interpolate(score, scale_factor=8, mode="bilinear", align_corners=False)
        return score[..., :h, :w]


def vgg_fcn(preset: str = "lite", in_channels: int = 1, num_classes: int = NUM_CLASSES) -> VGGFCN:
    return VGGFCN(VGG_PRESETS[preset], in_channels=in_channels, num_classes=num_classes)
