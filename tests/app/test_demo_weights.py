"""The shipped demo weights segment out of the box (issue 4: "make serve segments a sample
volume sensibly"), and keep their measured quality on the unseen real patient.

Measured when the weights were shipped (docs/RESULTS.md, 2026-11-28): liver Dice 85-89 % on the
labelled sample-data phantoms, 84.5 % on the unseen real patient (split 1); 8 of the 22 lesions of
the 4 labelled sample phantoms found (lesion Dice up to 53 % on one). The thresholds below leave a
margin for platform differences, not for a regression.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from support import APP, SAMPLE, SHARED_CT, Server, copy_app

from lib.evaluation.metrics import dice, liver_mask


def liver_dice(pred, ref):
    return dice(liver_mask(pred), liver_mask(ref))  # LiTS liver: liver + lesion


@pytest.fixture(scope="module")
def sample_studies(tmp_path_factory):
    """Two of the sample datastore's labelled cases (`make serve`'s), one per contrast phase."""
    import make_sample_data
    import phantom

    d = tmp_path_factory.mktemp("demo_studies")
    cases = {}
    for seed in (0, 3):  # phantom_000 (late phase), phantom_003 (early phase)
        p = phantom.generate_phantom(seed, **make_sample_data.case_kwargs(seed, 512, small=False))
        name = f"phantom_{seed:03d}"
        nib.save(nib.Nifti1Image(p.image, p.affine), str(d / f"{name}.nii.gz"))
        cases[name] = p
    assert {p.info["phase"] for p in cases.values()} == set(phantom.PHASES)
    return d, cases


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, sample_studies):
    tmp = tmp_path_factory.mktemp("demo_srv")
    app = copy_app(tmp / "app", with_weights=True)
    s = Server(app, sample_studies[0], {"skip_trainers": "true"}, tmp / "server.log")
    yield s
    s.stop()


@pytest.mark.parametrize("name", ["phantom_000", "phantom_003"])
def test_demo_weights_segment_the_sample_data(demo_server, sample_studies, tmp_path, name):
    _, cases = sample_studies
    r = requests.post(f"{demo_server.url}/infer/liver_cascade", params={"image": name, "output": "image"},
                      data={"params": json.dumps({"result_extension": ".nii.gz"})}, timeout=300)
    assert r.status_code == 200, r.text
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(r.content)
    pred = np.asarray(nib.load(str(out)).dataobj)
    ref = cases[name].label
    assert pred.shape == ref.shape
    assert liver_dice(pred, ref) > 0.78


REAL = SHARED_CT / "nifti"


@pytest.mark.skipif(not (REAL / "hcc_0697_eqp_label.nii.gz").exists(), reason="needs ../shared/real-ct")
def test_demo_weights_on_the_unseen_real_patient(tmp_path):
    """Split 1: the shipped weights never saw patient 0697 (neither phase)."""
    from lib.evaluation.predict import load_label, make_task, predict_file

    task = make_task("liver_cascade", str(APP / "model"))
    ref = load_label(str(REAL / "hcc_0697_eqp_label.nii.gz"))
    dice = {}
    for name, params in (("default", {}), ("no growth", {"grow_liver": False}),
                         ("adapted, no growth", {"adapt_bn": True, "grow_liver": False})):
        predict_file(task, str(REAL / "hcc_0697_eqp.nii.gz"), str(tmp_path / "pred.nii.gz"), params)
        dice[name] = liver_dice(load_label(str(tmp_path / "pred.nii.gz")), ref)
    # measured 2026-11-30: 93.73 % as served (the liver growth's default), 87.54 % without the growth
    assert dice["default"] > 0.92 and dice["default"] > dice["no growth"] + 0.04, dice
    # the volume's batch-norm statistics (opt-in) gain on this unseen patient without the growth (measured: 88.49
    # against 87.54 %); with it, they do not (93.52 against 93.73 %)
    assert dice["adapted, no growth"] > dice["no growth"] + 0.005, dice


def test_demo_weights_find_lesions_on_the_sample_phantoms(tmp_path):
    """The previous weights found no lesion anywhere; these find some on the sample data a newcomer sees."""
    from lib.evaluation.metrics import evaluate_case
    from lib.evaluation.predict import load_label, make_task, predict_file

    task = make_task("liver_cascade", str(APP / "model"))
    lits = SAMPLE / "generated" / "lits"
    found, best = 0, 0.0
    for i in range(4):
        img, lab = lits / f"volume-{i}.nii.gz", lits / f"segmentation-{i}.nii.gz"
        predict_file(task, str(img), str(tmp_path / f"pred{i}.nii.gz"))
        spacing = np.linalg.norm(nib.load(str(lab)).affine[:3, :3], axis=0)
        m = evaluate_case(load_label(str(tmp_path / f"pred{i}.nii.gz")), load_label(str(lab)), spacing)
        found, best = found + m["detected_iou0"], max(best, m["lesion_dice"])
    assert found >= 4, found
    assert best > 0.3, best


def test_crf_modes_the_default_redraws_the_liver_and_keeps_the_cascades_lesions(tmp_path):
    import phantom

    from lib.evaluation.predict import load_label, make_task, predict_file

    ref = phantom.generate_phantom(seed=3, orientation="LPS", n_slices=24, shape_xy=(160, 160), spacing=(2.2, 2.2, 5.0))
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ref.image, ref.affine), str(image))
    task = make_task("liver_cascade", str(APP / "model"))
    out, timings = {}, {}
    for name, params in (("off", {"crf": "off"}), ("paper", {"crf": "paper"}), ("liver", {"crf": "liver"}),
                         ("default", {}), ("switches", {"crf": "true", "crf_keep_lesions": "true"})):
        params = {**params, "grow_liver": False}  # the CRF's own effect (the liver growth after it: its own test)
        timings[name] = predict_file(task, str(image), str(tmp_path / f"{name}.nii.gz"), params)["timings"]
        out[name] = load_label(str(tmp_path / f"{name}.nii.gz"))
    assert (out["off"] == 2).sum() > 500  # the cascade finds this phantom's lesions (1518 voxels measured)
    assert (out["paper"] == 2).sum() < 0.5 * (out["off"] == 2).sum()  # the paper's CRF removes most of them
    assert np.array_equal(out["liver"] == 2, out["off"] == 2)  # the liver mode keeps them as they were ...

    def liver_dice(label):
        a, b = label > 0, ref.label > 0
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert liver_dice(out["liver"]) > liver_dice(out["off"]) + 0.005  # ... and redraws a better liver boundary
    assert np.array_equal(out["default"], out["liver"]) and np.array_equal(out["switches"], out["liver"])
    assert timings["default"]["crf_mode"] == "liver" and timings["off"]["crf_mode"] == "off"
    assert "crf" not in timings["off"] and timings["liver"]["crf"] < 10


def test_liver_growth_is_the_default_adds_liver_only_and_leaves_a_corrected_liver_alone(tmp_path):
    import phantom

    from lib.evaluation.predict import load_label, make_task, predict_file
    from lib.infers.liver import InvalidRequestError

    ref = phantom.generate_phantom(seed=3, orientation="LPS", n_slices=24, shape_xy=(160, 160), spacing=(2.2, 2.2, 5.0))
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ref.image, ref.affine), str(image))
    task = make_task("liver_cascade", str(APP / "model"))
    server_off = make_task("liver_cascade", str(APP / "model"), {"grow_liver": "false"})  # --conf grow_liver false
    out, result = {}, {}
    for name, t, params in (("default", task, {}), ("off", task, {"grow_liver": False}), ("server off", server_off, {}),
                            ("server off, request on", server_off, {"grow_liver": "true"})):
        result[name] = predict_file(t, str(image), str(tmp_path / f"{name}.nii.gz"), params)
        out[name] = load_label(str(tmp_path / f"{name}.nii.gz"))
    added = (out["default"] > 0) & (out["off"] == 0)
    assert added.sum() > 1000, added.sum()
    # it only adds liver: the rest of the label, lesions included, is the network's
    assert np.array_equal(out["default"][~added], out["off"][~added]) and (out["default"][added] == 1).all()
    assert liver_dice(out["default"], ref.label) > liver_dice(out["off"], ref.label) + 0.01
    voxel_ml = abs(np.linalg.det(ref.affine[:3, :3])) / 1000
    # what the growth drew; the per-slice hole filling after it closes a few more voxels
    assert 0.9 * added.sum() * voxel_ml < result["default"]["liver_grown_ml"] <= added.sum() * voxel_ml + 0.01
    assert "liver_grown_ml" not in result["off"]
    assert np.array_equal(out["server off"], out["off"]) and np.array_equal(out["server off, request on"], out["default"])
    # an annotator's corrected liver is kept as drawn: no growth, nothing reported
    corrected = (ref.label > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(corrected, ref.affine), str(tmp_path / "liver.nii.gz"))
    sent = predict_file(task, str(image), str(tmp_path / "sent.nii.gz"), {"label": str(tmp_path / "liver.nii.gz")})
    assert "liver_grown_ml" not in sent
    assert np.array_equal(load_label(str(tmp_path / "sent.nii.gz")) > 0, corrected > 0)
    with pytest.raises(InvalidRequestError, match="grow_liver"):
        predict_file(task, str(image), str(tmp_path / "bad.nii.gz"), {"grow_liver": "sometimes"})


def test_batchnorm_adaptation_is_opt_in_per_request_or_server(tmp_path):
    import phantom

    from lib.evaluation.predict import load_label, make_task, predict_file
    from lib.infers.liver import InvalidRequestError

    ref = phantom.generate_phantom(seed=5, n_slices=20, shape_xy=(160, 160), spacing=(2.2, 2.2, 5.0))
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ref.image, ref.affine), str(image))
    task = make_task("liver_cascade", str(APP / "model"))
    server_on = make_task("liver_cascade", str(APP / "model"), {"adapt_bn": "true"})  # --conf adapt_bn true
    timings, out = {}, {}
    for name, t, params in (("default", task, {}), ("on", task, {"adapt_bn": "true"}), ("off", task, {"adapt_bn": False}),
                            ("server on", server_on, {}), ("server on, request off", server_on, {"adapt_bn": "no"})):
        timings[name] = predict_file(t, str(image), str(tmp_path / "out.nii.gz"), params)["timings"]
        out[name] = load_label(str(tmp_path / "out.nii.gz"))
    assert timings["on"]["adapt_bn"] > 0 and timings["default"]["adapt_bn"] == 0
    assert np.array_equal(out["default"], out["off"]) and np.array_equal(out["server on, request off"], out["off"])
    assert np.array_equal(out["server on"], out["on"])
    assert not np.array_equal(out["on"], out["off"])  # the statistics change the answer
    with pytest.raises(InvalidRequestError, match="adapt_bn"):
        predict_file(task, str(image), str(tmp_path / "bad.nii.gz"), {"adapt_bn": "sometimes"})


def test_a_background_click_off_the_liver_changes_nothing_elsewhere(tmp_path):
    """A background click on air once widened stage two's box to reach it, which shrank the liver in
    stage two's input: 6 of a phantom's 7 lesions went. It must only act where it is."""
    import phantom

    from lib.evaluation.predict import load_label, make_task, predict_file

    ref = phantom.generate_phantom(seed=3, orientation="LPS", n_slices=24, shape_xy=(160, 160), spacing=(2.2, 2.2, 5.0))
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ref.image, ref.affine), str(image))
    assert ref.image[2, 2, 12] < -900  # the click is on air
    task = make_task("liver_cascade", str(APP / "model"))
    plain = predict_file(task, str(image), str(tmp_path / "plain.nii.gz"), {"crf": "off"})
    click = predict_file(task, str(image), str(tmp_path / "click.nii.gz"), {"crf": "off", "background": [[2, 2, 12]]})
    assert (load_label(str(tmp_path / "plain.nii.gz")) == 2).sum() > 500
    assert np.array_equal(load_label(str(tmp_path / "plain.nii.gz")), load_label(str(tmp_path / "click.nii.gz")))
    assert click["timings"]["stage2_box"] == plain["timings"]["stage2_box"]


def test_a_lesion_click_outside_the_sent_liver_changes_nothing(tmp_path):
    """A foreground click outside the annotator's liver is not drawn (the liver is kept as sent); it
    still widened stage two's box to reach it, and lesions across the volume changed (35 k voxels)."""
    import phantom
    from scipy import ndimage

    from lib.evaluation.predict import load_label, make_task, predict_file

    ref = phantom.generate_phantom(seed=3, orientation="LPS", n_slices=24, shape_xy=(160, 160), spacing=(2.2, 2.2, 5.0))
    image, liver = tmp_path / "ct.nii.gz", tmp_path / "liver.nii.gz"
    nib.save(nib.Nifti1Image(ref.image, ref.affine), str(image))
    nib.save(nib.Nifti1Image((ref.label > 0).astype(np.uint8), ref.affine), str(liver))
    inside = np.argwhere(ref.label > 0)
    tissue = np.argwhere(ndimage.binary_erosion(ref.image > -200, iterations=2) & (ref.label == 0))
    away = tissue[np.argmax(np.linalg.norm(tissue - inside.mean(0), axis=1))].tolist()  # far from the liver
    task = make_task("liver_cascade", str(APP / "model"))
    plain = predict_file(task, str(image), str(tmp_path / "plain.nii.gz"), {"crf": "off", "label": str(liver)})
    click = predict_file(task, str(image), str(tmp_path / "click.nii.gz"),
                         {"crf": "off", "label": str(liver), "foreground": [away]})
    assert any("outside the liver label you sent" in n for n in click.get("notes", [])), click
    assert click["timings"]["stage2_box"] == plain["timings"]["stage2_box"]
    assert np.array_equal(load_label(str(tmp_path / "plain.nii.gz")), load_label(str(tmp_path / "click.nii.gz")))


