"""Editing a DICOMweb datastore through MONAI Label, as a DICOMweb black-box round did: label tags that
leave the cache, OHIF .bin labels of the wrong size, images added or removed, SEGs deleted in Orthanc,
correction scoring, a stalled or absent Orthanc (through the datastore and the proxy), and processes sharing the series cache.

Own Orthanc and server per module (the session's are shared by tests/viewers/test_dicomweb.py)."""

import io
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from dicomweb_helpers import helpers, require_orthanc, series_uid

from lib.dicomweb import DICOMWEB_RETRY_AFTER_S, LIST_CACHE_SECONDS, SEG_SERIES_NUMBER


@pytest.fixture(scope="module")
def site(tmp_path_factory, phantom_series):
    """Orthanc with the two phantom series, and a server with the demo weights on it."""
    from orthanc_server import OrthancServer

    require_orthanc()
    base = tmp_path_factory.mktemp("dicomweb_edits")
    orthanc = OrthancServer(helpers.free_port(), base / "orthanc", log=base / "orthanc.log").start()
    orthanc.upload([phantom_series[0] / "dicom"])
    app = helpers.copy_app(base / "app", with_weights=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONAI_LABEL_DATASTORE_CACHE_PATH", str(base / "cache"))
        mp.setenv("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")
        server = helpers.Server(app, orthanc.dicomweb, {"models": "liver_resnet,liver_cascade"}, base / "server.log")
    server.orthanc, server.cache, server.app_dir = orthanc, base / "cache", app
    yield server
    server.stop()
    orthanc.stop()


def truth_bytes(phantom_series, name: str) -> bytes:
    return (phantom_series[0] / "datastore" / "labels" / "final" / f"{name}.nii.gz").read_bytes()


def put_label(site, uid, data: bytes, tag="final", filename="label.nii.gz", params=None):
    files = {"label": (filename, io.BytesIO(data))}
    if params is not None:
        files["params"] = (None, json.dumps(params))
    return requests.put(f"{site.url}/datastore/label", params={"image": uid, "tag": tag}, files=files, timeout=120)


def orthanc_segs(site) -> list:
    """Orthanc's SEG series, as its /tools/find lists them (expanded: ids and main DICOM tags)."""
    return requests.post(f"{site.orthanc.url}/tools/find", json={"Level": "Series", "Query": {"Modality": "SEG"},
                                                                 "Expand": True}, timeout=30).json()


def orthanc_seg_ids(site) -> set:
    """Orthanc's own ids of its SEG series."""
    return {f["ID"] for f in orthanc_segs(site)}


def cache_files(site):
    return sorted((str(p.relative_to(site.cache)), p.stat().st_size) for p in site.cache.rglob("*")
                  if p.is_file() and p.suffix != ".lock")


def test_label_tags_that_leave_the_cache_are_refused(site, phantom_series, tmp_path):
    """`tag=..` replaced the cached CT with the label; `tag=../../x` wrote outside the cache (200)."""
    uid = series_uid(phantom_series, "phantom_000")
    assert requests.post(f"{site.url}/infer/liver_resnet", params={"image": uid}, timeout=300).status_code == 200
    before = cache_files(site)
    outside = tmp_path / "escape"
    for tag in ("..", "../final", f"../../../../../../../..{outside}", "a/../..", "final/.."):
        r = put_label(site, uid, truth_bytes(phantom_series, "phantom_000"), tag=tag)
        assert r.status_code == 400 and "label tag" in r.text, (tag, r.status_code, r.text[:300])
    assert cache_files(site) == before and not outside.exists()
    r = requests.delete(f"{site.url}/datastore/label", params={"id": uid, "tag": ".."}, timeout=60)
    assert r.status_code == 400
    assert requests.post(f"{site.url}/infer/liver_resnet", params={"image": uid}, timeout=300).status_code == 200


def test_an_ohif_bin_label_of_the_wrong_size_gets_400(site, phantom_series):
    """OHIF sends a label as raw uint8 voxels (.bin): a wrong-sized one answered 500 (a reshape error)."""
    uid = series_uid(phantom_series, "phantom_000")
    shape = phantom_series[1]["phantom_000"]["shape"]
    r = put_label(site, uid, bytes(int(np.prod(shape)) // 2), filename="label.bin")
    assert r.status_code == 400 and "voxels" in r.text, r.text[:300]
    assert not site.orthanc.instance_files("SEG")


def test_images_are_added_and_removed_in_orthanc_only(site, phantom_series):
    """Adding answered 200 but the image could not be segmented (404); removing only cleared the cache (200)."""
    volume = (phantom_series[0] / "datastore" / "phantom_000.nii.gz").read_bytes()
    r = requests.put(f"{site.url}/datastore/", params={"image": "newimg"},
                     files={"file": ("ct.nii.gz", io.BytesIO(volume))}, timeout=60)
    assert r.status_code == 405 and "Orthanc" in r.text, r.text[:300]
    uid = series_uid(phantom_series, "phantom_001")
    r = requests.delete(f"{site.url}/datastore/", params={"id": uid}, timeout=60)
    assert r.status_code == 405, r.text[:300]
    objects = requests.get(f"{site.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert "newimg" not in objects and uid in objects


def test_saves_scoring_and_a_seg_deleted_in_orthanc(site, phantom_series, tmp_path):
    """Each save is a numbered, dated SEG series, with the request's label info, and the newest is served
    even within one second; correction_dice scores on DICOMweb (it recorded nothing: no 'original' label
    was kept); a SEG deleted in Orthanc is neither served nor listed any more (it was, until the next
    training), and deleting an older one keeps the label's info."""
    import nibabel as nib

    uid = series_uid(phantom_series, "phantom_001")
    r = requests.post(f"{site.url}/infer/liver_cascade", params={"image": uid}, timeout=300)
    assert r.status_code == 200
    (original,) = [p for p in site.cache.rglob(f"{uid}*") if p.parent.name == "original" and p.is_file()]
    assert original.stat().st_mode & 0o777 == 0o644  # readable as the other labels (it was mkstemp's 0600)
    no_lesion = tmp_path / "no_lesion.nii.gz"  # the second save differs: its label must be the one served
    truth = nib.load(str(phantom_series[0] / "datastore" / "labels" / "final" / "phantom_001.nii.gz"))
    nib.save(nib.Nifti1Image(np.minimum(np.asarray(truth.dataobj), 1).astype(np.uint8), truth.affine), str(no_lesion))
    for n, data in enumerate((truth_bytes(phantom_series, "phantom_001"), no_lesion.read_bytes())):
        r = put_label(site, uid, data, params={"annotator": f"alice{n}"})  # within a second: ordered all the same
        assert r.status_code == 200, r.text[:300]
    r = requests.get(f"{site.url}/datastore/label", params={"label": uid, "tag": "final"}, timeout=60)
    (tmp_path / "served.nii.gz").write_bytes(r.content)
    served = np.asarray(nib.load(str(tmp_path / "served.nii.gz")).dataobj)
    assert served.max() == 1 and (served == 1).sum() == (np.asarray(truth.dataobj) > 0).sum()
    segs = sorted((int(s["00200011"]["Value"][0]), s["0008103E"]["Value"][0]) for s in site.orthanc.series("SEG"))
    assert [n for n, _ in segs] == [SEG_SERIES_NUMBER, SEG_SERIES_NUMBER + 1]
    assert all(d.startswith("liver_cascade final label 20") for _, d in segs)
    objects = requests.get(f"{site.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert objects[uid]["labels"]["final"]["info"]["annotator"] == "alice1"
    r = requests.post(f"{site.url}/scoring/correction_dice", params={"run_sync": "true"}, timeout=300)
    assert r.status_code == 200, r.text[:300]
    dice = requests.get(f"{site.url}/datastore/image/info", params={"image": uid}, timeout=60).json()["correction_dice"]
    assert 0 < dice["liver"] <= 1 and dice["model"]

    def seg_ids():  # Orthanc's ids of the SEG series, by SeriesNumber
        return {int(f["MainDicomTags"]["SeriesNumber"]): f["ID"] for f in orthanc_segs(site)}

    # the older SEG deleted: the label and its save's info stay (the info was dropped on the re-read)
    requests.delete(f"{site.orthanc.url}/series/{seg_ids()[SEG_SERIES_NUMBER]}", timeout=30).raise_for_status()
    assert requests.get(f"{site.url}/datastore/label", params={"label": uid, "tag": "final"}, timeout=60).ok  # re-read
    info = requests.get(f"{site.url}/datastore/label/info", params={"label": uid, "tag": "final"}, timeout=60).json()
    assert info["annotator"] == "alice1" and len(info["seg_series"]) == 1, info
    r = put_label(site, uid, truth_bytes(phantom_series, "phantom_001"))
    assert r.status_code == 200 and sorted(seg_ids()) == [SEG_SERIES_NUMBER + 1, SEG_SERIES_NUMBER + 2]  # not 301 twice
    r = requests.put(f"{site.url}/datastore/label/info", params={"label": uid, "tag": "final"},
                     data={"info": json.dumps({"seg_series": ["x"]})}, timeout=60)
    assert r.status_code == 400 and "seg_series" in r.text

    for sid in seg_ids().values():  # no final label any more: at once, not after the lists' cache
        requests.delete(f"{site.orthanc.url}/series/{sid}", timeout=30).raise_for_status()
    stats = requests.get(f"{site.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["completed"] == 0 and stats["label_tags"].get("final", 0) == 0, stats
    r = requests.get(f"{site.url}/datastore/label", params={"label": uid, "tag": "final"}, timeout=60)
    assert r.status_code == 404, r.status_code
    objects = requests.get(f"{site.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert "final" not in objects[uid]["labels"]
    # its info is gone with it: 404 as for a local datastore (it answered 200 {}, while PUT answered 404)
    r = requests.get(f"{site.url}/datastore/label/info", params={"label": uid, "tag": "final"}, timeout=60)
    assert r.status_code == 404, (r.status_code, r.text)


def test_series_and_segs_whose_uid_is_not_a_uid_are_ignored(site, phantom_series, tmp_path):
    """A SEG whose SeriesInstanceUID was a path made nearly every request answer 500 (the DICOMweb client
    refused to query it); a CT series with a path for a UID was read, and its lock written, outside the
    cache."""
    import pydicom

    ct = sorted((phantom_series[0] / "dicom" / "phantom_000").iterdir())[0]
    evil_ct = pydicom.dcmread(str(ct))
    evil_ct.SeriesInstanceUID = "../../../../../../../.." + str(tmp_path / "evil_ct")
    evil_ct.SOPInstanceUID = evil_ct.SOPInstanceUID + ".9"
    evil_ct.save_as(str(tmp_path / "ct.dcm"))
    uid = series_uid(phantom_series, "phantom_000")
    assert put_label(site, uid, truth_bytes(phantom_series, "phantom_000")).status_code == 200
    seg = pydicom.dcmread(io.BytesIO(site.orthanc.instance_files("SEG")[-1]))
    seg.SeriesInstanceUID = "../../../../../../../.." + str(tmp_path / "evil_seg")
    seg.SOPInstanceUID = seg.SOPInstanceUID + ".9"
    seg.save_as(str(tmp_path / "seg.dcm"))
    assert site.orthanc.upload([tmp_path / "ct.dcm", tmp_path / "seg.dcm"]) == 2
    time.sleep(LIST_CACHE_SECONDS + 1)
    for path, params in (("/info/", {}), ("/datastore/", {"output": "all"}), ("/datastore/", {"output": "stats"}),
                         ("/datastore/label", {"label": uid, "tag": "final"})):
        r = requests.get(site.url + path, params=params, timeout=120)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    objects = requests.get(f"{site.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert not [k for k in objects if "evil" in k]
    r = requests.get(f"{site.url}/datastore/image", params={"image": evil_ct.SeriesInstanceUID}, timeout=60)
    assert r.status_code == 404
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.dcm", "seg.dcm"]  # no lock or folder written here
    assert requests.post(f"{site.url}/infer/liver_resnet", params={"image": uid}, timeout=300).status_code == 200


def test_liver_resnet_says_it_ignores_clicks(site, phantom_series):
    uid = series_uid(phantom_series, "phantom_000")
    r = requests.post(f"{site.url}/infer/liver_resnet", params={"image": uid, "output": "json"}, timeout=300,
                      files={"params": (None, json.dumps({"foreground": [[80, 80, 8]]}))})
    assert r.status_code == 200 and "liver_cascade" in " ".join(r.json()["notes"]), r.text[:300]


def test_processes_sharing_the_cache_fetch_a_series_once_and_read_it_whole(tmp_path, site, phantom_series,
                                                                          monkeypatch):
    """The server and its scoring process both fetched a series into the cache at once, and one read it
    half-written (an image left out of the ranking). Here two datastores on one cache (as the two
    processes), with a slow conversion: the series is converted once, and both read it whole."""
    import threading

    import nibabel as nib

    from lib import dicomweb

    uid = series_uid(phantom_series, "phantom_001")
    calls = []
    convert = dicomweb.series_to_nifti

    def slow(series_dir, out_file):
        calls.append(out_file)
        time.sleep(1.5)
        return convert(series_dir, out_file)

    monkeypatch.setattr(dicomweb, "series_to_nifti", slow)
    stores = [dicomweb.create_dicomweb_datastore(site.orthanc.dicomweb, cache_path=str(tmp_path / "cache"))
              for _ in range(2)]
    sums, errors = [], []

    def fetch(ds):
        try:
            sums.append(float(nib.load(ds.get_image_uri(uid)).get_fdata().sum()))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=fetch, args=(ds,)) for ds in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and len(sums) == 2 and sums[0] == sums[1] != 0, (errors, sums)
    assert len(calls) == 1, calls  # converted once
    assert not [p for p in (tmp_path / "cache").rglob(".partial/*")]  # nothing half-written left
    reopened = dicomweb.create_dicomweb_datastore(site.orthanc.dicomweb, cache_path=str(tmp_path / "cache"))
    assert uid in reopened._datastore.objects  # in the cache's index


def test_a_stalled_or_absent_dicomweb_server(tmp_path, phantom_series):
    """A stalled Orthanc (accepting connections, never answering) hung the server with no limit; with
    Orthanc down the server did not start at all."""
    from orthanc_server import OrthancServer

    require_orthanc()
    orthanc = OrthancServer(helpers.free_port(), tmp_path / "orthanc").start()
    orthanc.upload([phantom_series[0] / "dicom" / "phantom_000"])
    orthanc.stop()
    uid = series_uid(phantom_series, "phantom_000")
    app = helpers.untrained_app(tmp_path / "app")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONAI_LABEL_DATASTORE_CACHE_PATH", str(tmp_path / "cache"))
        server = helpers.Server(app, orthanc.dicomweb, {"models": "liver_resnet"}, tmp_path / "server.log",
                                ready=(200, 503))  # starts; 503 until Orthanc is there
    try:
        r = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60)
        assert r.status_code == 503 and "unreachable" in r.text
        orthanc.start()
        time.sleep(LIST_CACHE_SECONDS + 1)
        r = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60)
        assert r.status_code == 200 and r.json()["total"] == 1, r.text[:300]
        os.kill(orthanc.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(LIST_CACHE_SECONDS + 1)
            t0 = time.time()
            answers = []

            def ask(params):
                r = requests.get(f"{server.url}/datastore/", params=params, timeout=120)
                answers.append((r.status_code, time.time() - t0))

            # three at once: they waited on the stalled server one after another (31 s each)
            threads = [threading.Thread(target=ask, args=({"output": o},)) for o in ("stats", "all", "stats")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(200)
            assert len(answers) == 3 and all(code == 503 for code, _ in answers), answers
            assert max(w for _, w in answers) < 25, answers

            # MONAI Label's DICOMweb proxy (OHIF's way to every image) had no timeout: on the stalled server
            # it waited for good, and held every other request with it. A series' first fetch held them too.
            time.sleep(DICOMWEB_RETRY_AFTER_S + 1)  # past the moment in which the datastore fails at once
            with ThreadPoolExecutor(2) as pool:
                t0 = time.time()
                proxied = pool.submit(requests.get, f"{server.url}/proxy/dicom/qido/studies", timeout=120)
                fetched = pool.submit(requests.get, f"{server.url}/datastore/image", params={"image": uid},
                                      timeout=120)
                time.sleep(1.0)
                r = requests.get(f"{server.url}/docs", timeout=120)
                meanwhile = (r.status_code, time.time() - t0, proxied.done(), fetched.done())
                proxied, fetched = proxied.result(), fetched.result()
                waited = time.time() - t0
            assert meanwhile[0] == 200 and meanwhile[1] < 5 and not any(meanwhile[2:]), meanwhile
            assert proxied.status_code == 503 and "unreachable" in proxied.text, proxied.text[:300]
            assert fetched.status_code == 503 and "unreachable" in fetched.text, fetched.text[:300]
            assert waited < 30, waited
        finally:
            os.kill(orthanc.proc.pid, signal.SIGCONT)
        time.sleep(DICOMWEB_RETRY_AFTER_S + 1)  # the last stall's moment of failing at once
        assert requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).status_code == 200
        r = requests.get(f"{server.url}/proxy/dicom/qido/studies", timeout=60)  # the proxy serves again
        assert r.status_code == 200 and len(r.json()) == 1, r.text[:300]
        r = requests.get(f"{server.url}/datastore/image", params={"image": uid}, timeout=120)
        assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b", r.text[:300]  # the series as NIfTI (gzip)
    finally:
        server.stop()
        orthanc.stop()


def test_concurrent_saves_and_reads_of_a_final_label(site, phantom_series, tmp_path):
    """Requests on DICOMweb datastores run on worker threads (lib/server_guard.py): two annotators saving the
    same series' final label while others read it. MONAI Label rewrote the cached label and the index in
    place, unlocked: reads were cut short ("Too little data for declared Content-Length" in the log, a
    broken connection for the client). Each read must now be a whole label, one of the two saved."""
    import nibabel as nib

    uid = series_uid(phantom_series, "phantom_000")
    truth = nib.load(str(phantom_series[0] / "datastore" / "labels" / "final" / "phantom_000.nii.gz"))
    values = np.asarray(truth.dataobj)
    labels = []
    for k, v in enumerate((values, np.minimum(values, 1))):  # two different labels (with and without lesions)
        nib.save(nib.Nifti1Image(v.astype(np.uint8), truth.affine), str(tmp_path / f"{k}.nii.gz"))
        labels.append((tmp_path / f"{k}.nii.gz").read_bytes())
    expected = {(int((values == 1).sum()), int((values == 2).sum())), (int((values > 0).sum()), 0)}
    log_start, segs_before = len(site.log.read_text()), orthanc_seg_ids(site)
    assert put_label(site, uid, labels[0]).status_code == 200

    def save(k):
        return put_label(site, uid, labels[k]).status_code

    def read(n):
        try:
            r = requests.get(f"{site.url}/datastore/label", params={"label": uid, "tag": "final"}, timeout=60)
            if not r.ok:
                return r.status_code
            (tmp_path / f"read{n}.nii.gz").write_bytes(r.content)
            v = np.asarray(nib.load(str(tmp_path / f"read{n}.nii.gz")).dataobj)
            return "whole" if (int((v == 1).sum()), int((v == 2).sum())) in expected else "another label"
        except Exception as e:  # noqa: BLE001 - a read cut short, or a file that is not a label
            return type(e).__name__

    results = helpers.repeatedly(20, save0=lambda: save(0), save1=lambda: save(1), read0=lambda: read(0),
                                 read1=lambda: read(1), read2=lambda: read(2))
    reads = results["read0"] + results["read1"] + results["read2"]
    assert set(results["save0"] + results["save1"]) == {200}, results
    assert reads and set(reads) == {"whole"}, sorted(set(reads))
    log = site.log.read_text()[log_start:]
    assert "Traceback" not in log, log[log.find("Traceback"):][:2000]
    for sid in orthanc_seg_ids(site) - segs_before:  # Orthanc's SEG list as it was
        requests.delete(f"{site.orthanc.url}/series/{sid}", timeout=30).raise_for_status()
