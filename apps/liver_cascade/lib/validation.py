"""Checks on an input volume before it is loaded: readable, 3D, sane spacing, not too big.

The header tells most of it, so a 40 GB volume or a 2D picture is refused without
reading its voxels. `check_volume_file` raises :class:`InputError` with the HTTP
status the server should answer with (400, or 413 for size).
"""

import gzip
import os
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.openers import ImageOpener

from lib.evaluation.lesion_report import voxel_spacing
from lib.settings import LABELS

CHUNK = 1 << 22


class InputError(ValueError):
    """The caller's file cannot be segmented; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Geometry:
    shape: Tuple[int, ...]  # as stored, spatial axes first
    affine: np.ndarray  # voxel -> RAS mm, 4x4
    raw_spacing: Tuple[float, ...]  # as written in the header (may be 0 or negative)
    data_bytes: Optional[int]  # uncompressed voxel bytes the header promises
    data_offset: int  # where the voxels start in the (uncompressed) stream
    components: int = 1  # values per voxel (a multi-layer Slicer .seg.nrrd has one per layer)
    dtype: Optional[np.dtype] = None  # the voxels' type as stored, byte order included (NIfTI)


def _reason(e: Exception, path: str) -> str:
    """A reader's error for the caller: its first line, without the server's path of the file (an upload's
    temporary file, or the datastore's layout)."""
    text = str(e).replace(f"File {path}", "the file").replace(str(path), "the file")
    return (text.splitlines() or ["no detail"])[0][:200]


def _is_gz(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _nifti_geometry(path: str) -> Geometry:
    try:
        img = nib.load(path)
    except Exception as e:
        raise InputError(f"not a readable NIfTI file ({type(e).__name__}: {_reason(e, path)})") from e
    hdr = img.header
    shape = tuple(int(s) for s in img.shape)
    with ImageOpener(path) as f:  # the header as written: nibabel's loader "fixes" 0 or negative pixdim
        raw = type(hdr).from_fileobj(f, check=False)
    pixdim = tuple(float(v) for v in raw["pixdim"][1 : 1 + max(len(shape), 1)])
    nbytes = int(np.prod(shape)) * np.dtype(hdr.get_data_dtype()).itemsize if shape else 0
    # the offset as written (the loaded image's header copy reports 0)
    return Geometry(shape, img.affine, pixdim, nbytes, int(raw.get_data_offset()), dtype=raw.get_data_dtype())


def _itk_geometry(path: str) -> Geometry:
    try:
        r = sitk.ImageFileReader()
        r.SetFileName(path)
        r.ReadImageInformation()
    except Exception as e:
        raise InputError(f"not a readable image file ({type(e).__name__}: {_reason(e, path)})") from e
    shape = tuple(int(s) for s in r.GetSize())
    spacing = tuple(float(s) for s in r.GetSpacing())
    d = np.asarray(r.GetDirection(), float).reshape(r.GetDimension(), r.GetDimension())
    m = np.eye(4)
    k = min(3, r.GetDimension())
    m[:k, :k] = (d * np.asarray(spacing))[:k, :k]
    m[:k, 3] = np.asarray(r.GetOrigin())[:k]
    m = np.diag([-1, -1, 1, 1]) @ m  # ITK is LPS
    return Geometry(shape, m, spacing, None, 0, int(r.GetNumberOfComponents()))


def read_geometry(path: str) -> Geometry:
    """Shape and voxel-to-RAS affine from the header only."""
    if not os.path.isfile(path):
        raise InputError("the image file is missing", status=404)
    if os.path.getsize(path) == 0:
        raise InputError("the file is empty")
    name = path.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_geometry(path)
    return _itk_geometry(path)  # NRRD (Slicer), MetaImage, ...


def _check_complete(path: str, g: Geometry, what: str = "image"):
    """The file holds all the voxels its header promises (a truncated upload is caught here), and a
    floating-point volume's voxels are all finite: an image of NaNs was added to the datastore and
    refused only when segmented."""
    if g.data_bytes is None:
        return
    need = g.data_offset + g.data_bytes
    floats = g.dtype is not None and g.dtype.kind == "f"
    gz = _is_gz(path)
    if not gz and not floats:
        n = os.path.getsize(path)
    else:
        n, bad, pending = 0, 0, b""
        try:
            with gzip.open(path, "rb") if gz else open(path, "rb") as f:
                while n < need:
                    b = f.read(CHUNK)
                    if not b:
                        break
                    if floats:  # the voxel bytes of this chunk, whole values only (the rest waits)
                        pending += b[max(0, g.data_offset - n):max(0, need - n)]
                        whole = len(pending) - len(pending) % g.dtype.itemsize
                        bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(pending[:whole], g.dtype))))
                        pending = pending[whole:]
                    n += len(b)
        except (EOFError, OSError, zlib.error) as e:
            raise InputError(f"the compressed file is truncated or corrupt ({_reason(e, path)})") from e
        if n >= need and bad:
            raise InputError(f"the {what} has {bad} NaN or infinite voxel(s); fix or resample it first")
    if n < need:
        raise InputError(f"the file is truncated: {n} bytes of image data where the header promises {need}")


