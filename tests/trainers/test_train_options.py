"""Train request options, through the same train tasks as ``POST /train``: ``val_interval``
(validate every N epochs), ``liver_box`` (stage two trained, then run, on the liver's box) and
``swa_from`` (the average of the last epochs' weights published instead of the best epoch)."""

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import pytest

from support import APP, ROOT, small_phantom_studies

LITS = ROOT / "sample-data" / "generated" / "lits"


def _datalists(tmp_path):
    cases = [{"image": str(LITS / f"volume-{i}.nii.gz"), "label": str(LITS / f"segmentation-{i}.nii.gz")}
             for i in (0, 1)]
    (tmp_path / "train.json").write_text(json.dumps(cases[:1]))
    (tmp_path / "val.json").write_text(json.dumps(cases[1:]))
    return cases


def _shipped_stage_one(tmp_path):
    """A model folder holding the demo stage one (it finds the liver), and its bytes."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(APP / "model" / "liver_resnet_lite.pt", model_dir)
    return model_dir, (model_dir / "liver_resnet_lite.pt").read_bytes()


def test_validation_every_second_epoch(tmp_path):
    from lib.trainers.cli import main

    _datalists(tmp_path)
    model_dir = tmp_path / "model"
    main(["--models", "liver_resnet", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
          "--val_ds", str(tmp_path / "val.json"), "--max_epochs", "4", "--val_interval", "2",
          "--samples_per_volume", "2", "--train_batch_size", "2", "--dataset", "Dataset", "--pretrained", "false"])
    stats = json.loads((model_dir / "liver_resnet_lite_stats.json").read_text())
    assert [h["epoch"] for h in stats["history"]] == [2, 4]
    assert all("val_liver_dice" in h for h in stats["history"])
    assert (model_dir / stats["model"]).stat().st_mode & 0o777 == 0o644  # published readable, not 0600


def test_cascade_on_the_liver_box(tmp_path):
    """A cascade trained with liver_box says so in its checkpoint, and inference then runs stage two
    on the box around stage one's liver (reported in the result), not on the whole slice."""
    import torch

    from lib.evaluation.predict import make_task, predict_file
    from lib.trainers.cli import main

    cases = _datalists(tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(APP / "model" / "liver_resnet_lite.pt", model_dir)  # a stage one that finds the liver
    main(["--models", "liver_cascade", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
          "--val_ds", str(tmp_path / "val.json"), "--max_epochs", "1", "--liver_box", "true",
          "--samples_per_volume", "2", "--train_batch_size", "2", "--dataset", "Dataset", "--pretrained", "false"])
    assert torch.load(model_dir / "liver_cascade_lite.pt", weights_only=False)["meta"]["liver_box"] is True
    result = predict_file(make_task("liver_cascade", str(model_dir)), cases[1]["image"], str(tmp_path / "p.nii.gz"))
    x0, x1, y0, y1 = result["timings"]["stage2_box"]
    nx, ny = nib.as_closest_canonical(nib.load(cases[1]["image"])).shape[:2]  # the box indexes the RAS array
    assert 0 <= x0 < x1 <= nx and 0 <= y0 < y1 <= ny and (x1 - x0) * (y1 - y0) < 0.8 * nx * ny


def test_weight_average_publishes_the_mean_of_the_last_epochs(tmp_path):
    """With swa_from, the published checkpoint holds the mean of the weights after epochs 2 and 3 of 3,
    with batch-norm statistics recomputed on training data (not the reset 0 / 1)."""
    import torch

    from lib.trainers.cli import main
    from lib.trainers.liver import WeightAverage

    seen = {}
    on_epoch = WeightAverage.on_epoch

    def record(self, engine):  # keep a copy of each epoch's weights to check the average against
        seen[engine.state.epoch] = {k: v.detach().clone() for k, v in self._net().state_dict().items()}
        on_epoch(self, engine)

    _datalists(tmp_path)
    model_dir = tmp_path / "model"
    WeightAverage.on_epoch = record
    try:
        main(["--models", "liver_resnet", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
              "--val_ds", str(tmp_path / "val.json"), "--max_epochs", "3", "--swa_from", "0.5",
              "--samples_per_volume", "2", "--train_batch_size", "2", "--dataset", "Dataset", "--pretrained", "false"])
    finally:
        WeightAverage.on_epoch = on_epoch
    ckpt = torch.load(model_dir / "liver_resnet_lite.pt", weights_only=False)
    assert ckpt["meta"]["swa_epochs"] == [2, 3]  # int(0.5 * 3) + 1 = 2 onwards
    weight = next(k for k in ckpt["model"] if k.endswith("conv1.weight"))
    assert torch.allclose(ckpt["model"][weight], (seen[2][weight] + seen[3][weight]) / 2, atol=1e-6)
    assert not torch.equal(ckpt["model"][weight], seen[3][weight])  # not simply the last epoch
    bn_mean = next(v for k, v in ckpt["model"].items() if k.endswith("running_mean"))
    bn_var = next(v for k, v in ckpt["model"].items() if k.endswith("running_var"))
    assert bn_mean.abs().sum() > 0 and not torch.allclose(bn_var, torch.ones_like(bn_var))
    stats = json.loads((model_dir / "liver_resnet_lite_stats.json").read_text())
    assert stats["swa_epochs"] == [2, 3] and stats["done"] is True
    assert stats["swa_published"] and ckpt["meta"]["val_mean_dice"] == stats["swa_metric"] is not None


def test_a_round_that_does_worse_keeps_the_model_in_place(tmp_path):
    """publish: better (the default) validates the model in place first; a round none of whose epochs
    does as well (here: a learning rate that wrecks the network) leaves it untouched. publish: best
    publishes the run's best epoch anyway."""
    from lib.trainers.cli import main

    _datalists(tmp_path)
    model_dir, shipped = _shipped_stage_one(tmp_path)
    args = ["--models", "liver_resnet", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
            "--val_ds", str(tmp_path / "val.json"), "--max_epochs", "1", "--samples_per_volume", "2",
            "--train_batch_size", "2", "--dataset", "Dataset", "--lr", "50", "--lr_decay_from", "50"]
    main(args)
    assert not (model_dir / "liver_resnet_lite_stats.json").exists()  # the model in place's: none, none written
    stats = json.loads((model_dir / "liver_resnet_lite_stats_last_run.json").read_text())
    assert stats["baseline_metric"] > 0.4  # the demo weights on a sample phantom (mean of liver and lesion Dice)
    assert stats["history"][0]["val_mean_dice"] < stats["baseline_metric"]
    assert stats["kept_model_in_place"] and not stats["history"][0]["published"]
    assert (model_dir / "liver_resnet_lite.pt").read_bytes() == shipped
    assert not (model_dir / "liver_resnet_lite.pt.previous").exists()  # nothing replaced
    main(args + ["--publish", "best"])
    stats = json.loads((model_dir / "liver_resnet_lite_stats.json").read_text())
    assert stats["baseline_metric"] is None and stats["history"][0]["published"]
    assert (model_dir / "liver_resnet_lite.pt").read_bytes() != shipped
    # the model the round replaced is kept for a roll-back (it was lost)
    assert (model_dir / "liver_resnet_lite.pt.previous").read_bytes() == shipped


def test_trainer_cli_reads_options_as_the_server_does(tmp_path, monkeypatch):
    """--model-dir is --model_dir (it was passed on as a request key, and the run trained 100 epochs
    into the app's own weights); a switch alone is true; bad values stop the run before it starts."""
    import pytest

    import lib.trainers.cli as cli

    seen = {}

    from lib.trainers import make_trainer

    class FakeTrainer:  # the real task's options, no training
        def __init__(self, name, model_dir, app_conf, conf):
            self.real, self.model_dir = make_trainer(name, model_dir, app_conf, conf), model_dir
            self._stats_path = self.real._stats_path

        def config(self):
            return self.real.config()

        def __call__(self, request, store):
            seen.update(request=request, model_dir=self.model_dir)
            return {}

    fake_trainer = FakeTrainer

    monkeypatch.setattr(cli, "make_trainer", fake_trainer)
    cases = _datalists(tmp_path)
    cli.main(["--train-ds", str(tmp_path / "train.json"), "--model-dir", str(tmp_path / "m"), "--max-epochs", "1",
              "--dice_batch", "--lr=0.01", "--name=my-run", "--models", "liver_resnet"])
    assert seen["model_dir"] == str(tmp_path / "m")
    assert {k: seen["request"][k] for k in ("max_epochs", "dice_batch", "lr", "name")} == {
        "max_epochs": 1, "dice_batch": True, "lr": 0.01, "name": "my-run"}
    assert seen["request"]["train_ds"] == str(tmp_path / "train.json") and len(cases) == 2
    for bad in (["--max_epochs", "0"], ["--lr", "-1"], ["--dice_batch", "maybe"]):
        with pytest.raises(SystemExit):
            cli.main(["--train_ds", str(tmp_path / "train.json"), "--model_dir", str(tmp_path / "m")] + bad)


def test_trainer_cli_refuses_typos_and_mistakes_before_training(tmp_path, capsys):
    """A misspelt option (--max_epoch) trained 100 epochs with the defaults, as the server refuses it;
    a wrong model, preset, folder or datalist gave a traceback, or created the mistyped folder."""
    import lib.trainers.cli as cli

    _datalists(tmp_path)
    train = ["--train_ds", str(tmp_path / "train.json"), "--model_dir", str(tmp_path / "m")]
    (tmp_path / "gone.json").write_text(json.dumps([{"image": str(tmp_path / "no.nii.gz"), "label": "x.nii.gz"}]))
    cases = [
        (train + ["--max_epoch", "1"], "unknown training option(s) ['--max_epoch']"),
        (train + ["--frobnicate"], "--frobnicate"),
        (train + ["--models", "liver_resnet,foo"], "--models: unknown ['foo']"),
        (train + ["--preset", "bogus"], "invalid choice: 'bogus'"),
        (["--model_dir", str(tmp_path / "m")], "give --datastore"),
        (["--datastore", str(tmp_path / "no_such_store"), "--model_dir", str(tmp_path / "m")], "is not a folder"),
        (["--train_ds", str(tmp_path / "gone.json"), "--model_dir", str(tmp_path / "m")], "2 file(s) that do not exist"),
        (["--train_ds", str(tmp_path / "missing.json"), "--model_dir", str(tmp_path / "m")], "cannot read the datalist"),
        (train + ["--pretrained_path", str(tmp_path / "none.pt")], "is not a file"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, argv
    assert not (tmp_path / "no_such_store").exists() and not (tmp_path / "m").exists()


def test_pretrained_path_wins_over_the_model_in_place_and_must_fit(tmp_path):
    """Given to the CLI, pretrained_path was dropped without a word when the model folder already held a
    model (the run continued from that one); weights of another network loaded 0 tensors and the run
    trained from random weights, logged at INFO only."""
    import torch
    from monailabel.tasks.train.basic_train import Context

    from lib.conf import AppConf
    from lib.model_io import ModelNotReadyError, load_checkpoint, save_checkpoint
    from lib.networks import build_network
    from lib.trainers import make_trainer

    model_dir, _ = _shipped_stage_one(tmp_path)
    fresh = build_network("resnet", "lite", 1)
    save_checkpoint(str(tmp_path / "init.pt"), fresh, "resnet", "lite", 1)
    save_checkpoint(str(tmp_path / "vgg.pt"), build_network("vgg", "lite", 1), "vgg", "lite", 1)
    trainer = make_trainer("liver_resnet", str(model_dir), AppConf.from_conf({}, str(model_dir)), {})

    def network(request):
        context = Context()
        context.request = request
        return trainer.network(context)

    key = next(iter(fresh.state_dict()))
    shipped, _ = load_checkpoint(str(model_dir / "liver_resnet_lite.pt"))
    assert torch.equal(network({}).state_dict()[key], shipped.state_dict()[key])  # no pretrained_path: the model in place, continued
    assert torch.equal(network({"pretrained_path": str(tmp_path / "init.pt")}).state_dict()[key],
                       fresh.state_dict()[key])
    with pytest.raises(ModelNotReadyError, match="does not fit liver_resnet"):
        network({"pretrained_path": str(tmp_path / "vgg.pt")})


def test_a_weight_average_that_does_worse_keeps_the_model_in_place(tmp_path):
    """swa_from with publish: better: the average is validated like any epoch and not published when
    it does worse than the model in place before the run (it was published unvalidated)."""
    from lib.trainers.cli import main

    _datalists(tmp_path)
    model_dir, shipped = _shipped_stage_one(tmp_path)
    main(["--models", "liver_resnet", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
          "--val_ds", str(tmp_path / "val.json"), "--max_epochs", "2", "--swa_from", "0.5", "--samples_per_volume",
          "2", "--train_batch_size", "2", "--dataset", "Dataset", "--lr", "50", "--lr_decay_from", "50"])
    assert not (model_dir / "liver_resnet_lite_stats.json").exists()  # nothing published: the run's are its own
    stats = json.loads((model_dir / "liver_resnet_lite_stats_last_run.json").read_text())
    assert stats["swa_epochs"] == [2]
    assert stats["swa_metric"] < stats["baseline_metric"] and not stats["swa_published"]
    assert stats["kept_model_in_place"]
    assert (model_dir / "liver_resnet_lite.pt").read_bytes() == shipped


def test_a_round_on_one_labelled_volume_still_compares_with_the_model_in_place(tmp_path, capsys):
    """With no held-out volume (a site's first corrected label), publish: better validates the model in
    place and each epoch on the training volume itself: a round that does worse keeps the model (it was
    published unvalidated, judged on its training Dice)."""
    from lib.trainers.cli import main

    _datalists(tmp_path)
    model_dir, shipped = _shipped_stage_one(tmp_path)
    main(["--models", "liver_resnet", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
          "--max_epochs", "1", "--samples_per_volume", "2", "--train_batch_size", "2", "--dataset", "Dataset",
          "--lr", "50", "--lr_decay_from", "50"])
    assert not (model_dir / "liver_resnet_lite_stats.json").exists()  # nothing published: the run's are its own
    stats = json.loads((model_dir / "liver_resnet_lite_stats_last_run.json").read_text())
    assert stats["validated_on_training_volumes"] and stats["baseline_metric"] > 0.4
    assert "val_mean_dice" in stats["history"][0] and not stats["history"][0]["published"]
    assert stats["kept_model_in_place"]
    # the CLI's last line says so, with the run's own best epoch (it gave the model in place's metric as the run's)
    assert stats["best_metric"] == pytest.approx(stats["history"][0]["val_mean_dice"])
    assert stats["best_metric"] < stats["baseline_metric"]
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["published"] is False and last["best_metric"] == pytest.approx(stats["best_metric"])
    assert last["baseline_metric"] == pytest.approx(stats["baseline_metric"])
    assert (model_dir / "liver_resnet_lite.pt").read_bytes() == shipped


def test_the_stats_file_keeps_its_layout_while_the_model_in_place_is_validated(tmp_path):
    """MONAI Label's publisher copied its own stats layout over the app's after every validation, the
    model-in-place one included: a run stopped before its first epoch ended left no history."""
    from lib.trainers.cli import main
    from lib.trainers.liver import TrainingProgress

    _datalists(tmp_path)
    model_dir, _ = _shipped_stage_one(tmp_path)
    stats_file = model_dir / "liver_resnet_lite_stats.json"
    stats_file.write_text(json.dumps({"task": "liver_resnet", "history": [{"epoch": 1}], "done": True}))
    seen = []
    on_started = TrainingProgress.on_started

    def record(self, engine):  # the stats file right after the model in place was validated
        on_started(self, engine)
        seen.append(json.loads(stats_file.read_text()))

    TrainingProgress.on_started = record
    try:
        main(["--models", "liver_resnet", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
              "--val_ds", str(tmp_path / "val.json"), "--max_epochs", "1", "--samples_per_volume", "2",
              "--train_batch_size", "2", "--dataset", "Dataset"])
    finally:
        TrainingProgress.on_started = on_started
    assert seen and seen[0]["history"] == [{"epoch": 1}]  # the previous run's, untouched
    stats = json.loads(stats_file.read_text())
    assert stats["done"] and [h["epoch"] for h in stats["history"]] == [1] and "current_epoch" not in stats


def test_stage_one_maps_of_earlier_versions_are_deleted(tmp_path):
    """The cascade's cache of stage-one maps keeps one stage-one version: the earlier ones (50 MB per
    volume each) piled up round after round."""
    import numpy as np

    from lib.conf import AppConf
    from lib.trainers.liver import cache_stage1_maps

    cases = _datalists(tmp_path)
    model_dir, _ = _shipped_stage_one(tmp_path)
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    stale = maps_dir / "0123456789ab_1700000000.npy"  # a map of an earlier stage one
    np.save(stale, np.zeros(3))
    out = cache_stage1_maps(cases[:1], str(model_dir / "liver_resnet_lite.pt"), str(maps_dir),
                            AppConf.from_conf({}, str(model_dir)))
    assert not stale.exists()
    assert [p.name for p in maps_dir.iterdir()] == [os.path.basename(out[0]["maps"])]
    assert np.load(out[0]["maps"]).shape[0] == 2  # (lesion, liver)


def test_an_image_replaced_under_the_same_id_gets_new_stage_one_maps(tmp_path):
    """The maps are cached per volume file, not per path alone: an image deleted and added again under
    its id with other voxels got the old image's maps (the cascade trained on them, or failed on a
    shape mismatch until stage one was published again)."""
    import numpy as np

    from lib.conf import AppConf
    from lib.trainers.liver import cache_stage1_maps

    cases = []
    for d in _datalists(tmp_path):  # copies: one is overwritten below
        cases.append({"image": shutil.copy(d["image"], tmp_path / f"{len(cases)}.nii.gz"), "label": d["label"]})
    model_dir, _ = _shipped_stage_one(tmp_path)
    maps_dir = tmp_path / "maps"
    conf = AppConf.from_conf({}, str(model_dir))
    first = cache_stage1_maps(cases[:1], str(model_dir / "liver_resnet_lite.pt"), str(maps_dir), conf)[0]["maps"]
    again = cache_stage1_maps(cases[:1], str(model_dir / "liver_resnet_lite.pt"), str(maps_dir), conf)[0]["maps"]
    assert again == first  # unchanged: cached
    shutil.copyfile(cases[1]["image"], cases[0]["image"])  # another volume under the first one's name
    new = cache_stage1_maps(cases[:1], str(model_dir / "liver_resnet_lite.pt"), str(maps_dir), conf)[0]["maps"]
    assert new != first
    other = cache_stage1_maps(cases[1:2], str(model_dir / "liver_resnet_lite.pt"), str(maps_dir), conf)[0]["maps"]
    assert np.array_equal(np.load(new), np.load(other))


def test_a_kept_model_keeps_its_stats_and_curve(tmp_path):
    """The stats JSON and learning curve beside the model describe the model in place: a round that kept
    it (publish: better) leaves its own in *_last_run.*, and puts the model's back."""
    from lib.trainers.cli import main

    _datalists(tmp_path)
    model_dir, shipped = _shipped_stage_one(tmp_path)
    stats_file, curve = model_dir / "liver_resnet_lite_stats.json", model_dir / "liver_resnet_lite_curve.png"
    stats_file.write_text(json.dumps({"task": "liver_resnet", "history": [{"epoch": 30}], "done": True}))
    curve.write_bytes(b"the curve of the model in place")
    before = stats_file.read_bytes()
    main(["--models", "liver_resnet", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
          "--val_ds", str(tmp_path / "val.json"), "--max_epochs", "1", "--samples_per_volume", "2",
          "--train_batch_size", "2", "--dataset", "Dataset", "--lr", "50", "--lr_decay_from", "50"])
    assert (model_dir / "liver_resnet_lite.pt").read_bytes() == shipped
    assert stats_file.read_bytes() == before and curve.read_bytes() == b"the curve of the model in place"
    run = json.loads((model_dir / "liver_resnet_lite_stats_last_run.json").read_text())
    assert run["kept_model_in_place"] and run["history"][0]["epoch"] == 1
    assert (model_dir / "liver_resnet_lite_curve_last_run.png").read_bytes()[:4] == b"\x89PNG"
    main(["--models", "liver_resnet", "--model_dir", str(model_dir), "--train_ds", str(tmp_path / "train.json"),
          "--val_ds", str(tmp_path / "val.json"), "--max_epochs", "1", "--samples_per_volume", "2",
          "--train_batch_size", "2", "--dataset", "Dataset", "--publish", "best"])  # publishes: its files now
    assert json.loads(stats_file.read_text())["history"][0]["published"]
    assert not (model_dir / "liver_resnet_lite_stats_last_run.json").exists()


def test_numbers_no_run_can_take_are_refused_at_once():
    from lib.trainers.liver import check_recipe

    for bad, words in (({"lr": 1e308}, "lr must be > 0, <= 3.40282e+38"),  # overflowed in the training process
                       ({"samples_per_volume": 1_000_000}, "<= 1000"),  # filled the memory
                       ({"train_batch_size": 5000}, "<= 1000"), ({"val_split": 1}, "< 1"),
                       # no epoch validated: "no epoch validated as well as the model in place", a stale curve
                       ({"max_epochs": 1, "val_interval": 2}, "val_interval"), ({"val_interval": 500}, "max_epochs")):
        with pytest.raises(ValueError, match=words.replace("+", r"\+")):
            check_recipe(bad)
    check_recipe({"lr": 50, "samples_per_volume": 1000, "val_split": 0.9})  # large, but a run can take them


def test_a_validation_split_that_leaves_no_training_volume_keeps_one(tmp_path):
    """val_split 0.9 of 2 labelled volumes took both for validation: the run failed in torch's sampler."""
    from lib.trainers.cli import main

    (tmp_path / "studies" / "labels" / "final").mkdir(parents=True)
    studies = small_phantom_studies(tmp_path / "studies", seed=60)
    for i in range(2):
        shutil.move(studies / f"label{i}.nii.gz", studies / "labels" / "final" / f"case{i}.nii.gz")
    model_dir = tmp_path / "model"
    main(["--models", "liver_resnet", "--model_dir", str(model_dir), "--datastore", str(studies),
          "--max_epochs", "1", "--samples_per_volume", "2", "--train_batch_size", "2", "--val_split", "0.9",
          "--pretrained", "false"])
    stats = json.loads((model_dir / "liver_resnet_lite_stats.json").read_text())
    assert [h["epoch"] for h in stats["history"]] == [1]
