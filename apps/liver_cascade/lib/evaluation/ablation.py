"""The paper's Table 2 on any labelled dataset: VGG-FCN, ResNet, cascade, cascade + 3D CRF,
cascade + multi-scale (without the app's default liver CRF), then our rows; liver and lesion Dice
and Jaccard per row.

    python apps/liver_cascade/lib/evaluation/ablation.py --model-dir apps/liver_cascade/model \\
        --data sample-data/generated/lits --out docs/results/ablation_phantoms [--cases 2]

``--data`` is a LiTS folder (volume-N / segmentation-N) or a datastore
(images + labels/final); ``--image``/``--label`` pairs can be given instead.
The weights in --model-dir are used as they are (train them with
lib.trainers.cli or POST /train/{model}); each row's predictions, a per-case
CSV, ``ablation.json`` and ``ablation.md`` are written to --out.
"""

import argparse
import json
import sys
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from lib.evaluation.metrics import evaluate_case, summarize  # noqa: E402
from lib.evaluation.predict import load_label, make_task, predict_file  # noqa: E402
from lib.settings import PRESETS  # noqa: E402

PAPER = {  # Bi et al. 2017, Table 2, 13 LiTS validation volumes (Dice %)
    "VGG-FCN": (91.96, 29.88), "ResNet": (95.27, 48.50), "Cascaded ResNet": (95.51, 49.83),
    "Cascaded ResNet + 3D-CRF": (95.24, 31.65), "Cascaded ResNet + multi-scale": (95.90, 50.01),
}


def rows_for(preset: str):
    multi = ",".join(str(s) for s in PRESETS[preset].all_scales)
    # the paper's rows: the network's argmax, with its training's batch-norm statistics, no liver growth
    off = {"crf": "off", "adapt_bn": False, "grow_liver": False}
    return [
        ("VGG-FCN", "vgg_fcn", off),
        ("ResNet", "liver_resnet", off),
        ("Cascaded ResNet", "liver_cascade", off),
        ("Cascaded ResNet + 3D-CRF", "liver_cascade", {**off, "crf": "paper"}),
        ("Cascaded ResNet + multi-scale", "liver_cascade", {"scales": multi, **off}),
        # not in the paper: our speed shortcut (stage two on liver slices only) switched off
        ("Cascaded ResNet, stage two on all slices", "liver_cascade", {"stage2_roi": False, **off}),
        # not in the paper: the CRF for the liver's boundary, the cascade's lesions kept
        ("Cascaded ResNet + liver CRF", "liver_cascade", {**off, "crf": "liver"}),
        ("Cascaded ResNet + multi-scale + liver CRF", "liver_cascade", {"scales": multi, **off, "crf": "liver"}),
        # not in the paper: the liver grown into the liver-like voxels next to it; with the liver CRF, the default
        ("Cascaded ResNet + liver growth", "liver_cascade", {**off, "grow_liver": True}),
        ("Cascaded ResNet + liver CRF + liver growth (default)", "liver_cascade", {**off, "crf": "liver", "grow_liver": True}),
        # stage one alone with the same post-processing: what stage two adds to (or takes from) the served liver
        ("ResNet + liver CRF + liver growth", "liver_resnet", {**off, "crf": "liver", "grow_liver": True}),
        # not in the paper: the opt-in batch-norm statistics of the volume being segmented
        ("Cascaded ResNet + BN adaptation", "liver_cascade", {**off, "adapt_bn": True}),
        ("Cascaded ResNet + BN adaptation + liver CRF", "liver_cascade", {**off, "crf": "liver", "adapt_bn": True}),
        ("Cascaded ResNet + BN adaptation + liver CRF + liver growth", "liver_cascade",
         {**off, "crf": "liver", "adapt_bn": True, "grow_liver": True}),
    ]


