"""The cascade as an interactive tool: clicks and a corrected liver.

Stage two reads (image, lesion map, liver map). An annotator's corrected liver
bounds the result (stage two still reads stage one's liver map: fed the binary
mask it finds fewer lesions, docs/RESULTS.md); lesion clicks are written into
the lesion map (a disk of 1 around a foreground click, the clicked stage-one
component set to 0 for a background click). The cascade trainer simulates the
clicks, so stage two learns to trust them; after stage two they are also
enforced on the label: a background click removes the clicked tissue within the
lesion it hits (or, on request, that whole lesion), a foreground click that
stage two still leaves empty adds the connected region of lesion probability
around it (or a small disk if there is none). Background clicks are applied
last, so they win where both hit the same place.
"""

from typing import List, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

from lib.settings import LABELS

CLICK_RADIUS_MM = 4.0
# background clicks (enforce_clicks): "tissue" removes the clicked tissue within the lesion, "island" all of it
BACKGROUND_CLICK_MODES = ("tissue", "island")
BACKGROUND_HU_TOLERANCE = 20.0  # HU, after smoothing
BACKGROUND_SMOOTH_MM = 1.0


def to_oriented_index(points: Sequence[Sequence[float]], original_affine, current_affine, shape) -> List[tuple]:
    """Voxel indices in the file's order -> indices in the RAS-oriented array."""
    if not points:
        return []
    current = np.asarray(current_affine, dtype=float)
    original = np.asarray(original_affine, dtype=float)
    out = []
    inv = np.linalg.inv(current)
    for p in points:
        world = original @ np.r_[np.asarray(p, dtype=float)[:3], 1.0]
        ijk = np.rint(inv @ world)[:3].astype(int)
        if all(0 <= ijk[i] < shape[i] for i in range(3)):
            out.append(tuple(int(v) for v in ijk))
    return out


def disk(shape2d, centre, radius_px):
    yy, xx = np.ogrid[: shape2d[0], : shape2d[1]]
    return ((yy - centre[0]) / radius_px[0]) ** 2 + ((xx - centre[1]) / radius_px[1]) ** 2 <= 1


def encode_clicks(lesion_map: torch.Tensor, fg, bg, spacing) -> torch.Tensor:
    """Write clicks into a (X, Y, Z) lesion probability map (returns a copy)."""
    m = lesion_map.clone()
    r = (max(1.0, CLICK_RADIUS_MM / spacing[0]), max(1.0, CLICK_RADIUS_MM / spacing[1]))
    arr = m.numpy()
    for (i, j, k) in bg:
        comps, _ = ndimage.label(arr[..., k] > 0.5)
        c = comps[i, j]
        if c:
            arr[..., k][comps == c] = 0.0
        arr[..., k][disk(arr.shape[:2], (i, j), r)] = 0.0
    for (i, j, k) in fg:
        arr[..., k][disk(arr.shape[:2], (i, j), r)] = 1.0
    return torch.from_numpy(arr)


def enforce_clicks(label: np.ndarray, lesion_prob: np.ndarray, fg, bg, spacing, hu=None,
                   background: str = "tissue", min_piece_ml: float = 0.05) -> np.ndarray:
    """Make the final (X, Y, Z) label honour the clicks without touching other lesions.

    A background click removes, with ``background="tissue"`` and the image's HU, the clicked tissue
    within the lesion it hits (:func:`background_region`; pieces it leaves under ``min_piece_ml`` go
    too); with ``"island"`` or without the image, that whole 26-connected lesion."""
    if background not in BACKGROUND_CLICK_MODES:
        raise ValueError(f"background_click must be one of {BACKGROUND_CLICK_MODES}, got {background!r}")
    out = label.copy()
    lesion, liver = LABELS["lesion"], LABELS["liver"]
    s26 = np.ones((3, 3, 3))
    r = (max(1.0, CLICK_RADIUS_MM / spacing[0]), max(1.0, CLICK_RADIUS_MM / spacing[1]))
    for p in fg:
        if out[p] == lesion:
            continue
        region = np.zeros(out.shape, bool)
        if lesion_prob[p] > 0.2:
            comps, _ = ndimage.label(lesion_prob > 0.2, structure=s26)
            region = comps == comps[p]
        if region.sum() < 2:
            region = np.zeros(out.shape, bool)
            region[..., p[2]] = disk(out.shape[:2], p[:2], r)
        out[region] = lesion
    for p in bg:
        if out[p] == lesion:
            comps, _ = ndimage.label(out == lesion, structure=s26)
            island = comps == comps[p]
            if background == "tissue" and hu is not None:
                island = background_region(island, p, spacing, hu, min_piece_ml)
            out[island] = liver
    return out


