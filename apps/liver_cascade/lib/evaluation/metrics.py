"""LiTS challenge metrics (Bilic et al., "The Liver Tumor Segmentation Benchmark (LiTS)").

Classes (label values from ``lib.settings.LABELS``):

- **liver** = liver *including* lesions (``label in {liver, lesion}``, i.e. ``label >= 1``
  as in LiTS);
- **lesion** = ``label == lesion``.

Per case and class, with P the predicted mask and R the reference mask:

- Dice = 2|P∩R| / (|P| + |R|). Both empty: 1 (the LiTS convention for lesion-free
  cases; applied to the liver too).
- Jaccard = |P∩R| / |P∪R| (both empty: 1); VOE = 1 - Jaccard.
- RVD = (|P| - |R|) / |R| (signed; NaN when R is empty, the ratio being undefined).
- ASSD and MSD in millimetres. The surface S(X) of a mask is its boundary voxels,
  X minus its binary erosion with the 3D connectivity-1 structure (6-neighbourhood;
  voxels on the array border count as boundary). With d(s, S) the Euclidean distance
  in mm (``distance_transform_edt(sampling=spacing)``) from voxel centre s to the
  nearest voxel centre of S::

      ASSD = (sum_{s in S(P)} d(s, S(R)) + sum_{s in S(R)} d(s, S(P))) / (|S(P)| + |S(R)|)
      MSD  = max(max_{s in S(P)} d(s, S(R)), max_{s in S(R)} d(s, S(P)))   (Hausdorff)

  Both masks empty: 0 (perfect agreement). Exactly one empty: ``inf`` (undefined;
  ``summarize`` leaves such cases out of the means and counts them). Note that the
  original LiTS script scored 0 in that case, which rewards missing a lesion.
  Distances are computed on the bounding box around both masks (padded by one voxel),
  which gives the same result as on the full volume.
- Tumour burden = |lesion| / |liver| (liver including lesions; 0 for an empty liver);
  tumour burden error = |burden(P) - burden(R)|.

Lesion detection (per case, pooled over cases by ``summarize``): lesions are 3D
connected components of the lesion mask (26-connectivity). Matching is merge-aware,
in the spirit of the LiTS ``detect_lesions``: predicted and reference components that
overlap are linked, and each connected group of linked components (a bipartite graph
component: one prediction spanning two reference lesions, two predictions splitting
one lesion, ...) is scored as one merged object with
IoU = |∪P_g ∩ ∪R_g| / |∪P_g ∪ ∪R_g|. At threshold t, a group with IoU > t counts all
its reference lesions as detected and all its predicted components as true positives::

    recall    = detected reference lesions / reference lesions
    precision = true-positive predicted components / predicted components

reported at IoU > 0.5 (key suffix ``iou0.5``) and IoU > 0 (any overlap, ``iou0``).
Recall is NaN without reference lesions, precision NaN without predicted ones.
(LiTS merges a reference lesion only into the prediction overlapping it most and
counts false positives as #predicted - #detected; the group rule is simpler and keeps
precision within [0, 1]. For isolated lesions both rules agree.)
"""

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lib.settings import LABELS

CLASSES: Tuple[str, ...] = ("liver", "lesion")
IOU_THRESHOLDS: Tuple[float, ...] = (0.5, 0.0)
PER_CASE_METRICS: Tuple[str, ...] = ("dice", "jaccard", "voe", "rvd", "assd_mm", "msd_mm")


# --------------------------------------------------------------------------- masks


def liver_mask(label: np.ndarray) -> np.ndarray:
    """Liver including lesions (LiTS: ``label >= 1``)."""
    label = np.asarray(label)
    return (label == LABELS["liver"]) | (label == LABELS["lesion"])


def lesion_mask(label: np.ndarray) -> np.ndarray:
    """Lesions only (``label == LABELS["lesion"]``)."""
    return np.asarray(label) == LABELS["lesion"]


CLASS_MASKS = {"liver": liver_mask, "lesion": lesion_mask}


def iou_key(threshold: float) -> str:
    """Key suffix of a detection threshold: 0.5 -> ``iou0.5``, 0 -> ``iou0``."""
    return f"iou{threshold:g}"


def _as_bool(*masks: np.ndarray) -> List[np.ndarray]:
    out = [np.asarray(m).astype(bool, copy=False) for m in masks]
    if any(m.shape != out[0].shape for m in out):
        raise ValueError(f"mask shapes differ: {[m.shape for m in out]}")
    return out


