"""The server keeps answering while an inference runs (real server, real HTTP).

MONAI Label's endpoints are coroutines that block the server's event loop: during an inference of a
few seconds (minutes on a large CT) every other request, ``/info`` included, waited. The app runs
inference requests, and the others that can take long, on worker threads (``lib.server_guard.OffLoop``)."""

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest
import requests

from support import Server, copy_app, label_bytes

QUICK_S = 3.0  # an answer while the inference runs: /info alone takes well under a second


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import phantom

    tmp = tmp_path_factory.mktemp("responsive")
    studies = tmp / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    # a CT large enough that the cascade takes seconds on 2 cores
    big = phantom.generate_phantom(7, shape_xy=(512, 512), spacing=(0.75, 0.75, 2.5), n_slices=120)
    big.save_nifti(str(studies / "big.nii.gz"), None)
    small = phantom.generate_phantom(8, shape_xy=(96, 96), spacing=(3.6, 3.6, 5.0), n_slices=10)
    small.save_nifti(str(studies / "small.nii.gz"), None)
    srv = Server(copy_app(tmp / "app"), studies, {"models": "liver_resnet,liver_cascade"}, tmp / "server.log",
                 extra_env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    yield srv, small, big
    srv.stop()


def infer(srv, image):
    return requests.post(f"{srv.url}/infer/liver_cascade", params={"image": image, "output": "image"},
                         data={"params": "{}"}, timeout=600)


def start_inference(pool, srv):
    """An inference of the big CT on ``pool``, once the server has begun it: (its future, the log's
    length before it)."""
    mark = len(srv.log.read_text())
    running = pool.submit(infer, srv, "big")
    t0 = time.time()
    while "Infer Request" not in srv.log.read_text()[mark:]:
        assert time.time() - t0 < 60, srv.log.read_text()[-3000:]
        time.sleep(0.1)
    return running, mark


def test_requests_are_answered_while_an_inference_runs(server):
    srv, small, big = server
    with ThreadPoolExecutor(1) as pool:
        running, _ = start_inference(pool, srv)
        answers = []
        for method, path, kwargs in (
            ("get", "/info/", {}),
            ("get", "/datastore/", {"params": {"output": "stats"}}),
            ("put", "/datastore/label", {"params": {"image": "small", "tag": "final"},
                                         "files": {"label": ("small.nii.gz",
                                                             io.BytesIO(label_bytes(small.label, small.affine)))}}),
            ("get", "/datastore/label", {"params": {"label": "small", "tag": "final"}}),
        ):
            t = time.time()
            r = getattr(requests, method)(srv.url + path, timeout=60, **kwargs)
            answers.append((path, r.status_code, time.time() - t, running.done()))
        resp = running.result()
    assert resp.status_code == 200, resp.text
    for path, status, seconds, infer_done in answers:
        assert status == 200, (path, status)
        assert seconds < QUICK_S, (path, seconds)
        assert not infer_done, f"{path} was answered only after the inference: {answers}"
    pred = srv.log.parent / "pred_big.nii.gz"
    pred.write_bytes(resp.content)
    out = nib.load(str(pred))
    assert out.shape == big.image.shape
    assert (np.asarray(out.dataobj) == 1).sum() > 0  # the liver
    # the label save made during the inference is the image's final label, and the inference's own
    # prediction was kept as 'original' for the big image
    ds = requests.get(f"{srv.url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    assert "final" in ds["small"]["labels"]
    assert "original" in ds["big"]["labels"]


def test_inferences_sent_together_all_answer(server):
    """Three inferences at once wait in line (max_parallel_infers 1) and all answer; /info is answered
    meanwhile."""
    srv = server[0]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(infer, srv, image) for image in ("big", "small", "big")]
        time.sleep(1.0)
        t = time.time()
        r = requests.get(f"{srv.url}/info/", timeout=60)
        info_s = time.time() - t
        pending = sum(not f.done() for f in futures)
        answers = [f.result() for f in futures]
    assert r.status_code == 200 and info_s < QUICK_S, info_s
    assert pending >= 1
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text[:200] for a in answers]


