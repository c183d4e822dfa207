"""Inference-side averaging, measured on a held-out real patient: several independently trained
runs of a stage (an ensemble), and/or in-plane flips of the input (test-time augmentation).

    .venv/bin/python scripts/average_models.py --holdout hcc_0697 \\
        --model-dirs apps/liver_cascade/model,data-local/split1-aug [--flips] [--scales 192,208,224,240,256]
    # stage one alone, another preset (e.g. weights saved by gpu_paper_experiment.py --save):
    .venv/bin/python scripts/average_models.py --holdout hcc_0697 --preset lite512 --models liver_resnet \
        --model-dirs <dir with liver_resnet_lite512.pt>[,<another>]
    # a cascade of a 512-px stage one and the shipped 192-px stage two (run at 192 px on the liver's box):
    .venv/bin/python scripts/average_models.py --holdout hcc_0697 --preset lite512 --models liver_cascade \
        --model-dirs <dir with liver_resnet_lite512.pt> --stage2 apps/liver_cascade/model/liver_cascade_lite.pt \
        --stage2-size 192

Each stage's network is replaced by the average of the softmax of every member (each model
directory's file for that stage, and each flip), inside the app's own infer task, so pre- and
post-processing are the shipped ones. An experiment: the app itself runs one model per stage.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "liver_cascade"
sys.path.insert(0, str(APP))
sys.path.insert(0, str(ROOT / "scripts"))

from lib.conf import CRF_MODES  # noqa: E402

# in-plane flips of an (N, C, H, W) batch: none, each axis, both
FLIPS: Tuple[Tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))


class Averaged(torch.nn.Module):
    """Log of the mean softmax of ``networks`` over ``flips`` (the infer code takes a softmax of it)."""

    def __init__(self, networks: Sequence[torch.nn.Module], flips: Sequence[Tuple[int, ...]] = ((),)):
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        self.flips = [tuple(f) for f in flips]

    def forward(self, x):
        total = 0
        for net in self.networks:
            for f in self.flips:
                xf = x.flip(f).contiguous(memory_format=torch.channels_last) if f else x
                p = torch.softmax(net(xf).float(), 1)
                total = total + (p.flip(f) if f else p)
        return torch.log((total / (len(self.networks) * len(self.flips))).clamp_min(1e-8))


class AtSize(torch.nn.Module):
    """``network`` run at the input size it was trained at: its input resized so that the larger in-plane side
    is ``size`` (as the app's scales do), its output resized back. For a stage two trained at another size
    than the stage one before it."""

    def __init__(self, network: torch.nn.Module, size: int):
        super().__init__()
        self.network, self.size = network, size

    def forward(self, x):
        from lib.transforms.inference import scaled_size

        h, w = x.shape[-2:]
        size = scaled_size((h, w), self.size)
        if size == (h, w):
            return self.network(x)
        y = torch.softmax(self.network(torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                                                        align_corners=False)).float(), 1)
        y = torch.nn.functional.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return torch.log(y.clamp_min(1e-8))  # the infer code takes a softmax of it


def main(argv=None):
    from train_demo_weights import REAL, score

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holdout", required=True, choices=sorted(REAL))
    ap.add_argument("--model-dirs", required=True, help="comma-separated model folders (the first one's files name the task)")
    ap.add_argument("--flips", action="store_true", help="also average over the in-plane flips")
    ap.add_argument("--scales", default=None, help="test-time scales (default: the preset's)")
    ap.add_argument("--preset", default=None, help="network preset (default: the app's)")
    ap.add_argument("--models", default="liver_resnet,liver_cascade", help="which infer tasks to score")
    ap.add_argument("--crf", default=None, choices=CRF_MODES, help="CRF mode (default: the app's, the liver CRF)")
    ap.add_argument("--stage2", default=None, help="a stage-two checkpoint run instead of the model folders' (not "
                    "averaged), e.g. the shipped 192-px one after a 512-px stage one")
    ap.add_argument("--stage2-size", type=int, default=None, help="run --stage2 at this input size (the size it was "
                    "trained at) whatever the scales")
    ap.add_argument("--real-dir", default=str(ROOT.parent / "shared" / "real-ct" / "nifti"))
    ap.add_argument("--out", default=str(ROOT / "data-local" / "averaged"))
    args = ap.parse_args(argv)

    from lib.evaluation.predict import make_task
    from lib.model_io import load_checkpoint

    dirs = [str(Path(d).resolve()) for d in args.model_dirs.split(",")]
    flips = FLIPS if args.flips else ((),)
    img, lab = (Path(args.real_dir) / f for f in REAL[args.holdout])
    rows = {}
    for model in args.models.split(","):
        task = make_task(model, dirs[0], {"preset": args.preset} if args.preset else None)
        get = task._models.get

        stage2 = str(Path(args.stage2).resolve()) if args.stage2 and task.cascade else None
        if stage2:
            task.stage_paths = [*task.stage_paths[:-1], stage2]

        def averaged(path, device, how_to_train="", get=get):
            net, info = get(path, device, how_to_train)
            others = [] if path == stage2 else [load_checkpoint(str(Path(d) / Path(path).name), device)[0].eval()
                                                for d in dirs[1:]]  # --stage2 is not averaged
            net = Averaged([net] + others, flips)
            if path == stage2 and args.stage2_size:
                net = AtSize(net, args.stage2_size)
            return net.eval(), info

        task._models.get = averaged
        out = Path(args.out) / f"pred_{args.holdout}_{model}.nii.gz"
        params = {k: v for k, v in (("scales", args.scales), ("crf", args.crf)) if v}
        rows[model] = score(task, img, lab, out, params or None)
        print(model, json.dumps(rows[model]), flush=True)
    return rows


if __name__ == "__main__":
    main()