def bounding_box(mask: np.ndarray) -> Optional[Tuple[slice, ...]]:
    """Bounding box (slices) of the True voxels of ``mask``; None when it has none."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if len(hit) == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _spacing(spacing: Sequence[float], ndim: int) -> Tuple[float, ...]:
    sp = tuple(float(s) for s in np.ravel(spacing))
    if len(sp) != ndim or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing {sp} must be {ndim} positive numbers (mm per voxel along each array axis)")
    return sp


# ---------------------------------------------------------------- overlap metrics


def dice(pred: np.ndarray, ref: np.ndarray, empty: float = 1.0) -> float:
    """Dice = 2|P∩R| / (|P|+|R|); ``empty`` when both masks are empty."""
    p, r = _as_bool(pred, ref)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    return float(empty) if total == 0 else 2.0 * int(np.count_nonzero(p & r)) / total


def jaccard(pred: np.ndarray, ref: np.ndarray, empty: float = 1.0) -> float:
    """Jaccard = |P∩R| / |P∪R|; ``empty`` when both masks are empty."""
    p, r = _as_bool(pred, ref)
    union = int(np.count_nonzero(p | r))
    return float(empty) if union == 0 else int(np.count_nonzero(p & r)) / union


def voe(pred: np.ndarray, ref: np.ndarray) -> float:
    """Volumetric overlap error = 1 - Jaccard (0 when both masks are empty)."""
    return 1.0 - jaccard(pred, ref)


def rvd(pred: np.ndarray, ref: np.ndarray) -> float:
    """Relative volume difference (|P| - |R|) / |R|, signed; NaN when R is empty."""
    p, r = _as_bool(pred, ref)
    rs = int(np.count_nonzero(r))
    return float("nan") if rs == 0 else (int(np.count_nonzero(p)) - rs) / rs


@dataclass
class GlobalDice:
    """Accumulator of the LiTS global Dice: 2 Σ|P∩R| / Σ(|P|+|R|) over all volumes.

    ``update`` adds one volume's masks (and returns its per-case Dice); ``add`` adds
    precomputed counts. ``value`` is 1 while nothing has been seen in any volume.
    """

    intersection: int = 0
    size: int = 0  # Σ(|P| + |R|)

    def add(self, intersection: int, pred_size: int, ref_size: int) -> None:
        self.intersection += int(intersection)
        self.size += int(pred_size) + int(ref_size)

    def update(self, pred: np.ndarray, ref: np.ndarray) -> float:
        p, r = _as_bool(pred, ref)
        inter, ps, rs = int(np.count_nonzero(p & r)), int(np.count_nonzero(p)), int(np.count_nonzero(r))
        self.add(inter, ps, rs)
        return 1.0 if ps + rs == 0 else 2.0 * inter / (ps + rs)

    @property
    def value(self) -> float:
        return 1.0 if self.size == 0 else 2.0 * self.intersection / self.size


# -------------------------------------------------------------- surface distances


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion by the connectivity-1 structure.

    Voxels on the array border are boundary voxels (``border_value=0``).
    """
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """ASSD and MSD (Hausdorff) in mm between the surfaces of two masks.

    Returns ``{"assd": ..., "msd": ...}``: both 0 when both masks are empty, ``inf``
    when exactly one is empty (see the module docstring for the definitions).
    ``spacing`` is the voxel size in mm along each array axis.
    """
    p, r = _as_bool(pred, ref)
    sp = _spacing(spacing, p.ndim)
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return {"assd": 0.0, "msd": 0.0}
    if not has_p or not has_r:
        return {"assd": float("inf"), "msd": float("inf")}
    box = bounding_box(p | r)
    # Crop around both masks and pad with background: erosion treats the array border as
    # background, so masks touching the crop (or volume) border keep their boundary there.
    p, r = np.pad(p[box], 1), np.pad(r[box], 1)
    sp_p, sp_r = surface_voxels(p), surface_voxels(r)
    d_pr = ndimage.distance_transform_edt(~sp_r, sampling=sp)[sp_p]  # S(P) -> S(R)
    d_rp = ndimage.distance_transform_edt(~sp_p, sampling=sp)[sp_r]  # S(R) -> S(P)
    return {
        "assd": float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)),
        "msd": float(max(d_pr.max(), d_rp.max())),
    }


# ---------------------------------------------------------------- lesion detection


