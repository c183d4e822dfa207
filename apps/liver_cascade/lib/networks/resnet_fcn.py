"""Dilated residual FCN of Bi et al. (ISBI 2017), after torchvision's resnet.py.

The layout is ResNet-38 (Wu et al., "Wider or Deeper", model A) at output
stride 8, as in Table 1 of the paper::

    conv3x3 stem
    B2  basic blocks, stride 2        B5  basic blocks (mid, out), dilation 2
    B3  basic blocks, stride 2        B6  bottleneck (a, b, c), dilation 4
    B4  basic blocks, stride 2        B7  bottleneck (a, b, c), dilation 4
    head: 3x3 conv (dilation 12) -> 3x3 classifier (dilation 12)
    deconvolution (x8) back to the input size

Blocks are pre-activation (BN-ReLU-conv), as in ResNet-38. Widths and depths
come from a :class:`lib.settings.Preset`, so ``paper`` and ``lite`` share one
implementation. Outputs are logits for background, liver and lesion.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.settings import NUM_CLASSES, PRESETS, Preset


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with 'same' padding for the given dilation."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (widths ``mid`` then ``out``) with a shortcut."""

    def __init__(self, inplanes: int, mid: int, out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv3x3(inplanes, mid, stride, dilation)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, out, 1, dilation)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or inplanes != out:
            self.downsample = conv1x1(inplanes, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + identity


class Bottleneck(nn.Module):
    """1x1 (a) -> 3x3 (b, dilated) -> 1x1 (c) with a projection shortcut."""

    def __init__(self, inplanes: int, a: int, b: int, c: int, dilation: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv1x1(inplanes, a)
        self.bn2 = nn.BatchNorm2d(a)
        self.conv2 = conv3x3(a, b, 1, dilation)
        self.bn3 = nn.BatchNorm2d(b)
        self.conv3 = conv1x1(b, c)
        self.downsample = conv1x1(inplanes, c) if inplanes != c else None

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + identity


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights that make a ConvTranspose2d perform bilinear upsampling."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt = 1 - torch.abs(og - center) / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    for i in range(channels):
        weight[i, i] = kernel
    return weight


class ResNetFCN(nn.Module):
    """Dilated residual FCN, output stride 8, logits at the input resolution."""

    output_stride = 8

    def __init__(self, preset: Preset, in_channels: int = 1, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.preset = preset
        self.in_channels = in_channels
        self.conv1 = conv3x3(in_channels, preset.stem)
        self.inplanes = preset.stem
        self.layer2 = self._make_layer(preset.widths[0], preset.depths[0], stride=2)
        self.layer3 = self._make_layer(preset.widths[1], preset.depths[1], stride=2)
        self.layer4 = self._make_layer(preset.widths[2], preset.depths[2], stride=2)
        mid, out = preset.dilated_width
        self.layer5 = self._make_layer(out, preset.dilated_depth, mid=mid, dilation=2)
        a, b, c = preset.bottlenecks[0]
        self.layer6 = Bottleneck(self.inplanes, a, b, c, dilation=4)
        a, b, c2 = preset.bottlenecks[1]
        self.layer7 = Bottleneck(c, a, b, c2, dilation=4)
        self.bn7 = nn.BatchNorm2d(c2)
        self.head = nn.Sequential(
            nn.Conv2d(c2, preset.head, 3, padding=12, dilation=12, bias=False),
            nn.BatchNorm2d(preset.head),
            nn.ReLU(inplace=True),
            nn.Conv2d(preset.head, num_classes, 3, padding=12, dilation=12),
        )
        self.upsample = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, bias=False)
        self._init_weights()

    def _make_layer(self, out: int, blocks: int, stride: int = 1, mid: Optional[int] = None, dilation: int = 1):
        mid = mid or out
        layers = [BasicBlock(self.inplanes, mid, out, stride, dilation)]
        self.inplanes = out
        layers += [BasicBlock(out, mid, out, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head[-1].weight, std=0.01)
        nn.init.zeros_(self.head[-1].bias)
        with torch.no_grad():
            self.upsample.weight.copy_(bilinear_kernel(self.upsample.in_channels, 16))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(x)))
        x = self.layer7(self.layer6(self.layer5(x)))
        x = self.head(F.relu(self.bn7(x)))
        x = self.upsample(x)
        return x[..., :h, :w]


def resnet_fcn(preset: str = "lite", in_channels: int = 1, num_classes: int = NUM_CLASSES) -> ResNetFCN:
    """Builder, as torchvision's ``resnet18()``: ``resnet_fcn("paper")``."""
    return ResNetFCN(PRESETS[preset], in_channels=in_channels, num_classes=num_classes)
