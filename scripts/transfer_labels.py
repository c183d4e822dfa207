"""Carry a patient's manual label onto the same patient's other contrast phase.

    .venv/bin/python scripts/transfer_labels.py            # writes data-local/transfer/

Each real patient in ../shared/real-ct has one labelled series (arterial for 2022,
equilibrium for 0697) and one unlabeled series of the other phase, taken minutes
apart on the same table. A rigid registration (SimpleITK, Mattes mutual information
inside the dilated liver, HU clipped to the model's window) maps the labelled series
onto the unlabeled one; the label is resampled with nearest neighbour onto the
unlabeled series' grid. The result is a *derived* training label (breathing changes
the liver's shape a little between phases, which a rigid transform cannot follow):
it lets a model trained on one patient see both contrast phases, and is never used
as a reference for evaluation.

Nothing is written into the project: output goes to data-local/ (git-ignored).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "liver_cascade"))

from lib.evaluation.metrics import dice, lesion_mask, liver_mask  # noqa: E402
from lib.settings import HU_WINDOW, LABELS  # noqa: E402

# patient -> (labelled series, the same patient's unlabeled series of the other phase); files
# <series>.nii.gz, labels <series>_label.nii.gz. train_demo_weights.py reads its real cases from here.
PAIRS = {
    "hcc_2022": ("hcc_2022_ap", "hcc_2022_eqp"),
    "hcc_0697": ("hcc_0697_eqp", "hcc_0697_ap"),
}


def register_rigid(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, seed: int = 1) -> sitk.Transform:
    """Rigid transform mapping points of ``fixed`` into ``moving`` (ITK convention)."""
    lo, hi = HU_WINDOW
    f = sitk.Clamp(sitk.Cast(fixed, sitk.sitkFloat32), lowerBound=lo, upperBound=hi)
    m = sitk.Clamp(sitk.Cast(moving, sitk.sitkFloat32), lowerBound=lo, upperBound=hi)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, seed=seed)
    reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, 200)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(sitk.Euler3DTransform(), inPlace=False)
    return reg.Execute(f, m)


def transfer(labelled: Path, label: Path, unlabeled: Path, out: Path) -> dict:
    moving, lab, fixed = sitk.ReadImage(str(labelled)), sitk.ReadImage(str(label)), sitk.ReadImage(str(unlabeled))
    # compare intensities only around the liver (in the unlabeled series' frame, before registration)
    liver = sitk.BinaryThreshold(lab, 1, 255, 1, 0)
    mask = sitk.Resample(sitk.BinaryDilate(liver, [20, 20, 3]), fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    tx = register_rigid(fixed, moving, mask)
    moved = sitk.Resample(lab, fixed, tx, sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
    before = sitk.Resample(lab, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(moved, str(out))
    got = sitk.GetArrayViewFromImage(moved)
    params = np.asarray(sitk.CompositeTransform(tx).GetNthTransform(0).GetParameters())
    return {
        "label": str(out),
        "rotation_deg": [round(float(np.degrees(x)), 2) for x in params[:3]],
        "translation_mm": [round(float(x), 2) for x in params[3:]],
        "liver_voxels": int((got == LABELS["liver"]).sum()),
        "lesion_voxels": int(lesion_mask(got).sum()),
        "dice_vs_unregistered": round(dice(liver_mask(got), liver_mask(sitk.GetArrayViewFromImage(before))), 4),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-dir", default=str(ROOT.parent / "shared" / "real-ct" / "nifti"))
    ap.add_argument("--out", default=str(ROOT / "data-local" / "transfer"))
    args = ap.parse_args(argv)
    real, out = Path(args.real_dir), Path(args.out)
    report = {}
    for patient, (src, dst) in PAIRS.items():
        report[patient] = transfer(real / f"{src}.nii.gz", real / f"{src}_label.nii.gz", real / f"{dst}.nii.gz",
                                   out / f"{dst}_label.nii.gz")
        print(patient, json.dumps(report[patient]), flush=True)
    (out / "transfer.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
