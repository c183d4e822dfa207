"""predict.py on a LiTS folder: only the volume-N files are images, the segmentation-N labels beside them
are skipped (they were segmented as CT, failed the CT check and made the command exit 1)."""

import nibabel as nib
import numpy as np


def test_predict_skips_the_labels_of_a_lits_folder(tmp_path, capsys):
    import phantom

    from lib.evaluation import predict

    lits = tmp_path / "lits"
    lits.mkdir()
    p = phantom.generate_phantom(3, shape_xy=(64, 64), spacing=(5.0, 5.0, 6.0), n_slices=7)
    p.save_nifti(str(lits / "volume-0.nii.gz"), str(lits / "segmentation-0.nii.gz"))
    out = tmp_path / "pred"
    assert predict.main(["--images", str(lits), "--out", str(out), "--params", '{"crf": "off"}']) == 0
    err = capsys.readouterr().err
    assert "segmentation-0" not in err and "do not look like CT" not in err
    assert sorted(f.name for f in out.iterdir()) == ["volume-0.nii.gz"]
    label = np.asarray(nib.load(str(out / "volume-0.nii.gz")).dataobj)
    assert label.shape == p.label.shape


def test_a_folder_without_volume_n_files_keeps_every_image(tmp_path):
    from lib.evaluation.predict import lits_images

    files = [tmp_path / n for n in ("case_a.nii.gz", "case_b.nii", "segmentation-0.nii.gz")]
    assert lits_images(files) == files
    lits = [tmp_path / n for n in ("segmentation-1.nii.gz", "test-volume-2.nii", "volume-1.nii.gz")]
    assert lits_images(lits) == lits[1:]
