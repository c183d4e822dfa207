"""Lesion report of a liver/lesion label volume, in physical units.

Every length and volume comes from the voxel->world ``affine`` (NIfTI style, 4x4, mm;
it may be non-diagonal, flipped or permuted), never from voxel counts alone:

- voxel volume = |det(affine[:3, :3])| mm³;
- liver volume = liver *including* lesions, lesion volume = every lesion voxel
  (label ``LABELS["lesion"]``), tumour burden = lesion / liver volume in %.

Lesions are the 3D connected components of the lesion label (26-connectivity);
components smaller than ``min_volume_ml`` are dropped (and counted). They are ordered
by volume, largest first, and numbered 1..n. For each:

- ``centroid_mm``: the affine applied to the mean voxel index (world frame of the
  affine, RAS for NIfTI); ``centroid_voxel`` is the index itself. It may fall outside
  the lesion (a crescent, a rim);
- ``click_voxel``: a voxel of the lesion to click on (integer indices): the one deepest
  inside it (largest distance in mm to the lesion's border), the nearest to the centroid
  among equals;
- ``longest_axial_diameter_mm`` / ``perpendicular_diameter_mm`` (RECIST-like): on
  every axial slice of the lesion, the in-plane pixel centres are mapped to mm with
  the slice's two affine columns (in an orthonormal frame of the slice plane, so
  rotated or sheared in-plane axes are measured correctly). The longest diameter is
  the largest centre-to-centre distance (convex hull vertices, pairwise) plus the
  width of one pixel in that direction; the perpendicular diameter is the extent of
  the centres perpendicular to it plus the pixel width in that direction. A pixel's
  width along unit direction u is |Mᵀu|, M the 2x2 index->mm matrix of the plane,
  i.e. each pixel counts as the ellipse inscribed in it (a one-pixel lesion measures
  one pixel, a digitised disk its diameter, without the diagonal bias of pixel
  corners). The slice reported (``axial_slice``, voxel index along the axial axis) is
  the one with the largest longest diameter. "Axial" is the voxel axis whose direction
  is most aligned with world z (from the affine unless ``axial_axis`` is given);
- ``n_slices``: axial slices the lesion spans; ``n_voxels``;
- ``mean_hu`` (if ``image_hu`` is given) and ``mean_confidence`` (mean of
  ``lesion_prob`` inside the lesion, if given), else None.
"""

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from lib.evaluation.metrics import bounding_box
from lib.settings import LABELS

REPORT_CSV_FIELDS = [
    "case",
    "liver_volume_ml",
    "lesion_volume_ml",
    "tumour_burden_percent",
    "n_lesions",
    "lesion_id",
    "volume_ml",
    "longest_axial_diameter_mm",
    "perpendicular_diameter_mm",
    "axial_slice",
    "n_slices",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "mean_hu",
    "mean_confidence",
]


# ------------------------------------------------------------------ geometry helpers


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    return affine


