"""Lesion report in physical units: volumes, burden, per-lesion RECIST-like diameters."""

from typing import Any, Dict, List, Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from lib.settings import LABELS


def _axial_axis(affine: np.ndarray) -> int:
    """The voxel axis whose direction is most aligned with world z."""
    return int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))


def _diameters(points_mm: np.ndarray):
    """Longest diameter of 2D points and the longest extent perpendicular to it (mm)."""
    if len(points_mm) < 2:
        return 0.0, 0.0
    pts = points_mm
    if len(pts) >= 4:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # collinear points
            pass
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    longest = float(d[i, j])
    if longest == 0:
        return 0.0, 0.0
    u = (pts[j] - pts[i]) / longest
    perp = np.array([-u[1], u[0]])
    proj = pts @ perp
    return longest, float(proj.max() - proj.min())


def _pixel_corners(coords: np.ndarray) -> np.ndarray:
    """The 4 corners of each pixel (index units), so extents cover whole pixels."""
    offs = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    return (coords[:, None, :] + offs[None]).reshape(-1, 2)


def lesion_report(
    label: np.ndarray,
    affine: np.ndarray,
    image_hu: Optional[np.ndarray] = None,
    lesion_prob: Optional[np.ndarray] = None,
    min_volume_ml: float = 0.0,
    axial_axis: Optional[int] = None,
) -> Dict[str, Any]:
    """Liver/lesion volumes (mL), tumour burden (%), and lesions ordered by volume.

    Lesions are 3D connected components of label 2 (26-connectivity). For each:
    volume, world centroid (mm, the affine's frame), the longest diameter on the
    axial slice where it is longest and the longest extent perpendicular to it
    (RECIST-like, mm, measured on pixel extents), slice count, mean HU and mean
    model confidence where given.
    """
    affine = np.asarray(affine, dtype=np.float64)
    label = np.asarray(label)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    ax = _axial_axis(affine) if axial_axis is None else axial_axis
    inplane = [a for a in range(3) if a != ax]
    liver_ml = float((label >= LABELS["liver"]).sum()) * voxel_ml
    lesion_mask = label == LABELS["lesion"]
    comps, n = ndimage.label(lesion_mask, structure=np.ones((3, 3, 3)))
    lesions: List[Dict[str, Any]] = []
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        if sl is None:
            continue
        comp = comps[sl] == k
        count = int(comp.sum())
        vol = count * voxel_ml
        if vol < min_volume_ml:
            continue
        idx = np.argwhere(comp) + np.array([s.start for s in sl])
        centroid_vox = idx.mean(0)
        centroid = affine[:3, :3] @ centroid_vox + affine[:3, 3]
        best = (0.0, 0.0, None)
        for z in np.unique(idx[:, ax]):
            pts = idx[idx[:, ax] == z][:, inplane].astype(np.float64)
            mm = _pixel_corners(pts) * spacing[inplane]
            long_d, short_d = _diameters(mm)
            if long_d > best[0]:
                best = (long_d, short_d, int(z))
        entry = {
            "volume_ml": round(vol, 4),
            "centroid_mm": [round(float(c), 2) for c in centroid],
            "longest_axial_diameter_mm": round(best[0], 2),
            "perpendicular_diameter_mm": round(best[1], 2),
            "axial_slice": best[2],
            "n_slices": int(len(np.unique(idx[:, ax]))),
        }
        if image_hu is not None:
            entry["mean_hu"] = round(float(np.asarray(image_hu)[sl][comp].mean()), 1)
        if lesion_prob is not None:
            entry["mean_confidence"] = round(float(np.asarray(lesion_prob)[sl][comp].mean()), 4)
        lesions.append(entry)
    lesions.sort(key=lambda e: -e["volume_ml"])
    for i, e in enumerate(lesions, start=1):
        e["id"] = i
    lesion_ml = float(lesion_mask.sum()) * voxel_ml
    return {
        "liver_volume_ml": round(liver_ml, 2),
        "lesion_volume_ml": round(lesion_ml, 3),
        "tumour_burden_percent": round(100.0 * lesion_ml / liver_ml, 3) if liver_ml > 0 else 0.0,
        "n_lesions": len(lesions),
        "min_lesion_volume_ml": min_volume_ml,
        "lesions": [{"id": e.pop("id"), **e} for e in lesions],
    }
