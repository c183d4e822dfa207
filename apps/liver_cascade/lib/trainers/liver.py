"""Train tasks: the paper's 2D recipe on slices of the datastore's 3D volumes.

``liver_resnet`` and ``vgg_fcn`` learn from the image alone; ``liver_cascade``
learns from (image, stage-one lesion map, stage-one liver map), the maps being
computed once per run with the current stage-one model and cached on disk.
Validation runs the real slice-wise inference on held-out volumes and reports
per-volume liver and lesion Dice; the best model is published atomically to the
file the infer task reads, so the running server picks it up on its next request.
"""

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from ignite.engine import Events
from monai.handlers import IgniteMetricHandler, LrScheduleHandler, from_engine
from monai.inferers import Inferer
from monai.losses import DiceCELoss, DiceLoss
from monai.metrics import DiceMetric
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    EnsureChannelFirstd,
    EnsureTyped,
    Lambdad,
    LoadImaged,
    Orientationd,
    Rand2DElasticd,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
    Resized,
    SpatialPadd,
)
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from lib.conf import PUBLISH_MODES, AppConf, as_bool, check_switch, parse_choice
from lib.datastore import atomic_write
from lib.model_io import ModelCache, ModelNotReadyError, keep_previous, load_checkpoint, save_checkpoint
from lib.networks import build_network
from lib.settings import HU_WINDOW, LABELS, NUM_CLASSES, PRESETS, model_filename
from lib.transforms.inference import class_probs, predict_slices
from lib.transforms.interaction import SimulateClicksd
from lib.transforms.slices import CropToLiverBoxd, LoadStageOneMapsd, SampleAxialSlicesd, SimulateCorrectedLiverd
from lib.transforms.transforms import hu_window, liver_box

logger = logging.getLogger(__name__)

# The paper's recipe (Bi et al. 2017); every key can be overridden per request.
RECIPE = {
    "max_epochs": 100,
    "train_batch_size": 10,
    "val_batch_size": 1,
    "lr": 0.0016,  # fixed for the first phase
    "lr_decay_from": 0.0008,  # linear decay to 0 in the second phase
    "first_phase": 0.6,  # 60 of 100 epochs, scaled to max_epochs
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "samples_per_volume": 10,
    "lesion_ratio": 1.0,
    "none_ratio": 1.0,
    "liver_ratio": 0.0,
    "dice_weight": 0.0,  # 0: per-pixel cross-entropy only (the paper)
    "dice_batch": False,  # Dice over the whole batch (MONAI's DiceLoss batch=True) instead of per slice
    "lesion_weight": 1.0,  # cross-entropy weight of the lesion class (1: unweighted, the paper)
    "zoom": "0.8,1.2",
    "flip_prob": 0.5,
    "hu_shift": 0.0,  # stage one: random shift by up to +-N HU (contrast-phase variation); 0: off (the paper)
    "contrast_scale": 0.0,  # stage one: random contrast scaling by up to +-N (fraction); 0: off
    "rotate_deg": 0.0,  # random in-plane rotation by up to +-N degrees; 0: off (the paper)
    "elastic": 0.0,  # random elastic deformation, up to N (control-grid units, 1/6 of the slice apart); 0: off
    "deform_prob": 0.5,  # probability of the rotation/elastic deformation per slice
    "val_split": 0.2,
    "val_interval": 1,  # validate (and maybe publish) every N epochs
    # cascade only: simulated annotator livers in the liver-map channel. The shipped cascade was trained
    # so; inference no longer feeds a corrected liver to stage two (it bounds the result instead)
    "corrected_liver_prob": 0.3,
    "click_prob": 0.3,  # cascade only: simulated lesion clicks
    "liver_box": False,  # cascade only: train (and so run) stage two on the liver's box; off: whole slice (the paper)
    "swa_from": 0.0,  # >0: publish the average of the weights after each epoch past this fraction of max_epochs
    # (batch-norm statistics recomputed on the training data) instead of the best-validation epoch; 0: off
    "dataset": "CacheDataset",
    "dataloader": "DataLoader",
    "num_workers": 0,  # training-data loader processes (e.g. 8 with "dataset": "Dataset" on LiTS-sized data)
    "publish": PUBLISH_MODES[0],  # lib/conf.py; --conf publish sets the server's default
}


# RECIPE keys whose value must be > 0 (the other numbers: >= 0), and those that are fractions
_POSITIVE = {"max_epochs", "train_batch_size", "val_batch_size", "lr", "samples_per_volume", "val_interval",
             "lesion_weight"}
_FRACTIONS = {"first_phase", "momentum", "flip_prob", "deform_prob", "corrected_liver_prob", "click_prob",
              "swa_from", "val_split"}
# slices held in memory at once: a million slices per volume filled the memory before the first step
_MAXIMA = {"samples_per_volume": 1000, "train_batch_size": 1000}
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # the networks' precision: lr 1e308 overflowed in the optimiser


