"""Evaluate a folder of predictions against references with the LiTS metrics.

    python apps/liver_cascade/lib/evaluation/evaluate.py --pred PRED_DIR --ref REF_DIR --out OUT_DIR [--report]

References: LiTS layout (``segmentation-N.nii.gz``) or a datastore
(``labels/final/NAME.nii.gz`` or ``NAME.nii.gz``). Predictions are matched by
file name (``segmentation-N``, ``volume-N`` or ``NAME``). Writes
``per_case.csv``, ``summary.json``, ``summary.md`` and, with ``--report``,
``lesion_report.csv``/``lesion_report.md`` for every prediction.
"""

import argparse
import csv
import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from lib.evaluation.lesion_report import lesion_report  # noqa: E402
from lib.evaluation.metrics import evaluate_case, summarize  # noqa: E402

EXTS = (".nii.gz", ".nii")


def _stem(p: Path) -> str:
    n = p.name
    for e in EXTS:
        if n.endswith(e):
            return n[: -len(e)]
    return n


def _key(stem: str) -> str:
    m = re.fullmatch(r"(?:test-)?(?:segmentation|volume)-(\d+)", stem)
    return f"case-{m.group(1)}" if m else stem


def find_references(ref_dir: Path) -> Dict[str, Path]:
    ref_dir = Path(ref_dir)
    folder = ref_dir / "labels" / "final" if (ref_dir / "labels" / "final").is_dir() else ref_dir
    refs = {}
    for p in sorted(folder.iterdir()):
        if p.name.endswith(EXTS) and not p.name.startswith("volume-"):
            refs[_key(_stem(p))] = p
    return refs


def evaluate_folders(pred_dir, ref_dir, out_dir, report: bool = False, images: Optional[str] = None,
                     title: str = "") -> dict:
    refs = find_references(Path(ref_dir))
    preds = {_key(_stem(p)): p for p in sorted(Path(pred_dir).iterdir()) if p.name.endswith(EXTS)}
    common = sorted(set(refs) & set(preds))
    if not common:
        raise SystemExit(f"no prediction in {pred_dir} matches a reference in {ref_dir}")
    rows: List[dict] = []
    reports = []
    for k in common:
        r_img, p_img = nib.load(str(refs[k])), nib.load(str(preds[k]))
        ref = np.rint(np.asarray(r_img.dataobj)).astype(np.uint8)
        pred = np.rint(np.asarray(p_img.dataobj)).astype(np.uint8)
        if ref.shape != pred.shape:
            raise SystemExit(f"{k}: prediction shape {pred.shape} differs from reference {ref.shape}")
        spacing = np.linalg.norm(r_img.affine[:3, :3], axis=0)
        row = {"case": k, **evaluate_case(pred, ref, spacing)}
        rows.append(row)
        if report:
            hu = None
            if images:
                cand = [Path(images) / f"{_stem(refs[k])}.nii.gz", Path(images) / f"{_stem(preds[k])}.nii.gz"]
                cand += [Path(images) / f"volume-{k.split('-')[-1]}.nii.gz"]
                hu_path = next((c for c in cand if c.exists()), None)
                hu = np.asarray(nib.load(str(hu_path)).dataobj) if hu_path else None
            reports.append((k, lesion_report(pred, p_img.affine, image_hu=hu)))
    summary = summarize(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_case.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_markdown(summary, rows, title))
    if report:
        write_lesion_reports(reports, out)
    return summary


def _f(v, pct=False):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{100 * v:.2f}" if pct else f"{v:.2f}"


def summary_markdown(s: dict, rows: List[dict], title: str = "") -> str:
    lines = [f"### {title}" if title else "### LiTS metrics", "",
             "| case | liver Dice % | lesion Dice % | liver ASSD mm | liver MSD mm | lesions ref/pred | TBE |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {_f(r['liver_dice'], True)} | {_f(r['lesion_dice'], True)} | "
                     f"{_f(r['liver_assd_mm'])} | {_f(r['liver_msd_mm'])} | {r['n_ref_lesions']}/{r['n_pred_lesions']} | "
                     f"{_f(r['tumour_burden_error'])} |")
    lines += ["", "| summary | liver | lesion |", "|---|---|---|"]
    for m, label in (("dice_per_case", "Dice per case %"), ("dice_global", "Dice global %"),
                     ("voe_per_case", "VOE %"), ("rvd_per_case", "RVD %")):
        lines.append(f"| {label} | {_f(s['liver_' + m], True)} | {_f(s['lesion_' + m], True)} |")
    lines.append(f"| ASSD mm | {_f(s['liver_assd_mm_per_case'])} | {_f(s['lesion_assd_mm_per_case'])} |")
    lines.append(f"| MSD mm | {_f(s['liver_msd_mm_per_case'])} | {_f(s['lesion_msd_mm_per_case'])} |")
    lines += ["", f"Lesion detection: precision/recall at IoU>0.5 {_f(s['lesion_precision_iou0.5'])}/"
              f"{_f(s['lesion_recall_iou0.5'])}, at IoU>0 {_f(s['lesion_precision_iou0'])}/{_f(s['lesion_recall_iou0'])}; "
              f"tumour burden error {_f(s['tumour_burden_error_mean'])}.", ""]
    return "\n".join(lines)


def write_lesion_reports(reports, out: Path):
    fields = ["case", "id", "volume_ml", "longest_axial_diameter_mm", "perpendicular_diameter_mm", "centroid_mm",
              "n_slices", "mean_hu"]
    md = ["| case | liver mL | lesions mL | burden % | lesion | volume mL | diameters mm | centroid mm | mean HU |",
          "|---|---|---|---|---|---|---|---|---|"]
    with open(out / "lesion_report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for k, rep in reports:
            for les in rep["lesions"]:
                w.writerow({"case": k, **les})
            first = True
            for les in rep["lesions"] or [None]:
                head = f"| {k} | {rep['liver_volume_ml']:.1f} | {rep['lesion_volume_ml']:.2f} | {rep['tumour_burden_percent']:.2f} |" \
                    if first else "| | | | |"
                first = False
                if les is None:
                    md.append(head + " - | | | | |")
                else:
                    md.append(head + f" {les['id']} | {les['volume_ml']:.2f} | {les['longest_axial_diameter_mm']:.1f} x "
                              f"{les['perpendicular_diameter_mm']:.1f} | {les['centroid_mm']} | {les.get('mean_hu', 'n/a')} |")
    (out / "lesion_report.md").write_text("\n".join(md) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", action="store_true", help="also write lesion reports of the predictions")
    ap.add_argument("--images", help="folder of the CT images (for mean HU in lesion reports)")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    s = evaluate_folders(args.pred, args.ref, args.out, args.report, args.images, args.title)
    print((Path(args.out) / "summary.md").read_text())
    return 0 if s else 1


if __name__ == "__main__":
    sys.exit(main())
