"""MONAI dictionary transforms of the liver_cascade pipeline.

Pre-processing is MONAI's own (LoadImaged, EnsureChannelFirstd, Orientationd to
RAS so that the last axis is axial whatever the file's orientation, and the HU
window as ScaleIntensityRanged). What MONAI does not have lives here:
per-axial-slice hole filling, probabilities to LiTS labels, the optional dense
CRF, and the exact inverse of the orientation change.
"""

import itertools
import logging
from typing import Hashable, Mapping, Optional

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRanged
from scipy import ndimage

from lib.evaluation.lesion_report import voxel_volume_ml
from lib.evaluation.metrics import bounding_box
from lib.settings import (
    HU_WINDOW,
    LABELS,
    LIVER_BOX_MARGIN,
    LIVER_BOX_MIN_MARGIN,
    LIVER_GROW_MAX_HU,
    LIVER_GROW_MAX_MM,
    LIVER_GROW_MIN_ML,
    LIVER_GROW_SD,
    LIVER_GROW_SMOOTH_MM,
)

logger = logging.getLogger(__name__)


def hu_window(keys: KeysCollection = "image") -> ScaleIntensityRanged:
    """Clip HU to the paper's window and scale to [0, 1]."""
    lo, hi = HU_WINDOW
    return ScaleIntensityRanged(keys=keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)


def fill_holes_per_slice(mask: np.ndarray, axis: int = -1) -> np.ndarray:
    """2D hole filling of a boolean volume, one slice along ``axis`` at a time.

    A cavity that is closed only in 3D (open in every slice) is left alone:
    nothing is bridged across slices.
    """
    mask = np.asarray(mask, dtype=bool)
    out = mask.copy()
    box = bounding_box(mask)
    if box is None:
        return out
    axis = axis % mask.ndim
    sub = np.moveaxis(out[box], axis, 0)  # view into ``out``
    for i in range(sub.shape[0]):
        if sub[i].any():
            sub[i] = ndimage.binary_fill_holes(sub[i])
    return out


def fill_label_holes(label: np.ndarray, axis: int = -1) -> np.ndarray:
    """The paper's post-processing on a {0, 1, 2} volume, per axial slice.

    Lesions count as liver for the liver fill; holes inside lesions become lesion.
    """
    liver = fill_holes_per_slice(label > 0, axis)
    lesion = fill_holes_per_slice(label == LABELS["lesion"], axis)
    out = np.zeros(label.shape, dtype=np.uint8)
    out[liver] = LABELS["liver"]
    out[lesion] = LABELS["lesion"]
    return out


class LabelTransformd(MapTransform):
    """A MapTransform on (1, X, Y, Z) labels (tensor, MetaTensor or array): ``relabel`` gets each key's
    (X, Y, Z) array, the label it came from (its metadata) and the data dict, and returns the new array,
    or None to leave the label as it is; the result keeps the label's metadata."""

    def relabel(self, arr: np.ndarray, lab, d: dict) -> Optional[np.ndarray]:
        raise NotImplementedError

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            new = self.relabel(np.asarray(lab[0].cpu() if torch.is_tensor(lab) else lab[0]), lab, d)
            if new is not None:
                t = torch.from_numpy(np.ascontiguousarray(new))[None]
                d[key] = MetaTensor(t, meta=lab.meta) if isinstance(lab, MetaTensor) else t
        return d


def _affine(image) -> np.ndarray:
    """The voxel-to-world affine of a MetaTensor (identity for anything else), float64."""
    return np.asarray(image.affine if isinstance(image, MetaTensor) else np.eye(4), dtype=np.float64)


class ProbsToLabeld(MapTransform):
    """(3, X, Y, Z) background/liver/lesion probabilities -> (1, X, Y, Z) uint8 labels (argmax)."""

    def __call__(self, data: Mapping[Hashable, object]):
        d = dict(data)
        for key in self.key_iterator(d):
            probs = d[key]
            p = torch.as_tensor(probs)
            label = torch.empty((1,) + tuple(p.shape[1:]), dtype=torch.uint8)
            # argmax over the 3 classes by comparisons, in float32 chunks of slices: torch's
            # argmax over the leading dim is ~10x slower on CPUs (strided reduction)
            for z in range(0, p.shape[-1], 32):
                c = p[..., z : z + 32].float()
                cls = (c[1] > c[0]).to(torch.uint8)
                cls[c[2] > torch.maximum(c[0], c[1])] = 2
                label[0, ..., z : z + 32] = cls
            if isinstance(probs, MetaTensor):
                label = MetaTensor(label, meta=probs.meta)
            d[key] = label
        return d


