"""Who may touch what: ids cannot escape the datastore, training cannot name server files,
authentication refuses anonymous writes, and `make serve` binds to loopback."""

import base64
import io
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import nibabel as nib
import numpy as np
import pytest
import requests

from support import ROOT, Server, free_port, untrained_app

SECRET = b"secret bytes outside the datastore"


@pytest.fixture(scope="module")
def phantom_ct():
    import phantom

    return phantom.generate_phantom(seed=6, n_slices=10, shape_xy=(96, 96), spacing=(3.6, 3.6, 5.0))


@pytest.fixture(scope="module")
def layout(tmp_path_factory, phantom_ct):
    top = tmp_path_factory.mktemp("sec")
    studies = top / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    nib.save(nib.Nifti1Image(phantom_ct.image, phantom_ct.affine), str(studies / "ok.nii.gz"))
    nib.save(nib.Nifti1Image(phantom_ct.label, phantom_ct.affine), str(studies / "labels" / "final" / "ok.nii.gz"))
    outside = top / "outside"
    outside.mkdir()
    nib.save(nib.Nifti1Image(phantom_ct.image, phantom_ct.affine), str(outside / "private.nii.gz"))
    (top / "secret.nii.gz").write_bytes(SECRET)
    (studies / "escape.nii.gz").symlink_to(outside / "private.nii.gz")  # a link out of the datastore
    return top, studies


@pytest.fixture(scope="module")
def server(tmp_path_factory, layout):
    top, studies = layout
    tmp = tmp_path_factory.mktemp("srv")
    app = untrained_app(tmp / "app")
    s = Server(app, studies, {}, tmp / "server.log")
    yield s
    s.stop()


def _files(top):
    return sorted(str(p.relative_to(top)) for p in top.rglob("*") if "datastore_v2" not in p.name and p.name != ".lock")


BAD_IDS = ["../secret", "../../../../etc/passwd", "/etc/passwd", "..%2Fsecret", "%2e%2e%2fsecret",
           "%252e%252e%252fsecret", "ok/../../secret", "..\\secret", "escape", ".hidden", "ok\x00"]


def _q(value):
    """Query value sent as given: %-sequences stay encoded on the wire, so the server decodes them once."""
    return value.replace("/", "%2F").replace("\\", "%5C").replace("\x00", "%00") if "%" not in value else value


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_cannot_escape_the_datastore(server, layout, phantom_ct, bad):
    top, studies = layout
    before = _files(top)
    u, q = server.url, _q(bad)
    label = nib.Nifti1Image(phantom_ct.label, phantom_ct.affine).to_bytes()
    answers = {
        "infer": requests.post(f"{u}/infer/liver_resnet?image={q}", data={"params": "{}"}, timeout=120),
        "download image": requests.get(f"{u}/datastore/image?image={q}", timeout=30),
        "image info": requests.get(f"{u}/datastore/image/info?image={q}", timeout=30),
        "download label": requests.get(f"{u}/datastore/label?label={q}&tag=final", timeout=30),
        "save label": requests.put(f"{u}/datastore/label?image={q}&tag=final",
                                   files={"label": ("l.nii", io.BytesIO(label))}, timeout=30),
        "add image": requests.put(f"{u}/datastore/image?image={q}",
                                  files={"file": ("x.nii", io.BytesIO(nib.Nifti1Image(phantom_ct.image,
                                                                                      phantom_ct.affine).to_bytes()))},
                                  timeout=30),
        "remove label": requests.delete(f"{u}/datastore/label?id={q}&tag=final", timeout=30),
        "remove image": requests.delete(f"{u}/datastore/image?id={q}", timeout=30),
    }
    if bad != "escape":  # as a tag, a plain name is a valid tag
        answers["label by tag"] = requests.get(f"{u}/datastore/label?label=ok&tag={q}", timeout=30)
        answers["save label, bad tag"] = requests.put(f"{u}/datastore/label?image=ok&tag={q}",
                                                      files={"label": ("l.nii", io.BytesIO(label))}, timeout=30)
    for what, r in answers.items():
        assert 400 <= r.status_code < 500, f"{what} {bad!r}: {r.status_code} {r.text[:300]}"
        assert SECRET not in r.content
        assert b"private" not in r.content
    assert _files(top) == before  # nothing written, nothing removed, anywhere under the test's folder
    assert (studies / "labels" / "final" / "ok.nii.gz").exists()
    assert requests.get(f"{u}/info/", timeout=30).status_code == 200


def test_symlink_out_of_the_datastore_is_not_listed(server):
    ds = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    assert "ok" in ds["objects"] and "escape" not in ds["objects"]


