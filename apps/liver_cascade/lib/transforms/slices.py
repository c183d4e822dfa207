"""Training transforms: from 3D volumes to balanced, augmented 2D axial slices."""

from typing import Dict, List, Optional

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from scipy import ndimage

from lib.settings import LABELS
from lib.transforms.transforms import liver_box


def slice_categories(label: np.ndarray) -> Dict[str, np.ndarray]:
    """Indices of axial slices (last axis) with lesions / liver only / neither."""
    lab = np.asarray(label)
    flat = lab.reshape(-1, lab.shape[-1])
    has_lesion = (flat == LABELS["lesion"]).any(0)
    has_liver = (flat == LABELS["liver"]).any(0)
    return {
        "lesion": np.flatnonzero(has_lesion),
        "liver": np.flatnonzero(has_liver & ~has_lesion),
        "none": np.flatnonzero(~has_liver & ~has_lesion),
    }


class SampleAxialSlicesd(Randomizable, MapTransform):
    """Draw ``num_samples`` 2D axial slices from (C, X, Y, Z) volumes.

    The paper's balanced sampling: categories are slices with lesions, slices
    with neither liver nor lesion, and (optionally) liver-only slices, drawn
    with the given ratios. A category a volume lacks passes its share to the
    others (a volume without lesions gives liver slices instead).
    Returns a list of dicts with (C, X, Y) tensors, like MONAI's RandCrop*d;
    other items are dropped (only ``slice_index`` is added).
    """

    def __init__(self, keys, label_key: str = "label", num_samples: int = 10,
                 ratios: Optional[Dict[str, float]] = None):
        MapTransform.__init__(self, keys)
        self.label_key = label_key
        self.num_samples = num_samples
        self.ratios = ratios or {"lesion": 1.0, "none": 1.0, "liver": 0.0}

    def randomize(self, cats: Dict[str, np.ndarray]) -> List[int]:
        weights = {k: self.ratios.get(k, 0.0) for k in cats if len(cats[k])}
        if weights.get("lesion", 0.0) == 0.0 and "lesion" not in weights and len(cats["liver"]):
            weights["liver"] = max(weights.get("liver", 0.0), self.ratios.get("lesion", 0.0))
        total = sum(weights.values())
        if total <= 0:  # nothing asked for exists: sample uniformly
            pool = np.concatenate([v for v in cats.values()])
            return [int(i) for i in self.R.choice(pool, self.num_samples)]
        names = list(weights)
        probs = np.array([weights[n] for n in names]) / total
        picks = self.R.choice(len(names), self.num_samples, p=probs)
        return [int(self.R.choice(cats[names[p]])) for p in picks]

    def __call__(self, data):
        d = dict(data)
        label = d[self.label_key]
        lab = label.cpu().numpy() if torch.is_tensor(label) else np.asarray(label)
        idx = self.randomize(slice_categories(lab[0]))
        out = []
        for i in idx:
            s = {}  # only the 2D tensors: per-file metadata differs between formats and would not collate
            for key in self.key_iterator(d):
                s[key] = torch.as_tensor(d[key][..., i]).clone()
            s["slice_index"] = i
            out.append(s)
        return out


class SimulateCorrectedLiverd(RandomizableTransform, MapTransform):
    """Teach the cascade to trust an annotator's liver: with probability ``prob``
    replace the liver-map channel by the reference liver, slightly perturbed
    (random erosion/dilation of a few pixels, as a corrected mask would be)."""

    def __init__(self, keys="image", label_key="label", channel: int = 2, prob: float = 0.3, max_radius: int = 2):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.channel = channel
        self.max_radius = max_radius

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        liver = np.asarray(d[self.label_key][0]) > 0
        r = int(self.R.randint(-self.max_radius, self.max_radius + 1))
        if r > 0:
            liver = ndimage.binary_dilation(liver, iterations=r)
        elif r < 0:
            liver = ndimage.binary_erosion(liver, iterations=-r)
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key]).clone()
            img[self.channel] = torch.from_numpy(liver.astype(np.float32))
            d[key] = img
        return d


class LoadStageOneMapsd(MapTransform):
    """Append stage one's cached (lesion, liver) maps to the image channels.

    The maps were computed once per training run (see the cascade trainer),
    in the same RAS orientation as the image, and stored as float16 .npy.
    """

    def __init__(self, keys="image", maps_key: str = "maps"):
        super().__init__(keys)
        self.maps_key = maps_key

    def __call__(self, data):
        d = dict(data)
        maps = torch.from_numpy(np.load(d[self.maps_key]).astype(np.float32))
        for key in self.key_iterator(d):
            img = d[key]
            if tuple(maps.shape[1:]) != tuple(img.shape[1:]):
                raise ValueError(f"stage-one maps {tuple(maps.shape)} do not match image {tuple(img.shape)}")
            d[key] = torch.cat([torch.as_tensor(img), maps], 0)
        return d


class CropToLiverBoxd(MapTransform):
    """Crop (C, X, Y, Z) volumes in-plane to stage two's liver box (:func:`liver_box` of the
    stage-one liver map, channel ``channel`` of ``map_key``), as inference does; volumes
    where stage one found no liver stay whole."""

    def __init__(self, keys, map_key: str = "image", channel: int = 2):
        super().__init__(keys)
        self.map_key = map_key
        self.channel = channel

    def __call__(self, data):
        d = dict(data)
        box = liver_box(d[self.map_key][self.channel])
        if box is None:
            return d
        x0, x1, y0, y1 = box
        for key in self.key_iterator(d):
            d[key] = d[key][:, x0:x1, y0:y1]
        return d