def redraw_foreground(label: torch.Tensor, probs) -> None:
    """In place on a (X, Y, Z) uint8 label: liver where ``probs`` (3, X, Y, Z) rank liver or lesion above
    background (as ProbsToLabeld's label > 0), background elsewhere; the label's lesions stay as they are.
    The liver CRF's result: its foreground, with the network's lesions."""
    p = torch.as_tensor(probs)
    for z in range(0, p.shape[-1], 32):
        c = p[..., z : z + 32].float()
        part = label[..., z : z + 32]
        liver = (torch.maximum(c[1], c[2]) > c[0]).to(torch.uint8) * LABELS["liver"]
        part.copy_(torch.where(part == LABELS["lesion"], part, liver))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean volume, labelled on its bounding box only.

    Same result as MONAI's KeepLargestConnectedComponent(independent=False,
    connectivity=3), without its full-volume int64 label map (1 GB more peak
    memory on a 512x512x400 volume).
    """
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return out
    comps, n = ndimage.label(mask[box], structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        out[box] = comps > 0
        return out
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    out[box] = comps == int(sizes.argmax())
    return out


def liver_box(liver, points=()):
    """In-plane box ``(x0, x1, y0, y1)`` of stage two's input: the largest 3D component of ``liver``
    (an (X, Y, Z) map, > 0.5), plus any ``points`` (voxel indices, e.g. clicks), widened by
    LIVER_BOX_MARGIN of its size (at least LIVER_BOX_MIN_MARGIN pixels) and clipped to the slice.
    None when there is no liver: the caller runs on the whole slice."""
    # compared in the map's own dtype: a float32 copy of a 512x512x400 map would be 400 MB more
    above = (liver > 0.5).cpu().numpy() if torch.is_tensor(liver) else np.asarray(liver) > 0.5
    mask = largest_component(above)
    x_idx, y_idx = np.flatnonzero(mask.any((1, 2))), np.flatnonzero(mask.any((0, 2)))
    xs = [int(round(p[0])) for p in points] + ([int(x_idx[0]), int(x_idx[-1])] if len(x_idx) else [])
    ys = [int(round(p[1])) for p in points] + ([int(y_idx[0]), int(y_idx[-1])] if len(y_idx) else [])
    if not xs:
        return None
    margin = max(LIVER_BOX_MIN_MARGIN, int(round(LIVER_BOX_MARGIN * max(max(xs) - min(xs), max(ys) - min(ys)))))
    h, w = above.shape[:2]
    x0, x1 = max(0, min(xs) - margin), min(h, max(xs) + margin + 1)
    y0, y1 = max(0, min(ys) - margin), min(w, max(ys) + margin + 1)
    return x0, x1, y0, y1


class KeepLargestLiverd(LabelTransformd):
    """Keep the largest 3D component of liver + lesion (the liver is one organ) of a (1, X, Y, Z) label."""

    def relabel(self, arr, lab, d):
        return np.where(largest_component(arr > 0), arr, 0).astype(np.uint8)


def within_mm(mask: np.ndarray, spacing, mm: float, step_mm: float = 2.0) -> np.ndarray:
    """The voxels within ``mm`` of ``mask`` (Euclidean, in millimetres), measured on a grid coarsened to
    about ``step_mm`` along each axis (blocks holding a mask voxel count as the mask): a quarter of the
    memory and time of the full-resolution distance transform at 0.8 mm pixels, within ``step_mm`` of it."""
    factors = [max(1, int(step_mm // s)) for s in spacing]
    coarse = mask.view(np.uint8)
    for axis, k in enumerate(factors):
        if k > 1:
            coarse = np.maximum.reduceat(coarse, np.arange(0, mask.shape[axis], k), axis=axis)
    near = ndimage.distance_transform_edt(coarse == 0, sampling=[s * k for s, k in zip(spacing, factors)]) <= mm
    return near[np.ix_(*[np.arange(n) // k for n, k in zip(mask.shape, factors)])]


def grow_liver(label: np.ndarray, hu: np.ndarray, spacing, sd: float = LIVER_GROW_SD,
               max_hu: float = LIVER_GROW_MAX_HU, max_mm: float = LIVER_GROW_MAX_MM,
               smooth_mm: float = LIVER_GROW_SMOOTH_MM, min_ml: float = LIVER_GROW_MIN_ML) -> np.ndarray:
    """Liver growth (settings.py, LIVER_GROW_*): a copy of the (X, Y, Z) LiTS ``label`` (axial last) with the
    background voxels within ``max_mm`` of its liver + lesion that look like its liver in ``hu`` (the HU
    averaged in-plane over about ``smooth_mm`` within ``sd`` robust standard deviations of the liver's median,
    at most ``max_hu``), and connect to it through such voxels, labelled liver; then the ring the averaging
    left at the edge, where each voxel's own HU passes the same test (in the raw HU's spread, at most
    2 ``max_hu``). Lesions and the rest of the label are unchanged. The liver's HU is read in its core (the
    liver label eroded in-plane); a liver under ``min_ml`` is returned as it is."""
    out = np.array(label, dtype=np.uint8)
    organ = out > 0
    box = bounding_box(organ)
    if box is None:
        return out
    spacing = np.asarray(spacing, dtype=float)
    # the in-plane square: an odd number of pixels about smooth_mm wide (at least 3)
    square = [2 * max(1, int(round(smooth_mm / 2 / s))) + 1 for s in spacing[:2]] + [1]
    reach = [int(np.ceil(max_mm / s)) + n for s, n in zip(spacing, square)]  # the growth's, plus the square's
    box = tuple(slice(max(0, b.start - r), min(n, b.stop + r)) for b, r, n in zip(box, reach, out.shape))
    sub, organ, raw = out[box], organ[box], hu[box]

    def erode(m):  # binary erosion / dilation by the square (separable min / max filters)
        return ndimage.minimum_filter(m.view(np.uint8), size=square, mode="constant").view(bool)

    def dilate(m):
        return ndimage.maximum_filter(m.view(np.uint8), size=square, mode="constant").view(bool)

    core = erode(sub == LABELS["liver"])
    n_core = np.count_nonzero(core)
    if n_core == 0 or n_core * float(np.prod(spacing)) / 1000.0 < min_ml:  # no liver HU to read
        return out

    def spread(values):  # robust standard deviation
        return 1.4826 * float(np.median(np.abs(values - np.median(values))))

    smooth = ndimage.uniform_filter(raw, size=square, output=np.float32)
    liver_hu = smooth[core]
    median = float(np.median(liver_hu))
    tolerance = min(max_hu, sd * spread(liver_hu))
    smooth -= median
    np.abs(smooth, out=smooth)
    like = dilate(erode(smooth < tolerance))  # an opening: no thin bridges
    del smooth
    near = within_mm(organ, spacing, max_mm)
    liver = ndimage.binary_propagation(organ, structure=np.ones((3, 3, 3), dtype=bool), mask=like & near | organ)
    ring = np.nonzero(dilate(liver) & ~liver & near)
    passes = np.abs(raw[ring].astype(np.float32) - median) < min(2 * max_hu, sd * spread(raw[core].astype(np.float32)))
    liver[tuple(i[passes] for i in ring)] = True
    sub[liver & ~organ] = LABELS["liver"]
    return out


class GrowLiverd(LabelTransformd):
    """Liver growth (``grow_liver``) on a (1, X, Y, Z) label with an affine, reading the HU image in
    ``hu_key`` (X, Y, Z; the same orientation). Records the added volume as ``liver_grown_ml``."""

    def __init__(self, keys: KeysCollection, hu_key: str = "image_hu", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.hu_key = hu_key

    def relabel(self, arr, lab, d):
        hu = d[self.hu_key]
        grown = grow_liver(arr, np.asarray(hu.cpu() if torch.is_tensor(hu) else hu), _spacing(lab))
        d["liver_grown_ml"] = round(float(np.count_nonzero(grown != arr)) * voxel_volume_ml(_affine(lab)), 2)
        return grown


class FillHolesPerSliced(LabelTransformd):
    """Per-axial-slice hole filling of a (1, X, Y, Z) LiTS label (axial axis last)."""

    def __init__(self, keys: KeysCollection, axis: int = -1, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.axis = axis

    def relabel(self, arr, lab, d):
        return fill_label_holes(arr, self.axis)


class DropSmallLesionsd(LabelTransformd):
    """Relabel lesion components (26-connected) smaller than ``min_ml`` millilitres as liver, in a
    (1, X, Y, Z) label with an affine: the label then shows the lesions the lesion report lists. The
    request's ``min_lesion_ml`` overrides ``min_ml``."""

    def __init__(self, keys: KeysCollection, min_ml: float, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.min_ml = min_ml

    def relabel(self, arr, lab, d):
        min_ml = float(d.get("min_lesion_ml", self.min_ml))
        if min_ml <= 0:
            return None
        lesion = arr == LABELS["lesion"]
        box = bounding_box(lesion)  # labelled on the lesions' box: a full int32 label map is 400 MB at 400 slices
        if box is None:
            return None
        comps, n = ndimage.label(lesion[box], structure=np.ones((3, 3, 3)))
        small = np.bincount(comps.ravel()) * voxel_volume_ml(_affine(lab)) < min_ml
        small[0] = False
        if not small.any():
            return None
        d["small_lesions_dropped"] = int(small.sum())  # the lesion report counts them
        out = np.array(arr, dtype=np.uint8)
        out[box][small[comps]] = LABELS["liver"]
        return out


class DenseCRFd(MapTransform):
    """3D fully connected CRF on the probabilities (the paper's ablation; our "liver" mode).

    Mean-field inference with a Gaussian smoothness kernel and an appearance
    kernel; the appearance kernel is evaluated with a bilateral grid in the
    (x, y, z, intensity) space, as fast approximations of Kraehenbuehl & Koltun do.
    It runs on the box of the network's largest foreground component plus
    ``margin_mm`` (farther away the component step removes whatever it draws),
    with the network's other foreground components set to background:
    on voxels of at least ``pixel_mm`` along each axis: about 1 s for a
    512x512x44 volume on 2 CPU cores. The intensity sigma is
    0.05 of the HU window (20 HU); chosen on synthetic phantoms (docs/RESULTS.md).
    With ``foreground_only`` it decides background against liver + lesion (2
    classes, half the filtering), and the foreground keeps the network's
    liver : lesion split (the app's "liver" mode).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        iterations: int = 3,
        spatial_sigma_mm: float = 3.0,
        bilateral_sigma_mm: float = 10.0,
        bilateral_sigma_intensity: float = 0.05,
        w_smooth: float = 1.0,
        w_bilateral: float = 2.0,
        margin_mm: float = 20.0,
        foreground_only: bool = False,
        pixel_mm: float = 1.5,
    ):
        super().__init__(keys)
        self.image_key = image_key
        self.iterations = iterations
        self.ss = spatial_sigma_mm
        self.bs = bilateral_sigma_mm
        self.bi = bilateral_sigma_intensity
        self.ws = w_smooth
        self.wb = w_bilateral
        self.margin_mm = margin_mm
        self.foreground_only = foreground_only
        self.pixel_mm = pixel_mm

    def __call__(self, data):
        d = dict(data)
        image = d[self.image_key]
        spacing = _spacing(image)
        # the CRF's voxels: at least pixel_mm along each axis (finer ones are averaged down for it, its
        # result interpolated back; the network saw the slice at 192 pixels anyway)
        factor = tuple(int(f) for f in np.maximum(1, np.floor(self.pixel_mm / spacing)))
        img = torch.as_tensor(image[0] if torch.is_tensor(image) else np.asarray(image)[0])
        for key in self.key_iterator(d):
            with torch.inference_mode():  # the app's maps are inference tensors, updated in place
                self._refine(d[key], img, spacing, factor)
        return d

    def _refine(self, t: torch.Tensor, img: torch.Tensor, spacing: np.ndarray, factor) -> None:
        """The CRF on one (C, X, Y, Z) probability map, in place."""
        # in place, in the maps' own dtype (float16 in the app), slab by slab: a float32 copy of a
        # 512x512x400 volume's maps would be 1.2 GB more than the server's memory budget allows
        fg = _pooled(t, factor, lambda c: (torch.maximum(c[1], c[2]) > c[0]).float()[None], "max")[0] > 0
        fg = fg.numpy()
        liver = largest_component(fg)
        box = bounding_box(liver)
        if box is None:
            return
        margin = np.ceil(self.margin_mm / (spacing * factor)).astype(int)
        box = tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margin, fg.shape))
        full = tuple(slice(b.start * f, min(n, b.stop * f)) for b, f, n in zip(box, factor, t.shape[1:]))
        sub = t[(slice(None),) + full]  # a view
        pc = _pooled(sub, factor, lambda c: c, "avg").numpy()
        # the network's other components are background here: the CRF moves the liver's boundary
        # but cannot bridge a gap to another organ the network took for liver (the heart above
        # the dome, measured) that the largest-component step would otherwise have removed
        pc[:, fg[box] & ~liver[box]] = np.array([1, 0, 0], np.float32)[:, None]
        ic = _pooled(img[full][None], factor, lambda c: c, "avg")[0].numpy()
        del fg, liver
        if self.foreground_only:  # background vs liver + lesion, split as the network split them
            pc = np.stack([pc[0], pc[1] + pc[2]])
        q = torch.from_numpy(dense_crf_3d(pc, ic, spacing * factor, self.iterations,
                                          self.ss, self.bs, self.bi, self.ws, self.wb))
        del pc, ic
        _write_back(sub, q, factor, self.foreground_only)


def _pooled(t: torch.Tensor, factor, fn, mode: str, chunk: int = 8) -> torch.Tensor:
    """``fn`` of (C, X, Y, Z) maps in float32, pooled by ``factor`` (mean or max), slab by slab along z."""
    pool = F.avg_pool3d if mode == "avg" else F.max_pool3d
    step = chunk * factor[2]
    out = []
    for z0 in range(0, t.shape[-1], step):
        x = fn(t[..., z0 : z0 + step].float())
        # a cell cut by the volume's (or the slab's last) border pools the voxels it has; torch refuses
        # a kernel larger than the input (a last slab of one slice at 0.6 mm), so it is clipped
        k = tuple(min(f, n) for f, n in zip(factor, x.shape[1:]))
        out.append(pool(x[None], k, k, ceil_mode=True)[0] if k != (1, 1, 1) else x)
    return torch.cat(out, -1)


def _write_back(sub: torch.Tensor, q: torch.Tensor, factor, foreground_only: bool, chunk: int = 8):
    """Write the CRF's coarse result ``q`` into the (C, X, Y, Z) maps ``sub`` in place, slab by slab:
    each slab of ``q`` (with one coarse slice either side) is interpolated by the exact ``factor``
    and cropped, so the slabs join as one interpolation of the whole volume would."""
    nz = q.shape[-1]
    for c0 in range(0, nz, chunk):
        c1 = min(nz, c0 + chunk)
        e0, e1 = max(0, c0 - 1), min(nz, c1 + 1)
        up = q[..., e0:e1]
        if factor != (1, 1, 1):
            up = F.interpolate(up[None], scale_factor=factor, mode="trilinear", align_corners=False)[0]
        z0, z1 = c0 * factor[2], min(sub.shape[-1], c1 * factor[2])
        up = up[:, : sub.shape[1], : sub.shape[2], (c0 - e0) * factor[2] : (c0 - e0) * factor[2] + z1 - z0]
        if foreground_only:
            probs = sub[..., z0:z1].float()
            probs[1:] *= up[1] / (probs[1] + probs[2]).clamp_min(1e-6)
            probs[0] = up[0]
            sub[..., z0:z1] = probs.to(sub.dtype)
        else:
            sub[..., z0:z1] = up.to(sub.dtype)


def _spacing(image) -> np.ndarray:
    return np.sqrt((_affine(image)[:3, :3] ** 2).sum(0))


def dense_crf_3d(probs, image, spacing, iterations, ss, bs, bi, ws, wb):
    """Mean-field dense CRF with Potts compatibility; returns refined probabilities.

    Message passing uses separable Gaussian filtering (smoothness) and a
    bilateral grid (appearance; Paris & Durand): ``q`` is splatted into coarse
    cells of about half the bilateral sigma along each axis and ``bi``-wide
    intensity bins, blurred there, and read back with linear interpolation in
    space at each voxel's own bin. Sigmas are in millimetres.
    """
    eps = 1e-6
    unary = -np.log(np.clip(probs, eps, 1.0))
    q = probs.copy()
    shape = q.shape[1:]
    n_bins = max(2, int(np.ceil(1.0 / bi)) + 1)
    cell = np.maximum(1, np.floor(bs / spacing / 2)).astype(int)
    coarse = tuple(-(-n // c) for n, c in zip(shape, cell))
    strides = np.cumprod((1,) + coarse[::-1])[::-1].astype(np.int32)  # of the flat (bin, x, y, z) grid
    # int32 indices: half the memory of int64, and the grid stays far below 2**31 cells
    own_bin = np.clip(np.rint(image / bi), 0, n_bins - 1).astype(np.int32) * strides[0]
    splat = own_bin  # each voxel's cell
    corners = []  # per axis: (cell index * stride, weight) pairs of the linear read-back
    for ax, (c, m) in enumerate(zip(cell, coarse)):
        view = [1] * len(shape)
        view[ax] = shape[ax]
        i = np.arange(shape[ax], dtype=np.int32)
        splat = splat + (i // c).reshape(view) * strides[ax + 1]
        u = np.clip((i + 0.5) / c - 0.5, 0, m - 1)  # voxel centre in cell units
        i0 = np.floor(u).astype(np.int32)
        w = (u - i0).astype(np.float32)
        pairs = [((i0 * strides[ax + 1]).reshape(view), (1 - w).reshape(view))]
        if c > 1:
            i1 = np.minimum(i0 + 1, m - 1)
            pairs.append(((i1 * strides[ax + 1]).reshape(view), w.reshape(view)))
        corners.append(pairs)
    splat = splat.ravel()
    grid_sigma = (1.0,) + tuple(bs / spacing / cell)

    def bilateral(values):
        grid = np.bincount(splat, weights=values, minlength=int(strides[0]) * n_bins).astype(np.float32)
        grid = ndimage.gaussian_filter(grid.reshape((n_bins,) + coarse), grid_sigma, mode="nearest").ravel()
        out = np.zeros(shape, np.float32)
        for corner in itertools.product(*corners):
            index, weight = own_bin, 1.0
            for offset, w in corner:
                index, weight = index + offset, weight * w
            out += grid[index] * weight
        return out

    norm = np.maximum(bilateral(None), eps)  # the filter's weight at each voxel
    sigma_s = ss / spacing
    for _ in range(iterations):
        energy = np.empty_like(q)
        # both filters are linear and keep constants, and the classes sum to 1: the last class's
        # filtered map is 1 minus the others' (one filter pass fewer per iteration)
        rest = np.full(shape, ws + wb, np.float32)
        for c in range(q.shape[0]):
            if c < q.shape[0] - 1:
                filtered = ws * ndimage.gaussian_filter(q[c], sigma_s, mode="nearest")
                filtered += wb * (bilateral(q[c].ravel()) / norm)
                rest -= filtered
            else:
                filtered = rest
            # Potts compatibility: agreement with same-label neighbours lowers a label's energy
            energy[c] = unary[c] - (filtered - (ws + wb) * q[c])
        energy -= energy.min(0, keepdims=True)
        q = np.exp(-energy, out=energy)
        q /= q.sum(0, keepdims=True)
    return q.astype(np.float32, copy=False)


class RestoreOrientationd(MapTransform):
    """Undo ``Orientationd``: bring a label back to the input file's voxel order.

    A pure axis permutation/flip computed from the current and the original
    affine, so it is exact and cheap (no resampling).
    """

    def __init__(self, keys: KeysCollection, ref_key: str = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    def __call__(self, data):
        d = dict(data)
        ref = d[self.ref_key]
        current = np.asarray(ref.affine, dtype=np.float64)
        original = np.asarray(ref.meta.get("original_affine", current), dtype=np.float64)
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(current), nib.orientations.io_orientation(original)
        )
        for key in self.key_iterator(d):
            lab = d[key]
            arr = np.asarray(lab.cpu() if torch.is_tensor(lab) else lab)
            out = np.stack([nib.orientations.apply_orientation(a, transform) for a in arr])
            t = torch.from_numpy(np.ascontiguousarray(out))
            meta = dict(lab.meta) if isinstance(lab, MetaTensor) else {}
            meta["affine"] = torch.as_tensor(original)
            d[key] = MetaTensor(t, meta=meta)
        return d
