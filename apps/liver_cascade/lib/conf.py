"""MONAI Label ``--conf`` key/values, parsed once into a typed object.

Every option of the app is listed here with its default; configs, infer and
train tasks receive an :class:`AppConf` and never parse strings themselves.
"""

import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from lib.settings import DEFAULT_PRESET, PRESETS, model_filename

logger = logging.getLogger(__name__)


TRUE_VALUES, FALSE_VALUES = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def as_bool(value) -> bool:
    """A request or --conf value read as a switch: 1, true, yes or on (any case) is True."""
    return str(value).strip().lower() in TRUE_VALUES


def check_switch(name: str, value) -> None:
    """A request's switch must say yes or no (TRUE_VALUES or FALSE_VALUES, any case, or a JSON boolean):
    "maybe" is the caller's error, not "no"."""
    if value is not None and str(value).strip().lower() not in TRUE_VALUES + FALSE_VALUES:
        raise ValueError(f"{name} must be true or false, got {value!r}")


# the 3D dense CRF after the cascade, by mode (the first is the default):
#   liver: it redraws the liver's boundary; the lesions stay the network's (not in the paper;
#          measured in docs/RESULTS.md, "The liver CRF")
#   paper: it decides every class (the paper's ablation row: it hurt lesions)
#   off:   the network's argmax
CRF_MODES: Tuple[str, ...] = ("liver", "paper", "off")

# what a training run publishes (the first is the default):
#   better: an epoch only if it validates at least as well as the model already in place
#   best:   the run's best epoch, even if worse than the model in place
PUBLISH_MODES: Tuple[str, ...] = ("better", "best")


