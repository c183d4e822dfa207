"""The datastore index is shared with the processes MONAI Label starts for scoring and training: what
one process writes, the other reads, and neither overwrites the other's (two datastores on one folder
stand for the server and a scoring process)."""

import json

import pytest
from support import file_datastore, small_phantom_studies


@pytest.fixture()
def studies(tmp_path):
    return small_phantom_studies(tmp_path, seed=30)


def _datastore(path):
    return file_datastore(path)


def test_scores_written_by_another_process_are_seen_and_kept(studies):
    server, scoring = _datastore(studies), _datastore(studies)
    scoring.update_image_info("case0", {"correction_dice": {"liver": 0.96, "lesion": 0.5}})
    # the server reads what the scoring process wrote ...
    assert server.get_image_info("case0")["correction_dice"]["liver"] == 0.96
    assert [d for d in server.datalist() if "case0" in d["image"]] == []  # no final label yet
    # ... and its own next writes keep it
    server.update_image_info("case1", {"liver_uncertainty": {"score": 0.2}})
    server.save_label("case0", str(studies / "label0.nii.gz"), "final", {})
    index = json.loads((studies / "datastore_v2.json").read_text())["objects"]
    assert index["case0"]["image"]["info"]["correction_dice"]["liver"] == 0.96
    assert index["case1"]["image"]["info"]["liver_uncertainty"]["score"] == 0.2
    assert "final" in index["case0"]["labels"]
    # the scoring process, in turn, keeps the server's label and score when it writes again
    scoring.update_image_info("case1", {"correction_dice": {"liver": 0.9, "lesion": 1.0}})
    index = json.loads((studies / "datastore_v2.json").read_text())["objects"]
    assert "final" in index["case0"]["labels"]
    assert index["case1"]["image"]["info"]["liver_uncertainty"]["score"] == 0.2
    assert index["case1"]["image"]["info"]["correction_dice"]["liver"] == 0.9
    assert scoring.get_label_by_image_id("case0", "final") == "case0"
    assert len(server.datalist()) == 1 and server.get_labeled_images() == ["case0"]
    # written readable, as the shipped files are (not mkstemp's 0600)
    for written in (studies / "datastore_v2.json", studies / "labels" / "final" / "case0.nii.gz"):
        assert written.stat().st_mode & 0o777 == 0o644, written


def test_files_stamp_follows_images_and_labels_not_the_index(studies):
    """What decides whether MONAI Label's automatic re-scoring runs again (main.py async_scoring)."""
    ds = _datastore(studies)
    stamp = ds.files_stamp()
    ds.update_image_info("case0", {"liver_uncertainty": {"score": 0.3}})  # the index (and lock file) change
    assert ds.files_stamp() == stamp
    ds.save_label("case0", str(studies / "label0.nii.gz"), "final", {})
    assert ds.files_stamp() != stamp


