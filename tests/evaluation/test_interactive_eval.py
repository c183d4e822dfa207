"""scripts/interactive_eval.py: simulated clicks on a sample phantom with the shipped cascade."""

import json
import sys

from support import APP, ROOT, SAMPLE

sys.path.insert(0, str(ROOT / "scripts"))


def test_clicks_improve_the_lesions_of_a_sample_phantom(tmp_path):
    from interactive_eval import main

    lits = SAMPLE / "generated" / "lits"
    out = tmp_path / "interactive.json"
    assert main(["--model-dir", str(APP / "model"), "--image", str(lits / "volume-0.nii.gz"),
                 "--label", str(lits / "segmentation-0.nii.gz"), "--clicks", "1,3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["background_click"] == "tissue"
    row = result["rows"][0]
    assert row["clicks"]["background"]  # the first click removes a false lesion fused to a true one
    # Measured with the shipped weights: 0.53 with the corrected liver, 0.78 after 3 clicks; removing the
    # whole fused lesion (background_click "island") fell to 0.14.
    assert row["lesion_dice_corrected_liver"] > 0.45
    assert row["lesion_dice_3_clicks"] > row["lesion_dice_corrected_liver"] + 0.1
