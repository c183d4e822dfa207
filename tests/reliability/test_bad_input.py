"""Bad input gets a clear 4xx through the real server, nothing is lost, and the server keeps serving."""

import collections
import gzip
import io
import json
import os
import struct
import tempfile

import nibabel as nib
import numpy as np
import pytest
import requests

import support

MAX_VOXELS = 4_000_000  # the server under test refuses volumes above this (--conf max_voxels)
AFFINE = np.diag([3.6, 3.6, 5.0, 1.0])


@pytest.fixture(scope="module")
def phantom_ct():
    import phantom

    return phantom.generate_phantom(seed=5, n_slices=12, shape_xy=(96, 96), spacing=(3.6, 3.6, 5.0))


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_ct):
    from support import Server, untrained_app

    studies = tmp_path_factory.mktemp("studies")
    nib.save(nib.Nifti1Image(phantom_ct.image, phantom_ct.affine), str(studies / "ok.nii.gz"))
    (studies / "labels" / "final").mkdir(parents=True)
    nib.save(nib.Nifti1Image(phantom_ct.image, phantom_ct.affine), str(studies / "labelled.nii.gz"))
    nib.save(nib.Nifti1Image(phantom_ct.label, phantom_ct.affine), str(studies / "labels" / "final" / "labelled.nii.gz"))
    tmp = tmp_path_factory.mktemp("srv")
    app = untrained_app(tmp / "app")
    (tmp / "tmp").mkdir()  # the server's temporary folder: what refused uploads leave behind shows there
    s = Server(app, studies, {"skip_trainers": "true", "max_voxels": MAX_VOXELS, "max_upload_mb": 8}, tmp / "server.log",
               extra_env={"TMPDIR": str(tmp / "tmp")})
    s.studies, s.tmp, s.app = studies, tmp / "tmp", app
    yield s
    s.stop()


def nii_bytes(arr, affine=AFFINE, gz=True, pixdim=None, dims=None) -> bytes:
    """A NIfTI-1 file; ``pixdim``/``dims`` are patched into the header bytes as a broken writer would
    leave them (nibabel itself refuses to write such headers)."""
    raw = bytearray(nib.Nifti1Image(arr, affine).to_bytes())
    if pixdim is not None:
        struct.pack_into("<3f", raw, 80, *pixdim)
        struct.pack_into("<2h", raw, 252, 0, 0)  # qform_code, sform_code 0: the grid comes from pixdim
    if dims is not None:
        struct.pack_into("<4h", raw, 40, len(dims), *dims)
    return gzip.compress(bytes(raw)) if gz else bytes(raw)


def upload(server, data: bytes, name="x.nii.gz", params=None, model="liver_resnet"):
    return requests.post(f"{server.url}/infer/{model}", data={"params": json.dumps(params or {})},
                         files={"file": (name, io.BytesIO(data))}, timeout=300)


def assert_still_serving(server):
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
    r = requests.post(f"{server.url}/infer/liver_resnet", params={"image": "ok"}, data={"params": "{}"}, timeout=300)
    assert r.status_code == 200, r.text


