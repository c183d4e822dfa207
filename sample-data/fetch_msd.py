"""Fetch real public data: the Medical Segmentation Decathlon Task03 Liver (the LiTS
training set, 131 labelled CTs, about 27 GB unpacked), laid out as a MONAI Label datastore.

    python sample-data/fetch_msd.py --root /data/msd --out /data/liver-datastore

Needs internet (it cannot run on the offline build machine). The download is
MONAI's own (``monai.apps.DecathlonDataset``); the layout step,
``layout_datastore``, works on any local Task03_Liver folder.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def layout_datastore(msd_task_dir, out_dir, link: bool = True) -> int:
    """imagesTr/liver_N.nii.gz + labelsTr/liver_N.nii.gz -> out/liver_NNN.nii.gz + out/labels/final/liver_NNN.nii.gz.

    Labels keep the LiTS values (0 background, 1 liver, 2 tumour). Returns the number of cases.
    """
    task = Path(msd_task_dir)
    meta = json.loads((task / "dataset.json").read_text())
    out = Path(out_dir)
    (out / "labels" / "final").mkdir(parents=True, exist_ok=True)
    n = 0
    for item in meta["training"]:
        img = task / item["image"].lstrip("./")
        lab = task / item["label"].lstrip("./")
        if img.name.startswith("._") or not img.exists() or not lab.exists():
            continue
        num = int(img.name.split("_")[-1].split(".")[0])
        name = f"liver_{num:03d}.nii.gz"
        for src, dst in ((img, out / name), (lab, out / "labels" / "final" / name)):
            if dst.exists() or dst.is_symlink():
                dst.unlink()
            if link:
                os.symlink(src.resolve(), dst)
            else:
                shutil.copy(src, dst)
        n += 1
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="where MONAI downloads and unpacks Task03_Liver")
    ap.add_argument("--out", required=True, help="datastore folder to create")
    ap.add_argument("--copy", action="store_true", help="copy files instead of symlinking them")
    args = ap.parse_args(argv)
    from monai.apps import DecathlonDataset

    Path(args.root).mkdir(parents=True, exist_ok=True)
    DecathlonDataset(root_dir=args.root, task="Task03_Liver", section="training", download=True,
                     transform=None, cache_rate=0.0, num_workers=1)
    n = layout_datastore(Path(args.root) / "Task03_Liver", args.out, link=not args.copy)
    print(f"{n} labelled cases in {args.out}; serve with: monailabel start_server --app apps/liver_cascade --studies {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
