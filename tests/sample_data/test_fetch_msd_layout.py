"""fetch_msd's layout step on a tiny fake Task03_Liver folder (no download)."""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "sample-data"
if str(SAMPLE) not in sys.path:
    sys.path.insert(0, str(SAMPLE))

import fetch_msd  # noqa: E402


@pytest.fixture
def task(tmp_path):
    """imagesTr/labelsTr/imagesTs, a dataset.json, and a macOS '._' file as in the real tar."""
    t = tmp_path / "Task03_Liver"
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (t / d).mkdir(parents=True)
    for i in (0, 7, 12):
        nib.save(nib.Nifti1Image(np.full((4, 4, 3), i, np.int16), np.eye(4)), str(t / "imagesTr" / f"liver_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.full((4, 4, 3), 1, np.uint8), np.eye(4)), str(t / "labelsTr" / f"liver_{i}.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), np.eye(4)), str(t / "imagesTs" / "liver_132.nii.gz"))
    (t / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\0\5\26\7 macOS resource fork")
    (t / "dataset.json").write_text(json.dumps({
        "name": "Liver", "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"} for i in (0, 7, 12)],
        "test": ["./imagesTs/liver_132.nii.gz"]}))
    return t


def test_layout_symlinks(task, tmp_path):
    out = tmp_path / "store"
    assert fetch_msd.layout_datastore(task, out) == 3
    names = ["liver_000.nii.gz", "liver_007.nii.gz", "liver_012.nii.gz"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == names
    assert sorted(p.name for p in (out / "labels" / "final").glob("*.nii.gz")) == names
    img = out / "liver_007.nii.gz"
    assert img.is_symlink() and img.resolve() == (task / "imagesTr" / "liver_7.nii.gz").resolve()
    assert np.asarray(nib.load(str(img)).dataobj).max() == 7
    assert (out / "labels" / "final" / "liver_012.nii.gz").resolve() == (task / "labelsTr" / "liver_12.nii.gz").resolve()
    # idempotent
    assert fetch_msd.layout_datastore(task, out) == 3
    items = fetch_msd.datastore_items(out)
    assert [Path(i["image"]).name for i in items] == names and all(i["label"] for i in items)


def test_layout_copy_and_test_images(task, tmp_path):
    out = tmp_path / "store"
    assert fetch_msd.layout_datastore(task, out, link=False, include_test=True) == 3
    img = out / "liver_000.nii.gz"
    assert not img.is_symlink() and img.read_bytes() == (task / "imagesTr" / "liver_0.nii.gz").read_bytes()
    test_img = out / "liver_test_132.nii.gz"
    assert test_img.is_file() and not (out / "labels" / "final" / test_img.name).exists()
    labels = {Path(i["image"]).name: i["label"] for i in fetch_msd.datastore_items(out)}
    assert labels["liver_test_132.nii.gz"] == "" and labels["liver_012.nii.gz"]


def test_label_values_must_match_settings(task, tmp_path):
    meta = json.loads((task / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "cancer", "2": "liver"}
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        fetch_msd.layout_datastore(task, tmp_path / "store")


def test_cli_with_a_local_task_folder(task, tmp_path, capsys):
    out = tmp_path / "store"
    assert fetch_msd.main(["--task-dir", str(task), "--out", str(out), "--copy"]) == 0
    assert "3 labelled" in capsys.readouterr().out
    # download() does nothing when the task folder is already there
    assert fetch_msd.download(task.parent) == task


def test_printed_and_documented_serve_command_lists_the_symlinks(task, tmp_path, capsys):
    """The symlinks point outside the datastore, which the app ignores unless `--conf external_symlinks true`
    (apps/liver_cascade/lib/datastore.py): the printed "serve with" command served an empty datastore."""
    from lib.conf import AppConf

    out = tmp_path / "store"
    assert fetch_msd.main(["--task-dir", str(task), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "liver_000.nii.gz").is_symlink()
    command = printed.split("serve with: ", 1)[1].split()
    assert command[:2] == ["monailabel", "start_server"] and command[command.index("--studies") + 1] == str(out)
    i = command.index("--conf")
    conf = dict(zip(command[i + 1::3], command[i + 2::3]))
    assert AppConf.from_conf(conf, str(tmp_path)).external_symlinks
    # a copied layout has no external symlinks and needs no --conf
    assert fetch_msd.main(["--task-dir", str(task), "--out", str(tmp_path / "copied"), "--copy"]) == 0
    assert "--conf" not in capsys.readouterr().out
    # the README's command for a symlinked layout (the first one, without --copy) says the same
    readme = (SAMPLE / "README.md").read_text().split("## Real data", 1)[1]
    serve = [ln for ln in readme.splitlines() if ln.startswith("monailabel start_server")]
    assert serve and "--conf external_symlinks true" in serve[0]
