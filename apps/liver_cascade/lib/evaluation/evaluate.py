"""Evaluate a folder of predicted label volumes against references with the LiTS metrics.

From the app folder (apps/liver_cascade)::

    python -m lib.evaluation.evaluate --pred PRED_DIR --ref REF_DIR --out OUT_DIR \\
        [--layout auto|lits|datastore] [--report [--images IMAGE_DIR] [--min-lesion-ml V]] \\
        [--title TEXT] [--require-all] [--no-distances]

or from anywhere as ``python apps/liver_cascade/lib/evaluation/evaluate.py ...``.

Layouts (NIfTI, ``.nii.gz`` or ``.nii``; predictions and references are matched by
file name):

- ``lits``: references ``segmentation-N`` (searched recursively, e.g. in the
  "Training Batch" folders); predictions ``segmentation-N``, ``test-segmentation-N``,
  ``volume-N`` or ``test-volume-N`` in PRED_DIR; images (``--images``) ``volume-N``.
- ``datastore``: references ``REF_DIR/labels/final/NAME`` (a MONAI Label datastore)
  or, without that folder, ``REF_DIR/NAME_label`` beside ``REF_DIR/NAME`` when such
  pairs are there, else every ``REF_DIR/NAME``; predictions ``PRED_DIR/NAME``; images
  ``IMAGE_DIR/NAME``.
- ``auto`` (default): ``datastore`` if REF_DIR has ``labels/final``, else ``lits`` if
  it holds ``segmentation-N`` files, else ``datastore``.

Shapes must match (error otherwise); the voxel spacing comes from the reference
header; a prediction stored in another voxel order on the same grid (e.g. LPS against
RAS) is reoriented to the reference's; one on another grid is evaluated voxel-wise with a
warning. Labels must hold 0, 1 and 2 only (error otherwise: 3, 0.6 or HU are not labels). References without a prediction are listed and skipped (``--require-all``
makes them an error).

Writes to OUT_DIR: ``per_case.csv`` (every metric of ``lib.evaluation.metrics.
evaluate_case`` per case), ``summary.json`` (``summarize`` plus run details and the
per-case rows; NaN/inf written as null), ``summary.md`` (Markdown tables) and, with
``--report``, ``lesion_report.csv`` / ``lesion_report.md`` for every predicted volume
(mean HU when ``--images`` is given).
"""

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if not __package__:  # run as a script: make the app folder importable, as MONAI Label does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from lib.evaluation.lesion_report import (  # noqa: E402
    REPORT_CSV_FIELDS,
    lesion_report,
    report_to_markdown,
    report_to_rows,
)
from lib.evaluation.metrics import IOU_THRESHOLDS, evaluate_case, iou_key, summarize  # noqa: E402
from lib.validation import InputError, check_label_array, in_axis_order_of  # noqa: E402

LAYOUTS = ("auto", "lits", "datastore")
NIFTI_EXTS = (".nii.gz", ".nii")
LABEL_SUFFIX = "_label"  # a flat folder of images and labels: X.nii.gz with X_label.nii.gz
_LITS_REF = re.compile(r"segmentation-(\d+)")
_LITS_PRED = re.compile(r"(test-)?(segmentation|volume)-(\d+)")
_LITS_IMAGE = re.compile(r"(?:test-)?volume-(\d+)")
# when several prediction files share a LiTS case number, the first kind wins
_LITS_PRED_PREFERENCE = ("segmentation", "test-segmentation", "volume", "test-volume")


@dataclass
class Case:
    """One reference/prediction pair; ``key`` is the LiTS number or the datastore name."""

    key: str
    name: str
    ref: Path
    pred: Path


# ------------------------------------------------------------------------- finding


def nifti_stem(path: Path) -> Optional[str]:
    """File name without ``.nii.gz``/``.nii``; None for other files."""
    name = Path(path).name
    for ext in NIFTI_EXTS:
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return None


def _nifti_files(folder: Path, recursive: bool = False) -> List[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and nifti_stem(p))