def bad_volumes(ct):
    hu = ct.image.astype(np.int16)
    f = hu.astype(np.float32)
    nan, inf = f.copy(), f.copy()
    nan[40:50, 40:50, 3] = np.nan
    inf[10, 10, 2] = np.inf
    mr = ((f - f.min()) / (f.max() - f.min()) * 1500).astype(np.int16)  # 0..1500, no air, no fat
    good_gz = nii_bytes(hu)
    return {
        "not an image": (b"patient notes, not a volume\n" * 20, "notes.nii.gz", 400, "not a readable"),
        "truncated .nii.gz": (good_gz[: len(good_gz) // 2], "x.nii.gz", 400, "truncated"),
        "truncated .nii": (nii_bytes(hu, gz=False)[:5000], "x.nii", 400, "truncated"),
        "empty volume": (nii_bytes(np.zeros((96, 96, 0), np.int16)), "x.nii.gz", 400, "empty"),
        "2D image": (nii_bytes(hu[:, :, 0]), "x.nii.gz", 400, "3D"),
        "4D image": (nii_bytes(np.stack([hu] * 3, axis=-1)), "x.nii.gz", 400, "4D"),
        "NaN voxels": (nii_bytes(nan), "x.nii.gz", 400, "NaN"),
        "infinite voxels": (nii_bytes(inf), "x.nii.gz", 400, "infinite"),
        "MR-like intensities": (nii_bytes(mr), "x.nii.gz", 400, "Hounsfield"),
        "zero spacing": (nii_bytes(hu, pixdim=(0.0, 3.6, 5.0)), "x.nii.gz", 400, "spacing"),
        "negative spacing": (nii_bytes(hu, pixdim=(-3.6, 3.6, 5.0)), "x.nii.gz", 400, "spacing"),
        "huge volume": (nii_bytes(np.zeros((4, 4, 4), np.int16), gz=False, dims=(1024, 1024, 4000)),
                        "x.nii", 413, "max_voxels"),
        "unsupported format": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "x.png", 400, "not a readable"),
        # a complex volume was stored, then each inference and every Next Sample (scoring it) answered 500
        "complex voxels": (nii_bytes(f.astype(np.complex64) + 1j), "x.nii.gz", 400, "real-valued"),
        "single slice": (nii_bytes(hu[:, :, 3:4]), "x.nii.gz", 400, "single axial slice"),  # was segmented
    }


CASES = ["not an image", "truncated .nii.gz", "truncated .nii", "empty volume", "2D image", "4D image", "NaN voxels",
         "infinite voxels", "MR-like intensities", "zero spacing", "negative spacing", "huge volume",
         "unsupported format", "complex voxels", "single slice"]


@pytest.mark.parametrize("case", CASES)
def test_bad_volume_upload_is_refused(server, phantom_ct, case):
    data, name, status, words = bad_volumes(phantom_ct)[case]
    r = upload(server, data, name)
    assert r.status_code == status, f"{case}: {r.status_code} {r.text}"
    assert words.lower() in r.json()["detail"].lower(), r.text
    assert os.path.join(tempfile.gettempdir(), "tmp") not in r.text  # not the upload's temporary file
    assert_still_serving(server)


def test_mr_like_volume_is_segmented_when_the_caller_says_so(server, phantom_ct):
    f = phantom_ct.image.astype(np.float32)
    mr = ((f - f.min()) / (f.max() - f.min()) * 1500).astype(np.int16)
    r = upload(server, nii_bytes(mr), params={"allow_non_ct": True})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("model,image,params,status,words", [
    ("no_such_model", "ok", "{}", 404, "unknown model"),
    ("liver_resnet", "no_such_image", "{}", 404, "not in the datastore"),
    ("liver_resnet", "ok", "{not json", 400, "json"),
    ("liver_resnet", "ok", "[1, 2]", 400, "object"),
    ("liver_resnet", "ok", '{"scales": "abc"}', 400, "scales"),
    ("liver_cascade", "ok", '{"foreground": [[1, 2]]}', 400, "foreground"),
    ("liver_cascade", "ok", '{"foreground": [[1, 2, 3, 7]]}', 400, "foreground"),  # the 4th value was ignored
    ("liver_cascade", "ok", '{"min_lesion_ml": true}', 400, "min_lesion_ml"),  # was read as 1 mL
    ("liver_resnet", "ok", '{"batch_size": true}', 400, "batch_size"),  # was read as 1
    ("liver_resnet", "ok", '{"result_extension": ".exe"}', 400, "result_extension"),
    ("liver_resnet", "ok", '{"image": "/etc/hostname"}', 400, "invalid image id"),
    ("liver_cascade", "ok", '{"label": "/etc/hostname"}', 400, "uploaded"),
    ("liver_resnet", "ok", '{"device": "bogus"}', 400, "device"),  # was a 500 from torch
    ("liver_resnet", "ok", '{"preset": "paper"}', 400, "--conf preset"),  # was ignored: lite ran
])
def test_bad_request_is_refused(server, model, image, params, status, words):
    r = requests.post(f"{server.url}/infer/{model}", params={"image": image}, data={"params": params}, timeout=300)
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["detail"].lower(), r.text
    assert_still_serving(server)


def _labels(server):
    ds = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    return {k: sorted(v.get("labels", {})) for k, v in ds["objects"].items()}


@pytest.mark.parametrize("case", ["wrong shape", "wrong spacing", "not an image", "2D", "values 0/3/6",
                                  "fractional values", "negative values", "NaN", "multi-layer .seg.nrrd", "empty",
                                  ".mha"])
def test_label_that_does_not_fit_its_image_is_refused_and_nothing_is_lost(server, phantom_ct, case):
    final = server.studies / "labels" / "final" / "labelled.nii.gz"
    before_bytes, before_labels = final.read_bytes(), _labels(server)
    lab = np.zeros(phantom_ct.image.shape, np.uint8)
    fitting = phantom_ct.label.astype(np.float32)  # the right grid, with values that are not labels
    nan = fitting.copy()
    nan[0, 0, 0] = np.nan
    data = {
        "wrong shape": nii_bytes(lab[:50, :50, :5]),
        "wrong spacing": nii_bytes(lab, affine=np.diag([1.0, 1.0, 1.0, 1.0])),
        "not an image": b"not a label",
        "2D": nii_bytes(lab[:, :, 0]),
        "values 0/3/6": nii_bytes((phantom_ct.label * 3).astype(np.uint8), affine=phantom_ct.affine),
        "fractional values": nii_bytes(fitting + 0.37, affine=phantom_ct.affine),
        "negative values": nii_bytes(fitting.astype(np.int16) - 1, affine=phantom_ct.affine),
        "NaN": nii_bytes(nan, affine=phantom_ct.affine),
        "multi-layer .seg.nrrd": support.layered_seg_nrrd(phantom_ct.label, phantom_ct.affine),
        "empty": nii_bytes(lab, affine=phantom_ct.affine),  # the right grid, no liver
        # a format the datastore does not list: served until the index was rebuilt, then lost
        ".mha": nii_bytes(phantom_ct.label, affine=phantom_ct.affine),
    }[case]
    name = {"multi-layer .seg.nrrd": "labelled.seg.nrrd", ".mha": "labelled.mha"}.get(case, "labelled.nii.gz")
    r = requests.put(f"{server.url}/datastore/label", params={"image": "labelled", "tag": "final"},
                     files={"label": (name, io.BytesIO(data))}, timeout=60)
    assert r.status_code == 400, r.text
    assert "not saved" in r.json()["detail"]
    assert os.path.join(tempfile.gettempdir(), "tmp") not in r.text  # the reason, not the upload's temporary file
    assert final.read_bytes() == before_bytes  # the annotator's label is untouched
    assert _labels(server) == before_labels
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".")]  # no partial file left behind
    # a label that fits is saved, and replaces the old one whole
    good = phantom_ct.label.copy()
    good[good == 2] = 1
    r = requests.put(f"{server.url}/datastore/label", params={"image": "labelled", "tag": "final"},
                     files={"label": ("labelled.nii.gz", io.BytesIO(nii_bytes(good, affine=phantom_ct.affine)))},
                     timeout=60)
    assert r.status_code == 200, r.text
    assert np.array_equal(np.asarray(nib.load(str(final)).dataobj), good)
    nib.save(nib.Nifti1Image(phantom_ct.label, phantom_ct.affine), str(final))  # restore for the next case
    assert_still_serving(server)