# keys a training request may carry besides its task's config (what /info lists): MONAI Label's own and
# its client's (client_id, added by monailabel.client, which Slicer uses)
TRAIN_REQUEST_KEYS = frozenset({"model", "client_id", "gpus", "tracking", "tracking_uri", "tracking_experiment_name",
                                "tracking_run_name"})


def known_train_keys(trainer) -> set:
    """The keys a training request for ``trainer`` may carry: any other is a typo ("max_epoch" trained with
    the default 100 epochs)."""
    return set(trainer.config()) | TRAIN_REQUEST_KEYS


def check_recipe(params: Dict[str, Any]) -> None:
    """Raise ValueError, naming the key, for a training request value RECIPE cannot take (checked when
    the request arrives, so it is answered 400 rather than failing later in the training process).
    Keys that are not RECIPE's (MONAI Label's own, a client's) are left to their readers."""
    for key, value in params.items():
        default = RECIPE.get(key)
        if isinstance(default, bool):
            check_switch(key, value)
        elif isinstance(default, (int, float)):
            try:
                number = float(value)
                if isinstance(value, bool) or not math.isfinite(number):
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(f"training parameter {key} must be a number, got {value!r}") from None
            if isinstance(default, int) and number != int(number):
                raise ValueError(f"training parameter {key} must be a whole number, got {value!r}")
            low_ok = number > 0 if key in _POSITIVE else number >= 0
            top = 1.0 if key in _FRACTIONS else _MAXIMA.get(key, _FLOAT32_MAX)
            too_high = number >= top if key == "val_split" else number > top
            if not low_ok or too_high:
                bound = "> 0" if key in _POSITIVE else ">= 0"
                bound += f", < {top:g}" if key == "val_split" else f", <= {top:g}"
                raise ValueError(f"training parameter {key} must be {bound}, got {value!r}")
        elif key == "publish":
            parse_choice(key, value, PUBLISH_MODES)
    if "val_interval" in params or "max_epochs" in params:  # both numbers by now
        interval = float(params.get("val_interval", RECIPE["val_interval"]))
        epochs = float(params.get("max_epochs", RECIPE["max_epochs"]))
        if interval > epochs:  # no epoch would be validated, nor published
            raise ValueError(f"training parameter val_interval ({interval:g}) is more than max_epochs ({epochs:g}): "
                             "no epoch would be validated")
        elif key == "zoom":
            try:
                lo, hi = (float(v) for v in str(value).split(","))
                if not 0 < lo <= hi < math.inf:
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(f"training parameter zoom must be 'low,high' with 0 < low <= high, got {value!r}") from None


class ClassWeightedDiceCELoss(torch.nn.Module):
    """Cross-entropy with per-class weights plus MONAI's Dice on the foreground classes.

    (MONAI's DiceCELoss shares one weight vector between its Dice, which drops the
    background channel, and its cross-entropy, which keeps it.)"""

    def __init__(self, dice_weight: float, class_weights: List[float], batch: bool = False):
        super().__init__()
        self.dice_weight = dice_weight
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=batch)
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32))

    def forward(self, logits, target):
        ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long(), weight=self.class_weights)
        return ce + self.dice_weight * self.dice(logits, target) if self.dice_weight else ce


def lr_factor(epoch: int, max_epochs: int, lr: float, lr2: float, first_phase: float) -> float:
    """Multiplier of ``lr`` at ``epoch`` (0-based): fixed, then linear from lr2 to 0."""
    first = max(1, int(round(first_phase * max_epochs)))
    if epoch < first:
        return 1.0
    rest = max(1, max_epochs - first)
    return (lr2 / lr) * max(0.0, 1.0 - (epoch - first) / rest)


class SliceVolumeInferer(Inferer):
    """Validation on whole volumes with the same slice-wise code as inference.

    With ``use_liver_box`` (stage two, inputs (image, lesion map, liver map)), the network runs on the
    liver's box and stage one's probabilities stay outside it, as in the infer task."""

    def __init__(self, scales, batch_size=16, use_liver_box=False):
        self.scales = scales
        self.batch_size = batch_size
        self.use_liver_box = use_liver_box

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        vol = inputs[0]  # (C, X, Y, Z)
        c, h, w, n = vol.shape
        was_training = network.training
        network.eval()
        box, out = None, None
        if self.use_liver_box and c == 3:
            box = liver_box(vol[2])
            out = class_probs(liver=vol[2], lesion=vol[1]).half()  # stage one's, kept outside the box
        probs = predict_slices(
            network, lambda idx: vol[..., idx].permute(3, 0, 1, 2), n, (h, w), self.scales, self.batch_size,
            device=vol.device, box=box, out=out,
        )
        network.train(was_training)
        return probs.float()[None]


