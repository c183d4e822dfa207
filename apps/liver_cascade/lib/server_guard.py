"""Request checks MONAI Label's endpoints leave to the app, installed once the server is up.

MONAI Label 0.8.5 answers malformed ``params`` JSON, an unknown training model and
oversized uploads with a 500 or not at all, and with authentication on it rejects
every token (see :class:`_JWTWithAlgorithms`). Its endpoint modules look their
helpers up at call time (``infer.run_inference``, ``datastore.save_label``, ...),
so we wrap those helpers with a check in front, and put ASGI layers in front of
the application: the upload size, the routes this app cannot serve, and the requests
that can take long off the server's event loop. Nothing in site-packages is edited.
"""

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import re
import shutil
import tarfile
import zipfile
from typing import Optional

import anyio
import requests
import torch
from fastapi import BackgroundTasks, HTTPException
from fastapi.responses import JSONResponse

from lib.conf import as_bool, check_switch
from lib.datastore import check_name
from lib.infers.liver import no_inference
from lib.trainers.liver import TRAIN_REQUEST_KEYS, check_recipe, known_train_keys

logger = logging.getLogger(__name__)

# training parameters that name files on the server: set them with --conf or the CLI, not over HTTP
_PATH_PARAMS = ("pretrained_path", "train_ds", "val_ds", "model_dir", "bundle_path", "output_dir")


MAX_JSON_DEPTH = 32  # deeper, a stored value broke the datastore's own reads (pydantic's depth limit)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _depth(value) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return 1 + max((_depth(v) for v in children), default=0)