def test_add_image_refuses_bad_volumes_and_overwrites(server, phantom_ct):
    vols = bad_volumes(phantom_ct)
    all_nan = nii_bytes(np.full(phantom_ct.image.shape, np.nan, np.float32))  # was added (header checks only)
    vols["all NaN"] = (all_nan, "x.nii.gz", 400, "NaN")
    vols["all NaN, .nii"] = (nii_bytes(np.full(phantom_ct.image.shape, np.inf, np.float32), gz=False), "x.nii", 400,
                             "infinite")
    for case in ("truncated .nii.gz", "2D image", "huge volume", "NaN voxels", "all NaN", "all NaN, .nii",
                 "complex voxels", "single slice"):
        data, name, status, words = vols[case]
        r = requests.put(f"{server.url}/datastore/image", params={"image": "new_case"},
                         files={"file": (name, io.BytesIO(data))}, timeout=60)
        assert r.status_code == status and words.lower() in r.text.lower(), f"{case}: {r.text}"
    assert "new_case" not in _labels(server)
    # stored as "scan.nii.gz.nii.gz", it (and its labels) vanished when an unreadable index was rebuilt
    r = requests.put(f"{server.url}/datastore/image", params={"image": "scan.nii.gz"},
                     files={"file": ("scan.nii.gz", io.BytesIO(nii_bytes(phantom_ct.image.astype(np.int16))))}, timeout=60)
    assert r.status_code == 400 and "'scan'" in r.text, r.text
    assert not list(server.studies.glob("scan*"))
    r = requests.put(f"{server.url}/datastore/image", params={"image": "ok"},
                     files={"file": ("ok.nii.gz", io.BytesIO(nii_bytes(phantom_ct.image.astype(np.int16))))}, timeout=60)
    assert r.status_code == 409, r.text  # an existing image (and its labels) is never overwritten
    r = requests.put(f"{server.url}/datastore/image", params={"image": "new_case"},
                     files={"file": ("new.nii.gz", io.BytesIO(nii_bytes(phantom_ct.image.astype(np.int16))))},
                     timeout=60)
    assert r.status_code == 200, r.text
    assert "new_case" in _labels(server)
    assert_still_serving(server)