def parse_choice(name: str, value, choices: Tuple[str, ...], default: Optional[str] = None) -> str:
    """A request option offered as a list in the model config (Slicer shows a choice): one of
    ``choices``; the config's list itself (a request that did not choose) means its first; nothing
    (None, "") means ``default``, else the first choice."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or value == "":
        return default or choices[0]
    text = str(value).strip().lower()
    if text not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return text


def parse_crf(value, keep_lesions=None, default: Optional[str] = None) -> str:
    """A CRF mode from a request or --conf value: one of CRF_MODES, or a switch as before modes
    existed (true: "paper", or "liver" with ``keep_lesions`` true; false: "off"); nothing (None, "")
    means ``default`` (the server's --conf crf for a request), else CRF_MODES' first."""
    text = str(value).strip().lower()
    if text in TRUE_VALUES:
        return "liver" if as_bool(keep_lesions) else "paper"
    if text in FALSE_VALUES:
        return "off"
    return parse_choice("crf", value, CRF_MODES, default)


# test-time slice sizes a request may ask for (the paper's ladder is 5 sizes up to 640)
MIN_SCALE, MAX_SCALE, MAX_SCALES = 32, 1024, 8


def parse_scales(value, preset: str) -> Tuple[int, ...]:
    """'192,208' / [192, 208] / 'paper' (the preset's 5 sizes) / '' (preset default)."""
    p = PRESETS[preset]
    if value is None or value == "" or value == []:
        return tuple(p.default_scales)
    if isinstance(value, str) and value.strip().lower() in ("all", "paper", "multi"):
        return p.all_scales
    if isinstance(value, (int, float)):
        value = [value]
    if isinstance(value, str):
        value = [v for v in value.replace(";", ",").split(",") if v.strip()]
    try:
        scales = tuple(int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"scales must be integers in [{MIN_SCALE}, {MAX_SCALE}], got {value!r}") from None
    if not scales or any(s < MIN_SCALE or s > MAX_SCALE for s in scales):
        raise ValueError(f"scales must be integers in [{MIN_SCALE}, {MAX_SCALE}], got {value!r}")
    if len(scales) > MAX_SCALES:  # the cost grows with each: one request must not hold the server for minutes
        raise ValueError(f"scales: at most {MAX_SCALES} sizes, got {len(scales)}")
    return scales


def default_preset(model_dir: Optional[str] = None) -> str:
    """The preset used when ``--conf preset`` is not given.

    The first preset of the device's list (``DEFAULT_PRESET``) whose stage-one weights are in
    ``model_dir``, else the list's last: on a GPU the paper's network only when its weights are
    there (none ship, they are 0.5 GB), so a GPU user's first inference runs shipped weights
    rather than answering "model not ready". Without ``model_dir``, the list's first."""
    order = DEFAULT_PRESET["cuda" if torch.cuda.is_available() else "cpu"]
    if model_dir is None:
        return order[0]
    for preset in order:
        if os.path.exists(os.path.join(model_dir, model_filename("liver_resnet", preset))):
            return preset
    logger.info("no weights for %s in %s: using the %s preset", ", ".join(order), model_dir, order[-1])
    return order[-1]


# experiment tracking of training runs: what MONAI Label's BasicTrainTask understands ("mlflow"; anything
# else it silently ignores, so a typo such as "mlfow" would train untracked); "none" also reads off/false/no/0
TRACKING_MODES: Tuple[str, ...] = ("none", "mlflow")


def parse_tracking(value) -> str:
    """``--conf tracking``: "none" (the default; also "", off, false, no, 0) or "mlflow"; else an error naming it."""
    if value is None:
        return "none"
    text = str(value).strip().lower()
    if text in ("", "none") + FALSE_VALUES:
        return "none"
    if text not in TRACKING_MODES:
        raise ValueError(f"--conf tracking must be one of {TRACKING_MODES}, got {value!r}")
    return text


def conf_switch(conf: Dict[str, str], name: str, default: str) -> bool:
    """A ``--conf`` switch: a value that is neither yes nor no stops the server with its name, as a request's
    400 does (a typo such as ``ture`` read as false would silently change the server's behaviour)."""
    value = conf.get(name, default)
    try:
        check_switch(name, value)
    except ValueError as e:
        raise ValueError(f"--conf {e}") from None
    return as_bool(value)


def conf_number(conf: Dict[str, str], name: str, default, kind=float, minimum: float = 0):
    """A ``--conf`` number (``kind`` int or float, finite, >= ``minimum``), or an error naming the setting."""
    value = conf.get(name, default)
    try:
        number = kind(float(value)) if kind is int else kind(value)
        if not minimum <= number < float("inf") or (kind is int and number != float(value)):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        kind_name = "an integer" if kind is int else "a number"
        raise ValueError(f"--conf {name} must be {kind_name} >= {minimum:g}, got {value!r}") from None
    return number


@dataclass(frozen=True)
class AppConf:
    preset: str
    scales: Tuple[int, ...]
    batch_size: int  # slices per network call at inference
    stage2_roi: bool  # run stage two only on slices where stage one found liver
    crf: str  # 3D dense CRF mode, one of CRF_MODES
    grow_liver: bool  # grow the liver into the liver-like voxels next to it (settings.py, LIVER_GROW_*)
    adapt_bn: bool  # re-estimate batch-norm statistics on the volume being segmented (opt-in)
    auto_train_on_save: bool
    auto_train_after: int  # new final labels that trigger a training run
    auto_train_epochs: int  # max_epochs of such a run
    pretrained_path: Optional[str]  # local file with initial weights for training
    min_lesion_ml: float  # smaller lesion components are relabelled liver and left out of the lesion report
    tracking: str  # "none" (default) or "mlflow" (sqlite store under the app dir)
    max_voxels: int  # larger volumes are refused (HTTP 413) from their header, before loading
    max_upload_mb: float  # larger request bodies are refused (HTTP 413) before they are stored
    external_symlinks: bool  # list datastore files that are symlinks to places outside the datastore
    max_parallel_infers: int  # inferences at once in the server process; more requests wait in line
    publish: str  # training's default "publish" mode: "better" (keep a better model in place) or "best"
    sample_hold_s: float  # Next Sample (uncertainty) does not offer another client an image offered this recently

    @classmethod
    def from_conf(cls, conf: Dict[str, str], model_dir: Optional[str] = None) -> "AppConf":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        preset = conf.get("preset") or default_preset(model_dir)
        if preset not in PRESETS:
            raise ValueError(f"--conf preset must be one of {sorted(PRESETS)}, got {preset!r}")
        return cls(
            preset=preset,
            scales=parse_scales(conf.get("scales"), preset),
            batch_size=conf_number(conf, "batch_size", 16 if device == "cpu" else 32, int, 1),
            stage2_roi=conf_switch(conf, "stage2_roi", "true"),
            crf=parse_crf(conf.get("crf"), conf.get("crf_keep_lesions")),
            grow_liver=conf_switch(conf, "grow_liver", "true"),
            adapt_bn=conf_switch(conf, "adapt_bn", "false"),
            auto_train_on_save=conf_switch(conf, "auto_train_on_save", "false"),
            auto_train_after=conf_number(conf, "auto_train_after", 1, int, 1),
            auto_train_epochs=conf_number(conf, "auto_train_epochs", 20, int, 1),
            pretrained_path=conf.get("pretrained_path") or None,
            min_lesion_ml=conf_number(conf, "min_lesion_ml", 0.05),
            tracking=parse_tracking(conf.get("tracking")),
            max_voxels=conf_number(conf, "max_voxels", 512 * 512 * 1000, int, 1),
            max_upload_mb=conf_number(conf, "max_upload_mb", 1024),
            external_symlinks=conf_switch(conf, "external_symlinks", "false"),
            max_parallel_infers=conf_number(conf, "max_parallel_infers", 1, int, 1),
            publish=parse_choice("--conf publish", conf.get("publish"), PUBLISH_MODES),
            sample_hold_s=conf_number(conf, "sample_hold_s", 600),
        )