@pytest.mark.parametrize("model,params,status,words", [
    ("no_such_model", {}, 404, "unknown training task"),
    ("liver_resnet", {"name": "../../escaped"}, 400, "run name"),
    ("liver_resnet", {"name": "/tmp/escaped"}, 400, "run name"),
    ("liver_resnet", {"pretrained_path": "/etc/passwd"}, 400, "pretrained_path"),
    ("liver_resnet", {"train_ds": "/etc/passwd"}, 400, "train_ds"),
    ("liver_cascade", {"stage1_file": "/tmp/x"}, 400, "stage1_file"),
])
def test_training_cannot_name_server_files(server, layout, model, params, status, words):
    top, _ = layout
    before = _files(top)
    r = requests.post(f"{server.url}/train/{model}", json=params, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"].lower()
    assert _files(top) == before
    assert requests.get(f"{server.url}/train/", params={"check_if_running": True}, timeout=30).status_code in (200, 404)


def test_make_serve_binds_to_loopback():
    out = subprocess.run(["make", "-n", "serve"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    out = out.replace("\\\n", " ")
    line = [ln for ln in out.splitlines() if "start_server" in ln][0]
    assert "--host 127.0.0.1" in line


# -- authentication ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def realm():
    """A stand-in for a Keycloak realm: publishes the public key MONAI Label verifies tokens with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"realm": "test", "public_key": base64.b64encode(der).decode()}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/realms/test", key
    httpd.shutdown()


def _token(key, roles, user="ann"):
    import jwt

    now = int(time.time())
    claims = {"preferred_username": user, "exp": now + 600, "iat": now, "realm_access": {"roles": roles}}
    return jwt.encode(claims, key, algorithm="RS256")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, layout, realm):
    _, studies = layout
    uri, _ = realm
    tmp = tmp_path_factory.mktemp("auth")
    app = untrained_app(tmp / "app")
    s = Server(app, studies, {}, tmp / "server.log", ready=(200, 401),
               extra_env={"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": uri})
    yield s
    s.stop()


def test_auth_refuses_anonymous_and_enforces_roles(auth_server, realm, layout, phantom_ct):
    from cryptography.hazmat.primitives.asymmetric import rsa

    _, key = realm
    _, studies = layout
    u = auth_server.url
    final = studies / "labels" / "final" / "ok.nii.gz"
    before = final.read_bytes()
    label = nib.Nifti1Image(phantom_ct.label, phantom_ct.affine).to_bytes()

    def calls(headers):
        return {
            "info": requests.get(f"{u}/info/", headers=headers, timeout=30),
            "infer": requests.post(f"{u}/infer/liver_resnet?image=ok", data={"params": "{}"}, headers=headers,
                                   timeout=300),
            "save label": requests.put(f"{u}/datastore/label?image=ok&tag=final", headers=headers,
                                       files={"label": ("ok.nii", io.BytesIO(label))}, timeout=60),
            "train": requests.post(f"{u}/train/liver_resnet", json={"name": "../x"}, headers=headers, timeout=60),
        }

    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for headers in ({}, {"Authorization": "Bearer not-a-token"},
                    {"Authorization": "Bearer " + _token(forged, ["monailabel-admin"])}):
        for what, r in calls(headers).items():
            assert r.status_code == 401, f"{what} with {list(headers)}: {r.status_code} {r.text[:200]}"
    assert final.read_bytes() == before

    user = calls({"Authorization": "Bearer " + _token(key, ["monailabel-user"])})
    assert user["info"].status_code == 200
    assert user["infer"].status_code == 200, user["infer"].text
    assert user["save label"].status_code == 403 and user["train"].status_code == 403
    assert final.read_bytes() == before

    annotator = calls({"Authorization": "Bearer " + _token(key, ["monailabel-user", "monailabel-annotator"])})
    assert annotator["save label"].status_code == 200, annotator["save label"].text
    assert annotator["train"].status_code == 403

    admin = calls({"Authorization": "Bearer " + _token(key, ["monailabel-user", "monailabel-annotator",
                                                              "monailabel-reviewer", "monailabel-admin"])})
    assert admin["train"].status_code == 400  # allowed in, then our check refuses the unsafe run name


def test_exposed_server_is_warned_about():
    from lib import server_guard

    assert server_guard.bind_host(["monailabel", "start_server", "--app", "a"]) == "0.0.0.0"  # monailabel's default
    assert server_guard.bind_host(["x", "--host", "127.0.0.1"]) == "127.0.0.1"
    assert server_guard.warn_if_exposed(["monailabel", "start_server", "--app", "a", "--studies", "s"])
    assert not server_guard.warn_if_exposed(["x", "--host", "127.0.0.1"])