def detect_layout(ref_dir) -> str:
    """``datastore`` if REF_DIR/labels/final exists, ``lits`` if it holds segmentation-N files."""
    ref_dir = Path(ref_dir)
    if (ref_dir / "labels" / "final").is_dir():
        return "datastore"
    if any(_LITS_REF.fullmatch(nifti_stem(p)) for p in _nifti_files(ref_dir, recursive=True)):
        return "lits"
    return "datastore"


def _sort_key(layout: str, key: str):
    return (int(key), "") if layout == "lits" else (0, key)


def find_references(ref_dir, layout: str) -> Dict[str, Path]:
    """Reference label files by case key (see the module docstring for the layouts)."""
    ref_dir = Path(ref_dir)
    refs: Dict[str, Path] = {}
    if layout == "lits":
        for p in _nifti_files(ref_dir, recursive=True):
            m = _LITS_REF.fullmatch(nifti_stem(p))
            if m:
                key = str(int(m.group(1)))
                if key in refs:
                    raise ValueError(f"two references for LiTS case {key}: {refs[key]} and {p}")
                refs[key] = p
    elif layout == "datastore":
        folder = ref_dir / "labels" / "final"
        files = _nifti_files(folder if folder.is_dir() else ref_dir)
        paired = [] if folder.is_dir() else [p for p in files if nifti_stem(p).endswith(LABEL_SUFFIX)]
        for p in paired or files:  # a flat folder of X and X_label: the labels, by their image's name
            refs[nifti_stem(p)[: -len(LABEL_SUFFIX)] if paired else nifti_stem(p)] = p
    else:
        raise ValueError(f"layout must be lits or datastore, got {layout!r}")
    return refs


def find_predictions(pred_dir, layout: str, warnings: Optional[List[str]] = None) -> Dict[str, Path]:
    """Prediction files in PRED_DIR (not recursive) by case key."""
    preds: Dict[str, Path] = {}
    if layout == "lits":
        ranked: Dict[str, Tuple[int, Path]] = {}
        for p in _nifti_files(Path(pred_dir)):
            m = _LITS_PRED.fullmatch(nifti_stem(p))
            if not m:
                if warnings is not None:  # seg-1.nii.gz was skipped without a word
                    warnings.append(f"{p.name}: not a LiTS prediction name ((test-)segmentation-N or "
                                    "(test-)volume-N), not evaluated")
                continue
            key = str(int(m.group(3)))
            rank = _LITS_PRED_PREFERENCE.index((m.group(1) or "") + m.group(2))
            if key in ranked:
                kept = min(ranked[key], (rank, p))
                if warnings is not None:
                    warnings.append(f"case {key}: several predictions, using {kept[1].name}")
                ranked[key] = kept
            else:
                ranked[key] = (rank, p)
        preds = {k: p for k, (_, p) in ranked.items()}
    elif layout == "datastore":
        preds = {nifti_stem(p): p for p in _nifti_files(Path(pred_dir))}
    else:
        raise ValueError(f"layout must be lits or datastore, got {layout!r}")
    return preds


def match_cases(pred_dir, ref_dir, layout: str = "auto", warnings: Optional[List[str]] = None):
    """Pair predictions with references by file name.

    Returns ``(layout, cases, missing, unmatched)``: the layout used, the matched
    :class:`Case` list (sorted), and ``(key, path)`` lists of the reference files
    without a prediction and of the prediction files without a reference.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        layout = detect_layout(ref_dir)
    refs = find_references(ref_dir, layout)
    preds = find_predictions(pred_dir, layout, warnings)
    keys = sorted(set(refs) & set(preds), key=lambda k: _sort_key(layout, k))
    cases = [Case(k, nifti_stem(refs[k]), refs[k], preds[k]) for k in keys]
    missing = [(k, refs[k]) for k in sorted(set(refs) - set(preds), key=lambda k: _sort_key(layout, k))]
    unmatched = [(k, preds[k]) for k in sorted(set(preds) - set(refs), key=lambda k: _sort_key(layout, k))]
    return layout, cases, missing, unmatched


def find_images(images_dir, layout: str) -> Dict[str, Path]:
    """CT images by case key: ``volume-N`` (lits, recursive) or ``NAME`` (datastore)."""
    images: Dict[str, Path] = {}
    for p in _nifti_files(Path(images_dir), recursive=(layout == "lits")):
        stem = nifti_stem(p)
        if layout == "lits":
            m = _LITS_IMAGE.fullmatch(stem)
            if m:
                images.setdefault(str(int(m.group(1))), p)
        else:
            images[stem] = p
    return images


# ------------------------------------------------------------------------- loading


def load_label_volume(path) -> Tuple[np.ndarray, nib.spatialimages.SpatialImage]:
    """A NIfTI label as a 3D uint8 array (values rounded), with its image (header/affine)."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # not NIfTI, truncated, a bad gzip: the file's fault, said in one line
        raise ValueError(f"{path}: cannot be read as NIfTI: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D label volume, got shape {data.shape}")
    try:  # 1.0 == 1; NaN, 0.6, 3, -1 are not labels
        check_label_array(data)
    except InputError as e:
        raise ValueError(f"{path}: a LiTS label holds 0, 1 and 2 only: {e}") from None
    return data.astype(np.uint8), img


