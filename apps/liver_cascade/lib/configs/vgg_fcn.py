"""The paper's baseline: VGG16 FCN-8s, same input/output contract (ablation)."""

from monailabel.interfaces.config import TaskConfig

from lib.configs.base import LiverTaskConfigBase


class VGGFCN(LiverTaskConfigBase, TaskConfig):
    task = "vgg_fcn"
    arch = "vgg"
    cascade = False
    description = "Liver and lesion segmentation, VGG16 FCN-8s baseline (ablation only)"