def parse_params(params, what: str = "params") -> dict:
    """A request's JSON object. NaN and Infinity are refused (stored, they broke every later read of the
    datastore: 500), so is nesting deeper than MAX_JSON_DEPTH."""
    if params is None or params == "":
        return {}
    if isinstance(params, dict):
        return params
    try:
        value = json.loads(params, parse_constant=_no_constant)
        if _depth(value) > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    except (TypeError, ValueError, RecursionError) as e:  # RecursionError: nested thousands deep
        raise HTTPException(status_code=400, detail=f"{what} is not valid JSON: {type(e).__name__}: {e}") from None
    if not isinstance(value, dict):
        raise HTTPException(status_code=400, detail=f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def check_train_params(model: str, params: dict, trainers) -> None:
    if model and model not in trainers:
        raise HTTPException(status_code=404, detail=f"Unknown training task {model!r}; available: {sorted(trainers)}")
    if params is None:
        return
    if not isinstance(params, dict):
        raise HTTPException(status_code=400, detail="params must be a JSON object")
    if model:
        blocks = [(params, known_train_keys(trainers[model]))]
    else:  # POST /train/: keys for every task, and a block per task under its name
        nested = {m for m in trainers if isinstance(params.get(m), dict)}
        blocks = [({k: v for k, v in params.items() if k not in nested},
                   set().union(*(known_train_keys(t) for t in trainers.values())))]
        blocks += [(params[m], known_train_keys(trainers[m])) for m in sorted(nested)]
    for p, known in blocks:
        for key in p:
            if key in _PATH_PARAMS or key.endswith(("_path", "_dir", "_file")):
                raise HTTPException(status_code=400,
                                    detail=f"training parameter {key!r} names a server file; set it with --conf")
        unknown = sorted(str(k) for k in p if k not in known)
        if unknown:  # a typo ("max_epoch") would otherwise train with the default (100 epochs)
            raise HTTPException(status_code=400, detail=f"unknown training parameter(s) {unknown}; "
                                                        f"the recipe's keys: {sorted(known - TRAIN_REQUEST_KEYS)}")
        if "name" in p:
            check_name(str(p["name"]), "training run name")
        try:
            check_recipe(p)
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e


def check_model(model, infers) -> None:
    if model not in infers:
        raise HTTPException(status_code=404, detail=f"Unknown model {model!r}; available: {sorted(infers)}")


def check_batch_request(request) -> None:
    """A batch inference's options: those of an inference, and no multi_gpu without a GPU (MONAI Label
    then divided by zero: 500)."""
    check_infer_request(request)
    if as_bool(request.get("multi_gpu", False)) and not torch.cuda.is_available():
        raise HTTPException(status_code=400, detail="multi_gpu: this server has no GPU")


def check_infer_request(request) -> None:
    """What MONAI Label's infer takes from a request without a check: a prediction saved under the tag
    ``final`` replaced the annotator's label (a batch inference, every image's at once); an unknown
    logging level or ``skip_writer`` answered 500."""
    tag = request.get("label_tag")
    if tag is not None and not isinstance(tag, str):
        raise HTTPException(status_code=400, detail=f"label_tag must be a string, got {tag!r}")
    if tag is not None and tag.strip(" .").lower() == "final":
        raise HTTPException(status_code=400, detail=f"label_tag {tag!r}: an inference is saved as the model's label "
                                                    "('original'), never as 'final'; save an annotator's label with "
                                                    "PUT /datastore/label")
    if tag is not None:
        check_name(tag, "label tag")  # before the inference runs, not when its label is saved
    level = request.get("logging")
    if level is not None and not isinstance(logging.getLevelName(str(level).upper()), int):
        raise HTTPException(status_code=400, detail=f"logging must be a level name (INFO, DEBUG, ...), got {level!r}")
    try:  # MONAI Label took any non-empty string, "false" too, for yes
        check_switch("save_label", request.get("save_label"))
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    if as_bool(request.get("skip_writer", False)):
        raise HTTPException(status_code=400, detail="skip_writer is not offered: the result is a label file")


async def _answer(send, status: int, detail: str):
    """A JSON error answered by an ASGI layer; the connection is closed (the request body is not read)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class UploadLimit:
    """ASGI layer: refuse request bodies over ``max_bytes`` (413) before they are read or stored."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _answer(send, 400, "invalid Content-Length")
            if n > self.max_bytes:
                return await _answer(send, 413, f"request body of {n} bytes is over this server's limit of "
                                                     f"{self.max_bytes} bytes (--conf max_upload_mb)")
        elif chunked:
            return await _answer(send, 411, "send uploads with a Content-Length")
        return await self.app(scope, receive, send)


class Unserved:
    """ASGI layer: MONAI Label routes this app cannot serve answered 500. The whole-slide (pathology)
    inference routes (a CT volume app has no WSI model; a request without an image, or with a malformed
    ``wsi`` form, was a 500 "Neither Image nor File...") and ``/logs/gpu`` on a machine without
    nvidia-smi (FileNotFoundError) get 404 with the reason."""

    WSI = re.compile(r".*/infer/wsi(_v2)?/[^/]*/?\Z")
    GPU = re.compile(r".*/logs/gpu/?\Z")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope.get("path", "")
            if scope["method"] == "POST" and self.WSI.match(path):
                return await _answer(send, 404, "this app segments CT volumes and has no whole-slide (WSI) model; "
                                                "infer with POST /infer/{model}")
            if self.GPU.match(path) and not shutil.which("nvidia-smi"):
                return await _answer(send, 404, "this server has no NVIDIA GPU (nvidia-smi not found)")
        return await self.app(scope, receive, send)


class OffLoop:
    """ASGI layer: requests that can block run on worker threads, each in an event loop of its own, instead of
    on the server's. MONAI Label's endpoints are coroutines that block: while one inference ran (seconds to
    minutes), one Next Sample scored images, one series was fetched from DICOMweb, or one DICOMweb request
    through MONAI Label's proxy (OHIF's every image) waited, the server answered nothing else, not even
    ``/info``. Each lane has its own number of threads; requests beyond it wait on the server's loop,
    holding no thread. The request's body and the response cross between the two loops.

    Lanes (the first that matches; other requests stay on the server's loop):
    - ``infer``: ``POST /infer/{model}``, ``max_parallel_infers`` at once;
    - ``sample``: ``POST /activelearning/{strategy}``, one at a time, as MONAI Label served them (the
      uncertainty strategy's hold on an offered image relies on it);
    - ``transfer``: reads and writes that can wait on DICOMweb or on large files: ``/proxy/dicom/...``,
      ``/info/``, the datastore's listing, images, labels and dataset download, session uploads;
      ``TRANSFER_THREADS`` at once."""

    TRANSFER_THREADS = 8  # a browser asks one host for about 6 things at once
    LANES = (
        ("infer", {"POST"}, re.compile(r"/infer/[^/]+/?\Z")),  # not /infer/wsi/{model} (Unserved answers it)
        ("sample", {"POST"}, re.compile(r"/activelearning/[^/]+/?\Z")),
        ("transfer", {"GET", "POST"}, re.compile(r"/proxy/dicom/")),
        ("transfer", {"GET"}, re.compile(r"/(info|datastore)/?\Z|/datastore/dataset/?\Z")),
        ("transfer", {"GET", "PUT"}, re.compile(r"/datastore/(image|label)/?\Z|/session/[^/]*/?\Z")),
    )

    def __init__(self, app, parallel: int = 1):
        self.app = app
        self.threads = {"infer": parallel, "sample": 1, "transfer": self.TRANSFER_THREADS}
        self._limiters = {}  # anyio.CapacityLimiter per lane, made on the server's loop

    def lane(self, scope) -> Optional[str]:
        if scope["type"] != "http":
            return None
        path = scope.get("path", "")
        return next((name for name, methods, route in self.LANES
                     if scope["method"] in methods and route.match(path)), None)

    async def __call__(self, scope, receive, send):
        lane = self.lane(scope)
        if lane is None:
            return await self.app(scope, receive, send)
        server_loop = asyncio.get_running_loop()

        def on_server_loop(fn):  # receive / send, awaited from the worker's loop
            async def call(*args):
                return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(*args), server_loop))
            return call

        def run():
            return asyncio.run(self.app(scope, on_server_loop(receive), on_server_loop(send)))

        if lane not in self._limiters:
            self._limiters[lane] = anyio.CapacityLimiter(self.threads[lane])
        await anyio.to_thread.run_sync(run, limiter=self._limiters[lane])


