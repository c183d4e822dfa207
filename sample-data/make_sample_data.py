"""Write phantom CT volumes in LiTS, MONAI Label datastore and DICOM layouts.

    python sample-data/make_sample_data.py --out sample-data/generated           # 6 cases, 2 unlabelled
    python sample-data/make_sample_data.py --out /tmp/small --small --no-dicom   # quick test volumes
    python sample-data/make_sample_data.py --out /tmp/train --train-set 40       # LiTS layout only

Layouts under --out:
    lits/volume-N.nii.gz, lits/segmentation-N.nii.gz          (labelled cases)
    datastore/phantom_NNN.nii.gz, datastore/labels/final/...  (all; labels for the labelled ones)
    dicom/phantom_NNN/IM_XXXX.dcm                              (one CT series per case)
Idempotent: a run with the same arguments as the last one does nothing.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import phantom  # noqa: E402


def case_geometry(seed: int, small: bool):
    rng = np.random.default_rng(10_000 + seed)
    if small:
        n = int(rng.integers(16, 25))
        return dict(shape_xy=(160, 160), spacing=(2.2, 2.2, float(rng.choice([4.0, 5.0]))), n_slices=n)
    s = float(rng.uniform(0.6, 0.9))
    return dict(shape_xy=(512, 512), spacing=(s, s, float(rng.choice([2.5, 3.0, 5.0]))), max_slices=40)


def write_dicom_series(p: phantom.Phantom, folder: Path, seed: int, name: str):
    """A CT Image Storage series with the phantom's exact geometry (DICOM LPS)."""
    import nibabel as nib
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    # canonical RAS voxel order: columns = +x index, rows = +y index, slices = +z
    t = nib.orientations.ornt_transform(nib.orientations.io_orientation(p.affine),
                                        nib.orientations.axcodes2ornt(("R", "A", "S")))
    img = nib.orientations.apply_orientation(p.image, t)
    aff = p.affine @ nib.orientations.inv_ornt_aff(t, p.image.shape)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    col_dir = lps[:3, 0] / np.linalg.norm(lps[:3, 0])  # along a row (increasing column index)
    row_dir = lps[:3, 1] / np.linalg.norm(lps[:3, 1])
    sx, sy, sz = np.linalg.norm(aff[:3, :3], axis=0)
    study = generate_uid(entropy_srcs=[f"liver_cascade-study-{seed}"])
    series = generate_uid(entropy_srcs=[f"liver_cascade-series-{seed}"])
    frame = generate_uid(entropy_srcs=[f"liver_cascade-frame-{seed}"])
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(img.shape[2]):
        sop = generate_uid(entropy_srcs=[f"liver_cascade-sop-{seed}-{k}"])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM_{k + 1:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName = f"PHANTOM{seed:03d}", f"Phantom^{name}"
        ds.PatientSex, ds.PatientBirthDate = "O", "19700101"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = f"ACC{seed:04d}", str(seed), ""
        ds.Modality, ds.Manufacturer = "CT", "liver_cascade phantom"
        ds.SeriesDescription, ds.StudyDescription = f"Phantom abdomen {name}", "Synthetic abdominal CT"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(v) for v in np.r_[col_dir, row_dir]]
        pos = lps[:3, :3] @ np.array([0, 0, k]) + lps[:3, 3]
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.SliceLocation = float(pos[2])
        ds.PixelSpacing = [float(sy), float(sx)]  # row spacing, column spacing
        ds.SliceThickness = float(sz)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = img.shape[1], img.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.KVP = 120
        ds.PixelData = np.ascontiguousarray(img[:, :, k].T.astype(np.int16)).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(folder / f"IM_{k + 1:04d}.dcm"), write_like_original=False)
    return study, series


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="sample-data/generated")
    ap.add_argument("--n", type=int, default=6, help="number of cases")
    ap.add_argument("--unlabelled", type=int, default=2, help="the last N cases get no label in the datastore")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="small volumes (160x160, 2.2 mm) for quick tests")
    ap.add_argument("--no-dicom", action="store_true")
    ap.add_argument("--train-set", type=int, default=0, help="write K labelled cases, LiTS layout only")
    args = ap.parse_args(argv)

    out = Path(args.out)
    stamp = json.dumps({k: v for k, v in vars(args).items() if k != "out"}, sort_keys=True)
    done = out / ".done"
    if done.exists() and done.read_text() == stamp:
        print(f"{out}: up to date")
        return 0
    t0 = time.time()
    lits = out / "lits"
    lits.mkdir(parents=True, exist_ok=True)
    if args.train_set:
        for i in range(args.train_set):
            seed = args.seed + i
            p = phantom.generate_phantom(seed, **case_geometry(seed, args.small))
            p.save_nifti(str(lits / f"volume-{i}.nii.gz"), str(lits / f"segmentation-{i}.nii.gz"))
            print(f"volume-{i}: {p.image.shape} {p.orientation} {len(p.lesions)} lesions")
    else:
        store = out / "datastore"
        (store / "labels" / "final").mkdir(parents=True, exist_ok=True)
        cases = []
        for i in range(args.n):
            seed = args.seed + i
            name = f"phantom_{i:03d}"
            p = phantom.generate_phantom(seed, **case_geometry(seed, args.small))
            labelled = i < args.n - args.unlabelled
            p.save_nifti(str(store / f"{name}.nii.gz"),
                         str(store / "labels" / "final" / f"{name}.nii.gz") if labelled else None)
            if labelled:
                p.save_nifti(str(lits / f"volume-{i}.nii.gz"), str(lits / f"segmentation-{i}.nii.gz"))
            uids = None if args.no_dicom else write_dicom_series(p, out / "dicom" / name, seed, name)
            cases.append({"name": name, "seed": seed, "shape": list(p.image.shape), "orientation": p.orientation,
                          "spacing": list(p.spacing), "labelled": labelled, "lesions": p.lesions,
                          "study_uid": uids[0] if uids else None, "series_uid": uids[1] if uids else None})
            print(f"{name}: {p.image.shape} {p.orientation} spacing {np.round(p.spacing, 2).tolist()} "
                  f"{len(p.lesions)} lesions{'' if labelled else ' (unlabelled)'}")
        (out / "cases.json").write_text(json.dumps(cases, indent=2))
    done.write_text(stamp)
    print(f"wrote {out} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
