"""GPU experiment: does the paper-size network at 512 px close the gap on an unseen real patient?

The `lite` weights shipped at the time reached 82.8 % / 89.7 % liver Dice on the held-out real patient (split 1 /
split 2, docs/RESULTS.md). This asks whether the paper's ResNet-38 at 512 px, trained on a GPU with
the same data, does better. The GPU machine has PyTorch but not monai/monailabel, so the experiment
runs in two steps:

    # here (monai, nibabel, ../shared/real-ct): pack the training data, HU-windowed, as uint8 .npz
    .venv/bin/python scripts/gpu_paper_experiment.py pack --out data-local/gpu-pack
    # on the GPU machine (torch, numpy, scipy only): train for a wall-clock budget (or --steps N), then evaluate
    python3 scripts/gpu_paper_experiment.py train --pack data-local/gpu-pack --holdout hcc_0697 \
        --preset paper --minutes 3 --out results.json

It is an experiment, not the training path: the app trains with lib/trainers (monailabel's
BasicTrainTask, MONAI transforms). This loop keeps that recipe's parts (the demo request of
scripts/train_demo_weights.py: balanced lesion/liver/none slices, batch 10, SGD 0.01 momentum 0.9,
weight decay 5e-4, fixed rate then a linear decay from half of it, cross-entropy + Dice, zoom
0.8-1.2 and flips; the real patient's two phases repeated 6 times beside 14 phantoms) but schedules
the rate by wall-clock time (or a step count) instead of epochs, and has no validation-based checkpoint choice: the
network after the last step is evaluated. Real CT is packed into data-local/ (git-ignored) and never
committed.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "liver_cascade"
sys.path.insert(0, str(APP))
sys.path.insert(0, str(ROOT / "scripts"))

from lib.evaluation.metrics import dice  # noqa: E402  (numpy/scipy only, like everything imported here)
from lib.networks import build_network  # noqa: E402
from lib.settings import LABELS, NUM_CLASSES, PRESETS  # noqa: E402
from lib.transforms.inference import predict_slices  # noqa: E402

LIVER, LESION = LABELS["liver"], LABELS["lesion"]


# -- pack (here) ---------------------------------------------------------------------------------------
def pack(args) -> int:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    from lib.transforms.transforms import hu_window
    from train_demo_weights import OTHER_PHASE, REAL  # the real series and their labels: one place

    load = Compose([LoadImaged(keys=("image", "label")), EnsureChannelFirstd(keys=("image", "label")),
                    Orientationd(keys=("image", "label"), axcodes="RAS"), hu_window("image")])
    real, transfer, phantoms = Path(args.real_dir), Path(args.transfer_dir), Path(args.phantoms)
    cases = {}
    for patient, (img, lab) in REAL.items():
        cases[f"{patient}_manual"] = (patient, real / img, real / lab)
        img2, lab2 = OTHER_PHASE[patient]
        cases[f"{patient}_transfer"] = (patient, real / img2, transfer / lab2)
    vols = sorted(phantoms.glob("volume-*.nii.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    for v in vols[args.val_phantoms:]:  # the demo's validation phantoms stay out, as in its training
        cases[f"phantom_{v.name.split('-')[1].split('.')[0]}"] = (
            "phantom", v, v.with_name(v.name.replace("volume", "segmentation")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (group, img, lab) in cases.items():
        d = load({"image": str(img), "label": str(lab)})
        image = np.rint(np.asarray(d["image"][0]) * 255).astype(np.uint8)
        label = np.asarray(d["label"][0]).astype(np.uint8)
        spacing_z = float(np.linalg.norm(np.asarray(d["image"].affine)[:3, 2]))
        if group == "phantom" and args.phantom_slices > 0:  # a few slices of each kind keep the pack small (64 MiB travel)
            keep = []
            for kind in slice_kinds(label).values():
                keep += list(rng.choice(kind, min(len(kind), args.phantom_slices), replace=False))
            keep = np.sort(np.array(keep, dtype=int))
            image, label = image[..., keep], label[..., keep]
        np.savez_compressed(out / f"{name}.npz", image=image, label=label, group=group, spacing_z=spacing_z,
                            whole=group != "phantom" or args.phantom_slices <= 0)
        print(name, image.shape, flush=True)
    return 0


def slice_kinds(label: np.ndarray):
    """Axial slice indices with lesion, with liver but no lesion, and with neither."""
    has_lesion = (label == LESION).any(axis=(0, 1))
    has_liver = (label == LIVER).any(axis=(0, 1))
    kinds = {"lesion": np.flatnonzero(has_lesion), "liver": np.flatnonzero(has_liver & ~has_lesion),
             "none": np.flatnonzero(~has_liver & ~has_lesion)}
    return {k: v for k, v in kinds.items() if len(v)}


# -- train (GPU machine) -----------------------------------------------------------------------------
def to_square(x: torch.Tensor, base: int, mode: str) -> torch.Tensor:
    """(N, C, H, W) resized so the longer side is ``base``, padded to base x base (as the trainer)."""
    h, w = x.shape[-2:]
    f = base / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    x = F.interpolate(x, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    ph, pw = base - size[0], base - size[1]
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def augment(img: torch.Tensor, lab: torch.Tensor, zoom=(0.8, 1.2), flip_prob=0.5):
    """Random zoom (size kept) and in-plane flips, one draw per slice, image bilinear, label nearest."""
    n = img.shape[0]
    z = torch.empty(n, device=img.device).uniform_(*zoom)
    flips = torch.where(torch.rand(n, 2, device=img.device) < flip_prob, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=img.device)
    theta[:, 0, 0], theta[:, 1, 1] = flips[:, 0] / z, flips[:, 1] / z
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(lab.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img, lab.long()


def dice_ce(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus soft Dice on the foreground classes (MONAI's DiceLoss defaults)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target[:, 0])
    p = torch.softmax(logits, 1)[:, 1:]
    g = F.one_hot(target[:, 0], NUM_CLASSES).permute(0, 3, 1, 2)[:, 1:].float()
    inter, denom = (p * g).sum((2, 3)), (p + g).sum((2, 3))
    dice = 1 - (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + dice_weight * dice.mean()


def postprocess(liver: np.ndarray) -> np.ndarray:
    """Largest 3D component, then per-axial-slice hole fill: the app's liver post-processing, except that
    components are 6-connected here (the app's ``largest_component`` is 26-connected and lives in a module
    that needs monai, which the GPU machine lacks). The numbers in docs/RESULTS.md were measured with this."""
    from scipy import ndimage

    lab, n = ndimage.label(liver)
    if n > 1:
        liver = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    for k in range(liver.shape[-1]):
        liver[..., k] = ndimage.binary_fill_holes(liver[..., k])
    return liver


def neighbours(n: int, spacing_z: float, context_mm: float):
    """For 2.5D input: the indices of the slices about ``context_mm`` below and above each of ``n`` slices
    (at least one slice away; clamped at the volume's ends, where a slice stands in for its missing neighbour)."""
    off = max(1, int(round(context_mm / spacing_z)))
    i = np.arange(n)
    return np.clip(i - off, 0, n - 1), np.clip(i + off, 0, n - 1)


def train(args) -> int:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = dev.type == "cuda"
    torch.backends.cudnn.benchmark = amp
    preset = PRESETS[args.preset]
    base = args.size or preset.base_size
    cases = {p.stem: np.load(p) for p in sorted(Path(args.pack).glob("*.npz"))}
    train_patient = next(str(c["group"]) for n, c in cases.items() if n.endswith("_manual") and
                         not n.startswith(args.holdout))  # the other real patient
    train_cases = [n for n, c in cases.items() if str(c["group"]) in ("phantom", train_patient)]
    # slices on the device once, already at the network's size (the trainer's Resized + SpatialPadd)
    imgs, labs, pools, weights, below, above = [], [], [], [], [], []
    start = 0
    for name in train_cases:
        c = cases[name]
        img = torch.from_numpy(c["image"]).permute(2, 0, 1)[:, None].to(dev).float() / 255
        lab = torch.from_numpy(c["label"]).permute(2, 0, 1)[:, None].to(dev).float()
        imgs.append(to_square(img, base, "bilinear").half())
        labs.append(to_square(lab, base, "nearest").to(torch.uint8))
        pools.append({k: v + start for k, v in slice_kinds(c["label"]).items()})
        weights.append(args.repeat_real if str(c["group"]) != "phantom" else 1)
        if args.context_mm:
            if "whole" not in c.files or not bool(c["whole"]):
                raise SystemExit("--context-mm needs a pack with whole volumes and their spacing (pack --phantom-slices 0)")
            lo, hi = neighbours(img.shape[0], float(c["spacing_z"]), args.context_mm)
            below.append(torch.from_numpy(lo + start))
            above.append(torch.from_numpy(hi + start))
        start += img.shape[0]
    imgs, labs = torch.cat(imgs), torch.cat(labs)
    if args.context_mm:
        below, above = torch.cat(below).to(dev), torch.cat(above).to(dev)

    def stack(idx):  # (N, 1 or 3, H, W): the slice, or the slice below, the slice, the slice above
        idx = torch.as_tensor(idx, device=dev)
        x = imgs[idx].float()
        return torch.cat([imgs[below[idx]].float(), x, imgs[above[idx]].float()], 1) if args.context_mm else x
    weights = np.array(weights, float) / sum(weights)

    in_ch = 3 if args.context_mm else 1
    net = build_network("resnet", args.preset, in_ch).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    budget = args.minutes * 60
    t0, step, log = time.time(), 0, []
    net.train()
    while True:
        progress = step / args.steps if args.steps else (time.time() - t0) / budget
        if progress >= 1:
            break
        # the trainer's schedule, by time (or steps): fixed for 60 %, then linear from half the rate to 0
        lr = args.lr if progress < 0.6 else args.lr / 2 * (1 - (progress - 0.6) / 0.4)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = []
        for v in np.random.choice(len(pools), args.batch, p=weights):  # balanced slice kinds per volume
            kinds = list(pools[v].values())
            pool = kinds[np.random.randint(len(kinds))]
            batch.append(int(pool[np.random.randint(len(pool))]))
        x, y = augment(stack(batch), labs[batch])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x.contiguous(memory_format=torch.channels_last))
        loss = dice_ce(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0 or step == 1:
            log.append({"step": step, "seconds": round(time.time() - t0, 1), "lr": lr, "loss": round(loss.item(), 4)})
            print(json.dumps(log[-1]), flush=True)
    train_seconds = time.time() - t0

    # evaluation on the held-out patient's manually labelled series, at its own size
    net.eval()
    torch.backends.cudnn.benchmark = False  # evaluation shapes vary; a kernel search per shape costs more than it saves
    ref_case = cases[f"{args.holdout}_manual"]
    vol = torch.from_numpy(ref_case["image"]).float() / 255  # (H, W, N)
    ref = ref_case["label"]
    h, w, n = vol.shape
    if args.context_mm:
        lo, hi = neighbours(n, float(ref_case["spacing_z"]), args.context_mm)

        def make_input(idx):
            return torch.stack([vol[..., lo[idx]], vol[..., idx], vol[..., hi[idx]]]).permute(3, 0, 1, 2)
    else:
        def make_input(idx):
            return vol[..., idx].permute(2, 0, 1)[:, None]
    rows = {}
    for name, scales in (("1 scale", (base,)), ("5 scales", tuple(round(base * s / preset.base_size)
                                                                    for s in preset.all_scales))):
        t1 = time.time()
        probs = predict_slices(net, make_input, n, (h, w), scales,
                               batch_size=16, device=dev, amp=amp).float()
        sync = torch.cuda.synchronize if amp else (lambda: None)
        sync()
        pred = probs.argmax(0).cpu().numpy()
        liver = postprocess(pred >= LIVER)
        rows[name] = {"scales": list(scales), "seconds": round(time.time() - t1, 2),
                      "liver_dice_raw": round(dice(pred >= LIVER, ref >= LIVER), 4),
                      "liver_dice": round(dice(liver, ref >= LIVER), 4),
                      "lesion_dice": round(dice((pred == LESION) & liver, ref == LESION), 4)}
        print(name, json.dumps(rows[name]), flush=True)
        write_result(args, net, rows, train_cases, step, train_seconds, log, amp)
    if args.save:  # the app's checkpoint format (lib.model_io), so the app and its evaluation can load it
        from lib.model_io import save_checkpoint

        save_checkpoint(args.save, net, "resnet", args.preset, in_ch, meta={"context_mm": args.context_mm,
            "task": "liver_resnet", "trained_by": "scripts/gpu_paper_experiment.py", "holdout": args.holdout,
            "size": base, "steps": step, "train_seconds": round(train_seconds, 1), "seed": args.seed,
            "device": torch.cuda.get_device_name() if amp else "cpu", "trained_on": train_cases})
    return 0


def write_result(args, net, rows, train_cases, step, train_seconds, log, amp):
    """The run's JSON (rewritten after each evaluation row, so a cut-off run keeps what it measured)."""
    result = {"holdout": args.holdout, "preset": args.preset, "size": args.size or PRESETS[args.preset].base_size,
              "minutes": None if args.steps else args.minutes, "steps_asked": args.steps,
              "train_seconds": round(train_seconds, 1), "steps": step, "slices_seen": step * args.batch,
              "train_cases": train_cases, "lr": args.lr, "batch": args.batch, "repeat_real": args.repeat_real,
              "seed": args.seed, "context_mm": args.context_mm, "device": torch.cuda.get_device_name() if amp else "cpu",
              "torch": torch.__version__, "parameters_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
              "rows": rows, "log": log}
    Path(args.out).write_text(json.dumps(result, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack the training data (here)")
    p.add_argument("--out", default=str(ROOT / "data-local" / "gpu-pack"))
    p.add_argument("--real-dir", default=str(ROOT.parent / "shared" / "real-ct" / "nifti"))
    p.add_argument("--transfer-dir", default=str(ROOT / "data-local" / "transfer"))
    p.add_argument("--phantoms", default=str(ROOT / "data-local" / "phantom-train" / "lits"))
    p.add_argument("--val-phantoms", type=int, default=2)
    p.add_argument("--phantom-slices", type=int, default=4, help="slices of each kind kept per phantom (0: all)")
    t = sub.add_parser("train", help="train for a wall-clock budget or a step count, then evaluate (GPU machine)")
    t.add_argument("--pack", default=str(ROOT / "data-local" / "gpu-pack"))
    t.add_argument("--holdout", default="hcc_0697", choices=("hcc_0697", "hcc_2022"))
    t.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    t.add_argument("--size", type=int, default=None, help="training size (default: the preset's base size)")
    t.add_argument("--minutes", type=float, default=3.0)
    t.add_argument("--steps", type=int, default=None, help="train this many steps instead (the schedule follows them)")
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--batch", type=int, default=10)
    t.add_argument("--repeat-real", type=int, default=6)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--context-mm", type=float, default=0.0,
                   help="2.5D input: also the slices about this far below and above (0: the 2D network)")
    t.add_argument("--out", default="gpu_experiment.json")
    t.add_argument("--save", default=None, help="also write the trained network here, in the app's checkpoint format")
    args = ap.parse_args(argv)
    return pack(args) if args.command == "pack" else train(args)


if __name__ == "__main__":
    sys.exit(main())