class _JWTWithAlgorithms:
    """MONAI Label 0.8.5 verifies tokens with ``jwt.decode(token, key, options=...)``; PyJWT 2 refuses
    any decode without ``algorithms``, so with authentication on every token was rejected. Keycloak
    signs with RS256."""

    ALGORITHMS = ["RS256"]

    def __init__(self, jwt):
        self._jwt = jwt

    def __getattr__(self, name):
        return getattr(self._jwt, name)

    def decode(self, token, key=None, **kwargs):
        kwargs.setdefault("algorithms", self.ALGORITHMS)
        return self._jwt.decode(token, key, **kwargs)


def _remove_uploads(args, kwargs) -> None:
    """Run the upload clean-up MONAI Label's endpoint queued: it queues the removal of the request's
    temporary file as a background task, which never runs when the request fails (every refused upload
    stayed in /tmp: 50 MB for a 50 MB upload)."""
    from monailabel.utils.others.generic import remove_file

    for tasks in [a for a in args if isinstance(a, BackgroundTasks)] + [
            v for v in kwargs.values() if isinstance(v, BackgroundTasks)]:
        for task in tasks.tasks:
            if task.func is remove_file:
                remove_file(*task.args, **task.kwargs)


def _wrap(module, name, check, around=contextlib.nullcontext):
    """``check`` in front of ``module.name``; both run inside the context ``around()``."""
    original = getattr(module, name)
    if getattr(original, "_liver_cascade_guard", False):
        return

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        with around():
            check(*args, **kwargs)
            try:
                return original(*args, **kwargs)
            except BaseException:
                _remove_uploads(args, kwargs)
                raise

    guarded._liver_cascade_guard = True
    setattr(module, name, guarded)


def _on_response(module, name, change) -> None:
    """``change(response)`` on what ``module.name`` returns (idempotent)."""
    original = getattr(module, name)
    if getattr(original, "_liver_cascade_guard", False):
        return

    @functools.wraps(original)
    def changed(*args, **kwargs):
        return change(original(*args, **kwargs))

    changed._liver_cascade_guard = True
    setattr(module, name, changed)


def _removed_once_sent(response):
    """The dataset ZIP MONAI Label writes to /tmp for each download was never removed (1.7 MB per
    download of the sample datastore, piling up): removed once sent."""
    from monailabel.utils.others.generic import remove_file
    from starlette.background import BackgroundTask
    from starlette.responses import FileResponse

    if isinstance(response, FileResponse) and response.background is None:
        response.background = BackgroundTask(remove_file, response.path)
    return response


