"""MONAI Label's LocalDatastore, hardened: safe ids, labels that fit their image, atomic writes.

- Image ids and label tags are plain names: no path separators, no ``..``, no
  leading dot. Anything else is refused with HTTP 400 before a path is built.
- Files that are symlinks to somewhere outside the datastore are not listed
  (``--conf external_symlinks true`` lists them).
- A label is checked against its image (readable, same voxel grid) before it
  replaces anything; then it is written to a hidden temporary file and renamed
  into place, so a crash leaves either the old label or the new one, whole.
- ``datastore_v2.json`` is written the same way; a corrupt one (from an older
  crash) is set aside and rebuilt from the files, which hold the labels.
- The index is shared with the scoring and training processes MONAI Label
  starts: each read takes in what another process wrote since, and each
  update is a read-modify-write under the file lock, so neither side's
  scores or labels overwrite the other's.
"""

import contextlib
import filecmp
import fnmatch
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Dict, NamedTuple, Optional

import psutil
from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

from lib.validation import InputError, check_label_matches, check_volume_file

logger = logging.getLogger(__name__)

FILE_MODE = 0o644  # what the server writes is readable as the shipped files are (a CLI evaluation, a backup)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\- ]{0,199}\Z")  # \Z: "$" lets a trailing newline through


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not SAFE_NAME.match(value) or ".." in value:
        raise HTTPException(status_code=400, detail=f"invalid {what} {value!r}: use letters, digits, spaces and . _ - + only")
    return value


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


PARTIAL = ".partial"
PARTIAL_STALE_S = 600  # a temporary file without its writer's pid (older versions) is stale after this


def _written_now(path: str) -> bool:
    """Is the temporary file ``path`` (``.<name>.<pid>.<random>.partial``) still being written: its writer
    alive (or, without a pid in the name, the file recent)?"""
    parts = os.path.basename(path)[: -len(PARTIAL)].split(".")
    if len(parts) >= 3 and parts[-2].isdigit():
        return psutil.pid_exists(int(parts[-2]))
    try:
        return time.time() - os.path.getmtime(path) < PARTIAL_STALE_S
    except OSError:
        return False


def atomic_write(dest: str, write) -> None:
    """``write(f)`` into a hidden temporary file beside ``dest``, then rename: readers never see a partial file."""
    # the writer's pid in the name: a datastore opened meanwhile (another process's) leaves a live writer's file
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.{os.getpid()}.", suffix=PARTIAL,
                               dir=os.path.dirname(dest))
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 would hide labels and the index from other readers
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_copy(src: str, dest: str):
    def copy(out):
        with open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    atomic_write(dest, copy)


