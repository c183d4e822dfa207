"""Download the Medical Segmentation Decathlon liver task and lay it out as a MONAI Label datastore.

    python sample-data/fetch_msd.py --root data-local/msd --out data-local/msd-datastore
    python sample-data/fetch_msd.py --task-dir /data/Task03_Liver --out /data/liver-store --copy

Task03_Liver is the LiTS training set (131 portal-venous CTs with liver and
tumour masks, labels 0 background / 1 liver / 2 cancer, the same values as
lib/settings.py) plus 70 unlabelled test CTs; the download is large (many GB)
and needs internet. Output layout (MONAI Label's local datastore; pass --out as
`monailabel start_server --studies`):

    <out>/liver_NNN.nii.gz                  imagesTr/liver_N.nii.gz
    <out>/labels/final/liver_NNN.nii.gz     labelsTr/liver_N.nii.gz
    <out>/liver_test_NNN.nii.gz             imagesTs/liver_N.nii.gz (with --include-test; no label)

Files are symlinked (absolute targets) unless --copy; the app lists symlinks
that point outside the datastore only with `--conf external_symlinks true`, so
serve a symlinked layout with

    monailabel start_server --app apps/liver_cascade --studies <out> --conf external_symlinks true

(a --copy layout needs no --conf). `layout_datastore()`
works on any local Task03_Liver-style folder (imagesTr/, labelsTr/,
dataset.json), so the layout step can run offline.
"""

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
APP = HERE.parent / "apps" / "liver_cascade"
if str(APP) not in sys.path:
    sys.path.insert(0, str(APP))
from lib.settings import LABELS  # noqa: E402

TASK = "Task03_Liver"
# Fallbacks for when monai's DecathlonDataset does not expose them (same values as monai 1.4).
MSD_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task03_Liver.tar"
MSD_MD5 = "a90ec6c4aa7f6a3d087205e23d4e6397"


def download(root_dir: Path) -> Path:
    """Download and extract Task03_Liver under root_dir (skipped when already there); returns the task folder."""
    task_dir = Path(root_dir) / TASK
    if (task_dir / "dataset.json").exists():
        return task_dir
    from monai.apps import DecathlonDataset, download_and_extract

    url = getattr(DecathlonDataset, "resource", {}).get(TASK, MSD_URL)
    md5 = getattr(DecathlonDataset, "md5", {}).get(TASK, MSD_MD5)
    Path(root_dir).mkdir(parents=True, exist_ok=True)
    download_and_extract(url=url, filepath=str(Path(root_dir) / f"{TASK}.tar"), output_dir=str(root_dir),
                         hash_val=md5, hash_type="md5")
    if not (task_dir / "dataset.json").exists():
        raise RuntimeError(f"{task_dir}/dataset.json missing after extraction")
    return task_dir


def _case_name(path: str, prefix: str = "liver") -> str:
    """liver_7.nii.gz -> liver_007 (other names keep their stem)."""
    stem = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    m = re.fullmatch(r"[A-Za-z]+_(\d+)", stem)
    return f"{prefix}_{int(m.group(1)):03d}" if m else stem


def _place(src: Path, dst: Path, link: bool):
    if not src.is_file():
        raise FileNotFoundError(src)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if link:
        dst.symlink_to(src.resolve())
    else:
        shutil.copy2(src, dst)


def check_labels(dataset: dict) -> None:
    """Refuse a dataset whose label values differ from lib/settings.py's."""
    names = {str(v).lower(): int(k) for k, v in dataset.get("labels", {}).items()}
    expected = {"liver": LABELS["liver"], "cancer": LABELS["lesion"]}
    for name, value in expected.items():
        if name in names and names[name] != value:
            raise ValueError(f"dataset.json labels {dataset['labels']} do not match lib/settings.py LABELS {LABELS}")


def layout_datastore(msd_task_dir, out_dir, link: bool = True, include_test: bool = False) -> int:
    """Lay a local Task03_Liver folder out as a MONAI Label datastore under out_dir.

    Uses dataset.json's "training" pairs (so macOS "._*" files in the tar are
    ignored). Returns the number of labelled cases; `datastore_items(out_dir)`
    lists what is there."""
    task = Path(msd_task_dir)
    dataset = json.loads((task / "dataset.json").read_text())
    check_labels(dataset)
    out = Path(out_dir)
    (out / "labels" / "final").mkdir(parents=True, exist_ok=True)
    n = 0
    for item in dataset.get("training", []):
        name = _case_name(item["image"])
        img, lab = out / f"{name}.nii.gz", out / "labels" / "final" / f"{name}.nii.gz"
        _place(task / item["image"], img, link)
        _place(task / item["label"], lab, link)
        n += 1
    if include_test:
        for rel in dataset.get("test", []):
            rel = rel["image"] if isinstance(rel, dict) else rel
            _place(task / rel, out / f"{_case_name(rel, 'liver_test')}.nii.gz", link)
    return n


def datastore_items(out_dir) -> List[Dict[str, str]]:
    """[{"image": path, "label": path or ""}] for the images of a datastore folder."""
    out = Path(out_dir)
    items = []
    for img in sorted(out.glob("*.nii.gz")):
        lab = out / "labels" / "final" / img.name
        items.append({"image": str(img), "label": str(lab) if lab.exists() else ""})
    return items


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="data-local/msd", help="download/extract here (Task03_Liver/ inside)")
    ap.add_argument("--task-dir", default=None, help="an already extracted Task03_Liver folder (no download)")
    ap.add_argument("--out", default="data-local/msd-datastore", help="datastore folder to create")
    ap.add_argument("--copy", action="store_true", help="copy the files instead of symlinking them")
    ap.add_argument("--include-test", action="store_true", help="also add the unlabelled imagesTs cases")
    args = ap.parse_args(argv)
    task_dir = Path(args.task_dir) if args.task_dir else download(Path(args.root))
    try:
        n_lab = layout_datastore(task_dir, args.out, link=not args.copy, include_test=args.include_test)
    except (OSError, ValueError, KeyError) as e:  # a missing or malformed Task03_Liver folder: say what
        print(f"fetch_msd: {task_dir}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    n_all = len(datastore_items(args.out))
    print(f"{args.out}: {n_all} images, {n_lab} labelled ({'copied' if args.copy else 'symlinked'} from {task_dir}); "
          f"serve with: {serve_command(args.out, linked=not args.copy)}")
    return 0


def serve_command(out_dir, linked: bool = True) -> str:
    """The command that serves the datastore: the app ignores symlinks that point outside the datastore
    (lib/datastore.py) unless ``--conf external_symlinks true``, so a symlinked layout needs it."""
    cmd = f"monailabel start_server --app apps/liver_cascade --studies {out_dir}"
    return cmd + " --conf external_symlinks true" if linked else cmd


if __name__ == "__main__":
    sys.exit(main())