def to_liver_lesion(x: torch.Tensor) -> torch.Tensor:
    """(1, ...) labels -> (2, ...) binary: whole liver (1 or 2), lesion (2)."""
    return torch.cat([x >= LABELS["liver"], x == LABELS["lesion"]]).float()


class LiverSliceTrainer(BasicTrainTask):
    def __init__(self, model_dir: str, app_conf: AppConf, task: str, arch: str, in_channels: int,
                 description: str = "", **kwargs):
        self.app_conf = app_conf
        self.task = task
        self.arch = arch
        self.in_channels = in_channels
        self.preset = app_conf.preset
        self.publish_file = os.path.join(model_dir, model_filename(task, self.preset))
        config = dict(RECIPE)
        config.update({"name": f"train_{task}", "tracking": app_conf.tracking, "pretrained": True,
                       "publish": app_conf.publish})
        tracking_uri = ""
        if app_conf.tracking == "mlflow":  # a local sqlite store: MONAI Label's file:// default is rejected
            tracking_uri = "sqlite:///" + os.path.join(model_dir, "mlflow.db")
        super().__init__(
            model_dir=model_dir,
            description=description,
            config=config,
            amp=torch.cuda.is_available(),
            publish_path=None,  # we publish our own checkpoint format (atomic) in finalize()
            stats_path=os.path.join(model_dir, f"{task}_{self.preset}_stats.json"),
            key_metric_filename=f"{task}_key_metric.pt",
            labels=dict(LABELS),
            tracking="mlflow" if app_conf.tracking == "mlflow" else None,
            tracking_uri=tracking_uri,
            **kwargs,
        )

    # -- network, optimiser, loss ---------------------------------------------
    def network(self, context: Context):
        net = build_network(self.arch, self.preset, self.in_channels)
        explicit = context.request.get("pretrained_path")  # the CLI's: asked for this run, so it wins
        init = explicit or self.app_conf.pretrained_path
        resume = not explicit and as_bool(context.request.get("pretrained", True)) and os.path.exists(self.publish_file)
        if resume and init:
            logger.warning(f"{self.task}: continuing from the published model {self.publish_file}; pretrained_path "
                           f"{init} (--conf) initialises only a first round (give it to the CLI to start from it)")
        path = self.publish_file if resume else init
        if path:
            if not os.path.exists(path):
                raise ModelNotReadyError(f"pretrained_path {path} does not exist (no download is attempted)")
            src, _ = load_checkpoint(path)
            own = net.state_dict()
            fit = {k: v for k, v in src.state_dict().items() if k in own and own[k].shape == v.shape}
            if len(fit) < len(own) / 2:  # another network's weights: training would start from random ones
                raise ModelNotReadyError(
                    f"{path} does not fit {self.task} ({self.arch}, preset {self.preset}): only {len(fit)} of its "
                    f"{len(own)} tensors match by name and shape; give weights of the same network")
            net.load_state_dict(fit, strict=False)
            left = len(own) - len(fit)
            (logger.warning if left else logger.info)(
                f"Initialised {self.task} from {path}: {len(fit)} of {len(own)} tensors"
                + (f"; {left} keep their random initial values" if left else ""))
        return net

    def optimizer(self, context: Context):
        r = context.request
        return torch.optim.SGD(context.network.parameters(), lr=float(r["lr"]), momentum=float(r["momentum"]),
                               weight_decay=float(r["weight_decay"]))

    def lr_scheduler_handler(self, context: Context):
        r = context.request
        lr, lr2, first, epochs = float(r["lr"]), float(r["lr_decay_from"]), float(r["first_phase"]), int(r["max_epochs"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            context.optimizer, lambda e: lr_factor(e, epochs, lr, lr2, first)
        )
        return LrScheduleHandler(sched, print_lr=True, epoch_level=True)

    def loss_function(self, context: Context):
        w = float(context.request.get("dice_weight", 0.0))
        lesion = float(context.request.get("lesion_weight", 1.0))
        # per slice (MONAI's default), a slice without lesion costs ~1 of lesion Dice loss unless its lesion
        # probabilities sum to under the 1e-5 smoothing; over the batch, the batch's lesion pixels count
        # together (docs/RESULTS.md)
        batch = as_bool(context.request.get("dice_batch", False))
        if lesion == 1.0:
            return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=w, lambda_ce=1.0, include_background=False,
                              batch=batch)
        return ClassWeightedDiceCELoss(w, [1.0, 1.0, lesion], batch=batch)

    def _load_checkpoint(self, context, train_handlers):
        return  # initialisation happens in network(): our own checkpoint format

    # -- data -------------------------------------------------------------------
    def _volume_transforms(self, context: Context) -> List[Any]:
        t: List[Any] = [
            LoadImaged(keys=("image", "label"), image_only=True),
            EnsureChannelFirstd(keys=("image", "label")),
            Orientationd(keys=("image", "label"), axcodes="RAS"),
            hu_window("image"),
        ]
        if self.in_channels == 3:
            t.append(LoadStageOneMapsd(keys="image"))
        t.append(EnsureTyped(keys=("image", "label"), track_meta=False))
        return t

    def train_pre_transforms(self, context: Context):
        r = context.request
        base = PRESETS[self.preset].base_size
        zmin, zmax = (float(z) for z in str(r["zoom"]).split(","))
        t = self._volume_transforms(context)
        if self.uses_liver_box(context):  # validation runs on whole volumes: its inferer takes the box
            t.append(CropToLiverBoxd(keys=("image", "label")))
        t += [
            SampleAxialSlicesd(
                keys=("image", "label"),
                num_samples=int(r["samples_per_volume"]),
                ratios={"lesion": float(r["lesion_ratio"]), "none": float(r["none_ratio"]),
                        "liver": float(r["liver_ratio"])},
            ),
            Resized(keys=("image", "label"), spatial_size=base, size_mode="longest", mode=("bilinear", "nearest")),
            SpatialPadd(keys=("image", "label"), spatial_size=(base, base)),
            RandZoomd(keys=("image", "label"), prob=0.8, min_zoom=zmin, max_zoom=zmax, keep_size=True,
                      mode=("bilinear", "nearest")),
        ]
        rotate, elastic = float(r.get("rotate_deg", 0.0)), float(r.get("elastic", 0.0))
        if rotate or elastic:  # not in the paper: one patient's liver made to look like others'
            t.append(Rand2DElasticd(keys=("image", "label"), spacing=(base // 6, base // 6),
                                    magnitude_range=(0.0, elastic), rotate_range=np.deg2rad(rotate),
                                    prob=float(r.get("deform_prob", 0.5)), mode=("bilinear", "nearest"),
                                    padding_mode="zeros"))
        t += [
            RandFlipd(keys=("image", "label"), prob=float(r["flip_prob"]), spatial_axis=0),
            RandFlipd(keys=("image", "label"), prob=float(r["flip_prob"]), spatial_axis=1),
        ]
        shift, scale = float(r.get("hu_shift", 0.0)), float(r.get("contrast_scale", 0.0))
        if self.in_channels == 1:  # stage one: the CT is the only channel (stage two's maps must not move)
            lo, hi = HU_WINDOW
            if shift:  # the image is the HU window scaled to [0, 1]: N HU is N / (hi - lo)
                t.append(RandShiftIntensityd(keys="image", offsets=shift / (hi - lo), prob=0.8))
            if scale:
                t.append(RandScaleIntensityd(keys="image", factors=scale, prob=0.8))
        if self.in_channels == 3:
            t.append(SimulateCorrectedLiverd(keys="image", prob=float(r["corrected_liver_prob"])))
            t.append(SimulateClicksd(keys="image", prob=float(r["click_prob"])))
        t.append(EnsureTyped(keys=("image", "label"), dtype=(torch.float32, torch.long), track_meta=False))
        return t

    def train_data_loader(self, context, num_workers=0, shuffle=True):
        # train_batch_size counts slices (the paper's batch of 10); each volume yields samples_per_volume
        per_volume = int(context.request["samples_per_volume"])
        volumes = max(1, int(context.train_batch_size) // max(1, per_volume))
        dataset, datalist = self._dataset(context, context.train_datalist, is_train=True)
        workers = min(int(context.request.get("num_workers", num_workers)), os.cpu_count() or 1)
        logger.info(f"{self.task}: {len(datalist)} training volumes, {volumes} volume(s) x {per_volume} slices per batch, "
                    f"{workers} loader worker(s)")
        return self._dataloader(context, dataset, volumes, workers, shuffle)

    def train_post_transforms(self, context: Context):
        return [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True),
            Lambdad(keys=("pred", "label"), func=to_liver_lesion),
        ]

    def val_pre_transforms(self, context: Context):
        return self._volume_transforms(context)

    def val_post_transforms(self, context: Context):
        return self.train_post_transforms(context)[1:]  # the inferer returns probabilities

    def val_inferer(self, context: Context):
        return SliceVolumeInferer(self.app_conf.scales[:1], self.app_conf.batch_size, self.uses_liver_box(context))

    def uses_liver_box(self, context: Context) -> bool:
        return self.in_channels == 3 and as_bool(context.request.get("liver_box", False))

    def train_key_metric(self, context: Context):
        return {"train_dice": lits_dice(from_engine(["pred", "label"]))}

    def val_key_metric(self, context: Context):
        return {"val_mean_dice": lits_dice(from_engine(["pred", "label"]))}

    def val_additional_metrics(self, context: Context):
        def channel(c):
            return lambda x: ([o["pred"][c : c + 1] for o in _as_list(x)], [o["label"][c : c + 1] for o in _as_list(x)])

        return {"val_liver_dice": lits_dice(channel(0)), "val_lesion_dice": lits_dice(channel(1))}

    def partition_datalist(self, context: Context, shuffle=False):
        context.validated_on_training_volumes = False
        if context.request.get("val_ds") or context.request.get("train_ds"):
            train, val = super().partition_datalist(context, shuffle)
        else:
            datalist = list(context.datalist)
            val_split = float(context.request.get("val_split", 0.2))
            n_val = int(round(val_split * len(datalist))) if val_split > 0 else 0
            if val_split > 0 and len(datalist) >= 2:
                n_val = max(1, n_val)
            if n_val >= len(datalist) > 0:  # val_split 0.9 of 3 images left none to train on: keep one
                n_val = len(datalist) - 1
                logger.warning(f"{self.task}: val_split {val_split} of {len(datalist)} labelled volume(s) leaves none "
                               f"to train on; {n_val} validate")
            # deterministic split by image name, so rounds are comparable
            datalist.sort(key=lambda d: hashlib.md5(os.path.basename(d["image"]).encode()).hexdigest())
            val, train = datalist[:n_val], datalist[n_val:]
        if not val and self.publishes_only_better(context):
            # no held-out volume (one labelled image, or val_split 0): the model in place is still compared
            # with each epoch, on the volumes this round trains on, so one corrected label cannot replace
            # a better model unseen
            val = list(train)
            context.validated_on_training_volumes = True
            logger.info(f"{self.task}: no held-out volume; validating on the {len(val)} training volume(s) to "
                        "compare with the model in place (publish: better)")
        logger.info(f"{self.task}: {len(train)} training volumes, {len(val)} validation volumes")
        return train, val

    def publishes_only_better(self, context: Context) -> bool:
        """publish: better with a model in place to compare with."""
        mode = parse_choice("publish", context.request.get("publish"), PUBLISH_MODES)
        return mode == "better" and os.path.exists(self.publish_file)

    def pre_process(self, request, datastore: Datastore):
        self._val_interval = max(1, int(request.get("val_interval", 1)))  # read by BasicTrainTask's handlers
        for key in ("train_ds", "val_ds"):  # explicit datalists (JSON files or lists) replace the datastore's
            if isinstance(request.get(key), str):
                with open(request[key]) as f:
                    request[key] = json.load(f)
        datalist = request.get("train_ds") or datastore.datalist()
        if not datalist:
            raise ValueError("No image has a final label in the datastore: save a label with tag 'final' first")
        return datalist

    # -- publishing and progress ---------------------------------------------------
    def finalize(self, context: Context):
        # MONAI Label's publisher would copy its own stats layout over ours after every validation (the
        # model-in-place one too, before the first epoch ends), so a run stopped early left no history:
        # it gets no stats path and writes only its per-run file in the run's folder
        stats_path, self._stats_path = self._stats_path, None
        try:
            super().finalize(context)
        finally:
            self._stats_path = stats_path
        if context.local_rank != 0:
            return
        progress = TrainingProgress(self, context)
        engine = context.evaluator if context.evaluator else context.trainer
        engine.add_event_handler(Events.EPOCH_COMPLETED, progress)
        context.trainer.add_event_handler(Events.STARTED, progress.on_started)
        context.trainer.add_event_handler(Events.ITERATION_COMPLETED, progress.on_iteration)
        swa_from = float(context.request.get("swa_from", 0.0))
        if swa_from > 0:
            swa = WeightAverage(self, context, first_epoch=int(swa_from * context.max_epochs) + 1, progress=progress)
            context.trainer.add_event_handler(Events.EPOCH_COMPLETED, swa.on_epoch)
            context.trainer.add_event_handler(Events.COMPLETED, swa.on_completed)
            progress.swa = swa
        context.trainer.add_event_handler(Events.COMPLETED, progress.on_completed)


def lits_dice(output_transform):
    """Mean per-volume Dice; 1 when prediction and reference are both empty (LiTS)."""
    return IgniteMetricHandler(
        metric_fn=DiceMetric(include_background=True, reduction="mean", ignore_empty=False),
        output_transform=output_transform,
    )


def _as_list(x):
    return x if isinstance(x, list) else [x]


def checkpoint_meta(task: "LiverSliceTrainer", ctx: Context, **extra) -> Dict[str, Any]:
    """What a published checkpoint records about the run that made it."""
    return {"task": task.task, "run_id": ctx.run_id, "trained_on": len(ctx.train_datalist),
            "validated_on": len(ctx.val_datalist or []), "liver_box": task.uses_liver_box(ctx),
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}


class WeightAverage:
    """Stochastic weight averaging (Izmailov et al. 2018), opt-in with ``swa_from``.

    The weights after every epoch from ``first_epoch`` on are averaged; at the end the batch-norm
    statistics are recomputed with one pass over the training data, the average is validated, and it is
    published in place of the best-validation checkpoint (a phantom validation set did not predict
    real-CT quality, docs/RESULTS.md); with ``publish: better``, only if it validates at least as well
    as the model in place before the run."""

    def __init__(self, task: "LiverSliceTrainer", context: Context, first_epoch: int, progress: "TrainingProgress"):
        self.task, self.context, self.first_epoch, self.progress = task, context, max(1, first_epoch), progress
        self.model: Optional[torch.optim.swa_utils.AveragedModel] = None
        self.epochs: List[int] = []
        self.score: Optional[float] = None  # val_mean_dice of the average, when there is a validation set
        self.published = False

    def _net(self):
        net = self.context.network
        return net.module if hasattr(net, "module") else net

    def on_epoch(self, engine):
        if engine.state.epoch < self.first_epoch:
            return
        if self.model is None:  # a copy; its first update_parameters() takes the weights as they are
            self.model = torch.optim.swa_utils.AveragedModel(self._net())
        self.model.update_parameters(self._net())
        self.epochs.append(engine.state.epoch)

    @torch.no_grad()
    def update_bn(self, loader, device):
        """Batch-norm running statistics of the averaged weights: a cumulative mean over one epoch."""
        bns = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        was_training = self.model.training
        self.model.train()
        for batch in loader:
            batch = batch[0] if isinstance(batch, list) else batch
            self.model(batch["image"].to(device))
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        self.model.train(was_training)

    def on_completed(self, engine):
        if self.model is None:
            logger.warning(f"[{self.task.task}] swa_from: no epoch reached {self.first_epoch}; nothing averaged")
            return
        self.update_bn(engine.state.dataloader, next(self._net().parameters()).device)
        ctx, progress = self.context, self.progress
        if ctx.evaluator is not None and not ctx.multi_gpu:
            self.score = progress.validate(self.model.module.state_dict())
        if progress.baseline is not None and self.score is not None and self.score < progress.baseline:
            logger.warning(f"[{self.task.task}] the average of epochs {self.epochs[0]}-{self.epochs[-1]} validates at "
                           f"{self.score:.4f}, below the model in place before the run ({progress.baseline:.4f}): "
                           "not published (publish: better)")
            return
        progress.publish(self.model.module, checkpoint_meta(self.task, ctx, epoch=engine.state.epoch,
                                                            swa_epochs=self.epochs, val_mean_dice=self.score))
        self.published = True
        progress.write(publish=True)  # its stats and curve beside it, should the run stop before it completes
        logger.info(f"[{self.task.task}] published the average of epochs {self.epochs[0]}-{self.epochs[-1]} "
                    f"({len(self.epochs)} epochs"
                    + (f", val_mean_dice {self.score:.4f}" if self.score is not None else "")
                    + f") -> {os.path.basename(self.task.publish_file)}")


class TrainingProgress:
    """Per-epoch log line, stats JSON, learning-curve PNG, and atomic publishing of the best model."""

    def __init__(self, task: LiverSliceTrainer, context: Context):
        self.task = task
        self.context = context
        self.history: List[Dict[str, Any]] = []
        self.losses: List[float] = []
        self.best: Optional[float] = None  # this run's best epoch score
        # what an epoch must score to be published: the model in place's (publish: better), then the last published's
        self.bar: Optional[float] = None
        self.start = time.time()
        self.curve_path = os.path.join(os.path.dirname(task.publish_file), f"{task.task}_{task.preset}_curve.png")
        self.swa: Optional[WeightAverage] = None
        self.baseline: Optional[float] = None  # the validation score of the model in place before the run
        self._validating_other_weights = False
        self.kept_previous = False
        self.published_any = False  # an epoch (or the weight average) of this run was published as the model
        # the stats and curve beside the model describe the model in place and are replaced only when this
        # run publishes one: until then (and for good if it publishes nothing, or is stopped or killed first)
        # the run's own go to the *_last_run files
        self.run_stats_path = last_run_path(task._stats_path)
        self.run_curve_path = last_run_path(self.curve_path)

    def publish(self, network, meta) -> None:
        """Publish ``network`` in place; the model it replaces first in this run is kept as
        ``<model>.previous`` (a round's later epochs replace the run's own earlier ones)."""
        if not self.kept_previous:
            keep_previous(self.task.publish_file)
            self.kept_previous = True
        save_checkpoint(self.task.publish_file, network, self.task.arch, self.task.preset, self.task.in_channels,
                        meta=meta)
        self.published_any = True

    def on_started(self, engine):
        """With ``publish: better``, validate the model in place (if any) on this run's held-out volumes:
        an epoch is published only if it does at least as well, so a short or unlucky round never
        replaces a better model. Not with several GPUs (the validation there is collective)."""
        ctx = self.context
        if ctx.evaluator is None or not self.task.publishes_only_better(ctx):
            return
        if ctx.multi_gpu:
            logger.info(f"[{self.task.task}] several GPUs: the run's best epoch is published (publish: best)")
            return
        try:
            in_place, _ = load_checkpoint(self.task.publish_file)
            self.baseline = self.validate(in_place.state_dict())
        except Exception as e:  # another preset or input layout: nothing to compare with
            logger.info(f"[{self.task.task}] the model in place is not comparable ({e}); publishing the best epoch")
            return
        self.bar = self.baseline
        logger.info(f"[{self.task.task}] the model in place validates at val_mean_dice {self.baseline:.4f}: an epoch "
                    "is published only if it does at least as well (publish: better)")

    def validate(self, state_dict) -> float:
        """val_mean_dice of other weights (the model in place, the weight average) on this run's held-out
        volumes; the network's own weights are restored afterwards and no epoch row is written."""
        ctx = self.context
        net = ctx.network
        initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(state_dict)
        self._validating_other_weights = True
        try:
            ctx.evaluator.run()
        finally:
            self._validating_other_weights = False
            net.load_state_dict(initial)
        return float(ctx.evaluator.state.metrics.get("val_mean_dice", -1.0))

    def on_iteration(self, engine):
        out = engine.state.output
        loss = out[0]["loss"] if isinstance(out, list) else out["loss"]
        self.losses.append(float(loss))
        self.lr = self.context.optimizer.param_groups[0]["lr"]

    def __call__(self, engine):
        if self._validating_other_weights:
            return
        ctx = self.context
        trainer = ctx.trainer
        epoch = trainer.state.epoch
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        if ctx.evaluator is None:
            metrics.update({k: float(v) for k, v in trainer.state.metrics.items() if isinstance(v, (int, float))})
        row = {
            "epoch": epoch,
            "loss": float(np.mean(self.losses)) if self.losses else None,
            "lr": getattr(self, "lr", ctx.optimizer.param_groups[0]["lr"]),
            "time_s": round(time.time() - self.start, 1),
            **metrics,
        }
        self.losses = []
        self.history.append(row)
        key = "val_mean_dice" if ctx.evaluator is not None else "train_dice"
        score = metrics.get(key, -1.0)
        published = False
        self.best = score if self.best is None else max(self.best, score)
        if self.bar is None or score >= self.bar:
            self.bar = score
            self.publish(ctx.network, checkpoint_meta(self.task, ctx, epoch=epoch, **{key: score}))
            published = True
        row["published"] = published
        logger.info(
            f"[{self.task.task}] epoch {epoch}/{ctx.max_epochs} loss {row['loss']:.4f} lr {row['lr']:.5f} "
            + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + (" -> published " + os.path.basename(self.task.publish_file) if published else "")
        )
        self.write(publish=published)

    def kept_model_in_place(self) -> bool:
        """True when this run published nothing over the model in place (publish: better)."""
        return (self.baseline is not None and not any(r.get("published") for r in self.history)
                and not (self.swa is not None and self.swa.published))

    def on_completed(self, engine):
        if self.published_any:  # the files beside the model describe this run now
            self.write(final=True, publish=True)
            for f in (self.run_stats_path, self.run_curve_path):
                if os.path.exists(f):
                    os.remove(f)
            return
        self.write(final=True)  # the model in place's stats and curve were never touched
        if self.kept_model_in_place():
            logger.warning(f"[{self.task.task}] no epoch validated as well as the model in place "
                           f"({self.baseline:.4f}): it was kept ({os.path.basename(self.task.publish_file)}); this "
                           f"run's stats and curve are in {os.path.basename(self.run_stats_path)} and "
                           f"{os.path.basename(self.run_curve_path)}")

    def write(self, final=False, publish=False):
        """The run's stats and curve so far, into the *_last_run files; with ``publish`` (an epoch of this
        run is now the model) also beside the model, in place of the stats and curve of the model it replaced."""
        stats = {
            "task": self.task.task,
            "preset": self.task.preset,
            "run_id": self.context.run_id,
            "epoch": self.context.trainer.state.epoch,
            "max_epochs": self.context.max_epochs,
            "best_metric": self.best,  # this run's best epoch (published only if at least baseline_metric)
            "baseline_metric": self.baseline,  # the model in place before the run (publish: better)
            # no held-out volume: the epochs and the model in place were compared on the training volumes
            "validated_on_training_volumes": bool(getattr(self.context, "validated_on_training_volumes", False)),
            "kept_model_in_place": bool(final and self.kept_model_in_place()),
            "history": self.history,
            "model": os.path.basename(self.task.publish_file),  # beside this file
            "done": final,
        }
        if self.swa is not None:
            stats["swa_epochs"] = self.swa.epochs  # averaged at the end, published instead of the best epoch
            stats["swa_metric"] = self.swa.score  # unless below the model in place (publish: better)
            stats["swa_published"] = self.swa.published
        os.makedirs(os.path.dirname(self.task._stats_path), exist_ok=True)
        curve = None  # no epoch row yet: no curve (and not another run's left in its place)
        if self.history:
            plot_learning_curve(self.history, self.run_curve_path, title=f"{self.task.task} ({self.task.preset})")
            curve = Path(self.run_curve_path).read_bytes()
        targets = [(self.run_stats_path, self.run_curve_path)]
        if publish:
            targets.append((self.task._stats_path, self.curve_path))
        data = json.dumps(stats, indent=2).encode()
        for stats_path, curve_path in targets:
            atomic_write(stats_path, lambda out: out.write(data))
            if curve is None:
                if os.path.exists(curve_path):
                    os.remove(curve_path)
            elif curve_path != self.run_curve_path:
                atomic_write(curve_path, lambda out: out.write(curve))


def last_run_path(path: str) -> str:
    """Where a run writes its stats or curve while in progress, and leaves them if it published nothing
    (kept the model in place, or was stopped first): ``x_stats.json`` -> ``x_stats_last_run.json``."""
    root, ext = os.path.splitext(path)
    return f"{root}_last_run{ext}"


def plot_learning_curve(history: List[Dict[str, Any]], path: str, title: str = "") -> Optional[str]:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax1.plot(epochs, [h["loss"] for h in history], color="tab:gray", label="train loss", marker=".")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax2 = ax1.twinx()
    for key, color in (("val_liver_dice", "tab:red"), ("val_lesion_dice", "tab:orange"), ("train_dice", "tab:blue")):
        if any(key in h for h in history):
            ax2.plot(epochs, [h.get(key, np.nan) for h in history], color=color, label=key, marker=".")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("Dice")
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax1.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax1.legend(lines, labels, loc="center right", fontsize=8)
    ax1.set_title(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


class CascadeSliceTrainer(LiverSliceTrainer):
    """Stage two: adds stage one's maps to every training/validation volume."""

    def __init__(self, model_dir: str, app_conf: AppConf, description: str = "", **kwargs):
        super().__init__(model_dir, app_conf, task="liver_cascade", arch="resnet", in_channels=3,
                         description=description, **kwargs)
        self.stage1_file = os.path.join(model_dir, model_filename("liver_resnet", app_conf.preset))
        self.maps_dir = os.path.join(model_dir, "train_liver_cascade", "stage1_maps")

    def pre_process(self, request, datastore: Datastore):
        datalist = super().pre_process(request, datastore)
        if not os.path.exists(self.stage1_file):
            raise ModelNotReadyError(
                f"The cascade trains on stage one's maps, but {self.stage1_file} is missing: train liver_resnet first"
            )
        for key in ("train_ds", "val_ds"):
            if request.get(key):
                request[key] = cache_stage1_maps(request[key], self.stage1_file, self.maps_dir, self.app_conf)
        return cache_stage1_maps(datalist, self.stage1_file, self.maps_dir, self.app_conf)


def cache_stage1_maps(datalist, stage1_file: str, maps_dir: str, app_conf: AppConf):
    """Compute stage one's (lesion, liver) maps once per model version and volume file (its path, size and
    modification time: a volume replaced under the same id is mapped again); the maps of earlier
    versions are deleted (about 50 MB per volume and version: they piled up round after round)."""
    os.makedirs(maps_dir, exist_ok=True)
    net, info = ModelCache().get(stage1_file, "cuda" if torch.cuda.is_available() else "cpu")
    device = next(net.parameters()).device
    tag = f"{int(info['mtime'])}"
    for f in os.listdir(maps_dir):
        if f.endswith(".npy") and not f.endswith(f"_{tag}.npy"):
            os.remove(os.path.join(maps_dir, f))
    loader = [LoadImaged(keys="image", image_only=False), EnsureChannelFirstd(keys="image"),
              Orientationd(keys="image", axcodes="RAS"), hu_window("image")]
    out = []
    for d in datalist:
        # the image's path and file stamp: an image replaced under the same id gets new maps
        st = os.stat(d["image"])
        stamp = f"{os.path.abspath(d['image'])}|{st.st_size}|{st.st_mtime_ns}"
        name = hashlib.md5(stamp.encode()).hexdigest()[:12]
        path = os.path.join(maps_dir, f"{name}_{tag}.npy")
        if not os.path.exists(path):
            x = {"image": d["image"]}
            for t in loader:
                x = t(x)
            vol = x["image"][0].as_tensor().float().to(device)
            h, w, n = vol.shape
            p = predict_slices(net, lambda idx: vol[..., idx].permute(2, 0, 1)[:, None], n, (h, w),
                               app_conf.scales[:1], app_conf.batch_size, device=device)
            maps = torch.stack([p[2], (p[1].float() + p[2].float()).clamp(0, 1).half()]).cpu().numpy()
            np.save(path + ".tmp.npy", maps)
            os.replace(path + ".tmp.npy", path)
        out.append({**d, "maps": path})
    logger.info(f"Stage-one maps ready for {len(out)} volumes in {maps_dir}")
    return out
