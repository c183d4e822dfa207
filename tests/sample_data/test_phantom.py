"""The synthetic CT phantom (sample-data/phantom.py) and its writer (make_sample_data.py)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

SAMPLE = Path(__file__).resolve().parents[2] / "sample-data"
APP = Path(__file__).resolve().parents[2] / "apps" / "liver_cascade"
for _p in (str(SAMPLE), str(APP)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import make_sample_data  # noqa: E402
import phantom  # noqa: E402
from lib.settings import LABELS  # noqa: E402

SMALL = dict(shape_xy=(128, 128), spacing=(2.8, 2.8, 5.0), n_slices=24)


def world(affine, idx):
    return affine[:3, :3] @ np.asarray(idx, float).T + affine[:3, 3:4]


def world_centroid(mask, affine):
    return world(affine, np.argwhere(mask).mean(0)[None]).ravel()


@pytest.fixture(scope="module")
def ras_reference():
    return phantom.generate_phantom(11, **SMALL, orientation="RAS")


@pytest.fixture(scope="module")
def full():
    """One default-geometry phantom (512 x 512, drawn spacing/orientation), timed."""
    t0 = time.perf_counter()
    p = phantom.generate_phantom(0)
    return p, time.perf_counter() - t0


def test_deterministic_for_a_seed():
    a = phantom.generate_phantom(7, **SMALL)
    b = phantom.generate_phantom(7, **SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine) and a.lesions == b.lesions and a.info == b.info
    c = phantom.generate_phantom(8, **SMALL)
    assert not np.array_equal(a.image, c.image)


def test_default_geometry_and_speed(full):
    p, seconds = full
    ax = p.axial_axis
    inplane = [i for i in range(3) if i != ax]
    assert [p.image.shape[i] for i in inplane] == [512, 512]
    assert phantom.MIN_DEFAULT_SLICES <= p.image.shape[ax] <= phantom.DEFAULT_MAX_SLICES
    assert p.image.dtype == np.int16 and p.label.dtype == np.uint8 and p.image.shape == p.label.shape
    assert 0.6 <= p.spacing[0] == p.spacing[1] <= 0.9 and 1.0 <= p.spacing[2] <= 5.0
    assert np.allclose(sorted(p.zooms), sorted(p.spacing))
    assert p.zooms[ax] == pytest.approx(p.spacing[2])
    assert p.orientation in phantom.ORIENTATIONS
    assert nib.aff2axcodes(p.affine) == phantom.ORIENTATIONS[p.orientation]
    # 512 x 512 x 40 is meant to take a few seconds; this bound only catches pathologies on a busy machine
    assert seconds < 30 * max(1.0, p.image.shape[ax] / 40)


def test_sampled_geometry_ranges():
    geos = [phantom.sample_geometry(s) for s in range(300)]
    assert all(0.6 <= g["spacing"][0] == g["spacing"][1] <= 0.9 for g in geos)
    assert all(1.0 <= g["spacing"][2] <= 5.0 for g in geos)
    assert {g["orientation"] for g in geos} == set(phantom.ORIENTATIONS)
    assert {g["n_lesions"] for g in geos} == set(range(9))


def test_tissue_hounsfield_units(full):
    p, _ = full
    img, lab = p.image.astype(np.float32), p.label
    assert set(np.unique(lab)) <= {0, LABELS["liver"], LABELS["lesion"]}
    # air outside the body, with CT-like noise
    corner = img[:20, :20] if p.axial_axis == 2 else img[:20, :, :20]
    assert abs(np.median(corner) + 1000) < 10 and 5 < corner.std() < 25
    # fat: the commonest value among the body's negative soft-tissue voxels is about -100
    vals = img[(img > -300) & (img < 0)]
    hist, edges = np.histogram(vals, bins=np.arange(-300, 1, 10))
    assert -125 <= edges[np.argmax(hist)] + 5 <= -75
    # liver parenchyma (eroded mask, vessels and lesions excluded) 50-70 HU in the early phase,
    # 70-115 HU in the late one, as drawn
    core = ndimage.binary_erosion(lab == LABELS["liver"], iterations=2)
    lo, hi = (50, 70) if p.info["phase"] == "early" else (70, 115)
    parenchyma = img[core & (img < hi + 40)]
    assert lo - 3 <= parenchyma.mean() <= hi + 3
    assert parenchyma.mean() == pytest.approx(p.info["liver_hu"], abs=3)
    # enhancing vessels inside the liver label (~150 HU), bone with a bright cortex
    assert (img[core] > 120).sum() > 100
    assert (img > 300).sum() > 1000 and 700 < img.max() <= 3071 and img.min() >= -1024


def test_lesions_within_spec_and_inside_the_liver():
    counts = []
    for seed in (3, 21):
        with_les = phantom.generate_phantom(seed, **SMALL, n_lesions=8, phase="early")
        without = phantom.generate_phantom(seed, **SMALL, n_lesions=0, phase="early")
        # lesions only relabel liver voxels: the organ outline is the same with or without them
        assert np.array_equal(with_les.label > 0, without.label > 0)
        assert not (without.label == LABELS["lesion"]).any() and without.lesions == []
        counts.append(len(with_les.lesions))
        inv = np.linalg.inv(with_les.affine)
        for les in with_les.lesions:
            assert 3.0 <= les["diameter_mm"] <= 60.0 and les["radius_mm"] == pytest.approx(les["diameter_mm"] / 2, abs=0.01)
            assert les["kind"] in ("hypodense", "hyperdense") and les["voxels"] > 0
            lo, hi = (10, 40) if les["kind"] == "hypodense" else (90, 130)
            assert lo <= les["hu"] <= hi
            centre = np.rint(inv[:3, :3] @ les["centre_mm"] + inv[:3, 3]).astype(int)
            assert with_les.label[tuple(centre)] == LABELS["lesion"]
    assert max(counts) == 8 and min(counts) >= 6  # fewer only when a small liver cannot hold them apart
    # the default count is the seed's 0-8
    for seed in (0, 5):
        p = phantom.generate_phantom(seed, **SMALL)
        assert len(p.lesions) <= phantom.sample_geometry(seed)["n_lesions"] <= 8


def test_lesion_contrast():
    p = phantom.generate_phantom(12, shape_xy=(192, 192), spacing=(1.8, 1.8, 3.0), n_slices=40, n_lesions=8,
                                 phase="early")
    inv = np.linalg.inv(p.affine)
    checked = 0
    for les in p.lesions:
        if les["radius_mm"] < 6 or les["rim"]:
            continue
        c = np.rint(inv[:3, :3] @ les["centre_mm"] + inv[:3, 3]).astype(int)
        ball = p.image[tuple(slice(max(0, v - 1), v + 2) for v in c)].astype(float)
        lo, hi = (10, 40) if les["kind"] == "hypodense" else (90, 130)
        assert lo - 20 <= np.median(ball) <= hi + 20
        checked += 1
    assert checked >= 1


def test_contrast_phases():
    """Same patient in both phases: identical anatomy and labels, the late phase's liver
    brighter by 20-45 HU, its heart close to the liver, its hyperdense lesions still brighter."""
    geo = dict(shape_xy=(160, 160), spacing=(2.4, 2.4, 5.0), n_slices=40, n_lesions=8)
    early = phantom.generate_phantom(4, **geo, phase="early")
    late = phantom.generate_phantom(4, **geo, phase="late")
    assert early.info["phase"] == "early" and late.info["phase"] == "late"
    assert np.array_equal(early.label, late.label)
    shift = late.info["liver_hu"] - early.info["liver_hu"]
    assert 20 <= shift <= 45
    core = ndimage.binary_erosion(early.label == LABELS["liver"], iterations=1)
    diff = np.median(late.image[core].astype(float) - early.image[core].astype(float))
    assert diff == pytest.approx(shift, abs=8)
    # the blood pool: brighter than the liver by 150+ HU early, by at most ~70 HU late
    assert early.info["aorta_hu"] - early.info["liver_hu"] > 75
    assert 15 <= late.info["aorta_hu"] - late.info["liver_hu"] <= 70
    for a, b in zip(early.lesions, late.lesions):
        assert a["kind"] == b["kind"]
        assert b["hu"] == pytest.approx(a["hu"] + (shift if a["kind"] == "hyperdense" else 0), abs=0.2)
    # each phase is drawn for about half of the seeds
    drawn = [phantom.generate_phantom(s, **SMALL).info["phase"] for s in range(8)]
    assert set(drawn) == set(phantom.PHASES)
    with pytest.raises(ValueError):
        phantom.generate_phantom(4, **SMALL, phase="delayed")


@pytest.mark.parametrize("code", list(phantom.ORIENTATIONS))
def test_liver_on_the_patients_right_in_every_orientation(code, ras_reference):
    ref = ras_reference
    p = phantom.generate_phantom(11, **SMALL, orientation=code)
    assert nib.aff2axcodes(p.affine) == phantom.ORIENTATIONS[code]
    if code == "permuted":
        assert p.axial_axis != 2  # the axial axis is not the last voxel axis
    # same patient, same world geometry: only the stored voxel order differs, image and label alike
    img, aff = phantom.to_ras(p.image, p.affine)
    lab, _ = phantom.to_ras(p.label, p.affine)
    assert np.array_equal(img, ref.image) and np.array_equal(lab, ref.label) and np.allclose(aff, ref.affine)
    # RAS+ world: +x is the patient's right, so the liver's centroid lies right of the body's
    liver_x = world_centroid(p.label > 0, p.affine)[0]
    body_x = world_centroid(p.image > -500, p.affine)[0]
    assert liver_x > body_x + 20 and liver_x > 0
    assert world_centroid(p.label > 0, p.affine)[0] == pytest.approx(world_centroid(ref.label > 0, ref.affine)[0])


def run_writer(*args):
    cmd = [sys.executable, str(SAMPLE / "make_sample_data.py"), *map(str, args)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


def test_make_sample_data_layouts_and_dicom(tmp_path):
    out = tmp_path / "gen"
    run_writer("--out", out, "--small", "--n", 3, "--unlabelled", 1, "--seed", 4)
    names = [f"phantom_{i:03d}.nii.gz" for i in range(3)]
    assert sorted(f.name for f in (out / "datastore").glob("*.nii.gz")) == names
    assert sorted(f.name for f in (out / "datastore" / "labels" / "final").glob("*.nii.gz")) == names[:2]
    assert sorted(f.name for f in (out / "lits").iterdir()) == \
        ["segmentation-0.nii.gz", "segmentation-1.nii.gz", "volume-0.nii.gz", "volume-1.nii.gz"]
    assert (out / "lits" / "volume-1.nii.gz").read_bytes() == (out / "datastore" / names[1]).read_bytes()
    cases = json.loads((out / "cases.json").read_text())
    assert [c["labelled"] for c in cases] == [True, True, False] and [c["seed"] for c in cases] == [4, 5, 6]

    # the NIfTI is the generator's output, the label matches the image's geometry
    ref = phantom.generate_phantom(4, **make_sample_data.case_kwargs(4, 160, True))
    img_nii = nib.load(str(out / "datastore" / names[0]))
    lab_nii = nib.load(str(out / "datastore" / "labels" / "final" / names[0]))
    assert np.array_equal(np.asarray(img_nii.dataobj), ref.image) and np.allclose(img_nii.affine, ref.affine)
    assert np.array_equal(np.asarray(lab_nii.dataobj), ref.label) and np.allclose(lab_nii.affine, img_nii.affine)

    # DICOM: one CT series whose geometry and pixels are the NIfTI's, in LPS
    ras, aff = phantom.to_ras(ref.image, ref.affine)
    nx, ny, nz = ras.shape
    ds = sorted((pydicom.dcmread(str(f)) for f in (out / "dicom" / "phantom_000").glob("IM_*.dcm")),
                key=lambda d: float(d.ImagePositionPatient[2]))
    assert len(ds) == nz
    assert len({d.StudyInstanceUID for d in ds}) == 1 and len({d.SeriesInstanceUID for d in ds}) == 1
    assert len({d.SOPInstanceUID for d in ds}) == nz and ds[0].SeriesInstanceUID == cases[0]["series_uid"]
    assert ds[0].SOPClassUID == pydicom.uid.CTImageStorage and ds[0].Modality == "CT"
    assert ds[0].PatientID and ds[0].PatientName and ds[0].StudyDate
    assert ds[-1].InstanceNumber == 1  # the most superior slice first, as a scanner numbers them
    lps = np.diag([-1.0, -1.0, 1.0])
    for k, d in enumerate(ds):
        # the first pixel of a slice is the patient's most right-anterior voxel at that level
        expected = lps @ world(aff, [[nx - 1, ny - 1, k]]).ravel()
        assert np.allclose([float(v) for v in d.ImagePositionPatient], expected, atol=1e-3)
        assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert d.Rows == ny and d.Columns == nx
        assert np.allclose([float(v) for v in d.PixelSpacing], [ref.spacing[1], ref.spacing[0]])
        assert float(d.SliceThickness) == pytest.approx(ref.spacing[2])
        assert float(d.RescaleIntercept) == -1024 and float(d.RescaleSlope) == 1
        hu = d.pixel_array.astype(np.int32) * int(d.RescaleSlope) + int(d.RescaleIntercept)
        assert np.array_equal(hu, ras[::-1, ::-1, k].T)  # rows run posterior-wards, columns to the left
    # MONAI Label converts a DICOM series with SimpleITK's GDCM series reader: same volume back
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out / "dicom" / "phantom_000")))
    vol = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(vol).transpose(2, 1, 0)[::-1, ::-1], ras)
    assert np.allclose(vol.GetOrigin(), lps @ world(aff, [[nx - 1, ny - 1, 0]]).ravel(), atol=1e-3)
    assert np.allclose(vol.GetSpacing(), ref.spacing, atol=1e-4)

    # deterministic UIDs, distinct per case; the unlabelled case has a series too
    other = pydicom.dcmread(str(next((out / "dicom" / "phantom_002").glob("IM_*.dcm"))))
    assert other.StudyInstanceUID != ds[0].StudyInstanceUID

    # idempotent: a second run with the same arguments writes nothing
    mtime = (out / "datastore" / names[0]).stat().st_mtime_ns
    again = run_writer("--out", out, "--small", "--n", 3, "--unlabelled", 1, "--seed", 4)
    assert "up to date" in again.stdout and (out / "datastore" / names[0]).stat().st_mtime_ns == mtime
    # a run with other arguments replaces the previous cases (no stale files left behind)
    run_writer("--out", out, "--small", "--n", 2, "--unlabelled", 0, "--seed", 4, "--no-dicom", "--jobs", 1)
    assert sorted(f.name for f in (out / "datastore").glob("*.nii.gz")) == names[:2]
    assert not (out / "dicom" / "phantom_002").exists()
    assert (out / "datastore" / names[0]).stat().st_mtime_ns != mtime


def test_train_set_mode_writes_lits_only(tmp_path):
    out = tmp_path / "train"
    run_writer("--out", out, "--small", "--train-set", 2, "--seed", 30, "--jobs", 1)
    assert sorted(f.name for f in (out / "lits").iterdir()) == \
        ["segmentation-0.nii.gz", "segmentation-1.nii.gz", "volume-0.nii.gz", "volume-1.nii.gz"]
    assert not (out / "datastore").exists() and not (out / "dicom").exists()
    seg = nib.load(str(out / "lits" / "segmentation-1.nii.gz"))
    assert seg.get_data_dtype() == np.uint8 and (np.asarray(seg.dataobj) == LABELS["liver"]).any()