def _stamped(info: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The record MONAI Label keeps per file (creation time, file name)."""
    return {**(info or {}), "ts": int(time.time()), "name": name}


def _reading_the_current_index(cls):
    """Each listed read first takes in what other processes wrote to the index (a stat when nothing did)."""
    for name in ("datalist", "get_image_info", "get_label_info", "get_labels_by_image_id", "get_label_by_image_id",
                 "get_labeled_images", "get_unlabeled_images", "list_images", "status", "json"):
        read = getattr(cls, name)

        @functools.wraps(read)
        def fresh(self, *args, _read=read, **kwargs):
            self._load_changed_index()
            return _read(self, *args, **kwargs)

        setattr(cls, name, fresh)
    return cls


class SavedLabel(NamedTuple):
    image_id: str
    tag: str
    changed: bool  # False when the file is byte for byte the label that was there


def require_label(datastore, label_id: str, label_tag: str) -> None:
    """404 when ``datastore`` has no ``label_tag`` label for ``label_id`` (MONAI Label answered its info
    with 200 {}, while a PUT of that info answered 404)."""
    if not datastore.get_label_uri(label_id, label_tag):
        raise HTTPException(status_code=404, detail=f"no {label_tag!r} label for {label_id!r}")


class SharedIndex:
    """The index (``datastore_v2.json``) of a MONAI Label datastore, shared by the server's worker threads and
    by the scoring and training processes MONAI Label starts; put before MONAI Label's datastore class in
    the bases, and call ``_share_index()`` before its ``__init__``. Each change is a read-modify-write
    under the index's file lock (which serialises this process's threads as well as the processes), and the
    index is written to a temporary file and renamed. The local datastore and the DICOMweb cache both use it."""

    def _share_index(self) -> None:
        self._lock_holder = threading.local()  # does this thread hold the index's file lock (_locked)
        self._known_index = None  # (inode, mtime, size) of the index as this process last read or wrote it

    def _update_datastore_file(self, lock=True):
        """MONAI Label writes the index in place; write it to a temporary file and rename instead, under
        the file lock (taken here unless this thread holds it: MONAI Label's steps nest; its ``lock``
        argument is kept for its callers and no longer needed)."""
        with self._locked():
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            self._ignore_event_config = True
            atomic_write(self._datastore_config_path, lambda f: f.write(text.encode()))
            self._known_index = self._index_stamp()

    @contextlib.contextmanager
    def _locked(self):
        """The index's file lock, taken once per thread: a nested step (MONAI Label's refresh reads,
        reconciles and writes) runs under the lock its caller holds instead of waiting for itself."""
        if getattr(self._lock_holder, "held", False):
            yield
            return
        with FileLock(self._lock_file):
            self._lock_holder.held = True
            try:
                yield
            finally:
                self._lock_holder.held = False

    def _index_stamp(self):
        """Inode, modification time and size of the index: each atomic write makes a new file, so two
        writes within one clock tick still differ."""
        try:
            st = os.stat(self._datastore_config_path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _load_changed_index(self) -> None:
        """Read the index again if another process wrote it since this one last read or wrote it.

        MONAI Label runs scoring (and training) in subprocesses that write their results to the index.
        The server noticed such writes only through file-watch events, and a rename (how the index is
        written, atomically) raises none it listens to: the scores never showed, and the server's next
        write of its own copy erased them."""
        if self._index_stamp() == self._known_index:
            return
        with self._locked():
            stamp = self._index_stamp()
            if stamp is None or stamp == self._known_index:
                return
            with open(self._datastore_config_path) as f:
                self._datastore = LocalDatastoreModel.model_validate_json(f.read())
            self._datastore.base_path = self._datastore_path
            self._known_index = stamp

    def _init_from_datastore_file(self, throw_exception=False):
        """MONAI Label's (re)load of the index, through the one above (it runs inside refresh's lock)."""
        try:
            self._load_changed_index()
        except ValueError as e:
            logger.error(f"+++ Failed to load datastore => {e}")
            if throw_exception:
                raise

    def refresh(self):
        """MONAI Label's reconcile of the index with the files (after a delete, or a file event): its
        read, changes and write under one lock, so a score another process writes meanwhile is kept."""
        with self._locked():
            super().refresh()

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        check_name(image_id, "image id")
        with self._locked():  # read-modify-write: another process may have written since
            self._load_changed_index()
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            obj.image.info.update(info)
            self._update_datastore_file()

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        check_name(label_id, "label id")
        check_name(label_tag, "label tag")
        with self._locked():
            self._load_changed_index()
            label = self._datastore.label(label_id, label_tag)
            if not label:
                raise LabelNotFoundException(f"Label: {label_id} Tag: {label_tag} not found")
            label.info.update(info)
            self._update_datastore_file()

    def _write_label(self, image_id: str, label_filename: str, label_tag: str, label_ext: str,
                     label_info: Dict[str, Any]) -> bool:
        """Copy ``label_filename`` in as ``image_id``'s ``label_tag`` label (written aside, then renamed: a
        reader gets the old file or the new one, whole) and record it, under the lock; 404 if the image
        is not (or no longer) in the index. Returns whether the file changed."""
        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, label_ext)
        with self._locked():
            self._load_changed_index()
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise HTTPException(status_code=404, detail=f"image {image_id!r} was removed; label not saved")
            os.makedirs(label_path, exist_ok=True)
            old = obj.labels.get(label_tag)
            target = os.path.join(label_path, name)
            same = old is not None and os.path.isfile(target) and filecmp.cmp(label_filename, target, shallow=False)
            atomic_copy(label_filename, target)
            if old and old.ext != label_ext:  # the same label in another format: drop the stale file
                stale = os.path.join(label_path, self._filename(image_id, old.ext))
                if os.path.exists(stale):
                    os.remove(stale)
            obj.labels[label_tag] = DataModel(info=_stamped(label_info, name), ext=label_ext)
            self._update_datastore_file()
        return not same


@_reading_the_current_index
class SafeLocalDatastore(SharedIndex, LocalDatastore):
    def __init__(self, datastore_path: str, max_voxels: int, external_symlinks: bool = False, **kwargs):
        self._max_voxels = max_voxels
        self._external_symlinks = external_symlinks
        self._share_index()
        self._saved = threading.local()  # last_saved, per thread: inferences save their labels on their own thread
        self._set_aside_corrupt_config(datastore_path, kwargs.get("datastore_config", "datastore_v2.json"))
        self._remove_partial_files(datastore_path)
        super().__init__(datastore_path, **kwargs)

    @property
    def last_saved(self) -> Optional[SavedLabel]:
        """This thread's last save_label: the image, the tag and whether the file changed."""
        return getattr(self._saved, "label", None)

    @last_saved.setter
    def last_saved(self, value: Optional[SavedLabel]):
        self._saved.label = value

    @staticmethod
    def _remove_partial_files(datastore_path: str):
        """Temporary files of writes that a crash interrupted (never listed; the old file is intact). Not
        those of a writer still running: the scoring and training processes open the datastore while the
        server writes (they removed a label the server was saving, which then failed)."""
        for folder, _, files in os.walk(datastore_path):
            for f in files:
                path = os.path.join(folder, f)
                if f.startswith(".") and f.endswith(PARTIAL) and not _written_now(path):
                    try:
                        os.remove(path)
                    except FileNotFoundError:  # its writer finished, or another process removed it
                        continue
                    logger.warning(f"removed {path}: an interrupted write")

    @staticmethod
    def _set_aside_corrupt_config(datastore_path: str, name: str):
        path = os.path.join(datastore_path, name)
        if not os.path.exists(path):
            return
        try:
            with open(path) as f:
                json.load(f)
        except ValueError:
            aside = f"{path}.corrupt-{int(time.time())}"
            os.replace(path, aside)
            logger.warning(f"{path} was unreadable; moved to {aside}; rebuilding the index from the files")

    # -- listing ---------------------------------------------------------------------------------
    def _list_files(self, path, patterns):
        files = super()._list_files(path, patterns)
        root = self._datastore_path
        keep = {}
        for name, f in files.items():
            full = os.path.join(path, f)
            if name.startswith(".") or not SAFE_NAME.match(name):
                logger.warning(f"IGNORE:: {full}: not a safe file name")
            elif not self._external_symlinks and not _inside(full, root):
                logger.warning(f"IGNORE:: {full} links outside the datastore (--conf external_symlinks true)")
            else:
                keep[name] = f
        return keep

    def files_stamp(self) -> tuple:
        """Names and modification times of the images and of the final and original labels: what the
        scoring methods read besides the models."""
        folders = (self._datastore.image_path(), self._datastore.label_path(DefaultLabelTag.FINAL),
                   self._datastore.label_path(DefaultLabelTag.ORIGINAL))
        return tuple(sorted((e.path, e.stat().st_mtime_ns) for folder in folders if os.path.isdir(folder)
                            for e in os.scandir(folder)  # not the index or the lock file beside the images
                            if e.is_file() and any(fnmatch.fnmatch(e.name, x) for x in self._extensions)))

    # -- reading ---------------------------------------------------------------------------------
    def _confined(self, uri: str, what: str) -> str:
        if uri and not self._external_symlinks and not _inside(uri, self._datastore_path):
            raise HTTPException(status_code=403, detail=f"{what} links outside the datastore")
        return uri

    def get_image_uri(self, image_id: str) -> str:
        check_name(image_id, "image id")
        return self._confined(super().get_image_uri(image_id), f"image {image_id!r}")

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        check_name(label_id, "label id")
        check_name(label_tag, "label tag")
        return self._confined(super().get_label_uri(label_id, label_tag), f"label {label_id!r}")

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        if not self.get_image_uri(image_id):
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
        return super().get_image_info(image_id)

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        require_label(self, label_id, label_tag)
        return super().get_label_info(label_id, label_tag)

    # -- writing ---------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        """MONAI Label's add_image, refusing unsafe ids, unreadable volumes and overwrites."""
        file_id, image_ext = self._to_id(os.path.basename(image_filename))
        image_id = check_name(image_id or file_id, "image id")
        image_ext = self._known_extension(image_ext, "image not added")
        name = self._filename(image_id, image_ext)
        if self._to_id(name)[0] != image_id:  # "scan.nii.gz": its file's name gives another id when the index is rebuilt
            raise HTTPException(status_code=400, detail=f"image id {image_id!r} ends like a file name; send it without "
                                                         f"the extension (e.g. {self._to_id(image_id)[0]!r})")
        try:
            check_volume_file(image_filename, self._max_voxels)
        except InputError as e:
            raise HTTPException(status_code=e.status, detail=f"image not added: {e}") from e
        with self._locked():
            self._load_changed_index()
            taken = [self._filename(image_id, e.replace("*", "")) for e in self._extensions]  # one file per id
            if image_id in self._datastore.objects or any(
                    os.path.lexists(os.path.join(self._datastore.image_path(), t)) for t in taken):
                raise HTTPException(status_code=409, detail=f"image {image_id!r} already exists; nothing was changed")
            atomic_copy(image_filename, os.path.join(self._datastore.image_path(), name))
            model = DataModel(info=_stamped(image_info, name), ext=image_ext)
            self._datastore.objects[image_id] = ImageLabelModel(image=model)
            self._update_datastore_file()
        return image_id

    def _known_extension(self, ext: str, refused: str) -> str:
        """``ext`` in lower case, if the datastore lists files with it (``.NII.GZ`` -> ``.nii.gz``); 400
        otherwise: a file stored under another extension was served until the index was rebuilt from
        the folders, and then no longer counted."""
        lower = (ext or "").lower()
        if lower and any(fnmatch.fnmatch("x" + lower, p) for p in self._extensions):
            return lower
        raise HTTPException(status_code=400,
                            detail=f"{refused}: {ext or 'no extension'!r} is not one of {self._extensions}")

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        check_name(image_id, "image id")
        check_name(label_tag, "label tag")
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore; label not saved")
        _, label_ext = self._to_id(os.path.basename(label_filename))
        label_ext = self._known_extension(label_ext, "label not saved")
        image_path = self.get_image_uri(image_id)
        try:
            check_label_matches(label_filename, image_path, not_empty=label_tag == DefaultLabelTag.FINAL)
        except InputError as e:
            raise HTTPException(status_code=e.status, detail=f"label not saved: {e}") from e

        self.last_saved = None
        changed = self._write_label(image_id, label_filename, label_tag, label_ext, label_info)
        # what the app's on_save_label, called next in the same request (on the same thread), needs and
        # MONAI Label does not pass: the tag, and whether the file changed
        self.last_saved = SavedLabel(image_id, label_tag, changed=changed)
        return image_id

    def remove_image(self, image_id: str) -> None:
        """MONAI Label's removal (the labels' files, the image's, then the index), under one lock: a label
        saved meanwhile (an inference on this image finishing) landed between the label removals and the
        image's, and its file stayed behind, to be served as the label of a new image of the same id."""
        check_name(image_id, "image id")
        with self._locked():
            self._load_changed_index()
            if image_id not in self._datastore.objects:
                raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
            super().remove_image(image_id)
            if self._auto_reload:
                # MONAI Label then waits for the file event; and removing its labels first (remove_label's
                # refresh) put the image, still on disk then, back in the index: adding it again got 409
                self.refresh()

    def remove_label(self, label_id: str, label_tag: str) -> None:
        with self._locked():  # the check, the file and the index at once (as remove_image)
            self._load_changed_index()
            if not self.get_label_uri(label_id, label_tag):
                raise HTTPException(status_code=404, detail=f"no {label_tag!r} label for {label_id!r}")
            super().remove_label(label_id, label_tag)
            if self._auto_reload:  # MONAI Label then waits for the file event: the label stayed listed for seconds
                self.refresh()