def test_upload_over_the_size_limit_is_refused_before_it_is_stored(server):
    big = b"\0" * (9 * 1024 * 1024)  # the server is started with max_upload_mb 8
    r = upload(server, big, "big.nii")
    assert r.status_code == 413, r.text
    assert "max_upload_mb" in r.json()["detail"]
    assert_still_serving(server)


def test_training_requests_are_checked(server):
    # this server has no trainers: any model is unknown
    r = requests.post(f"{server.url}/train/liver_resnet", json={}, timeout=30)
    assert r.status_code == 404, r.text
    assert_still_serving(server)


def leftovers(server, wait_s=10.0):
    """Files left in the server's temporary folder once the responses are sent (removal runs just after),
    but the 1 kB logging configuration MONAI Label writes there for each background (scoring) process."""
    import time

    t0 = time.time()
    while True:
        left = sorted(p.name for p in server.tmp.iterdir() if p.is_file() and p.suffix != ".json")
        if not left or time.time() - t0 > wait_s:
            return left
        time.sleep(0.5)


def test_inference_never_overwrites_an_annotators_label(server):
    """label_tag "final" in an infer or batch request replaced the annotator's label with the model's
    prediction (a batch, every image's at once); a batch on a machine without a GPU answered 500."""
    final = server.studies / "labels" / "final" / "labelled.nii.gz"
    before = final.read_bytes()
    r = requests.post(f"{server.url}/infer/liver_resnet", params={"image": "labelled", "output": "json"},
                      data={"params": json.dumps({"save_label": True, "label_tag": "final"})}, timeout=300)
    assert r.status_code == 400 and "never as 'final'" in r.text, r.text
    r = requests.post(f"{server.url}/batch/infer/liver_resnet", params={"images": "labeled", "run_sync": "true"},
                      json={"label_tag": "final"}, timeout=300)
    assert r.status_code == 400 and "never as 'final'" in r.text, r.text
    for tag in ("FINAL", "final\n", " final", "bad/tag"):  # look-alikes and bad names, refused before inferring
        r = requests.post(f"{server.url}/infer/liver_resnet", params={"image": "labelled", "output": "json"},
                          data={"params": json.dumps({"save_label": True, "label_tag": tag})}, timeout=300)
        assert r.status_code == 400 and "label tag" in r.text.replace("label_tag", "label tag"), (tag, r.text)
    assert not [p for p in (server.studies / "labels").iterdir() if p.name.lower().strip() == "final" and p.name != "final"]
    assert leftovers(server) == []  # a tag refused after the inference left its result file
    assert final.read_bytes() == before
    assert requests.post(f"{server.url}/batch/infer/nosuch", params={"run_sync": "true"}, json={},
                         timeout=60).status_code == 404
    r = requests.post(f"{server.url}/batch/infer/liver_resnet", params={"images": "labeled", "run_sync": "true"},
                      json={}, timeout=300)
    assert r.status_code == 200 and r.json()["labelled"]["label"], r.text  # on the CPU, saved as 'original'
    assert final.read_bytes() == before
    for params, words in (({"logging": "NOTALEVEL"}, "logging"), ({"skip_writer": True}, "skip_writer"),
                          ({"save_label": "maybe"}, "save_label")):
        r = requests.post(f"{server.url}/infer/liver_resnet", params={"image": "ok"},
                          data={"params": json.dumps(params)}, timeout=300)
        assert r.status_code == 400 and words in r.text, (params, r.text)
    deep = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"  # nested deeper than Python's JSON parser recurses
    r = requests.post(f"{server.url}/infer/liver_resnet", params={"image": "ok"}, data={"params": deep}, timeout=300)
    assert r.status_code == 400 and "RecursionError" in r.text, r.text[:300]


