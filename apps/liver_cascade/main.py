"""liver_cascade: MONAI Label app for liver and liver-lesion segmentation in CT.

Bi et al., "Automatic liver lesion detection using cascaded deep residual
networks" (ISBI 2017 LiTS). Models are discovered from ``lib/configs``, one
TaskConfig per model, as in MONAI Label's radiology sample app.
"""

import importlib
import logging
import os
import sys
import tempfile
from typing import Dict, Tuple

import lib.configs
import requests
import torch
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.utils.others.class_utils import get_class_names
from monailabel.utils.others.generic import remove_file, strtobool

from lib import lifecycle
from lib.activelearning.random import RandomStrategy
from lib.conf import AppConf, as_bool
from lib.datastore import SafeLocalDatastore
from lib.dicomweb import LiverDICOMWebDatastore, create_dicomweb_datastore
from lib.infers import InvalidRequestError
from lib.model_io import ModelNotReadyError
from lib.ohif import serve_ohif_nested_paths
from lib.server_guard import check_batch_request, check_infer_request, check_model
from lib.validation import InputError, check_label_matches, check_volume_file

logger = logging.getLogger(__name__)

DEFAULT_MODELS = "liver_resnet,liver_cascade"  # vgg_fcn (ablation baseline): --conf models ...,vgg_fcn


def save_result(ds: Datastore, request: Dict, result: Dict) -> Dict:
    """MONAI Label's last step of an inference on a datastore image: its result becomes the image's label
    (``label_tag``, 'original' by default). If that fails, the result file is removed before the error goes
    on: the endpoint that would have removed it after the answer never runs."""
    path = result.get("file")
    if not path or not os.path.exists(path):
        return result
    try:
        label_id = ds.save_label(request["image"], path, request.get("label_tag", DefaultLabelTag.ORIGINAL),
                                 {"model": request.get("model"), "params": result.get("params")})
    except BaseException:
        remove_file(path)
        raise
    return {**result, "label": label_id}


class LiverCascadeApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        lifecycle.follow_server()  # a training or scoring process a server started ends with that server
        self.model_dir = os.path.join(app_dir, "model")
        self.app_conf = AppConf.from_conf(conf, self.model_dir)

        configs = {}
        for c in get_class_names(lib.configs, "TaskConfig"):
            name = c.split(".")[-2].lower()
            configs[name] = c
        configs = dict(sorted(configs.items()))

        wanted = [m.strip() for m in conf.get("models", DEFAULT_MODELS).split(",") if m.strip()]
        unknown = [m for m in wanted if m not in configs]
        if unknown:
            raise ValueError(f"--conf models: unknown {unknown}; available: {sorted(configs)}")

        self.models = {}
        for name in wanted:
            module, cls = configs[name].rsplit(".", 1)
            self.models[name] = getattr(importlib.import_module(module), cls)()
            self.models[name].init(name, self.model_dir, conf, None)
        logger.info(f"+++ Using Models: {list(self.models.keys())}; preset {self.app_conf.preset}")

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="liver_cascade",
            description="Liver and liver-lesion segmentation in CT with cascaded dilated ResNet FCNs",
            version="1.0.0",
            labels=None,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        from monailabel.config import settings

        return SafeLocalDatastore(
            self.studies,
            max_voxels=self.app_conf.max_voxels,
            external_symlinks=self.app_conf.external_symlinks,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def server_mode(self, mode: bool):
        super().server_mode(mode)
        if mode:  # MONAI Label calls this in the server process only, before it starts any task
            lifecycle.bind_children_to_server()

    def on_init_complete(self):
        from lib import server_guard

        server_guard.install(self, int(self.app_conf.max_upload_mb * 1024 * 1024))
        server_guard.warn_if_exposed(sys.argv)
        super().on_init_complete()

    def init_remote_datastore(self) -> Datastore:
        """DICOMweb studies (Orthanc for OHIF, `make serve-dicomweb`): offline DICOM SEG, OHIF's files served."""
        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
            return super().init_remote_datastore()
        serve_ohif_nested_paths()
        return create_dicomweb_datastore(self.studies)

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, config in self.models.items():
            task = config.infer()
            for k, v in (task if isinstance(task, dict) else {name: task}).items():
                infers[k] = v
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, config in self.models.items():
            t = config.trainer()
            if t:
                trainers[name] = t
        return trainers

    def init_strategies(self) -> Dict[str, Strategy]:
        strategies: Dict[str, Strategy] = {"random": RandomStrategy(), "first": First()}
        for config in self.models.values():
            s = config.strategy()
            if s:
                strategies.update(s if isinstance(s, dict) else {s.__class__.__name__.lower(): s})
        return strategies

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        methods: Dict[str, ScoringMethod] = {}
        for config in self.models.values():
            m = config.scoring_method()
            if m:
                methods.update(m if isinstance(m, dict) else {m.__class__.__name__.lower(): m})
        return methods

    def on_save_label(self, image_id, label_id):
        """Count new final labels; with ``auto_train_on_save`` start (or enqueue) a training round."""
        super().on_save_label(image_id, label_id)
        saved = getattr(self.datastore(), "last_saved", None)
        if saved is not None and saved.image_id == image_id:  # our datastore says which tag, and if it changed
            if saved.tag != DefaultLabelTag.FINAL or not saved.changed:
                return None  # another tag (the image's final label is not new), or the same final label again
        elif label_id != self.datastore().get_label_by_image_id(image_id, DefaultLabelTag.FINAL):
            return None
        self._new_final_labels = getattr(self, "_new_final_labels", 0) + 1
        if not self.app_conf.auto_train_on_save or self._new_final_labels < self.app_conf.auto_train_after:
            return None
        self._new_final_labels = 0
        models = [m for m in ("liver_resnet", "liver_cascade") if m in self._trainers]
        logger.info(f"auto_train_on_save: {self.app_conf.auto_train_after} new final label(s); training {models}")
        params = {m: {"max_epochs": self.app_conf.auto_train_epochs} for m in models}
        return self.async_training(models, params=params, enqueue=True) if models else None

    def async_scoring(self, method, params=None):
        """MONAI Label re-scores with every method, each in a new process, after every Next Sample (and
        after training and at start): on 2 cores a few clicks queued minutes of identical work, and a
        scoring request got 429 meanwhile. That automatic re-scoring (``method`` None) now runs only when
        what the scores read changed: the model files, the images or their labels. The scoring and
        training processes MONAI Label starts asked the server for it too, at their start and end: while
        scoring ran that was a 429, logged as an error, over a hundred times in one annotation session;
        the server's next Next Sample re-scores when a model changed, so they no longer ask."""
        if method is None and not self._server_mode:
            return {}
        if method is None and isinstance(self._datastore, SafeLocalDatastore):
            stamp = (self._datastore.files_stamp(),
                     tuple(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(self.model_dir)
                                  if e.name.endswith(".pt"))))
            if stamp == getattr(self, "_scored_stamp", None):
                logger.info("scoring: models, images and labels unchanged since the last run; not re-scored")
                return {}
            self._scored_stamp = stamp
        try:
            return super().async_scoring(method, params)
        except requests.RequestException as e:
            if method is not None:
                raise
            # at start-up (or after Next Sample) with the DICOMweb server unreachable: the server starts,
            # answers 503 until it is back, and scores on a later Next Sample (it exited at start)
            logger.warning(f"scoring skipped: the DICOMweb server is unreachable ({type(e).__name__})")
            return {}

    def infer(self, request, datastore=None):
        """MONAI Label's infer, with clear HTTP errors for what the caller can fix."""
        check_model(request.get("model"), self._infers)
        check_infer_request(request)
        ds = datastore if datastore else self.datastore()
        if self._in_sessions(request.get("image")) and os.path.isdir(request["image"]):
            request = {**request, "image": self._series_volume(request["image"])}
        try:
            path, uploaded = self._input_path(request.get("image"), ds)
        except HTTPException:
            if isinstance(request.get("session"), dict) and not os.path.exists(str(request.get("image"))):
                raise HTTPException(status_code=404, detail="the session's image was deleted (the session expired or "
                                                            "was deleted) before it was read; upload it again "
                                                            "(PUT /session/)") from None
            raise
        if (isinstance(ds, (SafeLocalDatastore, LiverDICOMWebDatastore)) and not uploaded
                and not ds.get_label_by_image_id(request.get("image"), DefaultLabelTag.FINAL)):
            # keep the model's prediction as the 'original' label, so that the
            # correction_dice scoring can tell how much the annotator changed it; not once the image
            # has a final label: a later inference (a check after retraining) is not what was corrected
            request.setdefault("save_label", True)
        if os.path.isfile(path):
            try:
                # uploads are scanned whole (a truncated upload is common); datastore files were vetted
                check_volume_file(path, self.app_conf.max_voxels, verify_data=uploaded)
            except InputError as e:
                what = "the uploaded image" if uploaded else f"Image {request.get('image')!r}"
                raise HTTPException(status_code=e.status, detail=f"{what}: {e}") from e
        if request.get("label"):
            if not self._is_upload(request["label"]):
                raise HTTPException(status_code=400, detail="label must be uploaded with the request")
            if os.path.isfile(path):
                try:  # the corrected liver is used voxel by voxel: it must lie on the image's grid
                    check_label_matches(request["label"], path, values=False)  # any segment value counts as liver
                except InputError as e:
                    raise HTTPException(status_code=e.status, detail=f"label: {e}") from e
        # MONAI Label saves the result as the image's 'original' label after the task (not an upload's); when
        # that fails (the image was deleted while it was being segmented: 404) its result file stayed behind
        save = as_bool(request.get("save_label", False)) and not uploaded
        try:  # the task takes one of the process's inference slots (lib/infers/liver.py, inference_slots)
            result = super().infer({**request, "save_label": False}, datastore)
        except ModelNotReadyError as e:
            raise HTTPException(status_code=503, detail=str(e)) from e
        except (InvalidRequestError, InputError) as e:
            raise HTTPException(status_code=getattr(e, "status", 400), detail=str(e)) from e
        return save_result(ds, request, result) if save else result

    def batch_infer(self, request, datastore=None):
        """MONAI Label's batch inference; on a machine without a GPU it defaults to the CPU (its default,
        every GPU, divided by zero: HTTP 500)."""
        check_batch_request(request)  # the task's options are checked when the request arrives (server_guard)
        if not torch.cuda.is_available():
            request = {**request, "multi_gpu": False, "device": request.get("device") or "cpu"}

        def each(req, ds):  # an image the model refuses is reported and skipped; the batch goes on (it stopped)
            try:
                return self.infer(req, ds)
            except HTTPException as e:
                if e.status_code >= 500:
                    raise
                logger.warning(f"batch inference: {req.get('image')} skipped: {e.detail}")
                return {"error": e.detail}

        return self._batch_infer(request, datastore if datastore else self.datastore(), each)

    def _input_path(self, image, ds) -> Tuple[str, bool]:
        """(the file an infer request reads, whether it was uploaded with it): a datastore image or an
        upload. Nothing else."""
        if not isinstance(image, str) or not image:
            raise HTTPException(status_code=400, detail="image: a datastore image id or an uploaded file is needed")
        if self._is_upload(image):
            return image, True
        # local: 400 for unsafe ids, 403 for links out of the datastore; DICOMweb: the series is fetched
        uri = ds.get_image_uri(image)
        if not uri:
            raise HTTPException(status_code=404, detail=f"Image {image!r} is not in the datastore")
        return uri, False

    def _is_upload(self, path) -> bool:
        """A file MONAI Label's endpoint wrote for this request (tempfile.NamedTemporaryFile), or a session's."""
        if not isinstance(path, str) or not os.path.isabs(path) or os.path.islink(path) or not os.path.isfile(path):
            return False
        folder = os.path.dirname(os.path.realpath(path))
        if folder == os.path.realpath(tempfile.gettempdir()) and os.path.basename(path).startswith("tmp"):
            return True
        return self._in_sessions(folder)

    def _in_sessions(self, path) -> bool:
        """``path`` lies in MONAI Label's session store (what PUT /session/ wrote)."""
        sessions = self.sessions()
        if not isinstance(path, str) or not os.path.isabs(path) or sessions is None:
            return False
        root = os.path.realpath(sessions.store_path)
        return os.path.commonpath([os.path.realpath(path), root]) == root

    @staticmethod
    def _series_volume(folder: str) -> str:
        """A session uploaded as a DICOM series (a zip with ``uncompress=true``, or several files): MONAI Label
        keeps it as a folder, which was refused as an invalid image id; its largest series is read once into
        one NIfTI file beside the folder, and segmented as an upload."""
        out = folder.rstrip(os.sep) + ".nii.gz"
        if os.path.isfile(out):
            return out
        import SimpleITK as sitk

        series = []  # (number of files, files) of each series in the folder and below
        for where, _, _ in os.walk(folder, followlinks=False):
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(where) or ():
                files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(where, uid)
                series.append((len(files), list(files)))
        if not series:  # a zip of one volume file
            files = [os.path.join(w, f) for w, _, names in os.walk(folder) for f in names]
            if len(files) == 1 and files[0].lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha")):
                return files[0]
            raise HTTPException(status_code=400, detail="the session holds a folder with no DICOM series; upload one "
                                                        "volume (NIfTI, NRRD) or a zip of one DICOM series")
        largest = max(series)[1]
        fd, part = tempfile.mkstemp(suffix=".nii.gz", dir=os.path.dirname(out))  # two requests at once
        os.close(fd)
        try:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(largest)
            sitk.WriteImage(reader.Execute(), part)
            os.replace(part, out)
        except RuntimeError as e:
            raise HTTPException(status_code=400, detail=f"the session's DICOM series could not be read: "
                                                        f"{str(e).strip().splitlines()[-1][:300]}") from e
        finally:
            if os.path.exists(part):
                os.remove(part)
        logger.info(f"session series {os.path.basename(folder)}: {len(largest)} slices read into one volume")
        return out
