"""Infer tasks ``liver_resnet`` (stage one) and ``liver_cascade`` (both stages).

Pre-processing is composed from MONAI transforms; the two 2D networks run
slice-wise and multi-scale (:mod:`lib.transforms.inference`); post-processing
is the paper's per-slice hole fill (and the optional 3D CRF); the label is
written in the input file's exact geometry.
"""

import contextlib
import difflib
import json
import logging
import os
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import nrrd
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import (
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
)
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from lib.conf import CRF_MODES, AppConf, as_bool, check_switch, parse_choice, parse_crf, parse_scales
from lib.datastore import FILE_MODE
from lib.evaluation.lesion_report import in_file_voxels, lesion_report
from lib.model_io import ModelCache, ModelNotReadyError
from lib.settings import ADAPT_BN_MAX_SLICES, ADAPT_BN_MIN_SLICES, CT_LOW_HU, LABEL_COLORS, LABELS, model_filename
from lib.validation import InputError, read_geometry
from lib.transforms.inference import adapt_batchnorm, predict_slices, within_liver
from lib.transforms.interaction import (
    BACKGROUND_CLICK_MODES,
    FOREGROUND_MIN_HU,
    encode_clicks,
    enforce_clicks,
    on_gas,
    to_oriented_index,
)
from lib.transforms.transforms import (
    DenseCRFd,
    DropSmallLesionsd,
    FillHolesPerSliced,
    GrowLiverd,
    KeepLargestLiverd,
    ProbsToLabeld,
    RestoreOrientationd,
    hu_window,
    liver_box,
    redraw_foreground,
)

logger = logging.getLogger(__name__)


class InvalidRequestError(ValueError):
    """A request parameter is wrong (answered with HTTP 400)."""


_slots: Optional[threading.Semaphore] = None
_slots_made = threading.Lock()


def inference_slots(n: int) -> threading.Semaphore:
    """This process's inference slots (``--conf max_parallel_infers``): every segmentation takes one,
    whichever path runs it (an infer request, or the uncertainty scoring of a Next Sample, each on its own
    worker thread: lib/server_guard.py, OffLoop), so no more than ``n`` run at once: bounded memory. Made once, with the first
    caller's ``n`` (one app configuration per process)."""
    global _slots
    with _slots_made:
        if _slots is None:
            _slots = threading.Semaphore(n)
        return _slots


@contextlib.contextmanager
def no_inference(n: int):
    """Holds all ``n`` slots: no segmentation runs meanwhile (a model file replaced or removed in place)."""
    slots = inference_slots(n)
    for _ in range(n):
        slots.acquire()
    try:
        yield
    finally:
        for _ in range(n):
            slots.release()


RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")


def check_result_extension(ext) -> None:
    if ext not in RESULT_EXTENSIONS:
        raise InvalidRequestError(f"result_extension must be .nii.gz, .nii or .nrrd, got {ext!r}")


# request keys this task reads besides its config's (the options /info lists)
REQUEST_KEYS = ("foreground", "background", "label", "crf_keep_lesions", "allow_non_ct", "batch_size",
                "result_extension")
# keys MONAI Label, its clients (Slicer, OHIF) and its other tasks put in requests: never taken for a typo
CLIENT_KEYS = frozenset((
    "model", "image", "device", "labels", "label_info", "label_tag", "label_names", "result_dtype",
    "result_compress", "client_id", "session", "session_id", "save_label", "description", "logging", "output",
    "pipeline", "largest_cc", "restore_label_idx", "roi_size", "sw_batch_size", "sw_overlap", "centroids",
    "cache_transforms", "cache_transforms_in_memory", "cache_transforms_ttl", "skip_writer", "model_filename",
    "latencies", "gpus", "points", "annotations"))