def test_batch_inference_checks_its_options_on_arrival_and_skips_what_it_refuses(server, phantom_ct):
    """A batch with a bad option was accepted (SUBMITTED), then failed image by image; one image the model
    refuses (not CT) stopped the batch there: the images after it were never segmented."""
    r = requests.post(f"{server.url}/batch/infer/liver_resnet", json={"scales": "abc"}, timeout=60)
    assert r.status_code == 400 and "scales" in r.text, r.text
    f = phantom_ct.image.astype(np.float32)
    mr = ((f - f.min()) / (f.max() - f.min()) * 1500).astype(np.int16)  # stored, refused when segmented
    r = requests.put(f"{server.url}/datastore/image", params={"image": "a_mr"},
                     files={"file": ("a_mr.nii.gz", io.BytesIO(nii_bytes(mr)))}, timeout=60)
    assert r.status_code == 200, r.text
    try:
        r = requests.post(f"{server.url}/batch/infer/liver_resnet", params={"images": "all", "run_sync": "true"},
                          json={}, timeout=600)
        assert r.status_code == 200, r.text
        result = r.json()
        assert "Hounsfield" in result["a_mr"]["error"], result["a_mr"]  # sorted first: the others still ran
        assert result["ok"]["label"] and result["labelled"]["label"], result
    finally:
        requests.delete(f"{server.url}/datastore/image", params={"id": "a_mr"}, timeout=60)
    assert_still_serving(server)


def test_info_updates_cannot_break_next_sample(server):
    """{"strategy": 5} in an image's info made Next Sample answer 500 for everyone, stored for good;
    info that is not a JSON object, or for an image that does not exist, answered 500."""
    url = f"{server.url}/datastore/image/info"
    deep = '{"a": ' + "[" * 600 + "]" * 600 + "}"  # stored, it broke the dataset download and training
    for info in ('{"strategy": 5}', '{"liver_uncertainty": "x"}', '{"ts": "bogus"}', "notjson", "5", "[1, 2]",
                 '{"x": Infinity}', '{"note": NaN}', deep):
        r = requests.put(url, params={"image": "ok"}, data={"info": info}, timeout=60)
        assert r.status_code == 400, (info, r.status_code, r.text)
    assert requests.put(url, params={"image": "nosuch"}, data={"info": "{}"}, timeout=60).status_code == 404
    r = requests.put(f"{server.url}/datastore/label/info", params={"label": "ok", "tag": "final"},
                     data={"info": "{}"}, timeout=60)
    assert r.status_code == 404, r.text
    assert requests.put(url, params={"image": "ok"}, data={"info": '{"note": "contrast late"}'}, timeout=60).ok
    assert requests.get(f"{server.url}/datastore/image/info", params={"image": "ok"}, timeout=60).json()["note"] == \
        "contrast late"
    for strategy in ("random", "first"):
        r = requests.post(f"{server.url}/activelearning/{strategy}", json={}, timeout=60)
        assert r.status_code == 200 and r.json()["id"] != "labelled", (strategy, r.text)