def check_volume_file(path: str, max_voxels: int, min_in_plane: int = 16, verify_data: bool = True) -> Geometry:
    """Refuse what the network cannot segment, from the header, before any voxel is loaded.

    ``verify_data`` also checks that all the voxels are there (a full pass over a
    compressed file, about 1 s per 100 MB); files already in the datastore skip it."""
    g = read_geometry(path)
    shape = g.shape
    if len(shape) < 3:
        raise InputError(f"a 3D CT volume is needed, got a {len(shape)}D image of shape {list(shape)}")
    if any(s == 0 for s in shape):
        raise InputError(f"the volume is empty (shape {list(shape)})")
    extra = [s for s in shape[3:] if s != 1]
    if extra:
        raise InputError(f"a single 3D CT volume is needed, got a {len(shape)}D image of shape {list(shape)} "
                         "(one time point or channel at a time)")
    if g.dtype is not None and g.dtype.kind not in "iuf":  # complex, RGB or boolean voxels
        raise InputError(f"a CT needs real-valued voxels (integers or floats in HU), got voxels of type {g.dtype}")
    axial = int(np.argmax(np.abs(np.asarray(g.affine, float)[2, :3])))  # the stored axis closest to S-I
    if shape[axial] < 2:
        raise InputError(f"a 3D CT volume is needed, got a single axial slice (shape {list(shape)})")
    in_plane = [shape[i] for i in range(3) if i != axial]
    if min(in_plane) < min_in_plane:
        raise InputError(f"axial slices of {in_plane[0]}x{in_plane[1]} voxels are too small to segment "
                         f"(at least {min_in_plane}x{min_in_plane})")
    n = int(np.prod(shape[:3], dtype=np.int64))
    if n > max_voxels:
        raise InputError(f"the volume has {n} voxels ({'x'.join(map(str, shape[:3]))}); this server accepts at most "
                         f"{max_voxels} (--conf max_voxels)", status=413)
    raw = np.asarray(g.raw_spacing[:3], float)
    cols = np.linalg.norm(np.asarray(g.affine, float)[:3, :3], axis=0)
    if not np.all(np.isfinite(raw)) or np.any(raw <= 0) or not np.all(np.isfinite(cols)) or np.any(cols < 1e-6):
        raise InputError(f"the voxel spacing {raw.tolist()} is invalid (must be finite and > 0 mm)")
    if verify_data:
        _check_complete(path, g)
    return g


def in_axis_order_of(affine, shape, target_affine):
    """(nibabel orientation transform, affine, shape) that put an array of ``shape`` with ``affine`` in
    the axis order and directions of ``target_affine`` (apply it with nib.orientations.apply_orientation)."""
    affine, target_affine = np.asarray(affine, float), np.asarray(target_affine, float)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.io_orientation(target_affine))
    moved = affine @ nib.orientations.inv_ornt_aff(ornt, tuple(shape))
    return ornt, moved, tuple(int(shape[int(i)]) for i in np.argsort(ornt[:, 0]))