def _sent_as_opened(response):
    """A label (another annotator's save) or a model (a training run's publication) can be replaced, written
    aside and renamed, and an image or label removed, while it is downloaded. FileResponse took the size
    from the path and opened the path again to send it: a replacement in between sent a file cut short (a
    broken connection), a removal a 500. The file is opened once, here, and sent from that open file: the
    old version or the new one, whole; a file removed before that is a 404."""
    from starlette.responses import FileResponse, StreamingResponse

    if not isinstance(response, FileResponse):
        return response
    try:
        f = open(response.path, "rb")
    except FileNotFoundError:  # removed since the endpoint found it (an image or label delete): was a 500
        name = os.path.basename(response.path)
        raise HTTPException(status_code=404, detail=f"{name} was removed meanwhile") from None
    headers = {"content-length": str(os.fstat(f.fileno()).st_size)}
    if response.headers.get("content-disposition"):  # the file's name, for the client
        headers["content-disposition"] = response.headers["content-disposition"]

    def chunks():
        with f:
            while chunk := f.read(1 << 20):
                yield chunk

    return StreamingResponse(chunks(), media_type=response.media_type, headers=headers, background=response.background)


def _update_model_atomically(app_instance):
    """MONAI Label's model upload (``PUT /model/<name>``), with the upload written aside and renamed into
    place. It copied the upload over the model file in place: a download meanwhile, or another process
    loading the model (a scoring run), got part of each model (a quarter of the downloads while two models
    were uploaded in turn, measured)."""
    from monailabel.utils.others.generic import file_checksum

    from lib.datastore import atomic_write

    def update_model(background_tasks, model: str, file):
        path = app_instance.model_file(model, validate=False)
        if not path:
            raise HTTPException(status_code=500, detail=f"no model file is configured for {model}")
        logger.info(f"Updating Model File for model: {model} => {path} (written aside, then renamed)")
        atomic_write(path, lambda out: shutil.copyfileobj(file.file, out, 1 << 20))
        return {"checksum": file_checksum(path), "modified_time": int(os.stat(path).st_mtime)}

    return update_model


MAX_LOG_LINES = 1_000_000  # GET /logs/?lines=...: more overflowed MONAI Label's line buffer (500)


