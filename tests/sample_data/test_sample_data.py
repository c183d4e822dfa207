import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest

from support import SAMPLE


def world_centroid(mask, affine):
    idx = np.argwhere(mask).mean(0)
    return affine[:3, :3] @ idx + affine[:3, 3]


def test_deterministic():
    import phantom

    a = phantom.generate_phantom(5, shape_xy=(96, 96), spacing=(3.6, 3.6, 5.0), n_slices=8)
    b = phantom.generate_phantom(5, shape_xy=(96, 96), spacing=(3.6, 3.6, 5.0), n_slices=8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.allclose(a.affine, b.affine)


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LPI", "permuted"])
def test_anatomy_and_geometry(orientation):
    import phantom

    p = phantom.generate_phantom(9, shape_xy=(160, 160), spacing=(2.2, 2.2, 5.0), n_slices=20,
                                 orientation=orientation, n_lesions=4)
    assert p.image.dtype == np.int16 and p.label.dtype == np.uint8 and p.image.shape == p.label.shape
    assert set(np.unique(p.label)) == {0, 1, 2}
    liver = p.label == 1
    assert 40 < np.median(p.image[liver]) < 80  # liver parenchyma (vessels and noise around it)
    assert p.image.max() > 300  # bone
    assert (p.image < -900).mean() > 0.1  # air around the body
    # the liver sits on the patient's right: x > 0 in RAS world coordinates, whatever the storage order
    assert world_centroid(p.label > 0, p.affine)[0] > 0
    # lesions lie in the liver: what surrounds them is mostly liver
    from scipy import ndimage

    les = p.label == 2
    ring = ndimage.binary_dilation(les, iterations=1) & ~les
    assert les.any() and (p.label[ring] > 0).mean() > 0.6
    assert 1 <= len(p.lesions) <= 4 and all(3 <= l["diameter_mm"] <= 60 for l in p.lesions)


def test_sample_data_layouts(tmp_path):
    out = tmp_path / "gen"
    cmd = [sys.executable, str(SAMPLE / "make_sample_data.py"), "--out", str(out), "--small", "--n", "3",
           "--unlabelled", "1"]
    subprocess.run(cmd, check=True, capture_output=True)
    assert sorted(p.name for p in (out / "datastore").glob("*.nii.gz")) == [f"phantom_00{i}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (out / "datastore" / "labels" / "final").glob("*.nii.gz")) == \
        ["phantom_000.nii.gz", "phantom_001.nii.gz"]
    assert (out / "lits" / "volume-1.nii.gz").exists() and (out / "lits" / "segmentation-1.nii.gz").exists()
    # second run: up to date, nothing rewritten
    again = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "up to date" in again.stdout
    # the DICOM series has the NIfTI's geometry
    img = nib.load(str(out / "datastore" / "phantom_000.nii.gz"))
    files = sorted((out / "dicom" / "phantom_000").glob("*.dcm"))
    ds = [pydicom.dcmread(str(f)) for f in files]
    assert len(ds) == img.shape[[i for i in range(3) if abs(img.affine[2, i]) > 0][0]]
    assert len({d.SeriesInstanceUID for d in ds}) == 1 and ds[0].Modality == "CT"
    zs = sorted(float(d.ImagePositionPatient[2]) for d in ds)
    corners = np.array([[i, j, k, 1] for i in (0, img.shape[0] - 1) for j in (0, img.shape[1] - 1)
                        for k in (0, img.shape[2] - 1)]) @ img.affine.T
    assert np.isclose(zs[0], corners[:, 2].min(), atol=1e-3) and np.isclose(zs[-1], corners[:, 2].max(), atol=1e-3)
    cases = json.loads((out / "cases.json").read_text())
    assert [c["labelled"] for c in cases] == [True, True, False]


def test_generator_refuses_sizes_and_counts_it_cannot_make(tmp_path):
    """--size -5 gave a traceback and --size 8 wrote slices the app refuses; --n 0 was answered about
    --unlabelled."""
    for bad, message in ((["--size", "-5"], "--size must be 32 to 1024"), (["--size", "8"], "--size must be 32 to 1024"),
                         (["--n", "0", "--unlabelled", "0"], "--n must be at least 1"),
                         (["--n", "2", "--unlabelled", "3"], "--unlabelled must be 0 to --n (2)")):
        r = subprocess.run([sys.executable, str(SAMPLE / "make_sample_data.py"), "--out", str(tmp_path / "g")] + bad,
                           capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)
    assert not (tmp_path / "g").exists()


def test_msd_layout_offline(tmp_path):
    import fetch_msd

    task = tmp_path / "Task03_Liver"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    for i in (0, 7):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), str(task / "imagesTr" / f"liver_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4)), str(task / "labelsTr" / f"liver_{i}.nii.gz"))
    (task / "dataset.json").write_text(json.dumps({"training": [
        {"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"} for i in (0, 7)]}))
    out = tmp_path / "store"
    assert fetch_msd.layout_datastore(task, out) == 2
    assert (out / "liver_007.nii.gz").is_symlink() and (out / "labels" / "final" / "liver_000.nii.gz").exists()
