"""A training request on a datastore with no final label is refused when it arrives (it was accepted,
then failed in the training process), and the server keeps serving."""

import requests


def test_training_needs_a_final_label(tmp_path, server_factory):
    import phantom

    studies = tmp_path / "studies"
    studies.mkdir()
    phantom.generate_phantom(40, shape_xy=(64, 64), spacing=(5.4, 5.4, 6.0), n_slices=6).save_nifti(
        str(studies / "case0.nii.gz"), None)
    srv = server_factory(studies, {"models": "liver_resnet"})
    for url in (f"{srv.url}/train/liver_resnet", f"{srv.url}/train/"):
        r = requests.post(url, json={"max_epochs": 1}, timeout=60)
        assert r.status_code == 400, r.text
        assert "final label" in r.json()["detail"]
    assert requests.get(f"{srv.url}/train/", params={"check_if_running": "true"}, timeout=30).status_code == 404
    assert requests.get(f"{srv.url}/info/", timeout=30).status_code == 200
