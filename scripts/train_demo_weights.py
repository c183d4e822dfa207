"""Train the `lite` demo weights on phantoms + labelled real CT, then evaluate on a held-out real patient.

    .venv/bin/python scripts/train_demo_weights.py --holdout hcc_0697 --model-dir apps/liver_cascade/model
    .venv/bin/python scripts/train_demo_weights.py --lits data-local/msd-datastore --holdout all   # make weights-lits

The real CT is read from ../shared/real-ct/nifti and never copied into the
project. Datalists, stage-one caches and predictions go to data-local/
(git-ignored). The evaluation JSON/Markdown goes to --results.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "liver_cascade"
sys.path.insert(0, str(APP))

sys.path.insert(0, str(ROOT / "sample-data"))

from lib.conf import CRF_MODES  # noqa: E402
from transfer_labels import PAIRS  # noqa: E402  (the real series: one place)

# labelled real cases in ../shared/real-ct/nifti
REAL = {patient: (f"{src}.nii.gz", f"{src}_label.nii.gz") for patient, (src, _) in PAIRS.items()}
SPLITS = {"hcc_0697": "split1", "hcc_2022": "split2"}  # which real patient is held out
# the same patients' other contrast phase, labelled by scripts/transfer_labels.py (derived labels)
OTHER_PHASE = {patient: (f"{dst}.nii.gz", f"{dst}_label.nii.gz") for patient, (_, dst) in PAIRS.items()}


def datalists(real_dir: Path, phantoms: Path, holdout: str, repeat_real: int, n_val_phantoms: int, work: Path,
              transfer_dir: Path = None, n_train_phantoms: int = None, val_other_phase: bool = False,
              lits: list = None, n_val_lits: int = 5, extra_train: list = None):
    """Training and validation datalists.

    ``val_other_phase``: the training patient's other phase validates (real CT to choose the epoch on)
    instead of being trained on, and no phantom does. ``lits``: labelled real CT (datastore items, e.g.
    fetch_msd.py's Task03 layout); its first ``n_val_lits`` cases validate, the rest train, and then
    all the phantoms train. ``extra_train``: more items that train (e.g. pseudo-labelled series)."""
    vols = sorted(phantoms.glob("volume-*.nii.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    items = [{"image": str(v), "label": str(v.with_name(v.name.replace("volume", "segmentation")))} for v in vols]
    val, train = items[:n_val_phantoms], items[n_val_phantoms:]
    if lits:
        if len(lits) <= n_val_lits:
            raise ValueError(f"{len(lits)} labelled LiTS cases: need more than the {n_val_lits} that validate")
        val, train = lits[:n_val_lits], list(items)
    train = train if n_train_phantoms is None else train[:n_train_phantoms]
    train += lits[n_val_lits:] if lits else []
    if val_other_phase:
        if transfer_dir is None or lits:
            raise ValueError("validating on the other phase needs its labels (transfer_dir), and no LiTS set")
        val = []
    for name, (img, lab) in REAL.items():
        if holdout != "all" and name != holdout:  # "all": every real patient held out
            train += [{"image": str(real_dir / img), "label": str(real_dir / lab)}] * repeat_real
            if transfer_dir is not None:  # the training patient's other phase, never the held-out patient's
                img2, lab2 = OTHER_PHASE[name]
                other = {"image": str(real_dir / img2), "label": str(transfer_dir / lab2)}
                if val_other_phase:
                    val.append(other)
                else:
                    train += [other] * repeat_real
    train += extra_train or []
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.json").write_text(json.dumps(train, indent=1))
    (work / "val.json").write_text(json.dumps(val, indent=1))
    return work / "train.json", work / "val.json"


def lits_items(folder):
    """The labelled cases of a datastore folder (images + labels/final), in name order; [] without one."""
    if not folder:
        return []
    from fetch_msd import datastore_items

    return [i for i in datastore_items(folder) if i["label"]]


def pseudo_labelled(args, work: Path) -> list:
    """The held-out patient's other (unlabeled) phase with the label the cascade in --model-dir gives it,
    as ``--repeat-real`` datalist items. Needs a held-out patient and that cascade's weights."""
    from lib.evaluation.predict import make_task, predict_file

    if args.holdout not in OTHER_PHASE:
        raise SystemExit("--pseudo-other-phase needs one held-out real patient")
    image = Path(args.real_dir) / OTHER_PHASE[args.holdout][0]
    # one pseudo-label per teacher (--model-dir), shared by the stage-one and stage-two commands
    label = work / "pseudo" / Path(args.model_dir).name / OTHER_PHASE[args.holdout][1]
    if not label.exists():
        task = make_task("liver_cascade", args.model_dir, {"preset": args.preset})
        predict_file(task, str(image), str(label))
        print(f"pseudo-label of {image.name}: {label}", flush=True)
    return [{"image": str(image), "label": str(label)}] * args.repeat_real


def score(task, image: Path, label: Path, out: Path, params: dict = None) -> dict:
    """Segment ``image`` with an infer task, write ``out``, and score it against ``label``
    (the rows of the results JSON, plus the request's seconds and CRF mode); ``params``: infer request keys."""
    import nibabel as nib
    import numpy as np

    from lib.evaluation.metrics import evaluate_case
    from lib.evaluation.predict import load_label, predict_file

    spacing = np.linalg.norm(nib.load(str(label)).affine[:3, :3], axis=0)
    t0 = time.time()
    result = predict_file(task, str(image), str(out), params)
    m = evaluate_case(load_label(str(out)), load_label(str(label)), spacing)
    row = {k: m[k] for k in ("liver_dice", "lesion_dice", "liver_assd_mm", "liver_msd_mm",
                             "n_ref_lesions", "n_pred_lesions", "detected_iou0")}
    row["infer_seconds"] = round(time.time() - t0, 2)
    row["crf"] = (result.get("timings") or {}).get("crf_mode")  # the mode the task ran
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holdout", default="hcc_0697", choices=sorted(REAL) + ["none", "all"],
                    help="the real patient kept out of training and tested on; none: train on both; "
                         "all: train on neither, test on both (e.g. with --lits)")
    ap.add_argument("--real-dir", default=str(ROOT.parent / "shared" / "real-ct" / "nifti"))
    ap.add_argument("--phantoms", default=str(ROOT / "data-local" / "phantom-train" / "lits"))
    ap.add_argument("--model-dir", default=str(APP / "model"))
    ap.add_argument("--work", default=str(ROOT / "data-local" / "demo"))
    ap.add_argument("--preset", default="lite", help="network preset (lib/settings.py PRESETS)")
    ap.add_argument("--epochs1", type=int, default=40)
    ap.add_argument("--epochs2", type=int, default=25)
    ap.add_argument("--repeat-real", type=int, default=6)
    ap.add_argument("--val-phantoms", type=int, default=2)
    ap.add_argument("--lits", default=None,
                    help="a datastore of labelled real CT to train and validate on (fetch_msd.py's Task03 layout)")
    ap.add_argument("--lits-val", type=int, default=5, help="how many --lits cases validate (the first ones)")
    ap.add_argument("--num-workers", type=int, default=None, help="training-data loader processes (trainer default 0)")
    ap.add_argument("--dataset", default=None,
                    help="the trainer's dataset class (default CacheDataset; Dataset with --lits, which does not fit in memory)")
    ap.add_argument("--train-phantoms", type=int, default=None,
                    help="train on this many phantoms (default: all but the validation ones)")
    ap.add_argument("--results", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--dice-weight", type=float, default=1.0)
    ap.add_argument("--lesion-weight", type=float, default=None,
                    help="cross-entropy weight of the lesion class (the lesion_weight option; trainer default if unset)")
    ap.add_argument("--lesion-ratio", type=float, default=None,
                    help="lesion slices drawn per liver-only or empty slice (the lesion_ratio option)")
    ap.add_argument("--dice-batch", action="store_true",
                    help="the Dice term over the whole batch, not per slice (the dice_batch option)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--crf", default=None, choices=CRF_MODES,
                    help="the held-out scoring's CRF mode (default: the app's, i.e. the liver CRF; off: the networks alone)")
    ap.add_argument("--models", default="liver_resnet,liver_cascade",
                    help="which stages to train (liver_cascade alone: on the stage one already in --model-dir; "
                         "vgg_fcn: the ablation's baseline, trained like stage one)")
    ap.add_argument("--other-phase", action="store_true",
                    help="also train on the training patient's other contrast phase (labels from transfer_labels.py)")
    ap.add_argument("--transfer-dir", default=str(ROOT / "data-local" / "transfer"))
    ap.add_argument("--finetune", action="store_true", help="start from the weights already in --model-dir")
    ap.add_argument("--flip-prob", type=float, default=None, help="in-plane flip probability (trainer default if unset)")
    ap.add_argument("--rotate-deg", type=float, default=None,
                    help="random rotation up to +-N degrees (trainer default if unset)")
    ap.add_argument("--hu-shift", type=float, default=None,
                    help="stage one: random HU shift up to +-N (the hu_shift option; trainer default if unset)")
    ap.add_argument("--contrast-scale", type=float, default=None,
                    help="stage one: random contrast scaling up to +-N (the contrast_scale option)")
    ap.add_argument("--elastic", type=float, default=None,
                    help="random elastic deformation magnitude (trainer default if unset)")
    ap.add_argument("--slices-per-volume", type=int, default=None,
                    help="slices drawn per volume (default 10: a batch of 10 slices is one volume's)")
    ap.add_argument("--liver-box", action="store_const", const=1, default=None,
                    help="train stage two on the liver's box (the liver_box train option)")
    ap.add_argument("--val-interval", type=int, default=None, help="validate every N epochs (trainer default 1)")
    ap.add_argument("--val-other-phase", action="store_true",
                    help="validate on the training patient's other phase (implies --other-phase) instead of "
                         "training on it; no phantom validates")
    ap.add_argument("--swa-from", type=float, default=None,
                    help="publish the average of the weights after each epoch past this fraction (the swa_from option)")
    ap.add_argument("--pseudo-other-phase", action="store_true",
                    help="self-training: the held-out patient's unlabeled other phase, labelled by the cascade "
                         "already in --model-dir (the app's defaults), trains too (x --repeat-real); "
                         "the held-out labelled series is never used")
    args = ap.parse_args(argv)
    args.other_phase = args.other_phase or args.val_other_phase
    if args.holdout == "all" and args.other_phase:
        ap.error("--holdout all trains on no real patient, so there is no other phase to use")

    models = args.models.split(",")
    # the trainer runs in the app's folder: paths given relative to here are resolved first
    args.model_dir, args.work = (str(Path(p).resolve()) for p in (args.model_dir, args.work))
    # train request keys set on the command line (None: the trainer's default), plus the datalist's
    # phantom count; all named in the output paths
    recipe = {"flip_prob": ("flip", args.flip_prob), "rotate_deg": ("rot", args.rotate_deg),
              "elastic": ("elastic", args.elastic), "samples_per_volume": ("spv", args.slices_per_volume),
              "val_interval": ("vi", args.val_interval), "liver_box": ("box", args.liver_box),
              "swa_from": ("swa", args.swa_from), "hu_shift": ("hu", args.hu_shift),
              "contrast_scale": ("cs", args.contrast_scale), "dice_batch": ("db", 1 if args.dice_batch else None),
              "lesion_weight": ("lw", args.lesion_weight), "lesion_ratio": ("lesr", args.lesion_ratio)}
    options = {**recipe, "train_phantoms": ("phantoms", args.train_phantoms),
               "val_other_phase": ("valreal", 1 if args.val_other_phase else None),
               "pseudo_other_phase": ("pseudo", 1 if args.pseudo_other_phase else None)}
    variant = "_".join(f"{tag}{v:g}" for tag, v in options.values() if v is not None)
    if args.finetune:
        variant = "_".join(v for v in ("ft", variant) if v)
    if args.preset != "lite":
        variant = "_".join(v for v in (args.preset, variant) if v)
    if args.lits:
        variant = "_".join(v for v in ("lits", variant) if v)
    work = Path(args.work) / f"holdout_{args.holdout}" / ("two_phases" if args.other_phase else "") / variant
    transfer_dir = None
    if args.other_phase:
        transfer_dir = Path(args.transfer_dir)
        if not all((transfer_dir / lab).exists() for _, lab in OTHER_PHASE.values()):
            from transfer_labels import main as transfer

            transfer(["--real-dir", args.real_dir, "--out", str(transfer_dir)])
    lits = lits_items(args.lits)
    extra = pseudo_labelled(args, Path(args.work) / f"holdout_{args.holdout}") if args.pseudo_other_phase else None
    train_ds, val_ds = datalists(Path(args.real_dir), Path(args.phantoms), args.holdout, args.repeat_real,
                                 args.val_phantoms, work, transfer_dir, args.train_phantoms, args.val_other_phase,
                                 lits, args.lits_val, extra)
    # The paper's sampling and batch; from scratch on a CPU budget (no ImageNet weights) a
    # 6x higher SGD rate and a Dice term converge in minutes where lr 0.0016 did not move.
    request = {"samples_per_volume": 10, "train_batch_size": 10, "liver_ratio": 1.0,
               "dataset": args.dataset or ("Dataset" if args.lits else "CacheDataset"),
               "pretrained": "true" if args.finetune else "false", "lr": args.lr, "lr_decay_from": args.lr / 2,
               "dice_weight": args.dice_weight,
               # the run's best epoch replaces what is in --model-dir: these weights are rebuilt, not a
               # correction round to be compared with the model in place
               "publish": "best"}
    request.update({key: v for key, (_, v) in recipe.items() if v is not None})
    if args.num_workers is not None:  # speed only: not part of the variant's name
        request["num_workers"] = args.num_workers
    common = [arg for key, v in request.items() for arg in (f"--{key}", str(v))]
    # vgg_fcn (the paper's baseline, only when named in --models) trains like stage one
    stage_epochs = {m: e for m, e in (("vgg_fcn", args.epochs1), ("liver_resnet", args.epochs1),
                                      ("liver_cascade", args.epochs2)) if m in models}
    timings = {}
    if not args.skip_train:
        for model, epochs in stage_epochs.items():
            t0 = time.time()
            cmd = [sys.executable, "-m", "lib.trainers.cli", "--models", model, "--model_dir", args.model_dir,
                   "--train_ds", str(train_ds), "--val_ds", str(val_ds), "--max_epochs", str(epochs), "--preset", args.preset] + common
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=str(APP), check=True)
            timings[model] = round(time.time() - t0, 1)

    if args.holdout == "none":
        return 0
    from lib.evaluation.predict import make_task

    results = {"holdout": args.holdout, "preset": args.preset, "other_phase": args.other_phase, "finetune": args.finetune,
               "lits": {"cases": len(lits), "validate": args.lits_val} if args.lits else None,
               "epochs": stage_epochs, **{k: v for k, (_, v) in options.items()},
               "train_seconds": timings, "crf": args.crf or "app default", "rows": {}}
    for patient in (sorted(REAL) if args.holdout == "all" else [args.holdout]):
        img, lab = (Path(args.real_dir) / f for f in REAL[patient])
        if not (img.exists() and lab.exists()):
            print(f"{patient}: not in {args.real_dir}, not evaluated", flush=True)
            continue
        rows = {}
        for model in (["vgg_fcn"] if "vgg_fcn" in models else []) + ["liver_resnet", "liver_cascade"]:
            task = make_task(model, args.model_dir, {"preset": args.preset})
            if not all(os.path.exists(p) for p in task.stage_paths):  # e.g. only stage one was trained
                print(f"{model}: no weights in {args.model_dir}, not evaluated", flush=True)
                continue
            out = work / f"pred_{model}{'_' + patient if args.holdout == 'all' else ''}.nii.gz"
            rows[model] = score(task, img, lab, out, {"crf": args.crf} if args.crf else None)
            print(patient, model, json.dumps(rows[model]), flush=True)
        if args.holdout == "all":  # rows per tested patient
            results["rows"][patient] = rows
        else:
            results["rows"] = rows
    Path(args.results).mkdir(parents=True, exist_ok=True)
    # file named by split, not by patient id (nothing named after the shared data is committed)
    name = f"demo_{SPLITS.get(args.holdout, 'unseen_both')}{'_two_phases' if args.other_phase else ''}"
    name += (f"_{variant}" if variant else "") + ".json"
    (Path(args.results) / name).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
