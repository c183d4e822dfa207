"""``val_interval``: a training run validates (and publishes) only every N epochs."""

import json
from pathlib import Path

from support import ROOT

LITS = ROOT / "sample-data" / "generated" / "lits"


def test_validation_every_second_epoch(tmp_path):
    from lib.trainers.cli import main

    cases = [{"image": str(LITS / f"volume-{i}.nii.gz"), "label": str(LITS / f"segmentation-{i}.nii.gz")}
             for i in (0, 1)]
    (tmp_path / "train.json").write_text(json.dumps(cases[:1]))
    (tmp_path / "val.json").write_text(json.dumps(cases[1:]))
    model_dir = tmp_path / "model"
    main(["--models", "liver_resnet", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
          "--val_ds", str(tmp_path / "val.json"), "--max_epochs", "4", "--val_interval", "2",
          "--samples_per_volume", "2", "--train_batch_size", "2", "--dataset", "Dataset", "--pretrained", "false"])
    stats = json.loads((model_dir / "liver_resnet_lite_stats.json").read_text())
    assert [h["epoch"] for h in stats["history"]] == [2, 4]
    assert all("val_liver_dice" in h for h in stats["history"])
    assert Path(stats["model"]).exists()
