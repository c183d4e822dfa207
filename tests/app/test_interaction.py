"""Clicks and a corrected liver, on small hand-made volumes (no network)."""

import numpy as np
import pytest
import torch

from lib.settings import LABELS
from lib.transforms.inference import within_liver
from lib.transforms.interaction import enforce_clicks

LIVER, LESION = LABELS["liver"], LABELS["lesion"]
SPACING = (1.0, 1.0, 2.0)


def ball(shape, centre, radius_mm, spacing=SPACING):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, centre, spacing)) <= radius_mm ** 2


def touching_lesions():
    """A liver (100 HU) with two lesions that touch: a hyperdense true one (140 HU) and, fused to it,
    a false one the network drew over plain liver tissue (100 HU)."""
    shape = (48, 48, 16)
    rng = np.random.default_rng(0)
    hu = 100 + rng.normal(0, 8, shape)
    true = ball(shape, (18, 24, 8), 8)
    false = ball(shape, (31, 24, 8), 7) & ~true
    hu[true] = 140 + rng.normal(0, 8, true.sum())
    label = np.full(shape, LIVER, np.uint8)
    label[true | false] = LESION
    return label, hu.astype(np.float32), true, false


def test_background_click_removes_the_clicked_tissue_not_the_lesion_it_touches():
    label, hu, true, false = touching_lesions()
    click = (33, 24, 8)  # inside the false part
    out = enforce_clicks(label, np.zeros(label.shape, np.float32), [], [click], SPACING, hu)
    assert out[click] == LIVER
    assert (out[true] == LESION).mean() > 0.95  # the true lesion stays
    assert (out[false] == LESION).mean() < 0.1  # the false one goes


def test_background_click_without_the_image_removes_the_whole_island():
    label, _, true, false = touching_lesions()
    out = enforce_clicks(label, np.zeros(label.shape, np.float32), [], [(33, 24, 8)], SPACING)
    assert not (out == LESION).any()


def test_background_click_on_a_lone_false_lesion_removes_all_of_it():
    shape = (40, 40, 12)
    rng = np.random.default_rng(1)
    hu = (100 + rng.normal(0, 10, shape)).astype(np.float32)
    blob = ball(shape, (20, 20, 6), 6)
    hu[blob] -= 15  # a faint hypodensity the network took for a lesion
    other = ball(shape, (6, 6, 6), 3)  # a separate lesion elsewhere
    label = np.full(shape, LIVER, np.uint8)
    label[blob | other] = LESION
    out = enforce_clicks(label, np.zeros(shape, np.float32), [], [(20, 20, 6)], SPACING, hu)
    assert not (out[blob] == LESION).any()
    assert (out[other] == LESION).all()


def test_foreground_click_adds_a_lesion_where_there_was_none():
    shape = (32, 32, 8)
    label = np.full(shape, LIVER, np.uint8)
    prob = np.zeros(shape, np.float32)
    prob[ball(shape, (16, 16, 4), 4)] = 0.4
    out = enforce_clicks(label, prob, [(16, 16, 4)], [], SPACING, np.full(shape, 100, np.float32))
    assert out[16, 16, 4] == LESION
    assert (out == LESION).sum() == ball(shape, (16, 16, 4), 4).sum()  # the connected region of probability


def test_within_liver_keeps_the_networks_lesion_decision_inside_the_mask_only():
    probs = torch.tensor([[0.5, 0.2, 0.6, 0.1, 0.2],  # background
                          [0.2, 0.5, 0.1, 0.1, 0.3],  # liver
                          [0.3, 0.3, 0.3, 0.8, 0.5]])  # lesion
    liver = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    out = within_liver(probs, liver)
    # lesion only where lesion beat both other classes, and never outside the mask
    assert out.argmax(0).tolist() == [LIVER, LIVER, LIVER, 0, LESION]
    assert torch.allclose(out.sum(0), torch.ones(5))
    assert torch.allclose(out[2, [0, 4]], torch.tensor([0.3 / 0.8, 0.5 / 0.8]))


def test_island_mode_removes_the_whole_lesion_and_bad_modes_are_refused():
    label, hu, _, _ = touching_lesions()
    out = enforce_clicks(label, np.zeros(label.shape, np.float32), [], [(33, 24, 8)], SPACING, hu, "island")
    assert not (out == LESION).any()
    with pytest.raises(ValueError, match="background_click"):
        enforce_clicks(label, np.zeros(label.shape, np.float32), [], [(33, 24, 8)], SPACING, hu, "everything")
