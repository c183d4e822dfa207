"""DICOMweb studies (Orthanc, for OHIF): MONAI Label's DICOMweb datastore, made to work offline.

What changes against monailabel 0.8.5's own DICOMWebDatastore:
- final labels are written as DICOM SEG here with pydicom-seg (monailabel downloads dcmqi's
  `itkimage2segimage` at start-up, which needs the internet), with our segment names, codes
  and colours from lib/settings.py;
- a series' label is built from *every* SEG in the server that references it, segments
  matched by name (a TCIA case ships its liver and its tumour as two SEG objects); per
  structure the newest SEG wins, lesion drawn over liver;
- a series is converted from its majority-orientation slices only (scanners put a
  localizer into the same series);
- series and label lists are cached for seconds, not monailabel's two hours, so a new
  upload or a saved SEG shows at once.
"""

import http.cookiejar
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pydicom
import pydicom_seg
import requests
import SimpleITK as sitk
import urllib3
from cachetools import TTLCache
from filelock import FileLock
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.utils.others.generic import remove_file
from fastapi import HTTPException
from pydicom.dataset import Dataset

from lib.datastore import SharedIndex, _reading_the_current_index, check_name, require_label
from lib.settings import BACKGROUND, LABEL_COLORS, LABELS
from lib.validation import InputError, check_label_matches, read_geometry

logger = logging.getLogger(__name__)

LIST_CACHE_SECONDS = 10
# (connect, read) seconds for every DICOMweb request: a stalled server (accepting connections, never
# answering) hung the whole MONAI Label server with no limit; now it is a 503 (lib/server_guard.py)
# after the 3 attempts dicomweb_client makes (about 31 s). The read timeout is the longest wait for the
# next bytes of an answer, not for the whole download.
DICOMWEB_TIMEOUT_S = (3.05, 10)
# after a request timed out or found no server, the next ones fail at once (503) for this long, then one
# is let through to probe: the server waits on DICOMweb on its event loop, so a stalled Orthanc queued
# every request behind 31 s waits, one after another
DICOMWEB_RETRY_AFTER_S = 5.0
# a DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters. Series and SEGs with anything else
# in their UID are ignored: a UID is a folder name of the cache ("../x" pointed outside it), and one
# malformed SEG made every request fail (dicomweb_client refuses to query it: 500)
DICOM_UID = re.compile(r"[0-9]+(\.[0-9]+)*\Z")
# ContentDescription of the SEGs this app writes: such a SEG is a whole label (both structures).
FINAL_LABEL_CONTENT = "liver_cascade final label"
SEG_SERIES_NUMBER = 300  # the first SEG saved for a series; each later one counts up
# label info the cache derives from the series and its SEGs; a save request's other keys are kept
SYNCED_INFO_KEYS = {"seg_series", "ts", "name", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "StudyDate",
                    "StudyTime", "Modality", "RetrieveURL"}

# SNOMED CT codes for the SEG segments (category, type), as DICOM's CID 7150/7151/7153 use them.
SEGMENT_CODES = {
    "liver": (("123037004", "SCT", "Anatomical Structure"), ("10200004", "SCT", "Liver")),
    "lesion": (("49755003", "SCT", "Morphologically Altered Structure"), ("52988006", "SCT", "Lesion")),
}


def is_uid(value) -> bool:
    return isinstance(value, str) and len(value) <= 64 and bool(DICOM_UID.match(value))