def check_option_names(request: Dict[str, Any], options) -> None:
    """A key that is none of ``options`` (nor a MONAI Label key) but nearly one is a typo: ``scale`` or
    ``foregroud`` ran with the default, as if asked for. Other unknown keys pass (clients add their own)."""
    for key in request:
        if key in options or key in CLIENT_KEYS or not isinstance(key, str):
            continue
        close = difflib.get_close_matches(key, options, n=1, cutoff=0.8)
        if close:
            raise InvalidRequestError(f"unknown option {key!r}: did you mean {close[0]!r}? "
                                      f"(options: {', '.join(sorted(options))})")


def parse_points(key: str, raw) -> List[List[float]]:
    """A request's foreground/background clicks: [i, j, k] voxel indices of the image file (a JSON string
    or a list), finite."""
    raw = raw or []
    try:
        if isinstance(raw, str):
            raw = json.loads(raw) if raw.strip() else []
        raw = [[float(v) for v in p] for p in raw]
        if any(len(p) != 3 for p in raw):  # a 4th value was ignored
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{key} must be a list of [i, j, k] voxel points, got {raw!r}")
    if not all(np.isfinite(v) and abs(v) < 1e9 for p in raw for v in p[:3]):
        raise InvalidRequestError(f"{key} must be finite voxel indices, got {raw!r}")
    return raw


def check_points_in(request: Dict[str, Any], image_path) -> None:
    """The clicks' format, and that they fall inside the image file (its header's shape, the file's voxel
    order, as clients send them), before anything is read."""
    points = {key: parse_points(key, request.get(key)) for key in ("foreground", "background")}
    if not any(points.values()) or not isinstance(image_path, str) or not os.path.isfile(image_path):
        return
    try:
        shape = [int(v) for v in read_geometry(image_path).shape[:3]]
    except InputError:
        return  # the image's own check answers for it
    for key, raw in points.items():
        if any(not 0 <= round(v) < n for p in raw for v, n in zip(p[:3], shape)):
            raise InvalidRequestError(f"{key}: a point is outside the image (voxel indices within {shape}), "
                                      f"got {raw!r}")