def test_a_model_upload_must_be_a_model_of_that_network(server, tmp_path):
    """A 7-byte text upload replaced the weights (every later inference failed)."""
    import torch

    from lib.model_io import save_checkpoint
    from lib.networks import build_network

    weights = server.app / "model" / "liver_resnet_lite.pt"
    before = weights.read_bytes()
    r = requests.put(f"{server.url}/model/liver_resnet", files={"file": ("m.pt", io.BytesIO(b"garbage"))}, timeout=60)
    assert r.status_code == 400 and "not a model file" in r.text, r.text
    save_checkpoint(str(tmp_path / "vgg.pt"), build_network("vgg", "lite", 1), "vgg", "lite", 1)
    r = requests.put(f"{server.url}/model/liver_resnet", files={"file": ("m.pt", (tmp_path / "vgg.pt").read_bytes())},
                     timeout=60)
    assert r.status_code == 400 and "'vgg'" in r.text, r.text
    assert requests.put(f"{server.url}/model/nosuch", files={"file": ("m.pt", b"x")}, timeout=60).status_code == 404

    class Evil:  # a pickle that runs a command when loaded
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": Evil()}, str(tmp_path / "evil.pt"))
    r = requests.put(f"{server.url}/model/liver_resnet", files={"file": ("m.pt", (tmp_path / "evil.pt").read_bytes())},
                     timeout=60)
    assert r.status_code == 400 and not (tmp_path / "pwned").exists(), r.text
    assert "would run code" in r.text and "weights_only" not in r.text, r.text  # not torch's advice to load it unsafely
    nan = build_network("resnet", "lite", 1)
    with torch.no_grad():
        next(iter(nan.parameters())).fill_(float("nan"))
    save_checkpoint(str(tmp_path / "nan.pt"), nan, "resnet", "lite", 1)
    r = requests.put(f"{server.url}/model/liver_resnet", files={"file": ("m.pt", (tmp_path / "nan.pt").read_bytes())},
                     timeout=60)
    assert r.status_code == 400 and "NaN" in r.text, r.text
    assert weights.read_bytes() == before
    assert not (server.app / "model" / "liver_resnet_lite.pt.previous").exists()  # nothing replaced yet
    torch.manual_seed(1)
    fresh = build_network("resnet", "lite", 1)
    save_checkpoint(str(tmp_path / "ok.pt"), fresh, "resnet", "lite", 1)
    r = requests.put(f"{server.url}/model/liver_resnet", files={"file": ("m.pt", (tmp_path / "ok.pt").read_bytes())},
                     timeout=60)
    assert r.status_code == 200, r.text
    assert weights.read_bytes() == (tmp_path / "ok.pt").read_bytes()
    # the model it replaced is kept for a roll-back (it was lost)
    assert (server.app / "model" / "liver_resnet_lite.pt.previous").read_bytes() == before
    assert requests.post(f"{server.url}/infer/liver_resnet", params={"image": "ok"}, timeout=300).status_code == 200
    r = requests.get(f"{server.url}/model/liver_resnet", timeout=60)  # sent from the file as opened (server_guard)
    assert r.status_code == 200 and r.content == weights.read_bytes(), r.status_code
    assert r.headers["content-length"] == str(len(r.content)) and "liver_resnet.pt" in r.headers["content-disposition"]


def test_model_downloads_during_uploads_are_whole(server, tmp_path):
    """MONAI Label copied an uploaded model over the model file in place: downloads meanwhile (and any other
    process loading the model) got part of each model, about a quarter of them with two models uploaded in
    turn. The upload is now written aside and renamed."""
    import torch

    from lib.model_io import save_checkpoint
    from lib.networks import build_network

    weights = server.app / "model" / "liver_resnet_lite.pt"
    before, models = weights.read_bytes(), []
    for seed in (1, 2):
        torch.manual_seed(seed)
        save_checkpoint(str(tmp_path / f"{seed}.pt"), build_network("resnet", "lite", 1), "resnet", "lite", 1)
        models.append((tmp_path / f"{seed}.pt").read_bytes())
    url = f"{server.url}/model/liver_resnet"

    def upload(k):
        return requests.put(url, files={"file": ("m.pt", models[k])}, timeout=60).status_code

    def download():
        r = requests.get(url, timeout=60)
        return "one of the two" if r.content in models else f"{r.status_code}, another file"

    assert requests.put(url, files={"file": ("m.pt", models[0])}, timeout=60).status_code == 200
    results = support.repeatedly(10, upload0=lambda: upload(0), upload1=lambda: upload(1), download0=download,
                                 download1=download)
    downloads = results["download0"] + results["download1"]
    assert set(results["upload0"] + results["upload1"]) == {200}
    assert len(downloads) > 20 and set(downloads) == {"one of the two"}, collections.Counter(downloads)
    assert requests.put(url, files={"file": ("m.pt", before)}, timeout=60).status_code == 200  # as it was
    assert weights.read_bytes() == before