def connected_lesions(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """3D connected components with full (26-) connectivity: ``(labels, count)``."""
    mask = np.asarray(mask, dtype=bool)
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def detection(
    pred_lesion: np.ndarray, ref_lesion: np.ndarray, thresholds: Iterable[float] = IOU_THRESHOLDS
) -> Dict[str, float]:
    """Merge-aware lesion detection counts for one case (see the module docstring).

    Returns ``n_ref_lesions``, ``n_pred_lesions`` and, for each threshold t (key
    suffix ``iou{t:g}``): ``detected_…`` (reference lesions detected), ``tp_pred_…``
    (predicted components that are true positives), ``lesion_recall_…`` and
    ``lesion_precision_…`` (NaN when the denominator is 0).
    """
    p, r = _as_bool(pred_lesion, ref_lesion)
    if p.any() or r.any():  # components and overlaps only need the box around both masks
        box = bounding_box(p | r)
        p, r = p[box], r[box]
    pl, n_p = connected_lesions(p)
    rl, n_r = connected_lesions(r)
    out: Dict[str, float] = {"n_ref_lesions": int(n_r), "n_pred_lesions": int(n_p)}
    groups: List[Tuple[int, int, float]] = []  # (#reference, #predicted, IoU) per overlapping group
    if n_p and n_r:
        both = (pl > 0) & (rl > 0)
        size_r = np.bincount(rl.ravel(), minlength=n_r + 1)[1:]
        size_p = np.bincount(pl.ravel(), minlength=n_p + 1)[1:]
        pair = (rl[both].astype(np.int64) - 1) * n_p + (pl[both].astype(np.int64) - 1)
        ids, inter = np.unique(pair, return_counts=True)
        ri, pj = ids // n_p, ids % n_p
        # Bipartite overlap graph: nodes 0..n_r-1 are reference lesions, n_r.. predicted ones.
        graph = coo_matrix((np.ones(len(ids)), (ri, n_r + pj)), shape=(n_r + n_p, n_r + n_p))
        _, group = connected_components(graph, directed=False)
        g_ref, g_pred = group[:n_r], group[n_r:]
        g_inter = np.bincount(g_ref[ri], weights=inter, minlength=group.max() + 1)
        for g in np.unique(g_ref[ri]):  # groups with at least one overlap
            in_r, in_p = g_ref == g, g_pred == g
            union = size_r[in_r].sum() + size_p[in_p].sum() - g_inter[g]
            groups.append((int(in_r.sum()), int(in_p.sum()), float(g_inter[g] / union)))
    for t in thresholds:
        k = iou_key(t)
        det = sum(nr for nr, _, iou in groups if iou > t)
        tp = sum(npd for _, npd, iou in groups if iou > t)
        out[f"detected_{k}"] = int(det)
        out[f"tp_pred_{k}"] = int(tp)
        out[f"lesion_recall_{k}"] = det / n_r if n_r else float("nan")
        out[f"lesion_precision_{k}"] = tp / n_p if n_p else float("nan")
    return out


# ---------------------------------------------------------------- tumour burden


def tumour_burden(label: np.ndarray) -> float:
    """|lesion| / |liver including lesions|; 0 when the liver is empty."""
    liver = int(np.count_nonzero(liver_mask(label)))
    return 0.0 if liver == 0 else int(np.count_nonzero(lesion_mask(label))) / liver


# ---------------------------------------------------------------- per case, summary


def evaluate_case(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], distances: bool = True
) -> Dict[str, float]:
    """Every per-case LiTS metric for the liver and lesion classes of a label pair.

    ``pred`` and ``ref`` are label volumes (0 background, ``LABELS`` values) of the same
    shape; ``spacing`` is the voxel size in mm along each array axis (take it from the
    reference). ``distances=False`` skips ASSD/MSD (NaN) for speed.

    Keys, for ``c`` in ``liver``/``lesion``: ``c_dice``, ``c_jaccard``, ``c_voe``,
    ``c_rvd``, ``c_assd_mm``, ``c_msd_mm``, ``c_intersection``, ``c_pred_voxels``,
    ``c_ref_voxels`` (voxel counts, for the global Dice), ``c_pred_ml``, ``c_ref_ml``;
    the detection keys of :func:`detection`; ``tumour_burden_pred``,
    ``tumour_burden_ref`` and ``tumour_burden_error``.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    sp = _spacing(spacing, ref.ndim)
    voxel_ml = float(np.prod(sp)) / 1000.0
    out: Dict[str, float] = {}
    for name in CLASSES:
        p, r = CLASS_MASKS[name](pred), CLASS_MASKS[name](ref)
        inter, ps, rs = int(np.count_nonzero(p & r)), int(np.count_nonzero(p)), int(np.count_nonzero(r))
        union = ps + rs - inter
        out[f"{name}_dice"] = 1.0 if ps + rs == 0 else 2.0 * inter / (ps + rs)
        out[f"{name}_jaccard"] = 1.0 if union == 0 else inter / union
        out[f"{name}_voe"] = 1.0 - out[f"{name}_jaccard"]
        out[f"{name}_rvd"] = float("nan") if rs == 0 else (ps - rs) / rs
        if distances:
            sd = surface_distances(p, r, sp)
            out[f"{name}_assd_mm"], out[f"{name}_msd_mm"] = sd["assd"], sd["msd"]
        else:
            out[f"{name}_assd_mm"] = out[f"{name}_msd_mm"] = float("nan")
        out[f"{name}_intersection"], out[f"{name}_pred_voxels"], out[f"{name}_ref_voxels"] = inter, ps, rs
        out[f"{name}_pred_ml"], out[f"{name}_ref_ml"] = ps * voxel_ml, rs * voxel_ml
    out.update(detection(lesion_mask(pred), lesion_mask(ref)))
    out["tumour_burden_pred"] = tumour_burden(pred)
    out["tumour_burden_ref"] = tumour_burden(ref)
    out["tumour_burden_error"] = abs(out["tumour_burden_pred"] - out["tumour_burden_ref"])
    return out


def _finite(values: Iterable) -> np.ndarray:
    v = np.array([x for x in values if x is not None], dtype=float)
    return v[np.isfinite(v)]


def _mean(values: Iterable) -> float:
    v = _finite(values)
    return float(v.mean()) if v.size else float("nan")


def summarize(cases: Sequence[Mapping[str, float]]) -> Dict[str, float]:
    """Aggregate :func:`evaluate_case` results over a data set.

    Keys, for ``c`` in ``liver``/``lesion``:

    - ``c_{dice,jaccard,voe,rvd,assd_mm,msd_mm}_per_case``: mean over cases of the
      finite values (NaN/inf cases are left out; ``c_n_excluded_rvd`` and
      ``c_n_excluded_assd_msd`` count them). ``c_dice_per_case`` is LiTS "Dice per case".
    - ``c_dice_global``: 2 Σ|P∩R| / Σ(|P|+|R|) over all cases (LiTS "Dice global").

    Detection pooled over all lesions of all cases: ``n_ref_lesions``,
    ``n_pred_lesions``, and per threshold ``detected_…``, ``tp_pred_…``,
    ``lesion_recall_…`` (Σdetected / Σreference lesions), ``lesion_precision_…``
    (Σtrue-positive / Σpredicted components), NaN without lesions.
    Tumour burden error: ``tumour_burden_error_mean``, ``_rmse`` and ``_max``.
    Plus ``n_cases``.
    """
    s: Dict[str, float] = {"n_cases": len(cases)}
    for name in CLASSES:
        for m in PER_CASE_METRICS:
            s[f"{name}_{m}_per_case"] = _mean(c[f"{name}_{m}"] for c in cases)
        acc = GlobalDice()
        for c in cases:
            acc.add(c[f"{name}_intersection"], c[f"{name}_pred_voxels"], c[f"{name}_ref_voxels"])
        s[f"{name}_dice_global"] = acc.value
        s[f"{name}_n_excluded_rvd"] = sum(not math.isfinite(c[f"{name}_rvd"]) for c in cases)
        s[f"{name}_n_excluded_assd_msd"] = sum(
            not (math.isfinite(c[f"{name}_assd_mm"]) and math.isfinite(c[f"{name}_msd_mm"])) for c in cases
        )
    n_ref = sum(int(c["n_ref_lesions"]) for c in cases)
    n_pred = sum(int(c["n_pred_lesions"]) for c in cases)
    s["n_ref_lesions"], s["n_pred_lesions"] = n_ref, n_pred
    for t in IOU_THRESHOLDS:
        k = iou_key(t)
        det = sum(int(c[f"detected_{k}"]) for c in cases)
        tp = sum(int(c[f"tp_pred_{k}"]) for c in cases)
        s[f"detected_{k}"], s[f"tp_pred_{k}"] = det, tp
        s[f"lesion_recall_{k}"] = det / n_ref if n_ref else float("nan")
        s[f"lesion_precision_{k}"] = tp / n_pred if n_pred else float("nan")
    tbe = _finite(c["tumour_burden_error"] for c in cases)
    s["tumour_burden_error_mean"] = float(tbe.mean()) if tbe.size else float("nan")
    s["tumour_burden_error_rmse"] = float(np.sqrt((tbe**2).mean())) if tbe.size else float("nan")
    s["tumour_burden_error_max"] = float(tbe.max()) if tbe.size else float("nan")
    return s