def check_label_matches(label_path: str, image_path: str, tol: float = 1e-2, values: bool = True,
                        any_voxel_order: bool = False, not_empty: bool = False) -> Geometry:
    """A label must cover its image voxel for voxel (same shape, same place in space), and (``values``)
    hold only the app's label values (``not_empty``: and at least one that is not background). With
    ``any_voxel_order`` the same grid stored with its axes in another order or direction passes too (a
    label for a DICOM series, written by another program)."""
    lab = read_geometry(label_path)
    img = read_geometry(image_path)
    if len(lab.shape) < 3 or any(s != 1 for s in lab.shape[3:]):
        raise InputError(f"the label's shape {list(lab.shape)} does not match its image's {list(img.shape)}")
    if lab.components > 1:
        raise InputError(f"the label has {lab.components} values per voxel (a multi-layer segmentation, e.g. "
                         "Slicer's with overlapping segments): send one labelmap of 0/1/2 (Slicer: collapse the "
                         "segments into one layer, or export them as a labelmap)")
    la, ia = np.asarray(lab.affine, float), np.asarray(img.affine, float)
    if any_voxel_order:  # the label's grid in the image's axis order
        _, la, shape = in_axis_order_of(la, lab.shape[:3], ia)
    else:
        shape = tuple(lab.shape[:3])
    if shape != tuple(img.shape[:3]):
        raise InputError(f"the label's shape {list(lab.shape)} does not match its image's {list(img.shape)}")
    scale = max(1.0, float(np.abs(ia[:3, :3]).max()))
    # the origin within half a voxel (at most 1 mm): a label one voxel off passed a fixed 1 mm on sub-mm voxels
    origin_tol = min(1.0, 0.5 * float(voxel_spacing(ia).min()))
    if not np.allclose(la[:3, :3], ia[:3, :3], atol=tol * scale) or not np.allclose(la[:3, 3], ia[:3, 3], atol=origin_tol):
        raise InputError("the label's voxel grid (spacing, direction or origin) does not match its image's")
    _check_complete(label_path, lab, "label")
    if values:
        check_label_values(label_path, not_empty)
    return lab


def check_label_array(data: np.ndarray, not_empty: bool = False) -> None:
    """The value check of :func:`check_label_values` on voxels already read (the evaluator's)."""
    allowed = {0, *LABELS.values()}
    # uint8 (the usual label) by counting: np.unique sorts, seconds on a 512x512x400 label
    values = np.flatnonzero(np.bincount(data.ravel(), minlength=1)) if data.dtype == np.uint8 else np.unique(data)
    bad = [v for v in values.tolist() if not (np.isfinite(v) and v in allowed)]
    if bad:
        # in full where not whole (0.99999994 is not 1: a float label, or a scaled one)
        shown = ", ".join(f"{v:g}" if float(v).is_integer() else repr(float(v)) for v in bad[:5])
        shown += " ..." if len(bad) > 5 else ""
        hint = " (an image, not a label?)" if len(bad) > 5 else ""
        raise InputError(f"the label has values other than {sorted(allowed)} ({shown}){hint}; labels: {dict(LABELS)}")
    if not_empty and not any(values.tolist()):
        raise InputError("the label is empty (no liver or lesion voxel); a final label marks the liver "
                         "(to withdraw a final label, DELETE it)")


def check_label_values(path: str, not_empty: bool = False) -> None:
    """A label holds only the app's label values (0 background, and those of LABELS), whatever its dtype:
    a label of other values would replace a good one and train the networks on nonsense. ``not_empty``:
    and some liver or lesion (an empty final label, e.g. an accidental submit, would replace the
    annotator's work and train the networks that the scan has no liver)."""
    try:
        if path.lower().endswith((".nii", ".nii.gz")):
            data = np.asanyarray(nib.load(path).dataobj)  # scaled by the header's slope/intercept
        else:
            data = sitk.GetArrayFromImage(sitk.ReadImage(path))  # a copy: a view dies with its image
    except Exception as e:
        raise InputError(f"could not read the label's voxels ({type(e).__name__}: {_reason(e, path)})") from e
    check_label_array(data, not_empty)
