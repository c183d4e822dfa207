"""End to end: a real `monailabel start_server` subprocess and real HTTP."""

import json

import nibabel as nib
import numpy as np
import pytest
import requests
from requests_toolbelt.multipart import decoder


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    import phantom

    d = tmp_path_factory.mktemp("studies")
    # non-RAS orientation, anisotropic spacing, odd slice count
    specs = {"lps_odd": dict(seed=3, orientation="LPS", n_slices=13), "permuted": dict(seed=4, orientation="permuted", n_slices=10)}
    for name, kw in specs.items():
        p = phantom.generate_phantom(shape_xy=(96, 96), spacing=(3.6, 3.6, 5.0), **kw)
        nib.save(nib.Nifti1Image(p.image, p.affine), str(d / f"{name}.nii.gz"))
    (d / "broken.nii.gz").write_bytes(b"this is not a nifti file")
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory, studies):
    from support import Server, untrained_app

    tmp = tmp_path_factory.mktemp("srv")
    app = untrained_app(tmp / "app")
    s = Server(app, studies, {"models": "liver_resnet,liver_cascade,vgg_fcn", "skip_trainers": "true"}, tmp / "server.log")
    s.app_dir = app
    yield s
    s.stop()


def infer(server, model, image, params=None, ext=None):
    p = dict(params or {})
    if ext:
        p["result_extension"] = ext
    return requests.post(f"{server.url}/infer/{model}", params={"image": image}, data={"params": json.dumps(p)},
                         timeout=300)


def infer_with_label(server, label_file, params=None, image="lps_odd"):
    """The cascade with an annotator's label uploaded as MONAI Label clients send it (multipart file)."""
    with open(label_file, "rb") as f:
        return requests.post(f"{server.url}/infer/liver_cascade", params={"image": image},
                             data={"params": json.dumps(params or {})},
                             files={"label": (label_file.name, f)}, timeout=300)


def parts(resp):
    out = {}
    for part in decoder.MultipartDecoder.from_response(resp).parts:
        disp = part.headers[b"Content-Disposition"].decode()
        out["params" if 'name="params"' in disp else "image"] = part.content
    return json.loads(out["params"]), out.get("image")


def test_info_lists_models_and_labels(server):
    info = requests.get(server.url + "/info/", timeout=10).json()
    for m in ("liver_resnet", "liver_cascade"):
        assert info["models"][m]["labels"] == {"liver": 1, "lesion": 2}
        assert set(info["models"][m]["label_colors"]) == {"liver", "lesion"}
    assert info["models"]["liver_cascade"]["config"]["scales"]
    # a list: Slicer shows a choice; requests that do not choose get the first (their merged config)
    assert info["models"]["liver_cascade"]["config"]["background_click"] == ["tissue", "island"]
    assert info["models"]["liver_cascade"]["config"]["crf"] == ["liver", "paper", "off"]
    assert info["models"]["liver_cascade"]["config"]["adapt_bn"] is False  # opt-in
    assert info["models"]["liver_cascade"]["config"]["grow_liver"] is True  # the default
    assert info["labels"] == ["liver", "lesion"]
    model = server.app_dir / "model" / "liver_cascade_lite.pt"  # the live version, as the file says
    assert info["models"]["liver_cascade"]["model_mtimes"]["liver_cascade_lite.pt"] == model.stat().st_mtime


@pytest.mark.parametrize("image", ["lps_odd", "permuted"])
@pytest.mark.parametrize("model", ["liver_resnet", "liver_cascade"])
def test_infer_keeps_geometry(server, studies, tmp_path, model, image):
    r = infer(server, model, image)
    assert r.status_code == 200, r.text
    params, data = parts(r)
    assert params["label_names"] == {"liver": 1, "lesion": 2}
    assert set(params["latencies"]) >= {"pre", "infer", "post", "write", "total"}
    out = tmp_path / "out.nii.gz"
    out.write_bytes(data)
    ref, lab = nib.load(str(studies / f"{image}.nii.gz")), nib.load(str(out))
    assert lab.shape == ref.shape
    assert np.allclose(lab.affine, ref.affine, atol=1e-4)
    assert lab.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2}
    if model == "liver_cascade":
        assert "lesion_report" in params and "liver_volume_ml" in params["lesion_report"]
        lesions = params["lesion_report"]["lesions"]
        assert lesions  # the phantom's lesions: some are found
        arr = np.asarray(lab.dataobj)
        # each lesion's click voxel (file indices) is on that lesion in the returned label
        assert all(arr[tuple(les["click_voxel"])] == 2 for les in lesions), lesions


