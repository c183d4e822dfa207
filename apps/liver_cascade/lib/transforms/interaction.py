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
around it, or where there is none the tissue it is on, grown by density
(:func:`foreground_region`; a small disk if that fails). Background clicks are
applied last, so they win where both hit the same place, except in a lesion that
holds a foreground click: there a background click removes only what is nearer
to it than to the foreground clicks.
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
# foreground clicks the network does not follow (foreground_region): the clicked tissue, grown by density
FOREGROUND_SMOOTH_MM = 1.5
FOREGROUND_MAX_RADIUS_MM = 25.0  # the region stays within this distance of the click
FOREGROUND_MIN_CONTRAST_HU = 10.0  # clicked tissue vs the liver around it; less: a disk instead
FOREGROUND_LEAK_FACTOR = 6.0  # a region reaching further than this x its depth at the click is cut there
FOREGROUND_MIN_HU = -400.0  # a lesion click on gas (air, lung, bowel) is not drawn: a liver lesion is tissue


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


def on_gas(hu: np.ndarray, p) -> bool:
    """Whether a click at ``p`` lies on air, lung or bowel gas: the median HU of its 3x3 in-plane
    neighbourhood is below FOREGROUND_MIN_HU (fat is about -100 HU)."""
    x, y, z = (int(v) for v in p[:3])
    return float(np.median(hu[max(0, x - 1):x + 2, max(0, y - 1):y + 2, z])) < FOREGROUND_MIN_HU


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
    too); with ``"island"`` or without the image, that whole 26-connected lesion. A foreground click
    off every lesion adds the connected region of lesion probability > 0.2 around it, else (with the
    image's HU) the clicked tissue grown by density (:func:`foreground_region`), else a disk of
    CLICK_RADIUS_MM on its slice."""
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
        if region.sum() < 2 and hu is not None:
            region = foreground_region(out == liver, p, spacing, hu)
        if region is None or region.sum() < 2:
            region = np.zeros(out.shape, bool)
            region[..., p[2]] = disk(out.shape[:2], p[:2], r)
        out[region] = lesion
    for p in bg:
        if out[p] == lesion:
            comps, _ = ndimage.label(out == lesion, structure=s26)
            whole = comps == comps[p]
            island = whole
            if background == "tissue" and hu is not None:
                island = background_region(whole, p, spacing, hu, min_piece_ml)
            island = nearer_than_foreground(island, p, [f for f in fg if whole[f]], spacing)
            out[island] = liver
    return out


def nearer_than_foreground(region: np.ndarray, p, fg, spacing) -> np.ndarray:
    """The voxels of ``region`` that a background click at ``p`` may remove when foreground clicks
    ``fg`` lie in the same lesion: those at least as near (in mm) to ``p`` as to every one of them. A background
    click on where a lesion grown from a foreground click overshoots trims the overshoot, and does not
    take the clicked lesion with it (the clicked tissue is all of one density)."""
    if not fg:
        return region
    idx = np.argwhere(region)
    sp = np.asarray(spacing[:3], dtype=float)
    to_bg = np.linalg.norm((idx - np.asarray(p)) * sp, axis=1)
    to_fg = np.min([np.linalg.norm((idx - np.asarray(f)) * sp, axis=1) for f in fg], axis=0)
    out = np.zeros_like(region)
    keep = idx[to_bg <= to_fg]  # a tie goes to the background click: on the same voxel it removes the lesion
    out[tuple(keep.T)] = True
    return out


def foreground_region(liver: np.ndarray, p, spacing, hu: np.ndarray):
    """The lesion a foreground click at ``p`` marks when the network sees none there: the voxels
    connected to ``p`` (6-connectivity, within FOREGROUND_MAX_RADIUS_MM) whose HU, smoothed over
    FOREGROUND_SMOOTH_MM, is nearer the clicked tissue's than the surrounding ``liver``'s (the median
    of the liver more than 6 mm from the click). A region reaching further from the click than
    FOREGROUND_LEAK_FACTOR x its in-plane depth there has leaked through a thin bridge and is cut at
    that distance. None when the clicked tissue is within FOREGROUND_MIN_CONTRAST_HU of the liver, or
    there is too little liver around it to compare."""
    spacing = np.asarray(spacing[:3], dtype=float)
    reach = np.maximum(1, np.ceil(FOREGROUND_MAX_RADIUS_MM / spacing)).astype(int)
    box = tuple(slice(max(0, int(p[a]) - reach[a]), min(hu.shape[a], int(p[a]) + reach[a] + 1)) for a in range(3))
    q = tuple(int(p[a]) - box[a].start for a in range(3))
    axes = np.ogrid[tuple(slice(0, b.stop - b.start) for b in box)]
    dist2 = sum(((ax - q[a]) * spacing[a]) ** 2 for a, ax in enumerate(axes))
    ball = dist2 <= FOREGROUND_MAX_RADIUS_MM**2
    smooth = ndimage.gaussian_filter(np.asarray(hu[box], dtype=np.float32), FOREGROUND_SMOOTH_MM / spacing)
    tissue = float(np.median(smooth[dist2 <= 2.0**2]))  # the clicked tissue, robust to one noisy voxel
    around = liver[box] & ball & (dist2 > 6.0**2)
    if around.sum() < 50:
        return None
    contrast = abs(float(np.median(smooth[around])) - tissue)
    if contrast < FOREGROUND_MIN_CONTRAST_HU:
        return None
    comps, _ = ndimage.label(ball & (np.abs(smooth - tissue) < contrast / 2))
    if not comps[q]:
        return None
    region = comps == comps[q]
    depth = ndimage.distance_transform_edt(np.pad(region[..., q[2]], 1), sampling=spacing[:2])[q[0] + 1, q[1] + 1]
    limit = max(FOREGROUND_LEAK_FACTOR * depth, CLICK_RADIUS_MM)
    if dist2[region].max() > limit**2:
        comps, _ = ndimage.label(region & (dist2 <= limit**2))
        region = comps == comps[q]
    out = np.zeros(hu.shape, dtype=bool)
    out[box] = region
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