def on_reference_grid(pred: np.ndarray, pred_affine, ref_affine):
    """``pred`` in the reference's voxel order when it is the same grid stored with other axis order or
    directions (an LPS file against RAS references), else None."""
    ornt, affine, _ = in_axis_order_of(pred_affine, pred.shape, ref_affine)
    if _affines_differ(affine, ref_affine):
        return None
    return np.ascontiguousarray(nib.orientations.apply_orientation(pred, ornt))


def _affines_differ(a: np.ndarray, b: np.ndarray) -> bool:
    return not np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=1e-2, rtol=1e-4)


# ------------------------------------------------------------------------- output


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, bool, np.bool_)):
        return obj.item() if isinstance(obj, np.generic) else obj
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _pct(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def _num(v, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return f"{v:.{digits}f}"


def summary_markdown(summary: Dict[str, Any], rows: Sequence[Dict[str, Any]], title: str = "") -> str:
    """Markdown: the LiTS metric table, detection, tumour burden, then one row per case."""
    s = summary
    lines = [f"### {title or 'LiTS evaluation'}", ""]
    lines.append(f"{s['n_cases']} case(s)" + (f", layout {s['layout']}" if s.get("layout") else "") + ".")
    lines += ["", "| metric | liver | lesion |", "|---|---|---|"]
    for key, label in (
        ("dice_per_case", "Dice per case %"),
        ("dice_global", "Dice global %"),
        ("jaccard_per_case", "Jaccard per case %"),
        ("voe_per_case", "VOE %"),
        ("rvd_per_case", "RVD %"),
    ):
        lines.append(f"| {label} | {_pct(s['liver_' + key])} | {_pct(s['lesion_' + key])} |")
    lines.append(f"| ASSD mm | {_num(s['liver_assd_mm_per_case'])} | {_num(s['lesion_assd_mm_per_case'])} |")
    lines.append(f"| MSD mm | {_num(s['liver_msd_mm_per_case'])} | {_num(s['lesion_msd_mm_per_case'])} |")
    excluded = [
        f"{c} {what}: {s[f'{c}_n_excluded_{k}']}"
        for c in ("liver", "lesion")
        for k, what in (("rvd", "RVD (empty reference)"), ("assd_msd", "ASSD/MSD (one mask empty)"))
        if s.get(f"{c}_n_excluded_{k}")
    ]
    if excluded:
        lines += ["", "Cases left out of the means: " + "; ".join(excluded) + "."]
    heads = " | ".join(f"IoU > {t:g}" for t in IOU_THRESHOLDS)
    lines += ["", f"| lesion detection ({s['n_ref_lesions']} reference, {s['n_pred_lesions']} predicted) | {heads} |",
              "|---|" + "---|" * len(IOU_THRESHOLDS)]
    lines.append("| precision % (true-positive / predicted) | " + " | ".join(
        f"{_pct(s[f'lesion_precision_{iou_key(t)}'])} ({s[f'tp_pred_{iou_key(t)}']}/{s['n_pred_lesions']})"
        for t in IOU_THRESHOLDS) + " |")
    lines.append("| recall % (detected / reference) | " + " | ".join(
        f"{_pct(s[f'lesion_recall_{iou_key(t)}'])} ({s[f'detected_{iou_key(t)}']}/{s['n_ref_lesions']})"
        for t in IOU_THRESHOLDS) + " |")
    lines += ["", f"Tumour burden error: mean {_num(s['tumour_burden_error_mean'], 4)}, "
              f"RMSE {_num(s['tumour_burden_error_rmse'], 4)}, max {_num(s['tumour_burden_error_max'], 4)}.", ""]
    k5 = iou_key(0.5)
    lines += ["| case | liver Dice % | lesion Dice % | liver ASSD mm | liver MSD mm | lesion ASSD mm | "
              "lesions ref / pred / detected (IoU > 0.5) | tumour burden error |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['case']} | {_pct(r['liver_dice'])} | {_pct(r['lesion_dice'])} | {_num(r['liver_assd_mm'])} | "
            f"{_num(r['liver_msd_mm'])} | {_num(r['lesion_assd_mm'])} | "
            f"{r['n_ref_lesions']} / {r['n_pred_lesions']} / {r[f'detected_{k5}']} | "
            f"{_num(r['tumour_burden_error'], 4)} |"
        )
    for key, label in (("missing_predictions", "References without a prediction"),
                       ("unmatched_predictions", "Predictions without a reference"), ("warnings", "Warnings")):
        if s.get(key):
            lines += ["", f"{label}: " + ", ".join(str(x) for x in s[key]) + "."]
    lines.append("")
    return "\n".join(lines)


def _write_csv(path: Path, rows: Sequence[Dict[str, Any]], fields: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------------------- core


def evaluate_folders(
    pred_dir,
    ref_dir,
    out_dir,
    report: bool = False,
    images=None,
    title: str = "",
    *,
    layout: str = "auto",
    min_lesion_ml: float = 0.0,
    require_all: bool = False,
    distances: bool = True,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Evaluate every prediction in ``pred_dir`` that matches a reference in ``ref_dir``.

    Writes ``per_case.csv``, ``summary.json``, ``summary.md`` (and, with ``report``,
    ``lesion_report.csv``/``.md`` for every predicted volume, mean HU from the images
    in ``images``) to ``out_dir`` and returns the summary: the keys of
    :func:`lib.evaluation.metrics.summarize` plus ``layout``, ``pred_dir``, ``ref_dir``,
    ``missing_predictions``, ``unmatched_predictions``, ``warnings``, ``outputs`` (file
    paths) and ``cases`` (the per-case rows: ``case``, ``reference``, ``prediction``
    and the keys of :func:`evaluate_case`). Raises ValueError when nothing matches, a
    shape differs, or (``require_all``) a reference has no prediction.
    """
    warnings: List[str] = []
    layout, cases, missing, unmatched = match_cases(pred_dir, ref_dir, layout, warnings)
    if not cases:
        raise ValueError(f"no prediction in {pred_dir} matches a reference in {ref_dir} (layout {layout})")
    if missing and require_all:
        raise ValueError(f"{len(missing)} reference(s) without a prediction: " + ", ".join(p.name for _, p in missing))
    image_files = find_images(images, layout) if (report and images) else {}

    def hu_for(key: str, label_shape) -> Optional[np.ndarray]:
        path = image_files.get(key)
        if path is None:
            if images:
                warnings.append(f"{key}: no image in {images}, no mean HU")
            return None
        img = nib.load(str(path))
        if img.shape[:3] != tuple(label_shape):
            warnings.append(f"{key}: image {path.name} shape {img.shape} differs from the prediction, no mean HU")
            return None
        return np.asarray(img.dataobj, dtype=np.float32).reshape(label_shape)

    rows: List[Dict[str, Any]] = []
    reports: List[Tuple[str, Dict[str, Any]]] = []
    for case in cases:
        ref, ref_img = load_label_volume(case.ref)
        pred, pred_img = load_label_volume(case.pred)
        pred_affine = pred_img.affine
        if _affines_differ(pred_affine, ref_img.affine):
            moved = on_reference_grid(pred, pred_affine, ref_img.affine)
            if moved is not None:  # the same voxels in another order: compared where they are
                pred, pred_affine = moved, ref_img.affine
                warnings.append(f"{case.name}: prediction stored in another voxel order, reoriented to the reference's")
            else:
                warnings.append(f"{case.name}: prediction affine differs from the reference's (evaluated voxel-wise)")
        if pred.shape != ref.shape:
            raise ValueError(
                f"{case.name}: prediction {case.pred} has shape {pred.shape}, reference {case.ref} has {ref.shape}"
            )
        spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
        row: Dict[str, Any] = {"case": case.name, "reference": case.ref.name, "prediction": case.pred.name}
        row.update(evaluate_case(pred, ref, spacing, distances=distances))
        rows.append(row)
        if verbose:
            print(f"{case.name}: liver Dice {_pct(row['liver_dice'])} %, lesion Dice {_pct(row['lesion_dice'])} %",
                  file=sys.stderr, flush=True)
        if report:
            reports.append((case.name, lesion_report(pred, pred_affine, image_hu=hu_for(case.key, pred.shape),
                                                     min_volume_ml=min_lesion_ml)))
    if report:  # every predicted volume, also those without a reference
        for key, path in unmatched:
            pred, pred_img = load_label_volume(path)
            reports.append((nifti_stem(path), lesion_report(pred, pred_img.affine, image_hu=hu_for(key, pred.shape),
                                                            min_volume_ml=min_lesion_ml)))

    summary: Dict[str, Any] = summarize(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {
        "per_case_csv": out / "per_case.csv",
        "summary_json": out / "summary.json",
        "summary_md": out / "summary.md",
    }
    if report:
        outputs.update(lesion_report_csv=out / "lesion_report.csv", lesion_report_md=out / "lesion_report.md")
    summary.update(
        layout=layout,
        pred_dir=str(pred_dir),
        ref_dir=str(ref_dir),
        missing_predictions=[p.name for _, p in missing],
        unmatched_predictions=[p.name for _, p in unmatched],
        warnings=warnings,
        outputs={k: str(v) for k, v in outputs.items()},
    )
    _write_csv(outputs["per_case_csv"], rows, list(rows[0]))
    outputs["summary_md"].write_text(summary_markdown(summary, rows, title))
    summary["cases"] = rows
    outputs["summary_json"].write_text(json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n")
    if report:
        _write_csv(outputs["lesion_report_csv"], [r for name, rep in reports for r in report_to_rows(rep, name)],
                   REPORT_CSV_FIELDS)
        md = [f"## Lesion reports{': ' + title if title else ''}", ""]
        md += [report_to_markdown(rep, name) for name, rep in reports]
        outputs["lesion_report_md"].write_text("\n".join(md))
    return summary


def _non_negative(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", required=True, help="folder of predicted label volumes")
    ap.add_argument("--ref", required=True, help="folder of reference labels (LiTS folder or datastore)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--layout", choices=LAYOUTS, default="auto", help="file naming (default: auto)")
    ap.add_argument("--report", action="store_true", help="also write lesion reports of the predictions")
    ap.add_argument("--images", help="folder of the CT images, for mean HU in the lesion reports")
    ap.add_argument("--min-lesion-ml", type=_non_negative, default=0.0,
                    help="lesion report: drop smaller lesions (mL)")
    ap.add_argument("--title", default="", help="heading of the Markdown summary")
    ap.add_argument("--require-all", action="store_true", help="fail when a reference has no prediction")
    ap.add_argument("--no-distances", action="store_true", help="skip ASSD/MSD (faster)")
    args = ap.parse_args(argv)
    try:
        summary = evaluate_folders(
            args.pred, args.ref, args.out, args.report, args.images, args.title, layout=args.layout,
            min_lesion_ml=args.min_lesion_ml, require_all=args.require_all, distances=not args.no_distances,
            verbose=True,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(summary["outputs"]["summary_md"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
