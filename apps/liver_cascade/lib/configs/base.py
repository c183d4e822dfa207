"""What the liver_cascade TaskConfigs share (not a TaskConfig itself, so not discovered)."""

import logging
import os
from typing import Any, Dict, Optional, Union

from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from lib.conf import AppConf
from lib.infers import LiverSegmentation
from lib.settings import LABEL_COLORS, LABELS, model_filename

logger = logging.getLogger(__name__)


class LiverTaskConfigBase:
    """Mixin: subclasses set ``task``, ``arch``, ``cascade`` and ``description``."""

    task: str
    arch: str = "resnet"
    cascade: bool = False
    description: str = ""

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.app_conf = AppConf.from_conf(conf, model_dir)
        self.labels = dict(LABELS)
        self.label_colors = {k: list(v) for k, v in LABEL_COLORS.items()}
        self.path = os.path.join(model_dir, model_filename(self.task, self.app_conf.preset))

    def infer(self) -> Union[InferTask, Dict[str, InferTask]]:
        return LiverSegmentation(
            self.model_dir, self.app_conf, cascade=self.cascade, arch=self.arch,
            task_name=self.name, description=self.description,
        )

    def trainer(self) -> Optional[TrainTask]:
        from lib.trainers import make_trainer

        return make_trainer(self.name, self.model_dir, self.app_conf, self.conf)
