"""Clicks and a corrected liver, on small hand-made volumes (no network)."""

import numpy as np
import pytest
import torch

from lib.settings import LABELS
from lib.transforms.inference import within_liver
from lib.transforms.interaction import CLICK_RADIUS_MM, enforce_clicks, on_gas

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


def missed_tumour(tumour_hu, radius_mm=9.0, vessel=False):
    """A liver (100 HU, noise 10) with a tumour the network did not see; optionally a vessel of the
    tumour's density leaving it along x (a bridge a density rule could leak through)."""
    shape = (64, 64, 16)
    rng = np.random.default_rng(1)
    hu = 100 + rng.normal(0, 10, shape)
    tumour = ball(shape, (32, 32, 8), radius_mm)
    hu[tumour] = tumour_hu + rng.normal(0, 10, tumour.sum())
    if vessel:
        hu[32:, 30:34, 6:11] = tumour_hu
    label = np.full(shape, LIVER, np.uint8)
    return label, hu.astype(np.float32), tumour


def click(label, hu, point=(32, 32, 8)):
    return enforce_clicks(label, np.zeros(label.shape, np.float32), [point], [], SPACING, hu) == LESION


@pytest.mark.parametrize("tumour_hu", [60, 150])  # hypodense, hyperdense
def test_foreground_click_the_network_ignores_marks_the_clicked_tumour(tumour_hu):
    label, hu, tumour = missed_tumour(tumour_hu)
    got = click(label, hu)
    # a disk of CLICK_RADIUS_MM on the clicked slice, as before, gives 0.05
    assert 2 * (got & tumour).sum() / (got.sum() + tumour.sum()) > 0.85


def test_foreground_region_is_cut_where_it_leaks_along_a_vessel(monkeypatch):
    label, hu, tumour = missed_tumour(60, radius_mm=3.0, vessel=True)
    got = click(label, hu)
    assert got[tumour].mean() > 0.8
    # the vessel is followed at most 6x the click's depth in the tumour (3 mm) from the click
    reach = np.nonzero(got.any((1, 2)))[0].max() - 32
    assert 3 <= reach <= 19
    monkeypatch.setattr("lib.transforms.interaction.FOREGROUND_LEAK_FACTOR", 1000.0)
    assert np.nonzero(click(label, hu).any((1, 2)))[0].max() - 32 > 22  # without the cut: to 25 mm


def test_foreground_click_on_liver_like_tissue_falls_back_to_a_disk():
    label, hu, _ = missed_tumour(100)  # no contrast: nothing to grow from
    got = click(label, hu)
    assert abs(got[..., 8].sum() - np.pi * CLICK_RADIUS_MM**2) < 8  # 1 mm pixels
    assert not got[..., :8].any() and not got[..., 9:].any()


def test_a_background_click_trims_a_lesion_grown_from_a_foreground_click_instead_of_erasing_it():
    # the tumour's density runs on into a 6 mm wide band of the same tissue: the grown lesion overshoots
    label, hu, tumour = missed_tumour(60, vessel=False)
    hu[41:64, 29:36, 5:12] = 60
    fg, bg = (32, 32, 8), (51, 32, 8)  # the annotator clicks the tumour, then the overshoot
    grown = click(label, hu)
    assert grown[bg]
    out = enforce_clicks(label, np.zeros(label.shape, np.float32), [fg], [bg], SPACING, hu)
    got = out == LESION
    # the tumour stays as the foreground click grew it (the whole region is one density)
    assert got[fg] and (got & tumour).sum() == (grown & tumour).sum() and grown[tumour].mean() > 0.9
    assert not got[bg] and not got[42:].any()  # what is nearer the background click goes
    assert (out[grown & ~got] == LIVER).all()


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


def test_a_click_on_gas_is_told_from_one_on_fat_or_tissue():
    """Air, lung and bowel gas are never a liver lesion; fat (-100 HU) and one noisy voxel do not count as gas."""
    hu = np.full((8, 8, 3), 60.0, np.float32)
    hu[:4] = -1000  # air on one side
    hu[6, 6, 1] = -1000  # one voxel of noise in tissue
    hu[:, 7, 2] = -100  # fat
    assert on_gas(hu, (1, 1, 0)) and on_gas(hu, (0, 0, 2))  # an edge voxel has a smaller neighbourhood
    assert not on_gas(hu, (6, 6, 1)) and not on_gas(hu, (5, 7, 2)) and not on_gas(hu, (6, 3, 0))
