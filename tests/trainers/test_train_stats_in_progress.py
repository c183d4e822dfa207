"""The stats JSON and learning curve beside the model describe the model in place (docs/USAGE.md): a run
writes its own epochs to the *_last_run files and replaces the model's only when it publishes an epoch.
They were written over every epoch and put back only when the run completed, so a run stopped
(DELETE /train, a killed process) before publishing left the model's history replaced by its own for good,
and GET /info's train_stats described the running run, not the model in place."""

import json
from types import SimpleNamespace

import torch

import support  # noqa: F401  (the app's lib on sys.path)


def _progress(model_dir, run_id, baseline=None):
    """A TrainingProgress as finalize() makes it, on a tiny network (no data, no training)."""
    from lib.trainers.liver import TrainingProgress

    task = SimpleNamespace(task="liver_resnet", preset="lite", arch="resnet", in_channels=1,
                           publish_file=str(model_dir / "liver_resnet_lite.pt"),
                           _stats_path=str(model_dir / "liver_resnet_lite_stats.json"),
                           uses_liver_box=lambda ctx: False)
    net = torch.nn.Linear(2, 2)
    ctx = SimpleNamespace(run_id=run_id, max_epochs=5, trainer=SimpleNamespace(state=SimpleNamespace(epoch=0)),
                          evaluator=SimpleNamespace(), network=net,
                          optimizer=torch.optim.SGD(net.parameters(), lr=0.01), train_datalist=[{}],
                          val_datalist=[{}], request={})
    progress = TrainingProgress(task, ctx)
    progress.baseline = progress.bar = baseline  # as on_started sets them (publish: better)
    return progress


def _epoch(progress, dice):
    """One validated epoch's handler call (Events.EPOCH_COMPLETED of the evaluator)."""
    progress.context.trainer.state.epoch += 1
    progress.losses = [0.5]
    progress(SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": dice, "val_liver_dice": dice})))


def test_a_stopped_run_leaves_the_model_stats_and_curve_untouched(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model = model_dir / "liver_resnet_lite.pt"
    model.write_bytes(b"the model in place")
    stats_file, curve = model_dir / "liver_resnet_lite_stats.json", model_dir / "liver_resnet_lite_curve.png"
    stats_file.write_text(json.dumps({"task": "liver_resnet", "run_id": "model", "history": [{"epoch": 30}],
                                      "done": True}))
    curve.write_bytes(b"the curve of the model in place")
    before = stats_file.read_bytes()

    # a run whose epochs do worse than the model in place, stopped before it completes (no on_completed)
    progress = _progress(model_dir, "stopped", baseline=0.9)
    _epoch(progress, 0.5)
    _epoch(progress, 0.6)
    assert model.read_bytes() == b"the model in place"
    assert stats_file.read_bytes() == before and curve.read_bytes() == b"the curve of the model in place"
    # the running run's own stats and curve are in the *_last_run files meanwhile
    run = json.loads((model_dir / "liver_resnet_lite_stats_last_run.json").read_text())
    assert run["run_id"] == "stopped" and not run["done"] and [h["epoch"] for h in run["history"]] == [1, 2]
    assert (model_dir / "liver_resnet_lite_curve_last_run.png").read_bytes()[:4] == b"\x89PNG"

    # the next run keeps the model too and completes: the model's files are still its own (not the stopped run's)
    progress = _progress(model_dir, "kept", baseline=0.9)
    _epoch(progress, 0.5)
    progress.on_completed(None)
    assert stats_file.read_bytes() == before and curve.read_bytes() == b"the curve of the model in place"
    run = json.loads((model_dir / "liver_resnet_lite_stats_last_run.json").read_text())
    assert run["run_id"] == "kept" and run["done"] and run["kept_model_in_place"]
    # its best epoch is its own (it reported the model in place's score as the run's)
    assert run["best_metric"] == 0.5 and run["baseline_metric"] == 0.9

    # a run that publishes an epoch, then is stopped: the files beside the model describe the published model's run
    progress = _progress(model_dir, "published", baseline=0.9)
    _epoch(progress, 0.95)
    assert model.read_bytes() != b"the model in place"
    stats = json.loads(stats_file.read_text())
    assert stats["run_id"] == "published" and [h["published"] for h in stats["history"]] == [True]
    assert curve.read_bytes()[:4] == b"\x89PNG"
    published = stats_file.read_bytes(), curve.read_bytes()
    _epoch(progress, 0.7)  # not published: the model's files still describe it, up to its published epoch
    assert (stats_file.read_bytes(), curve.read_bytes()) == published
    progress.on_completed(None)  # completes: the whole run beside the model, no *_last_run files
    stats = json.loads(stats_file.read_text())
    assert stats["done"] and [h["published"] for h in stats["history"]] == [True, False]
    assert not (model_dir / "liver_resnet_lite_stats_last_run.json").exists()
    assert not (model_dir / "liver_resnet_lite_curve_last_run.png").exists()