def test_batchnorm_adaptation_reads_the_automatic_input_not_the_clicks(tmp_path, monkeypatch):
    """Adapted to an input with the annotator's clicks drawn in, the statistics would change with every
    click (and lesions away from it with them): stage two adapts to its automatic input."""
    import phantom

    import lib.infers.liver as infers
    from lib.evaluation.predict import make_task, predict_file

    ref = phantom.generate_phantom(seed=3, orientation="LPS", n_slices=24, shape_xy=(160, 160), spacing=(2.2, 2.2, 5.0))
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ref.image, ref.affine), str(image))
    seen = []
    real = infers.adapt_batchnorm

    def spy(network, make_input, indices, *args, **kwargs):
        seen.append((list(indices), kwargs.get("box"), make_input(list(indices)).clone()))
        return real(network, make_input, indices, *args, **kwargs)

    monkeypatch.setattr(infers, "adapt_batchnorm", spy)
    task = make_task("liver_cascade", str(APP / "model"))
    lesion = np.argwhere(ref.label == 2)[0].tolist()  # a click on a lesion: drawn into stage two's input
    far = [int(ref.label.shape[0] * 0.1), int(ref.label.shape[1] * 0.5), 12]  # and one outside the liver's box
    for clicks in ({}, {"foreground": [lesion]}, {"foreground": [far], "background": [lesion]}):
        predict_file(task, str(image), str(tmp_path / "out.nii.gz"), {"adapt_bn": True, **clicks})
    stage2 = seen[1::2]  # stage one, stage two per request
    assert len(seen) == 6 and all(s[2].shape[1] == 3 for s in stage2)
    for idx, box, x in stage2[1:]:
        assert idx == stage2[0][0] and box == stage2[0][1] and torch.equal(x, stage2[0][2])
