"""The single source of truth for liver_cascade.

Labels, colours, the HU window, network presets and test-time scales live here
and nowhere else; every other module (configs, transforms, trainers, evaluation,
sample-data, benchmarks) imports them from this file.
"""

from dataclasses import dataclass, field, replace
from typing import Dict, Tuple

# LiTS label values.
LABELS: Dict[str, int] = {"liver": 1, "lesion": 2}
BACKGROUND = 0
LABEL_COLORS: Dict[str, Tuple[int, int, int]] = {
    "liver": (221, 130, 101),  # Slicer's "liver" colour
    "lesion": (255, 255, 0),
}

# Pre-processing (Bi et al. 2017): clip HU to [-160, 240] and scale to [0, 1].
HU_WINDOW: Tuple[float, float] = (-160.0, 240.0)
# an abdominal CT in Hounsfield units holds air or fat below this; an MR or an unscaled
# CT (raw stored values, no rescale) does not, and is refused unless the request says allow_non_ct
CT_LOW_HU: float = -300.0


def scales_from(base: int, count: int, step: int = 32):
    """The paper's scale ladder: base, base + step, ... (count sizes)."""
    return tuple(base + i * step for i in range(count))


@dataclass(frozen=True)
class Preset:
    """Network widths/depths plus the input size and default test-time scales."""

    name: str
    stem: int
    widths: Tuple[int, int, int]  # basic-block stages (stride 2 each)
    depths: Tuple[int, int, int]
    dilated_width: Tuple[int, int]  # 3 basic blocks, dilation 2: (mid, out)
    dilated_depth: int
    bottlenecks: Tuple[Tuple[int, int, int], Tuple[int, int, int]]  # dilation 4
    head: int  # 3x3 conv, dilation 12
    base_size: int  # slices are resized to this (square) before the network
    default_scales: Tuple[int, ...] = field(default=())
    scale_step: int = 32

    @property
    def all_scales(self) -> Tuple[int, ...]:
        """The paper's five-scale ladder for this preset."""
        return scales_from(self.base_size, 5, self.scale_step)


PRESETS: Dict[str, Preset] = {
    # Table 1 of Bi et al. (ResNet-38, model A of Wu et al.) at output stride 8.
    "paper": Preset(
        name="paper",
        stem=64,
        widths=(128, 256, 512),
        depths=(3, 3, 6),
        dilated_width=(512, 1024),
        dilated_depth=3,
        bottlenecks=((512, 1024, 2048), (1024, 2048, 4096)),
        head=512,
        base_size=512,
        default_scales=scales_from(512, 5, 32),  # 512, 544, ..., 640
        scale_step=32,
    ),
    # Same topology, narrow and shallow, sized for interactive CPU inference.
    "lite": Preset(
        name="lite",
        stem=16,
        widths=(24, 32, 48),
        depths=(1, 1, 2),
        dilated_width=(48, 64),
        dilated_depth=1,
        bottlenecks=((32, 64, 96), (48, 96, 128)),
        head=48,
        base_size=192,
        default_scales=(192,),
        scale_step=16,
    ),
}
# `lite`'s network at the paper's 512-pixel input: the same 0.32 M parameters seeing the slice at
# about 0.8 mm per pixel instead of 2 mm, for 8.5x the network time per slice on a CPU. Opt-in
# (`--conf preset lite512`); it has its own weights, since a network is tied to its input scale.
PRESETS["lite512"] = replace(PRESETS["lite"], name="lite512", base_size=512, default_scales=(512,), scale_step=32)

# The preset used when `--conf preset` is not given: the first of the device's list whose stage-one
# weights are in the model folder (lib/conf.py default_preset). On a CPU always `lite` (the speed
# targets); on a GPU the paper's network when trained, else `lite`. `lite512` is opt-in everywhere:
# trained by the app's recipe it did worse than `lite` on real CT (docs/RESULTS.md).
DEFAULT_PRESET: Dict[str, Tuple[str, ...]] = {"cpu": ("lite",), "cuda": ("paper", "lite")}

# Stage two on the liver's box (not in the paper, which runs it on the whole slice): the in-plane
# box of stage one's largest liver component, widened by this fraction of its size on each side
# (at least LIVER_BOX_MIN_MARGIN pixels), is what gets resized to the network's scale; a liver of
# 25 cm in a 40 cm field of view is then seen at 1.6x the resolution, for the same compute.
LIVER_BOX_MARGIN: float = 0.15
LIVER_BOX_MIN_MARGIN: int = 16

# Test-time batch-norm adaptation (not in the paper; AdaBN, Li et al. 2016): before each stage runs, its
# batch-norm statistics are re-estimated on the volume being segmented (at most this many of its slices,
# evenly spread; none below the minimum, where a few slices would stand for a whole volume). Measured on
# both unseen real patients and 8 unseen phantoms: docs/RESULTS.md, "Batch-norm statistics of the volume".
ADAPT_BN_MAX_SLICES: int = 64
ADAPT_BN_MIN_SLICES: int = 8

# Liver growth (not in the paper): after the largest-component step, the liver grows into the voxels next
# to it whose HU looks like the liver's own. The network misses the liver's tips and, on some patients, the
# last 2 mm of its edge; the liver's intensity, read off the network's own liver, finds them. A voxel is
# added when its HU (mean over an in-plane square about LIVER_GROW_SMOOTH_MM wide) is within LIVER_GROW_SD
# robust standard deviations of the liver's median (at most LIVER_GROW_MAX_HU away), it lies within
# LIVER_GROW_MAX_MM of the network's liver, and it connects to it through such voxels; then the edge ring
# the averaging leaves, by each voxel's own HU. Chosen on 8 unseen phantoms, then measured on the two real
# patients: docs/RESULTS.md, "Liver growth".
LIVER_GROW_SD: float = 2.0
LIVER_GROW_MAX_HU: float = 30.0
LIVER_GROW_MAX_MM: float = 20.0
LIVER_GROW_SMOOTH_MM: float = 3.0
LIVER_GROW_MIN_ML: float = 10.0  # a smaller network liver is too little to read the liver's HU from: no growth

# client_id values that do not tell annotators apart (Next Sample treats them as no client_id): 3D
# Slicer's MONAI Label module sends its "Client/User-ID" setting, "user-xyz" unless the user changes it.
SHARED_CLIENT_IDS: Tuple[str, ...] = ("user-xyz",)

# Model file names (under apps/liver_cascade/model/), one per (task, preset).
def model_filename(task: str, preset: str) -> str:
    return f"{task}_{preset}.pt"


# Output classes of every network: background, liver, lesion (softmax).
NUM_CLASSES = 3


@dataclass(frozen=True)
class VGGPreset:
    """VGG16 FCN-8s baseline: conv widths per pool stage and the fc6/fc7 width."""

    name: str
    widths: Tuple[int, int, int, int, int]
    depths: Tuple[int, int, int, int, int]
    fc: int
    fc6_kernel: int
    base_size: int


VGG_PRESETS: Dict[str, VGGPreset] = {
    "paper": VGGPreset("paper", (64, 128, 256, 512, 512), (2, 2, 3, 3, 3), 4096, 7, 512),
    "lite": VGGPreset("lite", (16, 24, 32, 48, 48), (1, 1, 2, 2, 2), 128, 3, PRESETS["lite"].base_size),
}
VGG_PRESETS["lite512"] = replace(VGG_PRESETS["lite"], name="lite512", base_size=PRESETS["lite512"].base_size)
