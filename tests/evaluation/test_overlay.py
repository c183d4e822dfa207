"""scripts/overlay.py segments an image with the app's weights and draws it (`make overlay-real`'s path)."""

import sys

import nibabel as nib
import numpy as np

from support import APP, SAMPLE, ROOT

sys.path.insert(0, str(ROOT / "scripts"))


def test_overlay_segments_with_the_shipped_weights_and_writes_png_and_label(tmp_path):
    from overlay import main

    image = SAMPLE / "generated" / "lits" / "volume-0.nii.gz"
    ref = SAMPLE / "generated" / "lits" / "segmentation-0.nii.gz"
    out = tmp_path / "fig.png"
    assert main(["--image", str(image), "--ref", str(ref), "--model-dir", str(APP / "model"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    label = nib.load(str(tmp_path / "fig.nii.gz"))
    assert label.shape == nib.load(str(image)).shape
    pred, truth = np.asarray(label.dataobj) > 0, np.asarray(nib.load(str(ref)).dataobj) > 0
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.7  # the demo weights find the phantom's liver


def test_overlay_draws_the_slices_asked_for_with_the_request_options_given(tmp_path):
    from overlay import main

    image = SAMPLE / "generated" / "lits" / "volume-0.nii.gz"
    out = {}
    for name, params in (("grown", "{}"), ("not grown", '{"grow_liver": false}')):
        png = tmp_path / f"{name.replace(' ', '_')}.png"
        assert main(["--image", str(image), "--model-dir", str(APP / "model"), "--params", params,
                     "--slices", "3,5,7", "--out", str(png)]) == 0
        from PIL import Image

        assert Image.open(png).size[0] > 2.5 * Image.open(png).size[1]  # three panels side by side
        out[name] = np.asarray(nib.load(str(png.with_suffix(".nii.gz"))).dataobj) > 0
    assert out["grown"].sum() > out["not grown"].sum() and (out["grown"] | ~out["not grown"]).all()