def background_region(island: np.ndarray, p, spacing, hu: np.ndarray, min_piece_ml: float = 0.05) -> np.ndarray:
    """The part of a lesion ``island`` that a background click at ``p`` removes: the voxels connected
    to ``p`` whose HU (smoothed over BACKGROUND_SMOOTH_MM) is within BACKGROUND_HU_TOLERANCE of the
    clicked tissue's, plus what that leaves of the island in pieces under ``min_piece_ml``. A false lesion
    drawn over liver tissue goes; a true lesion of another density that it touches stays."""
    idx = np.nonzero(island)
    box = tuple(slice(max(0, int(i.min()) - 2), int(i.max()) + 3) for i in idx)
    q = tuple(int(p[a]) - box[a].start for a in range(3))
    inside = island[box]
    sigma = BACKGROUND_SMOOTH_MM / np.asarray(spacing[:3], dtype=float)
    smooth = ndimage.gaussian_filter(np.asarray(hu[box], dtype=np.float32), sigma)
    near = tuple(slice(max(0, v - 1), v + 2) for v in q)
    tissue = float(np.median(smooth[near][inside[near]]))  # the clicked tissue, robust to one noisy voxel
    s26 = np.ones((3, 3, 3))
    comps, _ = ndimage.label(inside & (np.abs(smooth - tissue) <= BACKGROUND_HU_TOLERANCE), structure=s26)
    region = comps == comps[q] if comps[q] else np.zeros_like(inside)
    region[q] = True
    rest, _ = ndimage.label(inside & ~region, structure=s26)
    ml = np.bincount(rest.ravel()) * float(np.prod(spacing[:3])) / 1000.0
    region |= (rest > 0) & (ml[rest] < min_piece_ml)
    out = np.zeros_like(island)
    out[box] = region
    return out


class SimulateClicksd(RandomizableTransform, MapTransform):
    """Training-time clicks on a 2D cascade sample (channels: image, lesion map, liver map).

    With probability ``prob``: a foreground click inside a reference lesion that
    stage one missed, and/or a background click on a stage-one false lesion,
    written into the lesion-map channel as at inference (``encode_clicks``).
    """

    def __init__(self, keys="image", label_key="label", prob: float = 0.3, spacing_mm: float = 2.0):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.spacing_mm = spacing_mm

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        lab = np.asarray(d[self.label_key][0])
        img = torch.as_tensor(d["image"]).clone()
        les_map = img[1].numpy()
        fg, bg = [], []
        missed = (lab == LABELS["lesion"]) & (les_map < 0.5)
        comps, n = ndimage.label(missed)
        if n:
            c = int(self.R.randint(1, n + 1))
            pts = np.argwhere(comps == c)
            fg.append(tuple(pts[self.R.randint(len(pts))]) + (0,))
        false = (les_map > 0.5) & (lab != LABELS["lesion"])
        comps, n = ndimage.label(false)
        if n:
            c = int(self.R.randint(1, n + 1))
            pts = np.argwhere(comps == c)
            bg.append(tuple(pts[self.R.randint(len(pts))]) + (0,))
        if fg or bg:
            sp = (self.spacing_mm, self.spacing_mm)
            img[1] = encode_clicks(img[1][..., None], fg, bg, sp)[..., 0]
            d["image"] = img
        return d
