"""MONAI Label on Orthanc's DICOMweb: inference on a series id, final labels stored as DICOM SEG, SEGs read as labels."""

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_helpers import helpers, label_values, require_orthanc, series_uid

from lib.settings import LABEL_COLORS, LABELS

REAL_DICOM = Path(__file__).resolve().parents[3] / "shared" / "real-ct" / "dicom" / "hcc_2022"
REAL_LABEL = REAL_DICOM.parents[1] / "nifti" / "hcc_2022_ap_label.nii.gz"


def segs_referencing(orthanc, uid: str):
    segs = [pydicom.dcmread(io.BytesIO(b)) for b in orthanc.instance_files("SEG")]
    return [s for s in segs if s.ReferencedSeriesSequence[0].SeriesInstanceUID == uid]


def test_infer_on_series_id_both_models(tmp_path, phantom_series, dicomweb_server):
    import SimpleITK as sitk

    uid = series_uid(phantom_series, "phantom_000")
    # every series of the DICOMweb server is listed, fetched or not (MONAI Label listed only its cache)
    objects = requests.get(f"{dicomweb_server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert {series_uid(phantom_series, name) for name in phantom_series[1]} <= set(objects)
    case = phantom_series[1]["phantom_000"]
    for model in ("liver_resnet", "liver_cascade"):
        r = requests.post(f"{dicomweb_server.url}/infer/{model}", params={"image": uid, "output": "image"}, timeout=300,
                          files={"params": (None, '{"result_extension": ".nrrd", "result_dtype": "uint8"}')})
        assert r.status_code == 200, r.text[:500]
        (tmp_path / f"{model}.nrrd").write_bytes(r.content)
        seg = sitk.ReadImage(str(tmp_path / f"{model}.nrrd"))
        assert sorted(seg.GetSize()) == sorted(case["shape"])  # the series' own grid
        counts = label_values(tmp_path / f"{model}.nrrd")
        assert set(counts) <= {0, 1, 2} and counts.get(1, 0) > 1000, counts  # the demo weights find the liver
    r = requests.post(f"{dicomweb_server.url}/infer/liver_cascade", params={"image": "1.2.3.4.5"}, timeout=60)
    assert r.status_code == 404 and "1.2.3.4.5" in r.text


def test_final_label_is_stored_as_dicom_seg(tmp_path, phantom_series, orthanc, dicomweb_server):
    import pydicom_seg
    import SimpleITK as sitk

    out, _ = phantom_series
    uid = series_uid(phantom_series, "phantom_001")
    truth = out / "datastore" / "labels" / "final" / "phantom_001.nii.gz"
    assert not segs_referencing(orthanc, uid)
    assert uid not in requests.get(f"{dicomweb_server.url}/datastore/", params={"output": "all"}).json()["objects"] or \
        "final" not in requests.get(f"{dicomweb_server.url}/datastore/", params={"output": "all"}).json()["objects"][uid]["labels"]
    with open(truth, "rb") as f:  # what Slicer's "Submit Label" sends
        r = requests.put(f"{dicomweb_server.url}/datastore/label", params={"image": uid, "tag": "final"}, timeout=120,
                         files={"label": ("phantom_001.nii.gz", f),
                                "params": (None, '{"label_info": [{"name": "liver", "idx": 1}, {"name": "lesion", "idx": 2}]}')})
    assert r.status_code == 200, r.text[:1000]

    segs = segs_referencing(orthanc, uid)
    assert len(segs) == 1
    seg = segs[0]
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == phantom_series[1]["phantom_001"]["study_uid"]
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert set(segments) == set(LABELS)
    for name, s in segments.items():
        assert s.SegmentNumber == LABELS[name]
        assert list(s.RecommendedDisplayCIELabValue) == pydicom_seg.template.rgb_to_cielab(list(LABEL_COLORS[name]))
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in (out / "dicom" / "phantom_001").iterdir()]
    assert referenced <= {h.SOPInstanceUID for h in headers} and referenced
    # the CT's frame of reference (pydicom-seg 0.4.1 writes a new one, which strict viewers refuse to overlay)
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID

    # the series is now labelled, and its label (read back from the SEG) is the one we saved
    stats = requests.get(f"{dicomweb_server.url}/datastore/", params={"output": "stats"}).json()
    assert stats["completed"] >= 1
    objects = requests.get(f"{dicomweb_server.url}/datastore/", params={"output": "all"}).json()["objects"]
    assert "final" in objects[uid]["labels"] and objects[uid]["labels"]["final"]["info"]["seg_series"] == [
        seg.SeriesInstanceUID]
    train = requests.get(f"{dicomweb_server.url}/datastore/", params={"output": "train"}).json()
    pair = next(p for p in train if Path(p["image"]).name.startswith(uid))
    saved = sitk.ReadImage(pair["label"])
    expected = sitk.Resample(sitk.ReadImage(str(truth)), saved, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayFromImage(saved), sitk.GetArrayFromImage(expected))
    r = requests.post(f"{dicomweb_server.url}/activelearning/first", json={}, timeout=60)
    assert r.status_code == 200 and r.json().get("id") != uid
    # the uncertainty strategy scores and offers series too (its offer record lives in the DICOMweb
    # datastore's cache); one unlabeled series is left, so both annotators get it
    for client in ("ann1", "ann2"):
        r = requests.post(f"{dicomweb_server.url}/activelearning/uncertainty", json={"client_id": client}, timeout=600)
        assert r.status_code == 200 and r.json().get("id") not in (None, uid), r.text
        assert 0.0 <= r.json()["liver_uncertainty"]["score"] <= 1.0
    assert {"ann1", "ann2"} <= set(r.json()["next_sample_offers"])  # with the /first offer above ("admin")