def find_pairs(data: Path):
    if (data / "labels" / "final").is_dir():
        return [(p, data / "labels" / "final" / p.name) for p in sorted(data.glob("*.nii.gz"))
                if (data / "labels" / "final" / p.name).exists()]
    vols = sorted(data.glob("volume-*.nii.gz"), key=lambda p: int(p.name[7:].split(".")[0]))
    return [(v, v.with_name(v.name.replace("volume", "segmentation"))) for v in vols]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data")
    ap.add_argument("--image", action="append", default=[])
    ap.add_argument("--label", action="append", default=[])
    ap.add_argument("--cases", type=int, default=0, help="use only the first N cases (0: all)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="lite", choices=sorted(PRESETS))
    ap.add_argument("--title", default="")
    ap.add_argument("--no-crf", action="store_true", help="leave out the rows with a CRF")
    ap.add_argument("--method", action="append", default=[],
                    help="only this row (repeat for more), e.g. --method ResNet --method 'Cascaded ResNet'")
    args = ap.parse_args(argv)
    if args.cases < 0:
        ap.error(f"--cases must be >= 0 (0: all), got {args.cases}")
    if len(args.image) != len(args.label):
        ap.error(f"give one --label per --image ({len(args.image)} images, {len(args.label)} labels)")
    pairs = find_pairs(Path(args.data)) if args.data else list(zip(map(Path, args.image), map(Path, args.label)))
    if args.cases:
        pairs = pairs[: args.cases]
    if not pairs:
        raise SystemExit("no labelled case found")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    rows = rows_for(args.preset)
    if args.method:
        unknown = sorted(set(args.method) - {name for name, _, _ in rows})
        if unknown:
            raise SystemExit(f"unknown --method {unknown}; the rows are {[name for name, _, _ in rows]}")
        rows = [r for r in rows if r[0] in args.method]
    skipped = []
    for name, model, params in rows:
        if args.no_crf and params.get("crf") != "off":
            continue
        task = make_task(model, args.model_dir, {"preset": args.preset})
        missing = [Path(p).name for p in task.stage_paths if not Path(p).exists()]
        if missing:  # e.g. vgg_fcn: no demo weights ship; the other rows still run
            print(f"{name}: skipped, no {', '.join(missing)} in {args.model_dir} "
                  f"(train it: python -m lib.trainers.cli --models {model} ...)", file=sys.stderr, flush=True)
            skipped.append({"method": name, "missing": missing})
            continue
        cases, seconds = [], []
        for img, lab in pairs:
            pred_path = out / "predictions" / name.replace(" ", "_").replace("+", "plus") / img.name
            t0 = time.time()
            predict_file(task, str(img), str(pred_path), params)
            seconds.append(time.time() - t0)
            spacing = np.linalg.norm(nib.load(str(lab)).affine[:3, :3], axis=0)
            cases.append({"case": img.name, **evaluate_case(load_label(str(pred_path)), load_label(str(lab)), spacing)})
        s = summarize(cases)
        row = {"method": name, "model": model, "params": params, "n_cases": len(cases),
               "liver_dice": s["liver_dice_per_case"], "lesion_dice": s["lesion_dice_per_case"],
               "liver_dice_global": s["liver_dice_global"], "lesion_dice_global": s["lesion_dice_global"],
               "liver_jaccard": s["liver_jaccard_per_case"], "lesion_jaccard": s["lesion_jaccard_per_case"],
               "seconds_per_case": float(np.mean(seconds)), "cases": cases}
        results.append(row)
        print(f"{name}: liver {100 * row['liver_dice']:.2f} lesion {100 * row['lesion_dice']:.2f} "
              f"({row['seconds_per_case']:.1f} s/case)", flush=True)
    if not results:
        raise SystemExit(f"no row could run: {skipped or 'none selected (--no-crf with only CRF rows?)'}")
    (out / "ablation.json").write_text(json.dumps(results, indent=2, default=float))
    md = [f"### {args.title or 'Ablation'} ({len(pairs)} case(s), preset {args.preset})", "",
          "| method | liver Dice % | lesion Dice % | liver Jaccard % | lesion Jaccard % | lesion Dice global % | s/case | paper liver / lesion Dice % |",
          "|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = PAPER.get(r["method"])
        paper = f"{p[0]:.2f} / {p[1]:.2f}" if p else "-"
        md.append(f"| {r['method']} | {100 * r['liver_dice']:.2f} | {100 * r['lesion_dice']:.2f} | "
                  f"{100 * r['liver_jaccard']:.2f} | {100 * r['lesion_jaccard']:.2f} | {100 * r['lesion_dice_global']:.2f} | "
                  f"{r['seconds_per_case']:.1f} | {paper} |")
    md += [f"\nNot run (no weights): {', '.join(r['method'] for r in skipped)}"] if skipped else []
    (out / "ablation.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
