"""Stage two: the cascade, fed with the image and stage one's lesion and liver maps."""

from monailabel.interfaces.config import TaskConfig

from lib.activelearning.uncertainty import LiverUncertaintyStrategy
from lib.configs.base import LiverTaskConfigBase
from lib.scoring.correction import CorrectionDice
from lib.scoring.uncertainty import LiverUncertainty


class LiverCascade(LiverTaskConfigBase, TaskConfig):
    task = "liver_cascade"
    cascade = True
    description = "Liver and lesion segmentation, cascaded ResNet FCNs (Bi et al. 2017), with lesion report"

    def strategy(self):
        return {"uncertainty": LiverUncertaintyStrategy(self._uncertainty(), hold_s=self.app_conf.sample_hold_s)}

    def scoring_method(self):
        return {"liver_uncertainty": self._uncertainty(), "correction_dice": CorrectionDice()}

    def _uncertainty(self) -> LiverUncertainty:
        if not hasattr(self, "_scoring"):
            self._scoring = LiverUncertainty(self.infer())
        return self._scoring