def test_bad_labels_are_refused_and_nothing_is_stored(tmp_path, phantom_series, orthanc, dicomweb_server):
    """As on the local datastore: a label off the series' grid, of values other than 0/1/2, or empty
    gets 400 and no SEG (some were stored, silently resampled or truncated; others answered 500)."""
    import nibabel as nib

    out, _ = phantom_series
    uid = series_uid(phantom_series, "phantom_000")
    truth = nib.load(str(out / "datastore" / "labels" / "final" / "phantom_000.nii.gz"))
    good = np.asarray(truth.dataobj).astype(np.uint8)
    before = len(orthanc.instance_files("SEG"))
    shifted = truth.affine.copy()
    shifted[:3, 3] += 300
    cases = {
        "values 0/1/3": (np.where(good == 2, 3, good).astype(np.uint8), truth.affine),
        "fractional": (good.astype(np.float32) * 1.4, truth.affine),
        "negative": (good.astype(np.int16) * -1, truth.affine),
        "part of the slices": (good[:, :, : good.shape[2] // 2], truth.affine),
        "shifted 300 mm": (good, shifted),
        "empty": (np.zeros_like(good), truth.affine),
    }
    for name, (arr, affine) in cases.items():
        path = tmp_path / "bad.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), str(path))
        with open(path, "rb") as f:
            r = requests.put(f"{dicomweb_server.url}/datastore/label", params={"image": uid, "tag": "final"},
                             files={"label": ("bad.nii.gz", f)}, timeout=120)
        assert r.status_code == 400 and "not saved" in r.text, (name, r.status_code, r.text[:300])
    with open(out / "datastore" / "labels" / "final" / "phantom_000.nii.gz", "rb") as f:
        r = requests.put(f"{dicomweb_server.url}/datastore/label", params={"image": "1.2.3.4.5", "tag": "final"},
                         files={"label": ("x.nii.gz", f)}, timeout=120)
    assert r.status_code == 404, r.text[:300]
    assert len(orthanc.instance_files("SEG")) == before
    r = requests.delete(f"{dicomweb_server.url}/datastore/label", params={"id": uid, "tag": "final"}, timeout=60)
    assert r.status_code == 501 and "SEG" in r.text  # not a silent 200 that deletes nothing
    r = requests.post(f"{dicomweb_server.url}/infer/liver_cascade", params={"image": uid, "output": "dicom_seg"},
                      timeout=60)
    assert r.status_code == 400 and "output=image" in r.text  # at once, not after the inference


def test_a_dicomweb_server_that_goes_down_gets_503_fast(tmp_path, phantom_series):
    """With the DICOMweb server down, requests answered a bare 500 after 30 s of retries."""
    import time

    from orthanc_server import OrthancServer

    require_orthanc()
    app = helpers.untrained_app(tmp_path / "app")
    with OrthancServer(helpers.free_port(), tmp_path / "orthanc") as orthanc:
        orthanc.upload([phantom_series[0] / "dicom" / "phantom_000"])
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MONAI_LABEL_DATASTORE_CACHE_PATH", str(tmp_path / "cache"))
            mp.setenv("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")
            server = helpers.Server(app, orthanc.dicomweb, {"models": "liver_resnet"}, tmp_path / "server.log")
        conf_dir = orthanc.conf_dir
    assert conf_dir and not conf_dir.exists()  # stopping Orthanc removes its temporary configuration
    try:
        from lib.dicomweb import LIST_CACHE_SECONDS

        time.sleep(LIST_CACHE_SECONDS + 1)  # past the datastore's list cache (it answers from it meanwhile)
        t0 = time.time()
        r = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60)
        assert r.status_code == 503 and "unreachable" in r.json()["detail"], r.text[:300]
        assert time.time() - t0 < 10
    finally:
        server.stop()


def test_ohif_files_and_fixes_are_served(dicomweb_server):
    from lib.ohif import BUNDLE_PATCHES, OHIF_DIR

    r = requests.get(f"{dicomweb_server.url}/ohif/assets/images/settings.svg", timeout=30)  # a nested path
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg") and "<svg" in r.text
    r = requests.get(f"{dicomweb_server.url}/ohif/viewer", params={"StudyInstanceUIDs": "1.2"}, timeout=30)
    assert r.status_code == 200 and r.text == (OHIF_DIR / "index.html").read_text()
    r = requests.get(f"{dicomweb_server.url}/ohif/..%2F..%2Fconfig.py", timeout=30)
    assert r.status_code in (200, 404) and "MONAI_LABEL" not in r.text
    served = ""
    for f in OHIF_DIR.glob("*.js"):
        text = f.read_text(encoding="utf-8", errors="replace")
        if any(a in text for a, _ in BUNDLE_PATCHES):
            served += requests.get(f"{dicomweb_server.url}/ohif/{f.name}", timeout=30).text
    for old, new in BUNDLE_PATCHES:
        assert new in served and old not in served


@pytest.mark.skipif(not REAL_DICOM.is_dir(), reason="../shared/real-ct/dicom/hcc_2022 is not on this machine")
def test_real_seg_objects_are_read_as_one_label(tmp_path):
    """The TCIA case ships liver and tumour as two SEG objects: together they are the series' label."""
    import SimpleITK as sitk

    from orthanc_server import OrthancServer

    from lib.dicomweb import create_dicomweb_datastore

    require_orthanc()
    with OrthancServer(helpers.free_port(), tmp_path / "orthanc") as orthanc:
        orthanc.upload([REAL_DICOM])  # read in place, never copied into the repository
        ds = create_dicomweb_datastore(orthanc.dicomweb, cache_path=str(tmp_path / "cache"))
        [uid] = ds.list_images()
        assert ds.get_labeled_images() == [uid] and ds.get_unlabeled_images() == []
        image = sitk.ReadImage(ds.get_image_uri(uid))
        assert image.GetSize() == (512, 512, 50)  # the coronal localizer in the same series is left out
        label = sitk.ReadImage(ds.get_label_uri(uid, "final"))
        truth = sitk.ReadImage(str(REAL_LABEL))
        assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(truth))
        assert label_values(ds.get_label_uri(uid, "final")) == {0: 512 * 512 * 50 - 438217 - 374, 1: 438217, 2: 374}
        assert [d["label"] for d in ds.datalist()] == [ds.get_label_uri(uid, "final")]