def install(app_instance, max_upload_bytes: int) -> None:
    """Put the checks in front of MONAI Label's endpoints (idempotent)."""
    import monailabel.app as server
    from monailabel.endpoints import (activelearning, batch_infer, datastore, infer, logs, model, proxy, scoring,
                                      session, train)

    from lib.dicomweb import ProxyRequests

    infer_signature = inspect.signature(infer.run_inference)

    def infer_check(*args, **kwargs):
        a = infer_signature.bind_partial(*args, **kwargs).arguments
        parse_params(a.get("params", "{}"))
        if not a.get("file") and not a.get("image") and not a.get("session_id"):
            raise HTTPException(status_code=400, detail="image: a datastore image id, an uploaded file or a session "
                                                        "id is needed")
        if a.get("session_id") and not a.get("file") and not a.get("image"):
            sessions = app_instance.sessions()
            if sessions is None or sessions.get_session(a["session_id"], update_ts=False) is None:  # else no image
                raise HTTPException(status_code=404, detail=f"session {a['session_id']!r} not found: it expired or was "
                                                            "deleted; upload the image again (PUT /session/)")
        if getattr(a.get("output"), "value", a.get("output")) == "dicom_seg":
            # monailabel 0.8.5 writes it with dcmqi, which this app does not download (offline)
            raise HTTPException(status_code=400, detail="output=dicom_seg is not offered: use output=image, and save a "
                                                        "final label with PUT /datastore/label (on a DICOMweb "
                                                        "datastore it is stored there as DICOM SEG)")

    def strategy_check(strategy, *a, **k):
        if strategy not in app_instance._strategies:
            raise HTTPException(status_code=404, detail=f"Unknown active learning strategy {strategy!r}; "
                                                        f"available: {sorted(app_instance._strategies)}")

    def scoring_check(method, *a, **k):
        if method not in app_instance._scoring_methods:
            raise HTTPException(status_code=404, detail=f"Unknown scoring method {method!r}; "
                                                        f"available: {sorted(app_instance._scoring_methods)}")

    def datastore_check(background_tasks, image=None, params="{}", *a, **k):
        parse_params(k.get("params", params))

    def has_final_labels():  # else the run would be accepted and fail in the training process
        if not app_instance.datastore().get_labeled_images():
            raise HTTPException(status_code=400, detail="No image has a final label in the datastore: "
                                                        "save a label with tag 'final' first")

    def train_check(model, params=None, *a, **k):
        check_train_params(model, params, app_instance._trainers)
        has_final_labels()

    def train_all_check(params=None, *a, **k):
        check_train_params("", params, app_instance._trainers)
        has_final_labels()

    def batch_check(model, images=None, params=None, run_sync=False, *a, **k):
        check_model(model, app_instance._infers)
        if params is not None and not isinstance(params, dict):
            raise HTTPException(status_code=400, detail="params must be a JSON object")
        check_batch_request(params or {})  # here too: an asynchronous run would fail in its own process
        check = getattr(app_instance._infers[model], "check_request", None)
        if check is not None:  # the task's own options (scales, crf, ...): each image failed with them, later
            try:
                check({k: v for k, v in (params or {}).items() if k != "image"})
            except ValueError as e:  # InvalidRequestError
                raise HTTPException(status_code=400, detail=str(e)) from e

    # what the app and MONAI Label write into an image's info themselves: set over HTTP with the wrong type,
    # a value broke Next Sample (500) for every client until overwritten
    from lib.activelearning.uncertainty import OFFERS_KEY
    from lib.scoring import correction, uncertainty

    reserved = {"ts", "name", "strategy", "user", "path", OFFERS_KEY, correction.INFO_KEY, uncertainty.INFO_KEY,
                "seg_series"}  # seg_series: the SEGs a DICOMweb final label was read from (lib/dicomweb.py)

    def parse_info(info) -> dict:
        value = parse_params(info, "info")  # the same JSON rules: an object
        taken = sorted(k for k in value if k in reserved)
        if taken:
            raise HTTPException(status_code=400, detail=f"info keys {taken} are written by the server itself")
        return value

    def image_info_check(image, info="{}", *a, **k):
        parse_info(k.get("info", info))
        check_name(image, "image id")
        if not app_instance.datastore().get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"Image {image!r} is not in the datastore")

    def label_info_check(label, tag, info="{}", *a, **k):
        parse_info(k.get("info", info))
        check_name(label, "label id")
        check_name(tag, "label tag")
        if not app_instance.datastore().get_label_by_image_id(label, tag):
            raise HTTPException(status_code=404, detail=f"no {tag!r} label for {label!r}")

    def model_upload_check(background_tasks, model, file, *a, **k):
        """A model upload replaced the weights with whatever was sent (7 bytes of text: every later
        request failed): it must load as this app's checkpoint, of the network in place."""
        from lib.model_io import keep_previous, load_checkpoint, load_failure

        check_model(model, app_instance._infers)
        try:  # from the upload itself (torch reads file objects); MONAI Label then copies it into place
            net, ckpt = load_checkpoint(file.file)
        except Exception as e:
            raise HTTPException(status_code=400, detail="the upload is not a model file of this app: "
                                                        f"{load_failure(e.__cause__ or e)}") from None
        finally:
            file.file.seek(0)
        if not all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point()):
            raise HTTPException(status_code=400, detail="the upload has NaN or infinite weights")
        previous = app_instance.model_file(model, validate=False)
        if not previous or not os.path.exists(previous):
            return
        try:  # its header only: no network built
            before = torch.load(previous, map_location="cpu", weights_only=True)
        except Exception:
            before = None  # the file in place is broken: any valid checkpoint may replace it
        got, want = [tuple(c.get(k) for k in ("arch", "preset", "in_channels")) for c in (ckpt, before or ckpt)]
        if got != want:
            raise HTTPException(status_code=400, detail=f"the upload is a {got} network (arch, preset, input "
                                                        f"channels); {os.path.basename(previous)} is {want}")
        keep_previous(previous)  # MONAI Label copies the upload over it next: kept for a roll-back

    def session_upload_check(background_tasks, uncompress=False, expiry=0, files=(), *a, **k):
        """An upload to be unpacked that is no archive answered 500 ("Unknown archive format") and left its
        folder behind."""
        if not as_bool(uncompress) or len(files) != 1:
            return  # several files are stored as a folder, not unpacked
        f = files[0]
        name = (f.filename or "").lower()
        kinds = [fmt for fmt, exts, _ in shutil.get_unpack_formats() if name.endswith(tuple(exts))]
        try:
            readable = (zipfile.is_zipfile(f.file) if kinds == ["zip"] else
                        bool(kinds) and tarfile.open(fileobj=f.file, mode="r:*") is not None)
        except (tarfile.TarError, OSError, EOFError):
            readable = False
        f.file.seek(0)
        if not readable:
            raise HTTPException(status_code=400, detail=f"uncompress: {f.filename!r} is not a zip or tar archive")

    def session_image_check(session_id, update_ts=False, image=False, *a, **k):
        sessions = app_instance.sessions()
        info = sessions.get_session(session_id) if sessions is not None else None
        if image and info and os.path.isdir(info.image):
            raise HTTPException(status_code=400, detail="this session holds several files: there is no one image "
                                                        "to download")

    def log_lines_check(logger_file, lines, *a, **k):
        if lines is not None and lines > MAX_LOG_LINES:
            raise HTTPException(status_code=400, detail=f"lines: at most {MAX_LOG_LINES} (0 for the whole log file)")

    from monailabel.endpoints.user import auth

    if not isinstance(auth.jwt, _JWTWithAlgorithms):
        auth.jwt = _JWTWithAlgorithms(auth.jwt)

    for module, name, check in (
        (infer, "run_inference", infer_check), (activelearning, "sample", strategy_check),
        (scoring, "run_method", scoring_check), (datastore, "save_label", datastore_check),
        (datastore, "add_image", datastore_check), (train, "run_model", train_check), (train, "run", train_all_check),
        (batch_infer, "run", batch_check), (datastore, "update_image_info", image_info_check),
        (datastore, "update_label_info", label_info_check),
        (session, "create_session", session_upload_check), (session, "get_session", session_image_check),
        (logs, "get_logs", log_lines_check),
    ):
        _wrap(module, name, check)

    def no_inference_meanwhile():
        """MONAI Label overwrites the model file in place (an upload) or moves it away (a delete): not while
        an inference, on its worker thread, may be reading it."""
        return no_inference(app_instance.app_conf.max_parallel_infers)

    if not getattr(model.update_model, "_liver_cascade_guard", False):
        model.update_model = _update_model_atomically(app_instance)
    _wrap(model, "update_model", model_upload_check, around=no_inference_meanwhile)
    _wrap(model, "delete_model", lambda *a, **k: None, around=no_inference_meanwhile)
    _on_response(datastore, "download_dataset", _removed_once_sent)
    _on_response(datastore, "download_label", _sent_as_opened)
    _on_response(datastore, "download_image", _sent_as_opened)
    _on_response(model, "download_model", _sent_as_opened)

    if not isinstance(proxy.requests, ProxyRequests):
        proxy.requests = ProxyRequests()

    async def dicomweb_unreachable(request, exc):
        return JSONResponse(status_code=503, content={
            "detail": f"the DICOMweb server is unreachable ({type(exc).__name__}); try again when it is back"})

    if requests.exceptions.ConnectionError not in server.app.exception_handlers:
        server.app.add_exception_handler(requests.exceptions.ConnectionError, dicomweb_unreachable)
        server.app.add_exception_handler(requests.exceptions.Timeout, dicomweb_unreachable)
        server.app.middleware_stack = None  # rebuilt on the next request, with the handlers

    def guarded(stack):
        return UploadLimit(Unserved(OffLoop(stack, app_instance.app_conf.max_parallel_infers)), max_upload_bytes)

    stack = server.app.middleware_stack
    if stack is not None and not isinstance(stack, UploadLimit):
        server.app.middleware_stack = guarded(stack)
    elif stack is None:  # not started yet: Starlette builds the stack on the first call
        build = server.app.build_middleware_stack
        server.app.build_middleware_stack = lambda: guarded(build())
    logger.info(f"request guard installed: uploads up to {max_upload_bytes} bytes")


def bind_host(argv) -> str:
    """The address `monailabel start_server` was told to listen on (its default is all interfaces)."""
    for i, a in enumerate(argv):
        if a in ("--host", "-i") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--host="):
            return a.split("=", 1)[1]
    return "0.0.0.0"


def warn_if_exposed(argv) -> bool:
    """Log loudly when the server listens beyond this machine with authentication off."""
    from monailabel.config import settings

    host = bind_host(argv)
    if host in ("127.0.0.1", "localhost", "::1") or settings.MONAI_LABEL_AUTH_ENABLE:
        return False
    logger.warning(f"!!! listening on {host} with authentication OFF: anyone on the network can read images and "
                   "overwrite labels. Use --host 127.0.0.1 (as `make serve` does) or MONAI_LABEL_AUTH_ENABLE=true "
                   "(docs/USAGE.md, 'Guarantees and limits').")
    return True