def test_routes_the_app_cannot_serve_get_404_not_500(server):
    """The whole-slide inference routes (no image, a malformed ``wsi`` form, any model) and /logs/gpu
    without nvidia-smi answered 500, so did a huge ``lines`` for the log."""
    import shutil

    for path in ("/infer/wsi_v2/liver_resnet", "/infer/wsi/liver_resnet", "/infer/wsi_v2/nosuch"):
        r = requests.post(server.url + path, data={"wsi": "{not json"}, timeout=60)
        assert r.status_code == 404 and "no whole-slide" in r.text, (path, r.status_code, r.text)
    r = requests.get(f"{server.url}/logs/gpu", timeout=60)
    if shutil.which("nvidia-smi"):
        assert r.status_code == 200
    else:
        assert r.status_code == 404 and "nvidia-smi" in r.text, r.text
    r = requests.get(f"{server.url}/logs/", params={"lines": 10 ** 20}, timeout=60)
    assert r.status_code == 400 and "at most" in r.text, r.text
    r = requests.get(f"{server.url}/logs/", params={"lines": 5, "text": "true"}, timeout=60)
    assert r.status_code == 200 and 0 < r.text.count("\n") <= 5
    assert_still_serving(server)


def test_refused_uploads_and_downloads_leave_nothing_in_tmp(server, phantom_ct):
    """Each refused upload stayed in /tmp whole (a 50 MB one, 50 MB); each dataset ZIP too."""
    assert leftovers(server) == []  # once the previous responses are sent
    junk = io.BytesIO(b"not a volume" * 1000)
    assert requests.put(f"{server.url}/datastore/image", params={"image": "junk"},
                        files={"file": ("junk.nii.gz", junk)}, timeout=60).status_code == 400
    assert requests.put(f"{server.url}/datastore/label", params={"image": "ok", "tag": "final"},
                        files={"label": ("l.nii.gz", io.BytesIO(b"not a label"))}, timeout=60).status_code == 400
    assert upload(server, b"not a volume").status_code == 400
    assert requests.put(f"{server.url}/model/liver_resnet", files={"file": ("m.pt", b"garbage")}, timeout=60).status_code == 400
    r = requests.get(f"{server.url}/datastore/dataset", timeout=60)
    assert r.status_code == 200 and r.content[:2] == b"PK"
    assert leftovers(server) == []


def test_session_uploads_that_cannot_be_unpacked_or_downloaded_get_400(server, phantom_ct):
    """An upload to unpack that is no archive, and the image of a session of several files, answered 500."""
    import zipfile

    volume = nii_bytes(phantom_ct.image)
    r = requests.put(f"{server.url}/session/", params={"uncompress": "true"},
                     files=[("files", ("ct.nii.gz", volume))], timeout=60)
    assert r.status_code == 400 and "not a zip or tar archive" in r.text, r.text
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ct.nii.gz", volume)
    r = requests.put(f"{server.url}/session/", params={"uncompress": "true"},
                     files=[("files", ("ct.zip", archive.getvalue()))], timeout=60)
    assert r.status_code == 200, r.text
    requests.delete(f"{server.url}/session/{r.json()['session_id']}", timeout=60)  # sessions live in ~/.cache
    r = requests.put(f"{server.url}/session/", files=[("files", ("a.nii.gz", volume)), ("files", ("b.nii.gz", volume))],
                     timeout=60)
    assert r.status_code == 200, r.text
    session_id = r.json()["session_id"]
    r = requests.get(f"{server.url}/session/{session_id}", params={"image": "true"}, timeout=60)
    assert r.status_code == 400 and "several files" in r.text, r.text
    assert requests.get(f"{server.url}/session/{session_id}", timeout=60).status_code == 200
    requests.delete(f"{server.url}/session/{session_id}", timeout=60)