def test_a_bad_inference_request_is_still_a_clear_4xx(server):
    srv = server[0]
    r = requests.post(f"{srv.url}/infer/liver_cascade", params={"image": "small"}, data={"params": "{not json"},
                      timeout=60)
    assert r.status_code == 400 and "params" in r.json()["detail"]
    r = requests.post(f"{srv.url}/infer/liver_cascade", params={"image": "nosuch"}, data={"params": "{}"}, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    r = requests.post(f"{srv.url}/infer/no_such_model", params={"image": "small"}, data={"params": "{}"}, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    assert requests.get(f"{srv.url}/info/", timeout=30).status_code == 200


def test_a_model_upload_waits_for_the_running_inference(server):
    """PUT /model replaces the weights: it waits for the segmentation that may be reading them (on its own
    thread) to end, and both succeed."""
    srv = server[0]
    weights = (srv.log.parent / "app" / "model" / "liver_cascade_lite.pt").read_bytes()
    with ThreadPoolExecutor(1) as pool:
        running, mark = start_inference(pool, srv)
        r = requests.put(f"{srv.url}/model/liver_cascade", files={"file": ("liver_cascade_lite.pt", io.BytesIO(weights))},
                         timeout=600)
        assert running.result().status_code == 200
    assert r.status_code == 200, r.text
    log = srv.log.read_text()[mark:]
    # the segmentation ended (MONAI Label logs its latencies then) before the file was replaced
    assert 0 <= log.index("++ Latencies") < log.index("Updating Model File"), log[-3000:]


def test_every_segmentation_takes_an_inference_slot(tmp_path):
    """Uncertainty scoring (Next Sample) runs the infer task outside /infer (its own lane): it
    waits for a free slot like a request does."""
    import phantom
    from lib.evaluation.predict import make_task
    from lib.infers.liver import no_inference
    from support import APP

    p = phantom.generate_phantom(3, shape_xy=(64, 64), spacing=(5.0, 5.0, 8.0), n_slices=6)
    image = str(tmp_path / "img.nii.gz")
    p.save_nifti(image, None)
    task = make_task("liver_cascade", str(APP / "model"))
    with ThreadPoolExecutor(1) as pool:
        with no_inference(task.conf.max_parallel_infers):
            job = pool.submit(task, {"image": image, "device": "cpu", "result_extension": ".nii.gz"})
            time.sleep(2.0)
            assert not job.done()
        path, result = job.result(timeout=120)
    assert nib.load(path).shape == p.image.shape
    os.remove(path)


def test_next_sample_that_scores_images_is_served_off_the_loop(server):
    """The uncertainty strategy scores the unlabeled images it has no score for (an inference each, which
    waits for a free slot): on the server's loop, that held every other request until it ended."""
    srv = server[0]
    with ThreadPoolExecutor(2) as pool:
        running, _ = start_inference(pool, srv)
        sample = pool.submit(requests.post, f"{srv.url}/activelearning/uncertainty", json={}, timeout=600)
        time.sleep(1.0)
        t = time.time()
        r = requests.get(f"{srv.url}/info/", timeout=60)
        info_s = time.time() - t
        pending = (not running.done(), not sample.done())
        assert running.result().status_code == 200
        nxt = sample.result()
    assert r.status_code == 200 and info_s < QUICK_S, info_s
    assert pending == (True, True), pending
    assert nxt.status_code == 200 and nxt.json()["id"] == "big", nxt.text[:300]  # the one unlabeled image


def test_which_requests_run_off_the_servers_loop():
    from lib.server_guard import OffLoop

    layer = OffLoop(None, parallel=2)
    lanes = {(method, path): layer.lane({"type": "http", "method": method, "path": path}) for method, path in (
        ("POST", "/infer/liver_cascade"), ("POST", "/activelearning/uncertainty"), ("GET", "/proxy/dicom/wado/studies/1"),
        ("POST", "/proxy/dicom/stow/studies"), ("GET", "/info/"), ("GET", "/datastore/"), ("GET", "/datastore/image"),
        ("PUT", "/datastore/label"), ("GET", "/datastore/dataset"), ("PUT", "/session/"), ("GET", "/session/abc"),
        # quick, or state that MONAI Label changes one request at a time: on the server's loop
        ("POST", "/infer/wsi/x"), ("POST", "/train/"), ("DELETE", "/datastore/label"), ("GET", "/datastore/label/info"),
        ("PUT", "/model/liver_cascade"), ("GET", "/docs"))}
    assert lanes == {
        ("POST", "/infer/liver_cascade"): "infer", ("POST", "/activelearning/uncertainty"): "sample",
        ("GET", "/proxy/dicom/wado/studies/1"): "transfer", ("POST", "/proxy/dicom/stow/studies"): "transfer",
        ("GET", "/info/"): "transfer", ("GET", "/datastore/"): "transfer", ("GET", "/datastore/image"): "transfer",
        ("PUT", "/datastore/label"): "transfer", ("GET", "/datastore/dataset"): "transfer",
        ("PUT", "/session/"): "transfer", ("GET", "/session/abc"): "transfer",
        ("POST", "/infer/wsi/x"): None, ("POST", "/train/"): None, ("DELETE", "/datastore/label"): None,
        ("GET", "/datastore/label/info"): None, ("PUT", "/model/liver_cascade"): None, ("GET", "/docs"): None}
    assert layer.threads == {"infer": 2, "sample": 1, "transfer": OffLoop.TRANSFER_THREADS}
    assert layer.lane({"type": "websocket", "path": "/infer/liver_cascade"}) is None