def axial_axis_from_affine(affine: np.ndarray) -> int:
    """The voxel axis whose direction (affine column) is most aligned with world z."""
    a = _check_affine(affine)[:3, :3]
    return int(np.argmax(np.abs(a[2]) / np.linalg.norm(a, axis=0)))


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (norms of the affine's columns)."""
    return np.linalg.norm(_check_affine(affine)[:3, :3], axis=0)


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL (|det| of the affine's 3x3 part / 1000)."""
    return float(abs(np.linalg.det(_check_affine(affine)[:3, :3]))) / 1000.0


def _plane_matrix(affine: np.ndarray, inplane: Sequence[int]) -> np.ndarray:
    """2x2 matrix M mapping in-plane index offsets to mm in an orthonormal plane frame."""
    cols = affine[:3, list(inplane)]  # 3x2: world direction of each in-plane index step
    _, m = np.linalg.qr(cols)  # cols = Q @ M with Q orthonormal, so |cols @ d| = |M @ d|
    return m


def _farthest_pair(points: np.ndarray):
    """Indices (into ``points``) of the two points farthest apart."""
    candidates = np.arange(len(points))
    if len(points) > 3:
        try:
            candidates = ConvexHull(points).vertices
        except QhullError:  # collinear points: the extremes along the line
            direction = points[np.argmax(np.linalg.norm(points - points[0], axis=1))] - points[0]
            proj = points @ direction
            return int(np.argmin(proj)), int(np.argmax(proj))
    pts = points[candidates]
    d = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    return int(candidates[i]), int(candidates[j])


def axial_diameters(pixels: np.ndarray, plane: np.ndarray):
    """Longest diameter and perpendicular diameter (mm) of pixels on one slice.

    ``pixels`` are (n, 2) in-plane voxel indices, ``plane`` the 2x2 index->mm matrix.
    See the module docstring for the definition.
    """
    pts = np.unique(np.asarray(pixels, dtype=np.float64), axis=0) @ plane.T
    if len(pts) == 0:
        return 0.0, 0.0
    i, j = _farthest_pair(pts)
    length = float(np.linalg.norm(pts[j] - pts[i]))
    if length == 0.0:  # a single pixel: its inscribed ellipse's axes
        sv = np.linalg.svd(plane, compute_uv=False)
        return float(sv[0]), float(sv[-1])
    u = (pts[j] - pts[i]) / length
    v = np.array([-u[1], u[0]])
    width = lambda d: float(np.linalg.norm(plane.T @ d))  # noqa: E731  (pixel width along d)
    proj = pts @ v
    return length + width(u), float(proj.max() - proj.min()) + width(v)


# ------------------------------------------------------------------------- report


def lesion_report(
    label: np.ndarray,
    affine: np.ndarray,
    image_hu: Optional[np.ndarray] = None,
    lesion_prob: Optional[np.ndarray] = None,
    min_volume_ml: float = 0.0,
    axial_axis: Optional[int] = None,
) -> Dict[str, Any]:
    """Liver/lesion volumes (mL), tumour burden (%) and the lesions, largest first.

    Returns ``liver_volume_ml``, ``lesion_volume_ml`` (all lesion voxels),
    ``tumour_burden_percent``, ``n_lesions`` (listed), ``n_lesions_below_min_volume``,
    ``min_lesion_volume_ml``, ``voxel_spacing_mm`` (per array axis), ``axial_axis`` and
    ``lesions``: a list of dicts with ``id``, ``volume_ml``, ``n_voxels``,
    ``centroid_mm``, ``centroid_voxel``, ``click_voxel``, ``longest_axial_diameter_mm``,
    ``perpendicular_diameter_mm``, ``axial_slice``, ``n_slices``, ``mean_hu``,
    ``mean_confidence``. Definitions in the module docstring.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be 3D, got shape {label.shape}")
    affine = _check_affine(affine)
    for name, arr in (("image_hu", image_hu), ("lesion_prob", lesion_prob)):
        if arr is not None and np.shape(arr) != label.shape:
            raise ValueError(f"{name} shape {np.shape(arr)} differs from label shape {label.shape}")
    ax = axial_axis_from_affine(affine) if axial_axis is None else int(axial_axis)
    if ax not in (0, 1, 2):
        raise ValueError(f"axial_axis must be 0, 1 or 2, got {axial_axis}")
    inplane = [a for a in range(3) if a != ax]
    plane = _plane_matrix(affine, inplane)
    vox_ml = voxel_volume_ml(affine)
    spacing = voxel_spacing(affine)

    lesion = label == LABELS["lesion"]
    lesion_voxels = int(np.count_nonzero(lesion))
    liver_voxels = int(np.count_nonzero(label == LABELS["liver"])) + lesion_voxels
    # components labelled on the lesions' bounding box: a full-volume int32 label map is 400 MB at
    # 512x512x400 (and the labelling 10x slower)
    region = bounding_box(lesion) or tuple(slice(0, 1) for _ in range(3))  # one background voxel
    comps, n = ndimage.label(lesion[region], structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    kept = [k for k in range(1, n + 1) if sizes[k] * vox_ml >= min_volume_ml]
    kept.sort(key=lambda k: (-sizes[k], k))
    local_boxes = ndimage.find_objects(comps)

    lesions: List[Dict[str, Any]] = []
    for rank, k in enumerate(kept, start=1):
        local = local_boxes[k - 1]
        box = tuple(slice(b.start + r.start, b.stop + r.start) for b, r in zip(local, region))  # in ``label``
        inside = comps[local] == k
        idx = np.argwhere(inside) + np.array([s.start for s in box])
        centroid_vox = idx.mean(axis=0)
        centroid = affine[:3, :3] @ centroid_vox + affine[:3, 3]
        click = interior_voxel(inside, spacing, centroid_vox - [s.start for s in box]) + [s.start for s in box]
        order = np.argsort(idx[:, ax], kind="stable")
        idx = idx[order]
        slices, starts = np.unique(idx[:, ax], return_index=True)
        best = (-1.0, 0.0, int(slices[0]))
        for z, pix in zip(slices, np.split(idx[:, inplane], starts[1:])):
            long_d, short_d = axial_diameters(pix, plane)
            if long_d > best[0]:
                best = (long_d, short_d, int(z))
        mean_hu = None if image_hu is None else float(np.asarray(image_hu)[box][inside].mean(dtype=np.float64))
        mean_conf = None if lesion_prob is None else float(np.asarray(lesion_prob)[box][inside].mean(dtype=np.float64))
        lesions.append(
            {
                "id": rank,
                "volume_ml": round(float(sizes[k]) * vox_ml, 4),
                "n_voxels": int(sizes[k]),
                "centroid_mm": [round(float(c), 2) for c in centroid],
                "centroid_voxel": [round(float(c), 2) for c in centroid_vox],
                "click_voxel": [int(c) for c in click],
                "longest_axial_diameter_mm": round(best[0], 2),
                "perpendicular_diameter_mm": round(best[1], 2),
                "axial_slice": best[2],
                "n_slices": int(len(slices)),
                "mean_hu": None if mean_hu is None else round(mean_hu, 1),
                "mean_confidence": None if mean_conf is None else round(mean_conf, 4),
            }
        )
    liver_ml, lesion_ml = liver_voxels * vox_ml, lesion_voxels * vox_ml
    return {
        "liver_volume_ml": round(liver_ml, 3),
        "lesion_volume_ml": round(lesion_ml, 4),
        "tumour_burden_percent": round(100.0 * lesion_ml / liver_ml, 4) if liver_ml > 0 else 0.0,
        "n_lesions": len(lesions),
        "n_lesions_below_min_volume": int(n - len(kept)),
        "min_lesion_volume_ml": float(min_volume_ml),
        "voxel_spacing_mm": [round(float(s), 4) for s in voxel_spacing(affine)],
        "axial_axis": ax,
        "lesions": lesions,
    }


def interior_voxel(mask: np.ndarray, spacing: Sequence[float], near: Sequence[float]) -> np.ndarray:
    """The index of ``mask``'s voxel farthest (in mm) from its border, the nearest to ``near`` among equals."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    deepest = np.argwhere(depth == depth.max())
    return deepest[np.argmin(np.linalg.norm((deepest - np.asarray(near)) * spacing, axis=1))]


def in_file_voxels(report: Dict[str, Any], affine: np.ndarray, file_affine: np.ndarray) -> Dict[str, Any]:
    """``report`` computed on a label reoriented from a file (``affine``: the reoriented voxel->world,
    ``file_affine``: the file's), with its voxel quantities (``centroid_voxel``, ``click_voxel``, ``axial_slice``,
    ``axial_axis``, ``voxel_spacing_mm``) given in the file's own voxel order, as a viewer shows them.
    World quantities do not change."""
    to_file = np.linalg.inv(_check_affine(file_affine)) @ _check_affine(affine)  # voxel -> file voxel
    ax = int(report["axial_axis"])
    file_ax = int(np.argmax(np.abs(to_file[:3, ax])))
    out = dict(report, axial_axis=file_ax, voxel_spacing_mm=[round(float(s), 4) for s in voxel_spacing(file_affine)])
    out["lesions"] = []
    for les in report["lesions"]:
        v = to_file[:3, :3] @ np.asarray(les["centroid_voxel"], dtype=np.float64) + to_file[:3, 3]
        z = int(round(float(to_file[file_ax, ax] * les["axial_slice"] + to_file[file_ax, 3])))
        click = to_file[:3, :3] @ np.asarray(les["click_voxel"], dtype=np.float64) + to_file[:3, 3]
        out["lesions"].append(dict(les, centroid_voxel=[round(float(c), 2) for c in v], axial_slice=z,
                                   click_voxel=[int(round(float(c))) for c in click]))
    return out


# ----------------------------------------------------------------------- rendering


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report_to_markdown(report: Dict[str, Any], name: Optional[str] = None) -> str:
    """A Markdown section: volumes and burden, then one table row per lesion."""
    lines = [f"### Lesion report{': ' + name if name else ''}", ""]
    dropped = report.get("n_lesions_below_min_volume", 0)
    lines.append(
        f"Liver {report['liver_volume_ml']:.1f} mL (including lesions), lesions {report['lesion_volume_ml']:.2f} mL, "
        f"tumour burden {report['tumour_burden_percent']:.2f} %; {report['n_lesions']} lesion(s)"
        + (f", {dropped} smaller than {report['min_lesion_volume_ml']:g} mL not listed" if dropped else "")
        + "."
    )
    lines.append("")
    if not report["lesions"]:
        lines += ["No lesion.", ""]
        return "\n".join(lines)
    lines += [
        "| # | volume mL | longest axial × perpendicular mm | axial slice | slices | centroid mm (x, y, z) "
        "| mean HU | confidence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for les in report["lesions"]:
        centroid = ", ".join(f"{c:.1f}" for c in les["centroid_mm"])
        lines.append(
            f"| {les['id']} | {les['volume_ml']:.2f} | {les['longest_axial_diameter_mm']:.1f} × "
            f"{les['perpendicular_diameter_mm']:.1f} | {les['axial_slice']} | {les['n_slices']} | ({centroid}) | "
            f"{_fmt(les.get('mean_hu'))} | {_fmt(les.get('mean_confidence'), 3)} |"
        )
    lines.append("")
    return "\n".join(lines)


def report_to_rows(report: Dict[str, Any], name: Optional[str] = None) -> List[Dict[str, Any]]:
    """CSV rows (keys ``REPORT_CSV_FIELDS``): one per lesion, or one with empty lesion
    fields when there is none, each repeating the case's volumes and burden."""
    case = {
        "case": name or "",
        "liver_volume_ml": report["liver_volume_ml"],
        "lesion_volume_ml": report["lesion_volume_ml"],
        "tumour_burden_percent": report["tumour_burden_percent"],
        "n_lesions": report["n_lesions"],
    }
    if not report["lesions"]:
        return [{f: case.get(f) for f in REPORT_CSV_FIELDS}]
    rows = []
    for les in report["lesions"]:
        x, y, z = les["centroid_mm"]
        row = dict(case, lesion_id=les["id"], centroid_x_mm=x, centroid_y_mm=y, centroid_z_mm=z)
        row.update({f: les.get(f) for f in REPORT_CSV_FIELDS if f in les})
        rows.append({f: row.get(f) for f in REPORT_CSV_FIELDS})
    return rows