class LoadCTd(LoadImaged):
    """MONAI's LoadImaged; a file no reader can decode is the caller's error (HTTP 400), not the server's."""

    def __call__(self, data, reader=None):
        try:
            return super().__call__(data, reader)
        except Exception as e:
            raise InputError(f"could not read the image: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e


class CheckCTd:
    """Refuse volumes that would give a garbage label: non-finite voxels, or intensities that are not HU."""

    def __call__(self, data):
        img = torch.as_tensor(data["image"])
        if img.is_complex() or img.dtype == torch.bool:
            raise InputError(f"a CT needs real-valued voxels (integers or floats in HU), got voxels of type {img.dtype}")
        if img.is_floating_point() and not bool(torch.isfinite(img).all()):
            bad = int((~torch.isfinite(img)).sum())
            raise InputError(f"the image has {bad} NaN or infinite voxel(s); fix or resample it before segmenting")
        if not as_bool(data.get("allow_non_ct", False)):
            step = max(1, img.numel() // 2_000_000)  # a sample is enough for a percentile
            low = float(torch.quantile(img.reshape(-1)[::step].float(), 0.005))
            if low > CT_LOW_HU:
                raise InputError(
                    f"the intensities do not look like CT in Hounsfield units (0.5th percentile {low:.0f}, expected "
                    f"air or fat below {CT_LOW_HU:.0f}): an MR, or a CT without its rescale slope/intercept? "
                    "Send allow_non_ct: true in params to segment it anyway"
                )
        return data


class KeepHUd:
    """Keep the HU image (after orientation, int16) for the lesion report and background clicks; no copy
    when it is int16."""

    def __call__(self, data):
        d = dict(data)
        hu = torch.as_tensor(d["image"][0]).as_subclass(torch.Tensor)
        d["image_hu"] = hu if hu.dtype == torch.int16 else hu.float().round().clamp(-32768, 32767).to(torch.int16)
        return d


class LiverSegmentation(BasicInferTask):
    """Liver and lesion segmentation with one or two cascaded 2D FCNs."""

    def __init__(self, model_dir: str, conf: AppConf, cascade: bool, arch: str = "resnet",
                 task_name: str = "liver_resnet", description: str = ""):
        self.conf = conf
        self.cascade = cascade
        self.arch = arch
        self.task_name = task_name
        stage1 = "vgg_fcn" if arch == "vgg" else "liver_resnet"
        self.stage_paths = [os.path.join(model_dir, model_filename(stage1, conf.preset))]
        if cascade:
            self.stage_paths.append(os.path.join(model_dir, model_filename("liver_cascade", conf.preset)))
        self._models = ModelCache()
        super().__init__(
            path=self.stage_paths,
            network=None,
            type=InferType.SEGMENTATION,
            labels=dict(LABELS),
            dimension=3,
            description=description,
            config={
                "preset": conf.preset,
                "scales": ",".join(str(s) for s in conf.scales),
                # a list: Slicer offers it as a choice, the first (the --conf value) is the default
                "crf": [conf.crf] + [m for m in CRF_MODES if m != conf.crf],
                "fill_holes": True,
                "largest_component": True,
                "grow_liver": conf.grow_liver,
                "stage2_roi": conf.stage2_roi,
                "adapt_bn": conf.adapt_bn,
                "min_lesion_ml": conf.min_lesion_ml,
                # a list: Slicer offers it as a choice, the first is the default
                **({"background_click": list(BACKGROUND_CLICK_MODES)} if cascade else {}),
            },
        )
        self.label_colors = {k: list(v) for k, v in LABEL_COLORS.items()}

    # -- MONAI Label plumbing -------------------------------------------------
    def info(self) -> Dict[str, Any]:
        i = super().info()
        i["label_colors"] = self.label_colors
        i["model_files"] = {os.path.basename(p): os.path.exists(p) for p in self.stage_paths}
        # which version is live (a training round publishes in place); the infer response's models_used agrees
        i["model_mtimes"] = {os.path.basename(p): os.path.getmtime(p) if os.path.exists(p) else None
                             for p in self.stage_paths}
        return i

    def is_valid(self) -> bool:
        # Listed in /info even without weights: a request then gets a clear error.
        return True

    def how_to_train(self) -> str:
        stages = ["vgg_fcn"] if self.arch == "vgg" else ["liver_resnet"] + (["liver_cascade"] if self.cascade else [])
        calls = " then ".join(f"`POST /train/{s}`" for s in stages)
        demo = (" or rebuild the demo weights with `make weights` (needs ../shared/real-ct)"
                if self.arch != "vgg" and self.conf.preset == "lite" else "")
        return f"Train it with {calls} on labelled images (README, 'Retrain'){demo}."

    def check_weights(self):
        for p in self.stage_paths:
            if not os.path.exists(p):
                raise ModelNotReadyError(
                    f"Model file {p} is missing; `{self.task_name}` will not run random weights. " + self.how_to_train()
                )

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        keys = ["image"] + (["label"] if self.cascade and data and data.get("label") else [])
        return [
            # the file's own dtype (int16 CT stays int16: half the memory of float32 until the HU window)
            LoadCTd(keys=keys, image_only=False, dtype=None),
            EnsureChannelFirstd(keys=keys),
            CheckCTd(),
            Orientationd(keys=keys, axcodes="RAS"),  # axial = last axis, whatever the file
            KeepHUd(),
            hu_window("image"),  # float32 in [0, 1]
        ]

    def inferer(self, data=None) -> Inferer:
        return SimpleInferer()  # unused: run_inferer runs the slice-wise cascade

    def inverse_transforms(self, data=None):
        return None  # RestoreOrientationd in post is exact; no generic invert

    def post_transforms(self, data=None) -> Sequence[Callable]:
        # the CRF and argmax ran at the end of run_inferer (so the class maps are freed early)
        t: List[Callable] = []
        if data is None or as_bool(data.get("largest_component", True)):
            # not in the paper: the liver is one organ, so keep the largest 3D component of liver+lesion
            t.append(KeepLargestLiverd(keys="pred"))
        if data is None or (as_bool(data.get("grow_liver", self.conf.grow_liver)) and data.get("corrected_liver") is None):
            # not in the paper: the liver grows into the liver-like voxels next to it (settings.py, LIVER_GROW_*);
            # an annotator's corrected liver is kept as drawn
            t.append(GrowLiverd(keys="pred"))
        if data is None or as_bool(data.get("fill_holes", True)):
            t.append(FillHolesPerSliced(keys="pred"))
        # lesions the report would not list are not drawn either (clicks, after, may still add small ones)
        t.append(DropSmallLesionsd(keys="pred", min_ml=self.conf.min_lesion_ml))
        t.append(EnforceClicksd(self.conf.min_lesion_ml))
        t.append(LesionReportd(self.conf.min_lesion_ml, enabled=self.cascade))
        t.append(RestoreOrientationd(keys="pred", ref_key="image"))
        return t

    def __call__(self, request, callbacks=None):
        self.check_weights()
        request = self.check_request(request)
        with inference_slots(self.conf.max_parallel_infers):
            return super().__call__(request, callbacks)

    def check_request(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """The request's options, checked before any volume is read (InvalidRequestError: HTTP 400); the
        request as it will run (with notes on what it sent that this task does not use). A batch inference
        checks its options here once, before it is submitted."""
        check_option_names(request, set(self._config) | set(REQUEST_KEYS))
        if str(request.get("preset", self.conf.preset)) != self.conf.preset:  # listed in the options, not one
            raise InvalidRequestError(f"preset is the server's setting (--conf preset): this server runs "
                                      f"{self.conf.preset!r}, not {request['preset']!r}")
        if request.get("device"):  # as MONAI Label reads it (a name it maps, or a torch device); a typo was a 500
            try:
                torch.device(name_to_device(request["device"]))
            except (RuntimeError, TypeError, ValueError, AttributeError):
                raise InvalidRequestError(
                    f"device must be 'cpu', 'cuda' or 'cuda:N', got {request['device']!r}") from None
        try:
            parse_scales(request.get("scales", self._config["scales"]), self.conf.preset)
        except ValueError as e:
            raise InvalidRequestError(f"scales: {e}") from e
        try:
            parse_crf(request.get("crf"), request.get("crf_keep_lesions"))
            parse_choice("background_click", request.get("background_click"), BACKGROUND_CLICK_MODES)
            for switch in ("fill_holes", "largest_component", "grow_liver", "stage2_roi", "adapt_bn", "allow_non_ct",
                           "crf_keep_lesions"):
                check_switch(switch, request.get(switch))
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        try:
            if isinstance(request.get("min_lesion_ml"), bool):  # true read as 1 mL
                raise ValueError
            if not 0 <= float(request.get("min_lesion_ml", 0)) < float("inf"):  # NaN and inf too
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise InvalidRequestError(f"min_lesion_ml must be a volume in mL >= 0, got {request.get('min_lesion_ml')!r}")
        # checked before the volume is read and segmented (these got their 400 after a whole inference)
        check_result_extension(request.get("result_extension") or ".nii.gz")
        if self.cascade:
            check_points_in(request, request.get("image"))
        else:
            ignored = [k for k in ("foreground", "background", "label") if request.get(k)]
            if ignored:  # accepted and silently without effect before
                request = {**request, "notes": list(request.get("notes") or []) + [
                    f"{' and '.join(ignored)} ignored: {self.task_name} takes no clicks or corrected liver; "
                    f"send them to liver_cascade"]}
        if "batch_size" in request:
            try:
                if (isinstance(request["batch_size"], bool) or int(request["batch_size"]) < 1
                        or int(request["batch_size"]) != float(request["batch_size"])):
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                raise InvalidRequestError(f"batch_size must be an integer >= 1, got {request['batch_size']!r}")
        return request

    # -- the cascade ----------------------------------------------------------
    def run_inferer(self, data: Dict[str, Any], convert_to_batch=True, device="cuda"):
        device = torch.device(device if torch.cuda.is_available() or not str(device).startswith("cuda") else "cpu")
        scales = parse_scales(data.get("scales", self._config["scales"]), self.conf.preset)
        batch = int(data.get("batch_size", self.conf.batch_size))
        amp = device.type == "cuda"
        image: MetaTensor = data["image"]
        vol = image[0].as_tensor().float()  # (X, Y, Z), axial last
        h, w, n = vol.shape
        vol_dev = vol.to(device)
        timings, models = {}, []

        net1, info1 = self._models.get(self.stage_paths[0], device, self.how_to_train())
        models.append(info1)

        def stage1_input(idx):
            return vol_dev[..., idx].permute(2, 0, 1)[:, None]

        adapt = as_bool(data.get("adapt_bn", self.conf.adapt_bn))
        timings["adapt_bn"] = 0.0

        def adapted(net, make_input, indices, box=None):
            """the network with the volume's batch-norm statistics (the request's adapt_bn)"""
            if not adapt:
                return net
            if len(indices) < ADAPT_BN_MIN_SLICES:
                logger.info(f"adapt_bn: {len(indices)} slices, fewer than {ADAPT_BN_MIN_SLICES}: the training's statistics")
                return net
            t = time.time()
            net = adapt_batchnorm(net, make_input, indices, (h, w), scales, batch, ADAPT_BN_MAX_SLICES,
                                  device=device, amp=amp, box=box)
            timings["adapt_bn"] = round(timings["adapt_bn"] + time.time() - t, 3)
            return net

        t0 = time.time()
        net1 = adapted(net1, stage1_input, range(n))
        probs = predict_slices(net1, stage1_input, n, (h, w), scales, batch, device=device, amp=amp)
        timings["stage1"] = round(time.time() - t0, 3)

        corrected = None  # the annotator's liver, sent as the request's label (cascade only)
        if self.cascade:
            net2, info2 = self._models.get(self.stage_paths[1], device, self.how_to_train())
            models.append(info2)
            # float16 maps: a 512x512x400 volume stays within the memory budget
            liver_map = (probs[1] + probs[2]).clamp_(0, 1)
            lesion_map = probs[2]  # a view: stage two writes slice i only after reading slice i's input
            if torch.is_tensor(data.get("label")):
                corrected = (data["label"][0] > 0).to(torch.float16).to(liver_map.device)
                if tuple(corrected.shape) != (h, w, n):
                    raise InvalidRequestError(
                        f"the corrected label has shape {tuple(corrected.shape)}, the image {(h, w, n)}"
                    )
                if not bool(corrected.any()):  # e.g. a viewer's empty segment: not a liver to keep
                    note = "the label sent was empty (no liver voxel): it was not used, the liver is the model's"
                    logger.warning(f"{self.task_name}: {note}")
                    data.setdefault("notes", []).append(note)
                    corrected = None
            fg, bg = self._clicks(data, image, (h, w, n))
            hu = data.get("image_hu")
            gas = [p for p in fg if hu is not None and on_gas(hu.numpy(), p)]
            if gas:  # a mis-click: it would draw a lesion in the air and widen stage two's box to it
                fg = [p for p in fg if p not in gas]
                note = (f"{len(gas)} foreground click(s) on air or gas (below {FOREGROUND_MIN_HU:.0f} HU): not drawn "
                        "(a liver lesion is tissue)")
                logger.warning(f"{self.task_name}: {note}")
                data.setdefault("notes", []).append(note)
            outside = [p for p in fg if corrected is not None and not bool(corrected[tuple(p)] > 0.5)]
            if outside:  # dropped before stage two's box: it would widen it and change lesions elsewhere
                fg = [p for p in fg if p not in outside]
                note = (f"{len(outside)} foreground click(s) outside the liver label you sent: not drawn (lesions "
                        "stay inside the liver you sent; add the region to your liver to mark a lesion there)")
                logger.warning(f"{self.task_name}: {note}")
                data.setdefault("notes", []).append(note)
            mode = parse_choice("background_click", data.get("background_click"), BACKGROUND_CLICK_MODES)
            if fg or bg:
                spacing = np.linalg.norm(np.asarray(image.affine, dtype=float)[:3, :3], axis=0)
                lesion_map = encode_clicks(lesion_map.cpu().float(), fg, bg, spacing).half()
                data["clicks"] = {"foreground": fg, "background": bg, "spacing": spacing.tolist(), "mode": mode}
            # stage two runs on slices with stage one's liver, and with the annotator's where given
            has_liver = (liver_map > 0.5).flatten(0, 1).any(0)
            auto_liver = has_liver.clone()  # stage one's alone: the slices batch-norm adaptation reads
            if corrected is not None:
                # stage two still reads stage one's liver map: fed the binary corrected mask instead,
                # it finds fewer lesions (docs/RESULTS.md, "Interactive cascade"); the corrected
                # liver bounds the result below
                has_liver |= (corrected > 0.5).flatten(0, 1).any(0)
                data["corrected_liver"] = corrected.cpu() > 0.5
            for p in fg:  # a lesion click: stage two runs there (a background click only removes)
                has_liver[p[2]] = True
            roi = as_bool(data.get("stage2_roi", self.conf.stage2_roi))
            idx = with_margin(has_liver) if roi else list(range(n))
            liver_dev, lesion_dev = liver_map.to(device), lesion_map.to(device)
            # a cascade trained on stage one's liver box runs on it (the checkpoint says how it was
            # trained); not on the corrected liver's box: a wider box shrinks the liver in the input
            # and stage two finds fewer lesions (measured, RESULTS.md "Interactive cascade")
            # a background click does not widen it: a click off the liver would shrink the liver in stage
            # two's input and change lesions elsewhere (a click on air took 6 of 7 lesions, measured)
            box = liver_box(liver_map, fg) if info2["meta"].get("liver_box", False) else None
            timings["stage2_box"] = list(box) if box else None  # x0, x1, y0, y1 of the RAS-oriented slice

            def stage2_input(i):
                maps = [lesion_dev[..., i].float(), liver_dev[..., i].float()]
                return torch.stack([vol_dev[..., i]] + maps).permute(3, 0, 1, 2)

            t0 = time.time()
            if idx and adapt:
                # the statistics of stage two's automatic input (stage one's maps, on its liver slices and
                # box, before any click is drawn in): clicks and a corrected liver then act through the
                # input alone, as without adaptation; adapted to the clicked input, each click would shift
                # the statistics, and with them the lesions, of the whole volume
                auto_lesion = probs[2]  # stage two has not written yet

                def automatic_input(i):
                    maps = [auto_lesion[..., i].to(device).float(), liver_dev[..., i].float()]
                    return torch.stack([vol_dev[..., i]] + maps).permute(3, 0, 1, 2)

                auto_box = liver_box(liver_map) if box is not None and fg else box  # a click may widen the box
                net2 = adapted(net2, automatic_input, with_margin(auto_liver) if roi else list(range(n)), auto_box)
            if idx:
                # in place: slices outside the ROI keep stage one's probabilities
                probs = predict_slices(net2, stage2_input, n, (h, w), scales, batch, indices=idx,
                                       out=probs, device=device, amp=amp, box=box)
            timings["stage2"] = round(time.time() - t0, 3)
            timings["stage2_slices"] = len(idx)
            del liver_map, lesion_map, liver_dev, lesion_dev  # 400 MB at 400 slices, not needed by the CRF
        if corrected is not None:
            # keep the annotator's liver as is; inside it, stage two decides lesion vs liver
            probs = within_liver(probs, corrected.to(probs.device)).to(torch.float16)
        # the lesion probability behind the label (clicks and the lesion report read it); a copy, so the
        # 3-class map can be freed after argmax
        data["lesion_prob"] = probs[2].cpu().clone()
        pred = MetaTensor(probs.cpu(), meta=image.meta)
        del probs
        crf = parse_crf(data.get("crf"), data.get("crf_keep_lesions"), default=self.conf.crf)
        network_label = None
        if crf != "off":
            if crf == "liver":  # the network's labels: the CRF redraws only their background / foreground split
                network_label = ProbsToLabeld(keys="pred")({"pred": pred})["pred"]
            t0 = time.time()
            pred = DenseCRFd(keys="pred", foreground_only=crf == "liver")({"pred": pred, "image": image})["pred"]
            timings["crf"] = round(time.time() - t0, 3)
        timings["crf_mode"] = crf
        # nothing reads the float32 image after this (400 MB at 400 slices): post-processing needs only its
        # geometry (RestoreOrientationd), and the lesion report and clicks read image_hu
        data["image"] = geometry_only(image)
        del image, vol, vol_dev
        if as_bool(data.get("keep_probs", False)):  # e.g. for uncertainty scoring
            data["probs"] = pred
        # probabilities -> LiTS labels here, not in post: the 3-class map is freed before post-processing
        if network_label is None:
            data["pred"] = ProbsToLabeld(keys="pred")({"pred": pred})["pred"]
        else:  # the CRF's liver, and the network's lesions as they were
            redraw_foreground(network_label[0], pred)
            data["pred"] = network_label
        del pred
        data["inference_timings"] = timings
        data["models_used"] = [{"file": os.path.basename(m["path"]), "mtime": m["mtime"], "preset": m["preset"]}
                               for m in models]
        data["scales_used"] = list(scales)
        return data

    @staticmethod
    def _clicks(data, image, shape):
        """foreground/background points (image voxel indices, as Slicer/OHIF send) in the oriented array."""
        pts = {}
        for key in ("foreground", "background"):
            raw = parse_points(key, data.get(key))
            original = image.meta.get("original_affine", image.affine)
            pts[key] = to_oriented_index(raw, original, image.affine, shape)
            if len(pts[key]) != len(raw):  # a click the annotator thinks counted must not be dropped silently
                file_shape = [int(v) for v in image.meta.get("spatial_shape", shape)]  # as loaded, before Orientationd
                raise InvalidRequestError(f"{key}: a point is outside the image (voxel indices within "
                                          f"{file_shape}), got {raw!r}")
        return pts["foreground"], pts["background"]

    # -- writing --------------------------------------------------------------
    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[Any, Any]:
        ext = data.get("result_extension") or ".nii.gz"
        check_result_extension(ext)
        pred = data["pred"]
        label = np.asarray(pred[0].cpu() if torch.is_tensor(pred) else pred[0], dtype=np.uint8)
        affine = np.asarray(pred.affine, dtype=np.float64)
        fd, path = tempfile.mkstemp(suffix=ext, prefix=f"{self.task_name}_")
        os.close(fd)
        os.chmod(path, FILE_MODE)  # mkstemp's 0600 went on with the file: the 'original' label kept from it
        write_label(label, affine, path)
        result = {
            "model": self.task_name,
            "labels": dict(LABELS),
            "label_colors": self.label_colors,
            "scales": data.get("scales_used"),
            "models_used": data.get("models_used"),
            "timings": data.get("inference_timings"),
        }
        if "liver_grown_ml" in data:  # what liver growth added to the network's liver
            result["liver_grown_ml"] = data["liver_grown_ml"]
        if "lesion_report" in data:
            result["lesion_report"] = data["lesion_report"]
        if data.get("notes"):  # what the request asked for and did not get, and why
            result["notes"] = data["notes"]
        return path, result


def with_margin(has_liver: torch.Tensor) -> List[int]:
    """Indices of the slices marked in ``has_liver``, plus one slice of margin on both sides."""
    keep = has_liver.clone()
    keep[1:] |= has_liver[:-1]
    keep[:-1] |= has_liver[1:]
    return torch.nonzero(keep).flatten().tolist()


def geometry_only(image: MetaTensor) -> MetaTensor:
    """A stand-in for ``image`` with its shape and metadata but no voxel memory (a broadcast zero)."""
    return MetaTensor(torch.zeros((), dtype=image.dtype).expand(image.shape), meta=image.meta)


class EnforceClicksd:
    """After post-processing, honour the annotator: lesion clicks and a corrected liver."""

    def __init__(self, min_lesion_ml: float):
        self.min_lesion_ml = min_lesion_ml  # a background click's leftovers under this go too

    def __call__(self, data):
        clicks, liver = data.get("clicks"), data.get("corrected_liver")
        if not clicks and liver is None:
            return data
        d = dict(data)
        pred = d["pred"]
        fixed = np.asarray(pred[0].cpu(), dtype=np.uint8)
        if clicks:
            prob = d["lesion_prob"].float().numpy()
            hu = d.get("image_hu")
            fixed = enforce_clicks(fixed, prob, clicks["foreground"], clicks["background"], clicks["spacing"],
                                   None if hu is None else hu.numpy(), clicks["mode"],
                                   float(d.get("min_lesion_ml", self.min_lesion_ml)))
        if liver is not None:  # the annotator's liver is kept exactly as drawn (clicks outside it were dropped)
            liver = liver.numpy()
            fixed = np.where(liver, np.maximum(fixed, LABELS["liver"]), 0).astype(np.uint8)
        d["pred"] = MetaTensor(torch.from_numpy(fixed)[None], meta=pred.meta)
        return d


class LesionReportd:
    """Adds ``lesion_report`` (physical units) computed on the final label."""

    def __init__(self, min_volume_ml: float, enabled: bool = True):
        self.min_volume_ml = min_volume_ml
        self.enabled = enabled

    def __call__(self, data):
        if not self.enabled:
            return data
        d = dict(data)
        pred = d["pred"]
        label = np.asarray(pred[0].cpu(), dtype=np.uint8)
        hu = d.get("image_hu")
        prob = d.get("lesion_prob")
        affine = np.asarray(pred.affine, dtype=np.float64)
        report = lesion_report(
            label,
            affine,
            image_hu=None if hu is None else hu.numpy(),
            lesion_prob=None if prob is None else prob.numpy(),  # float16: averaged per lesion only
            min_volume_ml=float(d.get("min_lesion_ml", self.min_volume_ml)),
            axial_axis=2,
        )
        # components DropSmallLesionsd already drew as liver count as below the minimum too
        report["n_lesions_below_min_volume"] += int(d.get("small_lesions_dropped", 0))
        # computed on the RAS-oriented label; its voxel indices are given in the file's own order, the
        # order of the returned label
        d["lesion_report"] = in_file_voxels(report, affine, pred.meta.get("original_affine", affine))
        return d


def write_label(label: np.ndarray, affine: np.ndarray, path: str) -> str:
    """Write a uint8 label with the given voxel->RAS affine as NIfTI or NRRD."""
    if path.endswith(".nrrd"):
        lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
        header = {
            "type": "uint8",
            "dimension": 3,
            "space": "left-posterior-superior",
            "space directions": lps[:3, :3].T,
            "space origin": lps[:3, 3],
            "kinds": ["domain", "domain", "domain"],
            "encoding": "gzip",
        }
        nrrd.write(path, np.ascontiguousarray(label), header, compression_level=1)
    else:
        img = nib.Nifti1Image(label, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_data_dtype(np.uint8)
        if path.endswith(".gz"):
            import gzip
            import io

            bio = io.BytesIO()
            file_map = img.make_file_map({"image": bio, "header": bio})
            img.to_file_map(file_map)
            with gzip.open(path, "wb", compresslevel=1) as f:
                f.write(bio.getvalue())
        else:
            nib.save(img, path)
    return path