def test_a_session_of_a_dicom_series_or_a_zipped_volume_is_segmented(server, phantom_ct, tmp_path):
    """A DICOM series uploaded as a session (a zip unpacked, or its files) is kept as a folder by MONAI Label,
    and its inference answered 400 "invalid image id '/root/.cache/monailabel/sessions/...'"."""
    import zipfile

    import make_sample_data

    make_sample_data.write_dicom_series(phantom_ct, tmp_path / "series", 5, "ct")
    slices = sorted(p for p in (tmp_path / "series").rglob("*") if p.is_file())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for p in slices:
            z.write(p, "AX_5mm/" + p.name)
    zipped_volume = io.BytesIO()
    with zipfile.ZipFile(zipped_volume, "w") as z:
        z.writestr("ct.nii.gz", nii_bytes(phantom_ct.image))
    uploads = {"zip of a series": dict(params={"uncompress": "true"}, files=[("files", ("s.zip", archive.getvalue()))]),
               "the series' files": dict(files=[("files", (p.name, p.read_bytes())) for p in slices]),
               "zip of a volume": dict(params={"uncompress": "true"}, files=[("files", ("v.zip", zipped_volume.getvalue()))])}
    for what, upload_args in uploads.items():
        r = requests.put(f"{server.url}/session/", timeout=60, **upload_args)
        assert r.status_code == 200, (what, r.text)
        session_id = r.json()["session_id"]
        try:
            r = requests.post(f"{server.url}/infer/liver_resnet", params={"session_id": session_id, "output": "image"},
                              timeout=300)
            assert r.status_code == 200, (what, r.text)
            (tmp_path / "out.nii.gz").write_bytes(r.content)
            out = nib.load(str(tmp_path / "out.nii.gz"))
            assert sorted(out.shape) == sorted(phantom_ct.image.shape), (what, out.shape)
            assert np.isclose(abs(np.linalg.det(out.affine[:3, :3])), abs(np.linalg.det(phantom_ct.affine[:3, :3])))
        finally:
            requests.delete(f"{server.url}/session/{session_id}", timeout=60)
    assert_still_serving(server)


def test_inference_on_a_session_that_is_gone_gets_404(server, phantom_ct):
    """An inference on a session that expired or was deleted meanwhile (another tab, the expiry) answered 400
    "a datastore image id or an uploaded file is needed", or "invalid image id '/root/.cache/...'"."""
    r = requests.post(f"{server.url}/infer/liver_resnet", params={"session_id": "no-such-session"}, timeout=60)
    assert r.status_code == 404 and "not found: it expired or was deleted" in r.text, r.text
    r = requests.put(f"{server.url}/session/", files=[("files", ("ct.nii.gz", nii_bytes(phantom_ct.image)))], timeout=60)
    session_id = r.json()["session_id"]
    r = requests.post(f"{server.url}/infer/liver_resnet", params={"session_id": session_id, "output": "json"}, timeout=300)
    assert r.status_code == 200, r.text
    assert requests.delete(f"{server.url}/session/{session_id}", timeout=60).status_code == 200
    r = requests.post(f"{server.url}/infer/liver_resnet", params={"session_id": session_id}, timeout=60)
    assert r.status_code == 404 and session_id in r.text, r.text


@pytest.mark.parametrize("gz", [True, False])
def test_float_volumes_are_checked_for_nan_across_read_chunks(tmp_path, gz):
    """The finite-voxel check reads the file in chunks (CHUNK bytes): a NaN as the very last voxel of a
    volume several chunks long is found, a finite float volume passes, a truncated one is refused."""
    from lib.validation import CHUNK, InputError, check_volume_file

    shape = (128, 128, CHUNK * 3 // (128 * 128 * 4) + 1)
    vol = np.zeros(shape, np.float32)
    path = tmp_path / ("v.nii.gz" if gz else "v.nii")
    nib.save(nib.Nifti1Image(vol, AFFINE), str(path))
    check_volume_file(str(path), max_voxels=10 ** 8)
    vol[-1, -1, -1] = np.nan
    nib.save(nib.Nifti1Image(vol, AFFINE), str(path))
    with pytest.raises(InputError, match="1 NaN or infinite"):
        check_volume_file(str(path), max_voxels=10 ** 8)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(InputError, match="truncated"):
        check_volume_file(str(path), max_voxels=10 ** 8)


def test_a_file_missing_fewer_bytes_than_its_header_is_refused(tmp_path):
    """The completeness check counted from offset 0 (nibabel's loaded header copy), so a file missing up to
    352 bytes (its header's size) at the end passed."""
    from lib.validation import InputError, check_volume_file

    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), np.int16), AFFINE), str(path))
    check_volume_file(str(path), max_voxels=10 ** 8)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        check_volume_file(str(path), max_voxels=10 ** 8)