def test_a_write_within_the_same_clock_tick_is_still_seen(studies):
    import os

    server, scoring = _datastore(studies), _datastore(studies)
    index = studies / "datastore_v2.json"
    before = os.stat(index)
    scoring.update_image_info("case0", {"correction_dice": {"liver": 0.5, "lesion": 1.0}})
    os.utime(index, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same time as the server's copy
    assert server.get_image_info("case0")["correction_dice"]["liver"] == 0.5


def test_refresh_reads_reconciles_and_writes_under_one_lock(studies, monkeypatch):
    """MONAI Label's refresh (after a label delete) read the index, then wrote it, under two locks: a
    score another process wrote in between was lost."""
    import threading

    from filelock import FileLock, Timeout
    from monailabel.datastore.local import LocalDatastore

    server = _datastore(studies)
    server.save_label("case0", str(studies / "label0.nii.gz"), "final", {})
    held = []
    reconcile = LocalDatastore._add_non_existing_images

    def check_lock(self):  # runs between refresh's read and write: may another process write now?
        def other_process():
            try:
                FileLock(str(studies / ".lock"), timeout=0).acquire()
                held.append(False)
            except Timeout:
                held.append(True)

        t = threading.Thread(target=other_process)
        t.start()
        t.join()
        return reconcile(self)

    monkeypatch.setattr(LocalDatastore, "_add_non_existing_images", check_lock)
    server.remove_label("case0", "final")
    assert held and all(held)
    assert server.get_labeled_images() == []


def test_a_deleted_label_leaves_the_listing_at_once_and_saves_say_what_changed(studies):
    """With the file watcher on (the server's default) MONAI Label waited for the file event to drop a
    deleted label from the index: it stayed listed for seconds. The app's on_save_label needs the tag and
    whether the file changed (a second Submit of the same label is not a new final label)."""
    from lib.datastore import SafeLocalDatastore

    ds = SafeLocalDatastore(str(studies), max_voxels=10**8, extensions=("*.nii.gz",), auto_reload=True)
    try:
        ds.save_label("case0", str(studies / "label0.nii.gz"), "final", {})
        assert ds.last_saved == ("case0", "final", True)
        ds.save_label("case0", str(studies / "label0.nii.gz"), "final", {})
        assert ds.last_saved == ("case0", "final", False)  # byte for byte the same
        ds.save_label("case0", str(studies / "label0.nii.gz"), "review", {})
        assert ds.last_saved.tag == "review" and ds.last_saved.changed
        ds.remove_label("case0", "review")
        assert "review" not in ds.get_labels_by_image_id("case0")
        assert "final" in ds.get_labels_by_image_id("case0")
    finally:
        ds._observer.stop()


def test_opening_the_datastore_removes_only_the_temporaries_of_writers_that_are_gone(studies):
    """The scoring and training processes open the datastore while the server writes: opening it removed
    the server's label write in flight (a 500, the label lost). Only a dead writer's temporary goes."""
    import os
    import subprocess
    import sys
    import time

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = studies / "labels" / "final"
    folder.mkdir(parents=True, exist_ok=True)
    live = folder / f".img.nii.gz.{os.getpid()}.abc123.partial"  # this process is writing it
    crashed = folder / f".img.nii.gz.{dead.pid}.def456.partial"
    old_unnamed, new_unnamed = folder / ".a.nii.gz.xyz.partial", folder / ".b.nii.gz.uvw.partial"  # no pid
    for p in (live, crashed, old_unnamed, new_unnamed):
        p.write_bytes(b"half a label")
    os.utime(old_unnamed, (time.time() - 3600, time.time() - 3600))
    _datastore(studies)
    assert live.exists() and new_unnamed.exists()
    assert not crashed.exists() and not old_unnamed.exists()


def test_an_image_deleted_with_its_labels_can_be_added_again_at_once(studies):
    """With the file watcher on, deleting an image removed its labels first, and the refresh that follows a
    label's removal found the image file still there and wrote it to the index: once the server read
    the index again (e.g. after a scoring process wrote it), adding it back got 409, until the watcher
    caught up."""
    from lib.datastore import SafeLocalDatastore

    ds = SafeLocalDatastore(str(studies), max_voxels=10**8, extensions=("*.nii.gz",), auto_reload=True)
    try:
        ds.save_label("case0", str(studies / "label0.nii.gz"), "final", {})
        ds.remove_image("case0")
        assert "case0" not in ds.list_images()
        # the index on disk, which other processes (and this one, once they write) read, agrees
        assert "case0" not in json.loads((studies / "datastore_v2.json").read_text())["objects"]
        assert "case0" not in _datastore(studies).list_images()
        assert ds.add_image("case0", str(studies / "case1.nii.gz"), {}) == "case0"
    finally:
        if getattr(ds, "_observer", None):
            ds._observer.stop()


def test_a_label_saved_while_its_image_is_removed_is_refused_and_leaves_no_file(studies, monkeypatch):
    """An inference on an image that an annotator deletes meanwhile saves its label at the end. MONAI
    Label's removal drops the labels' files, then the image's, then the index entry, without one lock:
    a label saved in between was written, its file stayed behind when the image went, and a new image
    added later under the same id came with that stale label."""
    import threading

    import monailabel.datastore.local as local
    from fastapi import HTTPException

    ds = _datastore(studies)
    ds.save_label("case0", str(studies / "label0.nii.gz"), "final", {})
    saved = []

    def save_from_the_inference():
        try:
            ds.save_label("case0", str(studies / "label0.nii.gz"), "original", {})
            saved.append("saved")
        except HTTPException as e:
            saved.append(e.status_code)

    inference = threading.Thread(target=save_from_the_inference)
    remove_file = local.remove_file

    def remove_then_let_the_inference_save(path):
        if path and path.endswith("case0.nii.gz") and "labels" not in path:  # the image: its labels are gone
            inference.start()
            inference.join(timeout=1.0)  # it saves now, or waits for the removal to end
        return remove_file(path)

    monkeypatch.setattr(local, "remove_file", remove_then_let_the_inference_save)
    ds.remove_image("case0")
    inference.join(timeout=10)
    assert saved == [404]
    assert not list((studies / "labels").rglob("case0*")), "a label file outlived its image"
    ds.add_image("case0", str(studies / "case1.nii.gz"), {})  # a new image under the old id
    assert ds.get_labels_by_image_id("case0") == {}
