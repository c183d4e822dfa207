"""Stage one: the dilated residual FCN on axial slices (the paper's 'ResNet' row)."""

from monailabel.interfaces.config import TaskConfig

from lib.configs.base import LiverTaskConfigBase


class LiverResNet(LiverTaskConfigBase, TaskConfig):
    task = "liver_resnet"
    arch = "resnet"
    cascade = False
    description = "Liver and lesion segmentation, stage one (dilated ResNet-38 FCN, Bi et al. 2017)"