def test_infer_nrrd_for_slicer(server, studies, tmp_path):
    import SimpleITK as sitk

    r = infer(server, "liver_cascade", "lps_odd", {"result_dtype": "uint8"}, ext=".nrrd")
    assert r.status_code == 200, r.text
    _, data = parts(r)
    (tmp_path / "o.nrrd").write_bytes(data)
    lab = sitk.ReadImage(str(tmp_path / "o.nrrd"))
    ref = sitk.ReadImage(str(studies / "lps_odd.nii.gz"))
    assert lab.GetSize() == ref.GetSize()
    assert np.allclose(lab.GetDirection(), ref.GetDirection(), atol=1e-5)
    assert np.allclose(lab.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    assert np.allclose(lab.GetSpacing(), ref.GetSpacing(), atol=1e-5)


def test_multiscale_request(server):
    r = infer(server, "liver_cascade", "lps_odd", {"scales": "192,208,224"})
    assert r.status_code == 200, r.text
    assert parts(r)[0]["scales"] == [192, 208, 224]


def test_a_misspelt_option_is_refused_not_ignored(server):
    """It ran with the default as if asked for; keys of other clients still pass."""
    for typo, meant in (("scale", "scales"), ("foregroud", "foreground"), ("adaptbn", "adapt_bn")):
        r = infer(server, "liver_cascade", "lps_odd", {typo: "paper" if typo == "scale" else [[1, 1, 1]]})
        assert r.status_code == 400 and f"did you mean '{meant}'" in r.text, r.text
    r = infer(server, "liver_resnet", "lps_odd", {"labels": ["liver"], "label_info": [], "result_dtype": "uint8",
                                                  "sw_batch_size": 2, "my_client_field": 1})
    assert r.status_code == 200, r.text


def test_batchnorm_adaptation_on_request(server):
    r = infer(server, "liver_cascade", "lps_odd", {"adapt_bn": True})
    assert r.status_code == 200, r.text
    assert parts(r)[0]["timings"]["adapt_bn"] > 0
    assert parts(infer(server, "liver_cascade", "lps_odd"))[0]["timings"]["adapt_bn"] == 0  # opt-in


def test_the_result_says_how_much_liver_growth_added_and_none_when_off(server):
    grown = parts(infer(server, "liver_cascade", "lps_odd"))[0]
    assert isinstance(grown["liver_grown_ml"], float) and grown["liver_grown_ml"] >= 0
    assert "liver_grown_ml" not in parts(infer(server, "liver_cascade", "lps_odd", {"grow_liver": "off"}))[0]


def test_a_lesion_click_on_air_is_not_drawn_and_the_result_says_so(server, tmp_path):
    """A mis-click outside the body drew a 4 mm lesion in the air (and widened stage two's box to it)."""
    air = [2, 2, 6]  # a corner of the field of view, outside the phantom's body (about -1000 HU)
    params, data = parts(infer(server, "liver_cascade", "lps_odd", {"foreground": [air]}))
    (tmp_path / "clicked.nii.gz").write_bytes(data)
    _, plain = parts(infer(server, "liver_cascade", "lps_odd"))
    (tmp_path / "plain.nii.gz").write_bytes(plain)
    clicked = np.asarray(nib.load(str(tmp_path / "clicked.nii.gz")).dataobj)
    assert clicked[tuple(air)] != 2
    assert np.array_equal(clicked, np.asarray(nib.load(str(tmp_path / "plain.nii.gz")).dataobj))
    assert any("1 foreground click(s) on air or gas" in n for n in params.get("notes", [])), params


def test_bad_requests_get_4xx_and_server_keeps_serving(server):
    assert infer(server, "liver_cascade", "no_such_image").status_code == 404
    assert infer(server, "no_such_model", "lps_odd").status_code == 404
    assert infer(server, "liver_cascade", "lps_odd", {"scales": "abc"}).status_code == 400
    assert infer(server, "liver_cascade", "lps_odd", {"min_lesion_ml": "abc"}).status_code == 400
    for bad in ({"min_lesion_ml": "nan"}, {"min_lesion_ml": "inf"}, {"scales": [None]}, {"scales": "1e400"}, {"batch_size": 0},
                {"batch_size": "abc"}):
        r = infer(server, "liver_cascade", "lps_odd", bad)
        assert r.status_code == 400 and next(iter(bad)) in r.text, (bad, r.status_code, r.text)
    bad_crf = infer(server, "liver_cascade", "lps_odd", {"crf": "sometimes"})
    assert bad_crf.status_code == 400 and "crf" in bad_crf.text
    assert infer(server, "liver_cascade", "broken").status_code == 400
    for bad in ({"fill_holes": "maybe"}, {"stage2_roi": "xyz"}, {"adapt_bn": "perhaps"}, {"grow_liver": "ok"},
                {"foreground": [[600, 10, 5]]},
                {"background": [[1e30, 0, 0]]}, {"scales": "2048"}):
        r = infer(server, "liver_cascade", "lps_odd", bad)
        assert r.status_code == 400 and next(iter(bad)) in r.text, (bad, r.status_code, r.text)
    no_image = requests.post(f"{server.url}/infer/liver_cascade", data={"params": "{}"}, timeout=60)
    assert no_image.status_code == 400 and "image" in no_image.text
    seg = requests.post(f"{server.url}/infer/liver_cascade", params={"image": "lps_odd", "output": "dicom_seg"},
                        timeout=60)
    assert seg.status_code == 400 and "DICOMweb" in seg.text
    assert requests.post(f"{server.url}/activelearning/bogus", json={}, timeout=60).status_code == 404
    assert requests.post(f"{server.url}/scoring/bogus", timeout=60).status_code == 404
    missing = infer(server, "vgg_fcn", "lps_odd")  # no weights for this one
    assert missing.status_code == 503
    assert "vgg_fcn_lite.pt" in missing.json()["detail"] and "train" in missing.json()["detail"].lower()
    assert infer(server, "liver_resnet", "lps_odd").status_code == 200


def test_interactive_corrected_liver_and_clicks(server, studies, tmp_path):
    """The cascade keeps an annotator's liver exactly and honours lesion clicks."""
    import phantom

    ref = phantom.generate_phantom(seed=3, orientation="LPS", n_slices=13, shape_xy=(96, 96), spacing=(3.6, 3.6, 5.0))
    liver = (ref.label > 0).astype(np.uint8)
    liver_file = tmp_path / "liver.nii.gz"
    nib.save(nib.Nifti1Image(liver, ref.affine), str(liver_file))
    inside = np.argwhere(liver > 0)
    fg = inside[len(inside) // 3].tolist()
    r = infer_with_label(server, liver_file, {"foreground": [fg]})
    assert r.status_code == 200, r.text
    _, data = parts(r)
    (tmp_path / "o.nii.gz").write_bytes(data)
    out = np.asarray(nib.load(str(tmp_path / "o.nii.gz")).dataobj)
    assert np.array_equal(out > 0, liver > 0)  # the annotator's liver, as drawn
    assert out[tuple(fg)] == 2  # the foreground click made a lesion there
    # a click outside the liver sent is not drawn (the liver is kept as sent), and the result says so
    from scipy import ndimage

    body = ndimage.binary_erosion(ref.image > -200, iterations=2)  # tissue: a click on air is a mis-click
    tissue = np.argwhere(body & (liver == 0))
    away = tissue[np.argmax(np.linalg.norm(tissue - inside.mean(0), axis=1))].tolist()  # far from the liver
    params_away, data = parts(infer_with_label(server, liver_file, {"foreground": [fg, away]}))
    (tmp_path / "o1.nii.gz").write_bytes(data)
    out1 = np.asarray(nib.load(str(tmp_path / "o1.nii.gz")).dataobj)
    assert out1[tuple(away)] == 0
    # nor does it act anywhere else: it widened stage two's box and changed lesions across the volume
    assert np.array_equal(out1, out)
    assert any("1 foreground click(s) outside the liver" in n for n in params_away.get("notes", [])), params_away
    # a background click on that lesion removes it, and leaves the rest alone
    r = infer_with_label(server, liver_file, {"foreground": [fg], "background": [fg]})
    _, data = parts(r)
    (tmp_path / "o2.nii.gz").write_bytes(data)
    out2 = np.asarray(nib.load(str(tmp_path / "o2.nii.gz")).dataobj)
    assert out2[tuple(fg)] == 1
    assert infer(server, "liver_cascade", "lps_odd", {"foreground": "not points"}).status_code == 400
    bad_mode = infer(server, "liver_cascade", "lps_odd", {"background": [fg], "background_click": "everything"})
    assert bad_mode.status_code == 400 and "background_click" in bad_mode.text
    # a corrected liver that is not on the image's grid (shifted 50 mm) is refused, not used voxel by voxel
    shifted = ref.affine.copy()
    shifted[:3, 3] += 50
    moved_file = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(liver, shifted), str(moved_file))
    r = infer_with_label(server, moved_file)
    assert r.status_code == 400 and "grid" in r.text, r.text
    from support import layered_seg_nrrd

    layered = tmp_path / "layers.seg.nrrd"  # a multi-layer Slicer segmentation: refused, naming the label
    layered.write_bytes(layered_seg_nrrd(ref.label, ref.affine))
    r = infer_with_label(server, layered)
    assert r.status_code == 400 and "label" in r.text and "layer" in r.text, r.text
    # an empty label (a viewer's empty segment) is not a liver to keep: the model's liver is used, the
    # clicks still count, and the result says so (it returned an empty segmentation and dropped the clicks)
    nib.save(nib.Nifti1Image(np.zeros_like(liver), ref.affine), str(moved_file))
    r = infer_with_label(server, moved_file, {"foreground": [fg]})
    assert r.status_code == 200, r.text
    params, data = parts(r)
    (tmp_path / "o3.nii.gz").write_bytes(data)
    out3 = np.asarray(nib.load(str(tmp_path / "o3.nii.gz")).dataobj)
    assert out3[tuple(fg)] == 2 and any("empty" in note for note in params["notes"]), params
    params4, data4 = parts(infer(server, "liver_cascade", "lps_odd", {"foreground": [fg]}))
    (tmp_path / "o4.nii.gz").write_bytes(data4)
    assert np.array_equal(out3, np.asarray(nib.load(str(tmp_path / "o4.nii.gz")).dataobj))  # as if no label was sent
    assert "notes" not in params4  # only when something sent was not used
    seg_values = liver * 5  # any segment value counts as liver: an annotator's labelmap is not checked for 0/1/2
    nib.save(nib.Nifti1Image(seg_values.astype(np.uint8), ref.affine), str(moved_file))
    r = infer_with_label(server, moved_file)
    assert r.status_code == 200, r.text
