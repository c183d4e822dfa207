"""Stage two: the cascade, fed with the image and stage one's lesion and liver maps."""

from monailabel.interfaces.config import TaskConfig

from lib.configs.base import LiverTaskConfigBase


class LiverCascade(LiverTaskConfigBase, TaskConfig):
    task = "liver_cascade"
    cascade = True
    description = "Liver and lesion segmentation, cascaded ResNet FCNs (Bi et al. 2017), with lesion report"
