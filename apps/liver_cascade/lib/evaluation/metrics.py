"""LiTS challenge metrics (Bilic et al., "The Liver Tumor Segmentation Benchmark").

Classes: liver = label >= 1 (liver including lesions), lesion = label == 2.

- Dice per case; for the lesion class a case with empty prediction and empty
  reference scores 1. ``summarize`` reports the mean over cases ("Dice per
  case") and the global Dice (sums of intersections and sizes over all cases).
- Jaccard, VOE = 1 - Jaccard, RVD = (|P| - |R|) / |R| (NaN when R is empty).
- ASSD and MSD (maximum symmetric surface distance, i.e. Hausdorff) in mm,
  from boundary voxels (mask minus its erosion, 3D connectivity 1) with
  ``scipy.ndimage.distance_transform_edt(sampling=spacing)``. Both empty: 0;
  exactly one empty: inf.
- Lesion detection: 3D connected components (26-connectivity). A reference
  lesion is detected at threshold t when some predicted component has
  IoU > t with it; a predicted component is a true positive when it has
  IoU > t with some reference lesion. Precision = TP_pred / #pred,
  recall = detected / #ref, at IoU > 0.5 and IoU > 0 (any overlap).
- Tumour burden error: |P_lesion / P_liver - R_lesion / R_liver|.
"""

from typing import Dict, List, Sequence

import numpy as np
from scipy import ndimage

from lib.settings import LABELS

CLASSES = {"liver": lambda x: x >= LABELS["liver"], "lesion": lambda x: x == LABELS["lesion"]}


def dice(p: np.ndarray, r: np.ndarray, empty: float = 1.0) -> float:
    p, r = p.astype(bool), r.astype(bool)
    s = int(p.sum()) + int(r.sum())
    return empty if s == 0 else 2.0 * int(np.logical_and(p, r).sum()) / s


def jaccard(p: np.ndarray, r: np.ndarray, empty: float = 1.0) -> float:
    p, r = p.astype(bool), r.astype(bool)
    u = int(np.logical_or(p, r).sum())
    return empty if u == 0 else int(np.logical_and(p, r).sum()) / u


def rvd(p: np.ndarray, r: np.ndarray) -> float:
    rs = int(r.astype(bool).sum())
    return float("nan") if rs == 0 else (int(p.astype(bool).sum()) - rs) / rs


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def surface_distances(p: np.ndarray, r: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """ASSD and MSD in mm between the boundaries of two masks."""
    p, r = p.astype(bool), r.astype(bool)
    if not p.any() and not r.any():
        return {"assd": 0.0, "msd": 0.0}
    if not p.any() or not r.any():
        return {"assd": float("inf"), "msd": float("inf")}
    box = ndimage.find_objects((p | r).astype(np.uint8))[0]
    box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
    p, r = p[box], r[box]
    pad = [(1, 1)] * 3  # so that masks touching the crop border still have a boundary
    p, r = np.pad(p, pad), np.pad(r, pad)
    sp, sr = _surface(p), _surface(r)
    dt_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    d_pr, d_rp = dt_r[sp], dt_p[sr]
    both = np.concatenate([d_pr, d_rp])
    return {"assd": float(both.mean()), "msd": float(both.max())}


def _components(mask):
    return ndimage.label(mask, structure=np.ones((3, 3, 3)))


def detection(p_lesion: np.ndarray, r_lesion: np.ndarray, thresholds=(0.5, 0.0)) -> Dict[str, float]:
    """Counts for lesion detection precision/recall at IoU > t (see module doc)."""
    pl, n_p = _components(p_lesion.astype(bool))
    rl, n_r = _components(r_lesion.astype(bool))
    iou = np.zeros((n_r, n_p))
    if n_r and n_p:
        both = (rl > 0) & (pl > 0)
        pairs, counts = np.unique(np.stack([rl[both], pl[both]]), axis=1, return_counts=True)
        size_r = np.bincount(rl.ravel(), minlength=n_r + 1)
        size_p = np.bincount(pl.ravel(), minlength=n_p + 1)
        for (i, j), inter in zip(pairs.T, counts):
            iou[i - 1, j - 1] = inter / (size_r[i] + size_p[j] - inter)
    out = {"n_ref_lesions": int(n_r), "n_pred_lesions": int(n_p)}
    for t in thresholds:
        key = f"iou{t:g}"
        out[f"detected_{key}"] = int((iou > t).any(1).sum()) if n_p else 0
        out[f"tp_pred_{key}"] = int((iou > t).any(0).sum()) if n_r else 0
    return out


def tumour_burden(label: np.ndarray) -> float:
    liver = int(CLASSES["liver"](label).sum())
    return 0.0 if liver == 0 else int(CLASSES["lesion"](label).sum()) / liver


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """Every per-case metric for liver and lesion; keys like ``liver_dice``."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    out: Dict[str, float] = {}
    for name, fn in CLASSES.items():
        p, r = fn(pred), fn(ref)
        out[f"{name}_dice"] = dice(p, r)
        out[f"{name}_jaccard"] = jaccard(p, r)
        out[f"{name}_voe"] = 1.0 - out[f"{name}_jaccard"]
        out[f"{name}_rvd"] = rvd(p, r)
        sd = surface_distances(p, r, spacing)
        out[f"{name}_assd_mm"], out[f"{name}_msd_mm"] = sd["assd"], sd["msd"]
        out[f"{name}_intersection"] = int(np.logical_and(p, r).sum())
        out[f"{name}_pred_voxels"], out[f"{name}_ref_voxels"] = int(p.sum()), int(r.sum())
    out.update(detection(CLASSES["lesion"](pred), CLASSES["lesion"](ref)))
    out["tumour_burden_pred"] = tumour_burden(pred)
    out["tumour_burden_ref"] = tumour_burden(ref)
    out["tumour_burden_error"] = abs(out["tumour_burden_pred"] - out["tumour_burden_ref"])
    return out


def _mean(values):
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return float(v.mean()) if len(v) else float("nan")


def summarize(cases: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean per-case metrics, global Dice, and pooled detection precision/recall."""
    s: Dict[str, float] = {"n_cases": len(cases)}
    for name in CLASSES:
        for m in ("dice", "jaccard", "voe", "rvd", "assd_mm", "msd_mm"):
            s[f"{name}_{m}_per_case"] = _mean([c[f"{name}_{m}"] for c in cases])
        inter = sum(c[f"{name}_intersection"] for c in cases)
        size = sum(c[f"{name}_pred_voxels"] + c[f"{name}_ref_voxels"] for c in cases)
        s[f"{name}_dice_global"] = 1.0 if size == 0 else 2.0 * inter / size
    n_ref = sum(c["n_ref_lesions"] for c in cases)
    n_pred = sum(c["n_pred_lesions"] for c in cases)
    for key in ("iou0.5", "iou0"):
        det = sum(c[f"detected_{key}"] for c in cases)
        tp = sum(c[f"tp_pred_{key}"] for c in cases)
        s[f"lesion_recall_{key}"] = float("nan") if n_ref == 0 else det / n_ref
        s[f"lesion_precision_{key}"] = float("nan") if n_pred == 0 else tp / n_pred
    s["tumour_burden_error_mean"] = _mean([c["tumour_burden_error"] for c in cases])
    return s