def _series_number(meta: Dataset) -> int:
    try:
        return int(meta.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        return 0


class _TimeoutSession(requests.Session):
    """A session whose requests time out (DICOMWEB_TIMEOUT_S) unless the caller sets a timeout, and
    fail at once for DICOMWEB_RETRY_AFTER_S after one found the server stalled or down. A dropped
    connection is tried once more first (one save in a full test run got 503: one reset connection had
    failed every request for the next 5 s)."""

    def __init__(self):
        super().__init__()
        self._down_until = 0.0

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", DICOMWEB_TIMEOUT_S)
        if time.monotonic() < self._down_until:
            raise requests.exceptions.ConnectionError("the DICOMweb server did not answer a moment ago; "
                                                      f"asked again after {DICOMWEB_RETRY_AFTER_S:g} s")
        for attempt in (1, 2):
            try:
                return super().request(method, url, **kwargs)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                replayable = isinstance(kwargs.get("data"), (type(None), bytes, bytearray, str))  # not a generator
                if attempt == 1 and replayable and not isinstance(e, requests.exceptions.Timeout):
                    # a dropped connection (one the server closed while it was reused, a reset under load):
                    # once more on a new one before every request fails for a while. Safe for STOW too: an
                    # instance stored twice under the same UIDs is stored once.
                    logger.info(f"DICOMweb {method} {url[:200]}: {type(e).__name__}; asking once more")
                    continue
                logger.warning(f"DICOMweb {method} {url[:200]} failed ({type(e).__name__}: {str(e)[:300]}); "
                               f"further requests fail at once for {DICOMWEB_RETRY_AFTER_S:g} s")
                self._down_until = time.monotonic() + DICOMWEB_RETRY_AFTER_S
                raise


class ProxyRequests:
    """What MONAI Label's DICOMweb proxy (``/proxy/dicom/...``, OHIF's way to every image) calls as ``requests``:
    it called ``requests.get`` / ``post`` with no timeout, so a stalled DICOMweb server held the request,
    and with it the whole server, for good. Here they time out (``DICOMWEB_TIMEOUT_S``, per read), fail at
    once for a moment after a stall (``_TimeoutSession``), and read the body before returning, so that a
    stall half-way through it is the same 503 (the server's handler for unreachable DICOMweb) rather than
    a 500. The DICOMweb server's cookies are not kept: one session serves every user."""

    def __init__(self):
        self._session = _TimeoutSession()
        self._session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        response = self._session.request(method, url, **kwargs)
        try:
            body = response.raw.read()  # as the proxy reads it: undecoded, its headers passed on as they are
        except urllib3.exceptions.HTTPError as e:  # a read timeout or a broken connection mid-body
            raise requests.exceptions.ConnectionError(f"reading {url}: {e}") from e
        finally:
            response.close()
        response.raw = io.BytesIO(body)
        return response

    def get(self, url: str, **kwargs) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> requests.Response:
        return self.request("POST", url, **kwargs)


def create_dicomweb_datastore(studies: str, cache_path: Optional[str] = None) -> "LiverDICOMWebDatastore":
    """The datastore for `--studies http://.../dicom-web`, without monailabel's dcmqi download.

    The local cache is `cache_path`, else MONAI Label's settings (MONAI_LABEL_DATASTORE_CACHE_PATH),
    else ~/.cache/monailabel/dicom/."""
    session = _TimeoutSession()
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        session.auth = (settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    client = DICOMwebClientX(url=studies, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                             wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                             stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
    # a DICOMweb server that is down answers 503 in about a second instead of 30 s of back-off
    # (lib/server_guard.py turns the connection error into 503); busy answers are still retried
    client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=250)
    cache = (cache_path or settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return LiverDICOMWebDatastore(client, search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
                                  cache_path=cache or None, fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME)


# ----------------------------------------------------------------------------
# DICOM <-> label map
# ----------------------------------------------------------------------------


def axial_series_files(series_dir: str) -> List[str]:
    """The series' image files in the majority orientation, sorted along the slice normal."""
    headers = []
    for f in sorted(Path(series_dir).iterdir()):
        ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=True)
        if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
            headers.append((str(f), tuple(round(float(v), 3) for v in ds.ImageOrientationPatient),
                            [float(v) for v in ds.ImagePositionPatient]))
    if not headers:
        raise ValueError(f"No image slices with a position in {series_dir}")
    orientation, _ = Counter(h[1] for h in headers).most_common(1)[0]
    normal = np.cross(orientation[:3], orientation[3:])
    kept = sorted((h for h in headers if h[1] == orientation), key=lambda h: float(np.dot(normal, h[2])))
    if len(kept) < len(headers):
        logger.info(f"{series_dir}: {len(headers) - len(kept)} slice(s) in another orientation left out")
    return [h[0] for h in kept]


def series_to_nifti(series_dir: str, out_file: str) -> str:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(axial_series_files(series_dir))
    sitk.WriteImage(reader.Execute(), out_file)
    return out_file


def segment_value(name: str) -> Optional[int]:
    """Our label value for a SEG segment name ('Liver', 'Tumor', 'liver lesion', ...); None if neither."""
    n = name.strip().lower()
    if n in LABELS:
        return LABELS[n]
    if any(k in n for k in ("lesion", "tumor", "tumour", "cancer", "metasta")):
        return LABELS["lesion"]
    return LABELS["liver"] if "liver" in n else None


def seg_to_label(seg_files: List[str], reference: sitk.Image) -> sitk.Image:
    """One label map (our values) on `reference`'s grid from SEG files ordered oldest first.

    Per structure the newest SEG that has it wins; a SEG written by this app is a whole label."""
    masks: Dict[int, sitk.Image] = {}
    reader = pydicom_seg.SegmentReader()
    for f in seg_files:
        dcm = pydicom.dcmread(f)
        if dcm.get("ContentDescription") == FINAL_LABEL_CONTENT:
            masks.clear()
        result = reader.read(dcm)
        for number, info in result.segment_infos.items():
            value = segment_value(str(info.get("SegmentLabel", "")))
            if value is None or number not in result.available_segments:
                logger.info(f"{f}: segment {number} {info.get('SegmentLabel')!r} is not liver or lesion; ignored")
                continue
            mask = sitk.Resample(result.segment_image(number), reference, sitk.Transform(), sitk.sitkNearestNeighbor,
                                 0, sitk.sitkUInt8)
            masks[value] = mask  # newest SEG wins per structure
    label = np.full(sitk.GetArrayViewFromImage(reference).shape, BACKGROUND, np.uint8)
    for value in sorted(masks):  # liver (1) first, lesion (2) over it
        label[sitk.GetArrayViewFromImage(masks[value]) > 0] = value
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(reference)
    return out


def label_to_seg(label: sitk.Image, source_files: List[str], description: str,
                 series_number: int = None) -> pydicom.Dataset:
    """A DICOM SEG (one segment per label value present) referencing the source slices."""
    values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) - {BACKGROUND}
    unknown = values - set(LABELS.values())
    if unknown:
        raise ValueError(f"label values {sorted(unknown)} are not in {LABELS}")
    if not values:
        raise ValueError("the label is empty: nothing to store as DICOM SEG")
    attributes = []
    for name, value in LABELS.items():
        category, kind = SEGMENT_CODES[name]
        attributes.append({
            "labelID": value,
            "SegmentLabel": name,
            "SegmentDescription": name,
            "SegmentAlgorithmType": "SEMIAUTOMATIC",
            "SegmentAlgorithmName": "liver_cascade",
            "SegmentedPropertyCategoryCodeSequence": dict(zip(("CodeValue", "CodingSchemeDesignator", "CodeMeaning"),
                                                              category)),
            "SegmentedPropertyTypeCodeSequence": dict(zip(("CodeValue", "CodingSchemeDesignator", "CodeMeaning"),
                                                          kind)),
            "recommendedDisplayRGBValue": list(LABEL_COLORS[name]),
        })
    template = pydicom_seg.template.from_dcmqi_metainfo({
        "ContentCreatorName": "MONAILabel^liver_cascade",
        "ClinicalTrialSeriesID": "liver_cascade",
        "ClinicalTrialTimePointID": "1",
        "ClinicalTrialCoordinatingCenterName": "MONAI Label",
        "SeriesDescription": description,
        "SeriesNumber": str(series_number or SEG_SERIES_NUMBER),
        "InstanceNumber": "1",
        "BodyPartExamined": "ABDOMEN",
        "ContentLabel": "SEGMENTATION",
        "ContentDescription": FINAL_LABEL_CONTENT,
        "segmentAttributes": [attributes],
    })
    writer = pydicom_seg.MultiClassWriter(template=template, inplane_cropping=False, skip_empty_slices=True,
                                          skip_missing_segment=False)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    frame_of_reference = sources[0].get("FrameOfReferenceUID")  # read first: write() changes the sources' too
    dcm = writer.write(sitk.Cast(label, sitk.sitkUInt8), sources)
    # the CT's frame of reference, as DICOM requires of a SEG derived from it (pydicom-seg 0.4.1 copies
    # it, then writes a new UID over it; strict readers then refuse to overlay the SEG)
    if frame_of_reference:
        dcm.FrameOfReferenceUID = frame_of_reference
    t = time.time()  # to the microsecond: two saves within a second are told apart (and ordered) by it
    now = time.strftime("%Y%m%d%H%M%S", time.localtime(t)) + f".{int(t % 1 * 1e6):06d}"
    dcm.SeriesDate = dcm.ContentDate = now[:8]
    dcm.SeriesTime = dcm.ContentTime = now[8:]
    return dcm


# ----------------------------------------------------------------------------
# datastore
# ----------------------------------------------------------------------------


@_reading_the_current_index
class LiverDICOMWebDatastore(SharedIndex, DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore: series and SEGs on the DICOMweb server, a local cache (NIfTI files
    and an index) that the server's threads, the file watcher and the scoring and training processes share
    (lib/datastore.py, SharedIndex: each change to the index under its lock, labels and index written aside
    and renamed; MONAI Label changed it in place, unlocked: a label read during another save got the file
    half-written, and two reconciles at once failed with "dictionary changed size during iteration")."""

    def __init__(self, client, search_filter: Dict[str, Any], cache_path: Optional[str] = None, fetch_by_frame=False):
        self._share_index()
        super().__init__(client, search_filter, cache_path, fetch_by_frame, convert_to_nifti=True)
        self._seg_refs: Dict[str, dict] = {}  # SEG series uid -> referenced series, study, time (SEGs don't change)
        self._lists = TTLCache(maxsize=4, ttl=LIST_CACHE_SECONDS)
        self._lock = threading.RLock()

    def _cached(self, key: str, compute):
        with self._lock:
            if key not in self._lists:
                self._lists[key] = compute()
            return self._lists[key]

    def _series_dir(self, series_uid: str, kind: str = "images") -> str:
        if not is_uid(series_uid):  # list_images and _segs_by_image keep UIDs only; a last line of defence
            raise HTTPException(status_code=400, detail=f"{series_uid!r} is not a DICOM series UID")
        base = self._datastore.image_path() if kind == "images" else os.path.join(self._datastore_path, ".segs")
        return os.path.realpath(os.path.join(base, series_uid))

    def _download(self, series_uid: str, kind: str = "images") -> str:
        """The series' DICOM files in the cache, fetched once: requests run on several threads (a label read
        back after a save, another client's read of the same label, an inference) and processes share it."""
        folder = self._series_dir(series_uid, kind)
        with FileLock(folder + ".download.lock"):  # not get_image_uri's ".lock", which it holds meanwhile
            if not os.path.isdir(folder) or not os.listdir(folder):
                dicom_web_download_series(None, series_uid, folder, self._client, self._fetch_by_frame)
        return folder

    def get_image_uri(self, image_id: str) -> str:
        """The series as a NIfTI file in the local cache, fetched and converted on first use. The server
        and its scoring or training processes share the cache: one of them fetches a series (a lock per
        series), and the file appears whole (written aside, then renamed), never half-written to the
        others (a scoring process read a series the server was still writing, and left it unranked)."""
        if image_id not in self.list_images():
            return ""
        nii = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        if os.path.exists(nii):
            return nii
        series_dir = self._series_dir(image_id)
        with FileLock(series_dir + ".lock"):
            if not os.path.exists(nii):  # not fetched by another process meanwhile
                # written aside, in a folder the datastore's file watcher does not list, then renamed
                partial_dir = os.path.join(self._datastore_path, ".partial")
                os.makedirs(partial_dir, exist_ok=True)
                partial = os.path.join(partial_dir, f"{image_id}.nii.gz")
                series_to_nifti(self._download(image_id), partial)
                os.replace(partial, nii)
                self._register_image(image_id, nii)
        return nii

    def _register_image(self, image_id: str, nii: str) -> None:
        """The cached series in the local index (LocalDatastore.add_image would copy the file again, in place)."""
        info = dict(self._dicom_info(image_id), ts=int(time.time()), name=os.path.basename(nii))
        with self._locked():
            self._load_changed_index()
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=".nii.gz"))
            self._update_datastore_file()

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        raise HTTPException(status_code=405, detail="the images of a DICOMweb datastore are the series of the "
                                                    "DICOMweb server: store the series there (e.g. Orthanc's upload); "
                                                    "nothing was added")

    def remove_image(self, image_id: str) -> None:
        raise HTTPException(status_code=405, detail="the images of a DICOMweb datastore are the series of the "
                                                    "DICOMweb server: delete the series there; nothing was removed")

    def list_images(self) -> List[str]:
        def search():
            datasets = self._client.search_for_series(search_filters=self._search_filter)
            uids = [str(Dataset.from_json(ds)["SeriesInstanceUID"].value) for ds in datasets]
            bad = [u for u in uids if not is_uid(u)]
            if bad:
                logger.warning(f"series ignored, their SeriesInstanceUID is not a DICOM UID: {bad[:5]}")
            return [u for u in uids if is_uid(u)]

        return self._cached("images", search)

    def _segs_by_image(self) -> Dict[str, List[str]]:
        """Image series uid -> its SEG series uids, oldest first."""
        by_image: Dict[str, List[str]] = {}
        for ds in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(ds)
            uid, study = str(seg.get("SeriesInstanceUID", "")), str(seg.get("StudyInstanceUID", ""))
            if not (is_uid(uid) and is_uid(study)):
                logger.warning(f"SEG series {uid[:80]!r} ignored: its UIDs are not DICOM UIDs")
                continue
            if uid not in self._seg_refs:
                try:
                    meta = Dataset.from_json(self._client.retrieve_series_metadata(study, uid)[0])
                except (ValueError, KeyError, IndexError, requests.HTTPError) as e:  # one bad SEG, not every request
                    logger.warning(f"SEG series {uid} ignored: its metadata cannot be read ({type(e).__name__}: {e})")
                    continue
                refs = meta.get("ReferencedSeriesSequence")
                self._seg_refs[uid] = {
                    "image": str(refs[0].SeriesInstanceUID) if refs else "",
                    "study": study,
                    "when": f"{meta.get('ContentDate', '')}{meta.get('ContentTime', '')}",
                    "number": _series_number(meta),
                    "ours": meta.get("ContentDescription") == FINAL_LABEL_CONTENT,
                }
            ref = self._seg_refs[uid]
            if ref["image"]:
                by_image.setdefault(ref["image"], []).append(uid)
        images = set(self.list_images())
        # oldest first: by content date and time, then by our SEGs' series number (saves within one second)
        return {k: sorted(v, key=lambda u: (self._seg_refs[u]["when"], self._seg_refs[u].get("number", 0), u))
                for k, v in by_image.items() if k in images}

    def json(self):
        """The local cache's listing (``GET /datastore/?output=all``), completed with every series of the
        DICOMweb server: those not fetched yet are listed too (``"fetched": false``), with the SEG series
        that make their final label. (MONAI Label lists only the cache: no series right after start.)"""
        segs = self._fresh_segs()
        self._prune_finals(segs)
        out = LocalDatastore.json(self)
        series = self.list_images()
        # series deleted on the server are not listed from the cache
        objects = out["objects"] = {k: v for k, v in out.get("objects", {}).items() if k in set(series)}
        for uid in series:
            obj = objects.setdefault(uid, {"image": {"ext": ".nii.gz", "info": {"fetched": False}}, "labels": {}})
            labels = obj.setdefault("labels", {})
            final = DefaultLabelTag.FINAL.value
            if uid in segs and final not in labels:
                labels[final] = {"ext": ".nii.gz", "info": {"seg_series": segs[uid], "fetched": False}}
        return out

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        return self._cached("labeled", lambda: sorted(self._segs_by_image()))

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        labeled = set(self.get_labeled_images())
        return [i for i in self.list_images() if i not in labeled]

    def _synced_label(self, image_id: str, seg_uids: List[str]) -> str:
        """The cached final label of ``image_id`` if it was read from exactly ``seg_uids``; "" otherwise."""
        uri = LocalDatastore.get_label_uri(self, image_id, DefaultLabelTag.FINAL)
        current = LocalDatastore.get_label_info(self, image_id, DefaultLabelTag.FINAL)
        return uri if uri and os.path.exists(uri) and current.get("seg_series") == seg_uids else ""

    def sync_label(self, image_id: str, seg_uids: List[str]) -> str:
        """The local final label of `image_id`, rebuilt when the set of SEGs referencing it changed."""
        uri = self._synced_label(image_id, seg_uids)
        if uri:
            return uri
        reference = sitk.ReadImage(self.get_image_uri(image_id))
        files = [os.path.join(d, sorted(os.listdir(d))[0]) for d in (self._download(u, "segs") for u in seg_uids)]
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "label.nii.gz")
            sitk.WriteImage(seg_to_label(files, reference), out, True)
            info = dict(self._dicom_info(image_id), seg_series=seg_uids)  # a query: not under the lock
            with self._locked():
                self._load_changed_index()
                uri = self._synced_label(image_id, seg_uids)  # another thread or process read them meanwhile
                if uri:
                    return uri
                current = LocalDatastore.get_label_info(self, image_id, DefaultLabelTag.FINAL)
                if seg_uids and (current.get("seg_series") or [None])[-1] == seg_uids[-1]:
                    # the newest SEG is the same (an older one was deleted): its save request's info stays
                    info.update({k: v for k, v in current.items() if k not in SYNCED_INFO_KEYS})
                self._write_label(image_id, out, DefaultLabelTag.FINAL, ".nii.gz", info)
                return LocalDatastore.get_label_uri(self, image_id, DefaultLabelTag.FINAL)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        image_id = image_id or label_id
        if label_tag == DefaultLabelTag.FINAL:
            segs = self._segs_by_image()
            if segs.get(image_id):
                return self.sync_label(image_id, segs[image_id])
            self._prune_finals(segs)  # its SEGs were deleted on the server: no final label
            return ""
        return LocalDatastore.get_label_uri(self, label_id, label_tag)

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        check_name(label_tag, "label tag")
        require_label(self, label_id, label_tag)
        return LocalDatastore.get_label_info(self, label_id, label_tag)

    def _prune_finals(self, segs: Dict[str, List[str]]) -> None:
        """Remove the cached final labels whose SEGs were deleted from the server (the way USAGE gives to
        delete one): they were still served and listed until the next training."""
        with self._locked():
            self._load_changed_index()
            gone = [i for i in LocalDatastore.get_labeled_images(self) if i not in segs]
            for image_id in gone:
                logger.info(f"{image_id}: no SEG on the server any more; local final label removed")
                remove_file(LocalDatastore.get_label_uri(self, image_id, DefaultLabelTag.FINAL))
            if gone:  # the index now, not when the file watcher's event comes
                self.refresh()

    def _download_labeled_data(self):
        segs = self._segs_by_image()
        self._prune_finals(segs)
        for image_id, uids in segs.items():
            self.sync_label(image_id, uids)

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        """A final label is the series' SEGs on the server (cached or not yet); other tags are local."""
        if tag == DefaultLabelTag.FINAL:
            return image_id if image_id in self._cached("segs", self._segs_by_image) else ""
        return LocalDatastore.get_label_by_image_id(self, image_id, tag)

    def status(self) -> Dict[str, Any]:
        self._prune_finals(self._fresh_segs())
        return super().status()

    def _fresh_segs(self) -> Dict[str, List[str]]:
        """The SEGs on the server now (one QIDO query), also for the cached lookups: a final label is
        removed from the cache only on a fresh answer (a stale one removed a label just synced)."""
        segs = self._segs_by_image()
        with self._lock:
            self._lists["segs"] = segs
            self._lists["labeled"] = sorted(segs)
        return segs

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any],
                   label_id: str = "") -> str:
        check_name(label_tag, "label tag")  # a tag is a folder of the cache: "../x" wrote outside it
        image_uri = self.get_image_uri(image_id)
        if not image_uri:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not a series of {self.name()}; "
                                                        "label not saved")
        tmp = None
        if "".join(Path(label_filename).suffixes) == ".bin":  # OHIF sends the raw voxel array
            voxels = int(np.prod(read_geometry(image_uri).shape))  # the header only
            if os.path.getsize(label_filename) != voxels:  # one byte per voxel; else a reshape error (500)
                raise HTTPException(status_code=400, detail=f"label not saved: the .bin label has "
                                                            f"{os.path.getsize(label_filename)} bytes; the series has "
                                                            f"{voxels} voxels (one uint8 value each)")
            label_filename = tmp = binary_to_image(image_uri, label_filename)
        try:
            try:  # as the local datastore: on the series' grid, values 0/1/2; nothing is stored otherwise
                check_label_matches(label_filename, image_uri, any_voxel_order=True)
            except InputError as e:
                raise HTTPException(status_code=e.status, detail=f"label not saved: {e}") from e
            if label_tag != DefaultLabelTag.FINAL:
                _, ext = self._to_id(os.path.basename(label_filename))
                self._write_label(image_id, label_filename, label_tag, ext, label_info)
                return image_id
            reference = sitk.ReadImage(image_uri)
            # the grids match (checked): resampling puts the label in the series' voxel order
            label = sitk.Resample(sitk.ReadImage(label_filename), reference, sitk.Transform(),
                                  sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            ours = [self._seg_refs[u].get("number", 0) for u in self._segs_by_image().get(image_id, [])
                    if self._seg_refs[u].get("ours")]
            try:  # numbered and dated: each save is a new SEG series, told apart in the viewer's list
                dcm = label_to_seg(label, axial_series_files(self._download(image_id)),
                                   f"liver_cascade final label {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                   series_number=max([SEG_SERIES_NUMBER - 1] + ours) + 1)
            except ValueError as e:  # an empty label: nothing to store as DICOM SEG
                raise HTTPException(status_code=400, detail=f"label not saved: {e}") from e
            self._client.store_instances([dcm])
            seg_uid = str(dcm.SeriesInstanceUID)
            self._seg_refs[seg_uid] = {"image": image_id, "study": str(dcm.StudyInstanceUID),
                                       "when": f"{dcm.ContentDate}{dcm.ContentTime}",
                                       "number": int(dcm.SeriesNumber), "ours": True}
            with self._lock:
                self._lists.clear()
            logger.info(f"{image_id}: final label stored as DICOM SEG series {seg_uid}")
            self.sync_label(image_id, self._segs_by_image()[image_id])  # read back from the server
            extra = {k: v for k, v in (label_info or {}).items() if k not in SYNCED_INFO_KEYS}
            if extra:  # the request's label info (the SEG carries the label, not these)
                self.update_label_info(image_id, DefaultLabelTag.FINAL, extra)
            return image_id
        finally:
            if tmp:
                os.unlink(tmp)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        check_name(label_tag, "label tag")
        if label_tag == DefaultLabelTag.FINAL:  # a final label is a SEG in the DICOMweb server: not ours to delete
            raise HTTPException(status_code=501, detail="final labels are DICOM SEG series in the DICOMweb server; "
                                                        "delete the SEG series there (e.g. Orthanc's interface)")
        with self._locked():
            self._load_changed_index()
            require_label(self, label_id, label_tag)
            LocalDatastore.remove_label(self, label_id, label_tag)
            self.refresh()  # the index now, not when the file watcher's event comes
