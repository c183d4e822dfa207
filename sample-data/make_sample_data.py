"""Write phantom CT volumes (see phantom.py) in LiTS, MONAI Label datastore and DICOM layouts.

    python sample-data/make_sample_data.py --out sample-data/generated             # 6 cases, 2 unlabelled
    python sample-data/make_sample_data.py --out /tmp/small --small --no-dicom     # quick test volumes
    python sample-data/make_sample_data.py --out /tmp/train --train-set 40         # LiTS layout only
    python sample-data/make_sample_data.py --out /tmp/x --montage docs/img/phantom_example.png

Layout under --out:
    lits/volume-N.nii.gz, lits/segmentation-N.nii.gz       labelled cases (N = 0, 1, ...)
    datastore/phantom_NNN.nii.gz                            every case (MONAI Label --studies folder)
    datastore/labels/final/phantom_NNN.nii.gz               labelled cases (all but the last --unlabelled)
    dicom/phantom_NNN/IM_XXXX.dcm                           one CT Image Storage series per case
    cases.json                                              seeds, geometry, lesions and UIDs per case
    .done                                                   the arguments + code hash of the last run

Case i uses seed --seed + i. Idempotent: when .done matches the arguments and
the generator's code, nothing is written (so `make` can call it every time);
otherwise the previous outputs of this script are removed and rewritten.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import phantom  # noqa: E402

SMALL_SIZE = 160
DEFAULT_MAX_SLICES = 48  # keeps the default 512x512 sample set small and quick to write


def case_kwargs(seed: int, size: int, small: bool) -> dict:
    """generate_phantom() geometry arguments for one case (deterministic in seed)."""
    rng = np.random.Generator(np.random.PCG64([seed, 0x5A3D]))
    if small:
        s = float(rng.uniform(2.1, 2.4)) * SMALL_SIZE / size
        return dict(shape_xy=(size, size), spacing=(s, s, 5.0), n_slices=int(rng.integers(16, 25)))
    s = float(rng.uniform(0.6, 0.9))
    spacing = None if size == 512 else (s * 512 / size, s * 512 / size, None)  # same field of view
    return dict(shape_xy=(size, size), spacing=spacing, max_slices=DEFAULT_MAX_SLICES)


# ----------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------


def dicom_uids(seed: int, signature: str, n_slices: int):
    """Deterministic study/series/frame-of-reference/SOP instance UIDs for one case."""
    from pydicom.uid import generate_uid

    base = ["liver_cascade phantom", str(seed), signature]
    return dict(study=generate_uid(entropy_srcs=base + ["study"]),
                series=generate_uid(entropy_srcs=base + ["series"]),
                frame=generate_uid(entropy_srcs=base + ["frame"]),
                sops=[generate_uid(entropy_srcs=base + ["sop", str(k)]) for k in range(n_slices)])


def write_dicom_series(p: phantom.Phantom, folder: Path, seed: int, name: str) -> dict:
    """One axial CT Image Storage series with the phantom's geometry, in DICOM's LPS.

    The volume is written in the usual scanner order (rows posterior-wards,
    columns towards the patient's left, ImageOrientationPatient 1\\0\\0\\0\\1\\0),
    instance 1 the most superior slice; pixel data are uint16 = HU + 1024
    (RescaleIntercept -1024, slope 1)."""
    import nibabel as nib
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    t = nib.orientations.ornt_transform(nib.orientations.io_orientation(p.affine),
                                        nib.orientations.axcodes2ornt(("L", "P", "S")))
    vol = nib.orientations.apply_orientation(p.image, t)  # [L, P, S]
    aff = p.affine @ nib.orientations.inv_ornt_aff(t, p.image.shape)  # voxel -> RAS
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff  # voxel -> LPS (a diagonal matrix plus origin)
    sx, sy, sz = (float(v) for v in np.linalg.norm(aff[:3, :3], axis=0))
    signature = f"{p.image.shape}-{np.round(p.affine, 3).tolist()}"
    uids = dicom_uids(seed, signature, vol.shape[2])
    folder.mkdir(parents=True, exist_ok=True)
    stored = (np.clip(vol.astype(np.int32), -1024, 3071) + 1024).astype(np.uint16)
    n = vol.shape[2]
    for k in range(n):
        inst = n - k  # instance 1 = most superior slice (head-first scanning order)
        sop = uids["sops"][k]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = folder / f"IM_{inst:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["frame"], ""
        ds.PatientID, ds.PatientName = f"PHANTOM{seed:04d}", f"Phantom^{name}"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = f"ACC{seed:04d}", f"{seed}", ""
        ds.StudyDescription = "Synthetic abdominal CT (liver_cascade phantom)"
        ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "liver_cascade phantom", "ABDOMEN"
        ds.SeriesDescription, ds.SeriesNumber = f"{name} portal venous {sz:g} mm", 1
        ds.InstanceNumber, ds.AcquisitionNumber = inst, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        pos = lps @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [round(float(v), 4) for v in pos[:3]]
        ds.SliceLocation = round(float(pos[2]), 4)
        ds.SliceThickness, ds.SpacingBetweenSlices = round(sz, 4), round(sz, 4)
        ds.PixelSpacing = [round(sy, 6), round(sx, 6)]  # between rows (P), between columns (L)
        ds.KVP, ds.ConvolutionKernel = 120, "STANDARD"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows = P index, columns = L index
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
    return dict(study_uid=uids["study"], series_uid=uids["series"], n_files=n)


# ----------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------


def _link_or_copy(src: Path, dst: Path):
    """Hard link (no second copy on disk), or copy across file systems."""
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_case(job: dict) -> dict:
    """Generate and write one case; runs in a worker process."""
    out, i, seed, name = Path(job["out"]), job["index"], job["seed"], job["name"]
    t0 = time.time()
    p = phantom.generate_phantom(seed, **job["kwargs"])
    rec = {"name": name, "seed": seed, "shape": list(p.image.shape), "orientation": p.orientation,
           "spacing_xyz": [round(v, 4) for v in p.spacing], "zooms": [round(v, 4) for v in p.zooms],
           "labelled": job["labelled"], "lesions": p.lesions, "info": p.info}
    lits = out / "lits"
    if job["mode"] == "train":
        p.save_nifti(str(lits / f"volume-{i}.nii.gz"), str(lits / f"segmentation-{i}.nii.gz"))
    else:
        store = out / "datastore"
        img = store / f"{name}.nii.gz"
        lab = store / "labels" / "final" / f"{name}.nii.gz"
        p.save_nifti(str(img), str(lab) if job["labelled"] else None)
        if job["labelled"]:
            _link_or_copy(img, lits / f"volume-{i}.nii.gz")
            _link_or_copy(lab, lits / f"segmentation-{i}.nii.gz")
        if job["dicom"]:
            rec.update(write_dicom_series(p, out / "dicom" / name, seed, name))
    rec["seconds"] = round(time.time() - t0, 2)
    return rec


def _code_hash() -> str:
    h = hashlib.sha1()
    for f in (HERE / "phantom.py", Path(__file__).resolve(), Path(phantom._APP) / "lib" / "settings.py"):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _clean(out: Path):
    """Remove what an earlier run of this script wrote (and nothing else)."""
    for pattern in ("lits/volume-*.nii.gz", "lits/segmentation-*.nii.gz", "datastore/phantom_*.nii.gz",
                    "datastore/labels/final/phantom_*.nii.gz", "cases.json"):
        for f in out.glob(pattern):
            f.unlink()
    for d in out.glob("dicom/phantom_*"):
        shutil.rmtree(d)


def save_montage(p: phantom.Phantom, path: Path, n: int = 6):
    """PNG of n axial slices through the liver (radiological display, HU window and
    label colours from lib/settings.py, liver and lesion contours), cropped to the body."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lib.settings import HU_WINDOW, LABEL_COLORS

    img, _ = phantom.to_ras(p.image, p.affine)
    lab, aff = phantom.to_ras(p.label, p.affine)
    # radiological display: patient's right on the image's left, anterior up
    img, lab = img[::-1, ::-1].transpose(1, 0, 2), lab[::-1, ::-1].transpose(1, 0, 2)
    rows, cols = np.nonzero((img > -500).any(axis=2))
    crop = (slice(max(rows.min() - 8, 0), rows.max() + 9), slice(max(cols.min() - 8, 0), cols.max() + 9))
    zs = np.flatnonzero(lab.any(axis=(0, 1)))
    zs = zs if len(zs) else np.arange(img.shape[2])
    ks = np.linspace(zs[0], zs[-1], n + 2).round().astype(int)[1:-1]
    colours = [tuple(c / 255 for c in LABEL_COLORS[k]) for k in ("liver", "lesion")]
    ncol = (n + 1) // 2
    fig, axes = plt.subplots(2, ncol, figsize=(4.2 * ncol, 7.2))
    for ax, k in zip(np.ravel(axes), ks):
        ax.imshow(img[crop + (k,)], cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
        sl = lab[crop + (k,)]
        for mask, colour in zip((sl > 0, sl == phantom.LESION), colours):  # liver outline includes lesions
            if mask.any():
                ax.contour(mask, [0.5], colors=[colour], linewidths=1.0)
        ax.set_title(f"z = {aff[2, 3] + k * aff[2, 2]:.0f} mm", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"phantom seed {p.info['seed']}: stored {p.orientation}, spacing {np.round(p.spacing, 2).tolist()} mm, "
                 f"{len(p.lesions)} lesions; window {HU_WINDOW[0]:g}..{HU_WINDOW[1]:g} HU, liver / lesion contours",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "generated"), help="output folder")
    ap.add_argument("--n", type=int, default=6, help="number of cases (default 6)")
    ap.add_argument("--unlabelled", type=int, default=2, help="the last N cases get no label (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of case 0; case i uses seed + i")
    ap.add_argument("--size", type=int, default=None, help="in-plane matrix (default 512; 160 with --small)")
    ap.add_argument("--small", action="store_true", help="small quick volumes: 160x160, ~2.2 mm, 16-24 slices of 5 mm")
    ap.add_argument("--no-dicom", action="store_true", help="skip the DICOM series")
    ap.add_argument("--train-set", type=int, default=0, metavar="K", help="write K labelled cases, LiTS layout only")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--montage", default=None, help="also save a PNG montage of case 0 here")
    ap.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = ap.parse_args(argv)
    if args.n < 1 and not args.train_set:
        ap.error(f"--n must be at least 1, got {args.n}")
    if not 0 <= args.unlabelled <= args.n:
        ap.error(f"--unlabelled must be 0 to --n ({args.n}), got {args.unlabelled}")
    if args.size is not None and not 32 <= args.size <= 1024:  # the app refuses slices under 16x16
        ap.error(f"--size must be 32 to 1024 pixels, got {args.size}")
    if args.train_set < 0 or args.jobs < 1:
        ap.error("--train-set must be >= 0 and --jobs >= 1")
    size = args.size or (SMALL_SIZE if args.small else 512)

    out = Path(args.out)
    stamp = json.dumps({"n": args.n, "unlabelled": args.unlabelled, "seed": args.seed, "size": size,
                        "small": args.small, "dicom": not args.no_dicom, "train_set": args.train_set,
                        "code": _code_hash()}, sort_keys=True)
    done = out / ".done"
    t0 = time.time()
    if done.exists() and done.read_text() == stamp and not args.force:
        done.touch()  # newer than the sources again, for make
        print(f"{out}: up to date")
    else:
        if done.exists():
            done.unlink()
        _clean(out)
        (out / "lits").mkdir(parents=True, exist_ok=True)
        if args.train_set:
            jobs = [dict(out=str(out), index=i, seed=args.seed + i, name=f"volume-{i}", labelled=True, mode="train",
                         dicom=False, kwargs=case_kwargs(args.seed + i, size, args.small))
                    for i in range(args.train_set)]
        else:
            (out / "datastore" / "labels" / "final").mkdir(parents=True, exist_ok=True)
            jobs = [dict(out=str(out), index=i, seed=args.seed + i, name=f"phantom_{i:03d}",
                         labelled=i < args.n - args.unlabelled, mode="datastore", dicom=not args.no_dicom,
                         kwargs=case_kwargs(args.seed + i, size, args.small)) for i in range(args.n)]
        if args.jobs > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                cases = list(pool.map(make_case, jobs))
        else:
            cases = [make_case(j) for j in jobs]
        for c in cases:
            print(f"{c['name']}: {tuple(c['shape'])} {c['orientation']} spacing {c['spacing_xyz']} "
                  f"{len(c['lesions'])} lesions{'' if c['labelled'] else ' (unlabelled)'} [{c['seconds']} s]")
        (out / "cases.json").write_text(json.dumps(cases, indent=1))
        done.write_text(stamp)
        print(f"wrote {len(cases)} cases to {out} in {time.time() - t0:.1f} s")
    if args.montage:
        save_montage(phantom.generate_phantom(args.seed, **case_kwargs(args.seed, size, args.small)), Path(args.montage))
        print(f"montage: {args.montage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
