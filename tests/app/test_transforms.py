import nibabel as nib
import numpy as np
import pytest
import torch

from lib.infers.liver import write_label
from lib.transforms.inference import adapt_batchnorm, predict_slices
from lib.transforms.transforms import fill_holes_per_slice, fill_label_holes


def test_fill_holes_2d_per_slice():
    m = np.zeros((9, 9, 3), bool)
    m[2:7, 2:7, 1] = True
    m[4, 4, 1] = False  # a 2D hole
    out = fill_holes_per_slice(m, axis=-1)
    assert out[4, 4, 1] and out.sum() == 25


def test_3d_cavity_not_bridged_across_slices():
    # a cavity that is open in its own axial slice stays open, even where 3D closes it
    t = np.zeros((9, 9, 7), bool)
    t[2:7, 2:7, :] = True
    t[4, 2:7, 3] = False  # slot open to the side in slice 3
    t[4, 4, :] = False  # tunnel along z
    out = fill_holes_per_slice(t, axis=-1)
    assert not out[4, 4, 3]  # open in its slice: not filled
    assert out[4, 4, 2]  # closed in its own slice: filled


def test_fill_label_holes_lesion_counts_as_liver():
    lab = np.zeros((11, 11, 1), np.uint8)
    lab[1:10, 1:10] = 1
    lab[3:8, 3:8] = 2
    lab[5, 5] = 0  # hole inside the lesion -> lesion
    lab[2, 2] = 0  # hole in the liver -> liver
    out = fill_label_holes(lab)
    assert out[5, 5, 0] == 2 and out[2, 2, 0] == 1
    assert set(np.unique(out)) == {0, 1, 2}


def test_multiscale_equal_scales_equals_single_scale():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1)).eval()
    vol = torch.rand(40, 30, 5)

    def inp(idx):
        return vol[..., idx].permute(2, 0, 1)[:, None]

    single = predict_slices(net, inp, 5, (40, 30), [48], batch_size=2)
    multi = predict_slices(net, inp, 5, (40, 30), [48, 48, 48], batch_size=3)
    assert single.shape == (3, 40, 30, 5)
    assert torch.allclose(single.float(), multi.float(), atol=1e-3)
    assert torch.allclose(single.float().sum(0), torch.ones(40, 30, 5), atol=1e-2)


def _bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                               torch.nn.Conv2d(3, 3, 1)).eval()


def test_adapt_batchnorm_takes_the_volumes_statistics_and_leaves_the_shared_network_alone():
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    vol = 5 + 3 * torch.randn(20, 16, 40)  # a volume far from the statistics the network has (mean 0, var 1)

    def inp(idx):
        return vol[..., list(idx)].permute(2, 0, 1)[:, None]

    adapted = adapt_batchnorm(net, inp, range(40), (20, 16), [20], batch_size=10, max_slices=64)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the cached network is untouched
    assert adapted is not net and not adapted.training
    with torch.no_grad():
        conv = net[0](inp(range(40)))  # what the batch-norm layer sees: 4 batches of 10, so the mean is exact
    bn = adapted[1]
    assert torch.allclose(bn.running_mean, conv.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, conv.var((0, 2, 3)), rtol=0.05)  # the batches' mean variance
    assert not torch.allclose(bn.running_mean, net[1].running_mean, atol=0.1)
    # the adapted network normalises this volume's features: about zero mean, unit variance
    with torch.no_grad():
        z = adapted[1](adapted[0](inp(range(40))))
    assert abs(float(z.mean())) < 0.05 and abs(float(z.var()) - 1) < 0.1


def test_adapt_batchnorm_spreads_its_slices_over_the_volume_and_reads_only_the_box():
    net = _bn_net()
    vol = torch.zeros(20, 16, 100)
    vol[2:12, 3:11] = 10.0  # the box is bright, the rest dark
    seen = []

    def inp(idx):
        seen.extend(idx)
        return vol[..., list(idx)].permute(2, 0, 1)[:, None]

    box = (2, 12, 3, 11)
    adapted = adapt_batchnorm(net, inp, range(100), (20, 16), [10], batch_size=4, max_slices=8, box=box)
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 8 and min(seen) == 0 and max(seen) == 99
    with torch.no_grad():
        conv = net[0](torch.full((1, 1, 10, 8), 10.0))  # the box alone, at its own size (scale 10)
    assert torch.allclose(adapted[1].running_mean, conv.mean((0, 2, 3)), atol=1e-3)
    # no batch norm (the VGG-FCN): nothing to adapt, the network itself is used
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1))
    assert adapt_batchnorm(plain, inp, range(100), (20, 16), [10], 4, 8) is plain


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_label_writer_geometry_round_trip(tmp_path, ext):
    import SimpleITK as sitk

    aff = np.array([[0.0, 0.0, -2.5, 30.0], [-0.7, 0.0, 0.0, 10.0], [0.0, 0.8, 0.0, -5.0], [0, 0, 0, 1]])
    lab = np.random.default_rng(0).integers(0, 3, (6, 7, 5)).astype(np.uint8)
    path = write_label(lab, aff, str(tmp_path / f"x{ext}"))
    img = sitk.ReadImage(path)
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    assert np.array_equal(arr, lab)
    # ITK's LPS geometry equals our RAS affine
    direction = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())[None]
    lps = np.diag([-1, -1, 1]) @ aff[:3, :3]
    assert np.allclose(direction, lps, atol=1e-5)
    assert np.allclose(np.array(img.GetOrigin()), np.diag([-1, -1, 1]) @ aff[:3, 3], atol=1e-4)
    if ext == ".nii.gz":
        assert np.allclose(nib.load(path).affine, aff, atol=1e-5)


def test_largest_component_keeps_the_liver_only():
    from lib.transforms.transforms import largest_component

    m = np.zeros((20, 20, 6), bool)
    m[2:12, 2:12, 1:5] = True  # liver
    m[15:18, 15:18, 2:4] = True  # a separate false positive (spleen)
    m[12, 12, 4] = True  # touches the liver diagonally: 26-connected, kept
    out = largest_component(m)
    assert out[5, 5, 2] and out[12, 12, 4] and not out[16, 16, 3]
    assert not largest_component(np.zeros((4, 4, 4), bool)).any()


def test_liver_box_is_the_largest_component_with_a_margin():
    from lib.settings import LIVER_BOX_MARGIN, LIVER_BOX_MIN_MARGIN
    from lib.transforms.transforms import liver_box

    liver = np.zeros((300, 200, 6), np.float32)
    liver[100:200, 40:120, 1:5] = 0.9  # the liver: 100 x 80 pixels
    liver[250:260, 150:160, 2:4] = 0.9  # a smaller false component (the spleen, say): ignored
    m = max(LIVER_BOX_MIN_MARGIN, round(LIVER_BOX_MARGIN * 99))
    assert liver_box(liver) == (100 - m, 200 + m, 40 - m, 120 + m)
    assert liver_box(torch.from_numpy(liver).half()) == liver_box(liver)  # float16 maps, as inference keeps them
    # a click outside the liver widens the box so that stage two sees it; the box stays inside the slice
    x0, x1, y0, y1 = liver_box(liver, [[290, 5, 3]])
    assert (x0, x1, y0) == (100 - round(LIVER_BOX_MARGIN * 190), 300, 0) and y1 > 120
    assert liver_box(np.zeros((30, 30, 3))) is None
    assert liver_box(np.zeros((30, 30, 3)), [[10, 12, 1]]) == (0, 27, 0, 29)


def test_predict_slices_on_a_box_writes_only_the_box():
    class Mean(torch.nn.Module):  # 3 'classes' from the input's mean: output depends on the crop
        def forward(self, x):
            return x.mean(1, keepdim=True).repeat(1, 3, 1, 1) * torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1, 1)

    vol = torch.rand(1, 40, 30, 4)
    out = torch.full((3, 40, 30, 4), 7.0, dtype=torch.float16)  # stage one's probabilities, say
    box = (5, 25, 10, 28)
    # scale 20: the box's longer side, so the crop runs at its own size and the values can be checked exactly
    res = predict_slices(Mean(), lambda idx: vol[..., idx].permute(3, 0, 1, 2), 4, (40, 30), [20], batch_size=3,
                         out=out.clone(), box=box, indices=[1, 2])
    inside = res[:, 5:25, 10:28][..., [1, 2]]
    assert torch.all(inside < 1.01)  # softmax probabilities written in the box of the chosen slices
    expected = torch.softmax(vol[0, 5:25, 10:28][..., [1, 2]][None].expand(3, -1, -1, -1)
                             * torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1), 0)
    assert torch.allclose(inside.float(), expected, atol=2e-3)  # same values as the crop on its own
    kept = res.clone()
    kept[:, 5:25, 10:28, 1:3] = 7.0
    assert torch.equal(kept, out)  # everything else untouched
    with pytest.raises(ValueError):
        predict_slices(Mean(), lambda idx: vol[..., idx].permute(3, 0, 1, 2), 4, (40, 30), [36], box=box)


def test_crop_to_liver_box_crops_image_maps_and_label_together():
    from lib.transforms.slices import CropToLiverBoxd
    from lib.transforms.transforms import liver_box

    image = torch.rand(3, 120, 100, 5)
    image[2] = 0
    image[2, 30:70, 20:60, 1:4] = 1.0  # stage one's liver map
    label = (image[2:3] > 0.5).long()
    out = CropToLiverBoxd(keys=("image", "label"))({"image": image, "label": label})
    x0, x1, y0, y1 = liver_box(image[2])
    assert out["image"].shape == (3, x1 - x0, y1 - y0, 5) and out["label"].shape == (1, x1 - x0, y1 - y0, 5)
    assert torch.equal(out["image"], image[:, x0:x1, y0:y1]) and torch.equal(out["label"], label[:, x0:x1, y0:y1])
    assert int(out["label"].sum()) == int(label.sum())  # the whole liver is inside
    empty = {"image": torch.zeros(3, 20, 20, 2), "label": torch.zeros(1, 20, 20, 2)}
    assert CropToLiverBoxd(keys=("image", "label"))(empty)["image"].shape == (3, 20, 20, 2)  # no liver: whole


def test_drop_small_lesions_relabels_them_liver_by_volume_in_ml():
    from monai.data import MetaTensor

    from lib.transforms.transforms import DropSmallLesionsd

    lab = np.ones((20, 20, 10), np.uint8)
    lab[2:4, 2:4, 2:4] = 2  # 8 voxels of 2x2x2.5 mm = 0.08 mL
    lab[10:16, 10:16, 3:7] = 2  # 144 voxels = 1.44 mL
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    d = {"pred": MetaTensor(torch.from_numpy(lab)[None], affine=torch.from_numpy(affine))}
    dropped = DropSmallLesionsd("pred", min_ml=0.1)(d)
    out = np.asarray(dropped["pred"][0])
    assert (out == 2).sum() == 144 and out[3, 3, 3] == 1 and (out > 0).all()
    from lib.infers.liver import LesionReportd

    report = LesionReportd(0.1)(dropped)["lesion_report"]  # what was drawn as liver is counted as dropped
    assert report["n_lesions"] == 1 and report["n_lesions_below_min_volume"] == 1
    keep = np.asarray(DropSmallLesionsd("pred", min_ml=0.1)({**d, "min_lesion_ml": 0.05})["pred"][0])
    assert (keep == 2).sum() == 152  # the request's min_lesion_ml wins


def test_drop_small_lesions_measures_volume_as_the_report_does_on_a_tilted_gantry():
    """Voxel volume from |det| of the affine, as the lesion report: with a gantry tilt the product of
    the column lengths is larger, and a lesion could be drawn but missing from the report."""
    from monai.data import MetaTensor

    from lib.evaluation.lesion_report import lesion_report
    from lib.transforms.transforms import DropSmallLesionsd

    lab = np.ones((20, 20, 10), np.uint8)
    lab[5:10, 5:9, 4] = 2  # 20 voxels
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    tilt = np.radians(25)
    affine[1, 2], affine[2, 2] = 2.5 * np.sin(tilt), 2.5 * np.cos(tilt)  # sheared: slices tilted in y
    affine[:3, 2] *= 2.5 / np.linalg.norm(affine[:3, 2])
    voxel = abs(np.linalg.det(affine[:3, :3])) / 1000
    for min_ml in (19.5 * voxel, 20.5 * voxel):  # around the lesion's volume by |det|
        d = {"pred": MetaTensor(torch.from_numpy(lab)[None], affine=torch.from_numpy(affine)), "min_lesion_ml": min_ml}
        drawn = int((np.asarray(DropSmallLesionsd("pred", min_ml=0.0)(d)["pred"][0]) == 2).sum())
        listed = lesion_report(lab, affine, min_volume_ml=min_ml)["n_lesions"]
        assert (drawn, listed) == ((20, 1) if min_ml < 20 * voxel else (0, 0))


def test_dense_crf_runs_on_thin_slices_whatever_the_slice_count():
    """At 0.625 mm the CRF pools 2 slices per cell, in slabs of 16: a last slab of one slice (17, 33
    slices; or a single-slice volume) once made torch's pooling refuse a kernel larger than its input."""
    from monai.data import MetaTensor

    from lib.transforms.transforms import DenseCRFd

    for nz in (1, 17, 33):
        img = torch.zeros(1, 20, 20, nz)
        img[:, 5:15, 5:15] = 0.6
        probs = torch.zeros(3, 20, 20, nz, dtype=torch.float16)
        probs[0] = 1
        probs[:, 6:14, 6:14] = torch.tensor([0.2, 0.8, 0.0], dtype=torch.float16)[:, None, None, None]
        affine = torch.diag(torch.tensor([0.7, 0.7, 0.625, 1.0], dtype=torch.float64))
        d = {"pred": MetaTensor(probs, affine=affine), "image": MetaTensor(img, affine=affine)}
        out = DenseCRFd(keys="pred", foreground_only=True)(d)["pred"]
        assert out.shape == (3, 20, 20, nz) and bool(torch.isfinite(out.float()).all())
        assert float(out[1, 10, 10].min()) > 0.5  # the liver's centre stays liver


def test_dense_crf_moves_a_misplaced_boundary_to_the_intensity_edge():
    # bright tissue for x < 30, dark beyond; the network's liver overshoots to x < 36
    from lib.transforms.transforms import dense_crf_3d

    image = np.full((60, 40, 6), 0.2, np.float32)
    image[:30] = 0.6
    liver = np.full(image.shape, 0.3, np.float32)
    liver[:36] = 0.7
    probs = np.stack([1 - liver, liver])
    spacing = np.array([1.0, 1.0, 5.0])

    def edge(q):  # first x where the middle row is not liver
        return int(np.argmin(q.argmax(0)[:, 20, 3]))

    assert edge(probs) == 36
    crf = dense_crf_3d(probs, image, spacing, 5, 3.0, 10.0, 0.1, 1.0, 2.0)
    assert edge(crf) <= 32
    assert np.allclose(crf.sum(0), 1, atol=1e-5)
    # the appearance (bilateral) kernel does it: smoothness alone leaves the boundary where it was
    assert edge(dense_crf_3d(probs, image, spacing, 5, 3.0, 10.0, 0.1, 1.0, 0.0)) >= 35
    # nothing to change: uniform image and probabilities stay as they are
    flat = np.stack([np.full(image.shape, 0.4, np.float32), np.full(image.shape, 0.6, np.float32)])
    assert np.allclose(dense_crf_3d(flat, np.full(image.shape, 0.5, np.float32), spacing, 3, 3.0, 10.0, 0.1, 1.0, 2.0),
                       flat, atol=1e-4)


def test_dense_crfd_joins_no_other_component_to_the_liver_and_works_in_place():
    # the network's liver in slices 0-5 and a separate "liver" blob in slices 7-8 (the heart above the
    # dome, say), with a bright, uncertain slice between them: the CRF must not join them
    from monai.data import MetaTensor

    from lib.transforms.transforms import DenseCRFd

    image = np.full((40, 40, 12), 0.2, np.float32)
    image[5:35, 5:35, :9] = 0.6
    fg = np.full(image.shape, 0.05, np.float32)
    fg[5:35, 5:35, :6] = 0.9
    fg[5:35, 5:35, 6] = 0.45
    fg[10:30, 10:30, 7:9] = 0.9
    with torch.inference_mode():  # as the app's maps are
        probs = torch.from_numpy(np.stack([1 - fg, fg * 0.9, fg * 0.1])).half()
    affine = torch.diag(torch.tensor([1.0, 1.0, 5.0, 1.0]))
    data = {"pred": MetaTensor(probs, affine=affine), "image": MetaTensor(torch.from_numpy(image)[None], affine=affine)}
    out = DenseCRFd(keys="pred", foreground_only=True)(data)["pred"]
    assert out.dtype == torch.float16 and out.data_ptr() == probs.data_ptr()  # in place
    label = out.float().argmax(0).numpy()
    assert (label[5:35, 5:35, :6] > 0).mean() > 0.95  # the liver stays
    assert not (label[10:30, 10:30, 7:9] > 0).any()  # the other component is background
    # the foreground keeps the network's liver : lesion split
    inside = out[:, 20, 20, 2].float()
    assert torch.isclose(inside[1] / inside[2], torch.tensor(9.0), rtol=0.02)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.float64, torch.int16])
def test_keep_hu_stores_int16_from_any_input_dtype(dtype):
    """A uint8 volume (sent with allow_non_ct) once failed here with HTTP 500: clamping to the
    int16 range overflowed uint8."""
    from lib.infers.liver import KeepHUd

    img = torch.tensor([[[[0, 50], [200, 255]]]]).to(dtype)
    hu = KeepHUd()({"image": img})["image_hu"]
    assert hu.dtype == torch.int16 and hu.tolist() == [[[0, 50], [200, 255]]]


def _grow_scene(seed=0):
    """A 1 x 1 x 5 mm scene: fat, a liver (60 HU) with a hypodense lesion, a kidney (160 HU) and a muscle
    (30 HU) touching it, and a spleen-like organ (60 HU) 40 mm away; CT-like noise (sd 8 HU)."""
    rng = np.random.default_rng(seed)
    hu = np.full((120, 120, 14), -100.0)
    x, y = np.mgrid[:120, :120]
    truth = np.zeros(hu.shape, bool)
    truth[..., 2:12] = (((x - 50) / 30.0) ** 2 + ((y - 55) / 25.0) ** 2 < 1)[..., None]
    hu[truth] = 60
    kidney = np.zeros_like(truth)
    kidney[..., 3:9] = (((x - 50) / 10.0) ** 2 + ((y - 88) / 8.0) ** 2 < 1)[..., None] & ~truth[..., 3:9]
    hu[kidney] = 160
    muscle = np.zeros_like(truth)
    muscle[82:90, 30:80, :] = True
    muscle &= ~truth
    hu[muscle] = 30
    spleen = np.zeros_like(truth)
    spleen[..., 2:12] = ((x - 50) ** 2 + (y - 112) ** 2 < 36)[..., None]
    hu[spleen] = 60
    lesion = np.zeros_like(truth)
    lesion[..., 5:8] = ((x - 45) ** 2 + (y - 50) ** 2 < 36)[..., None]
    hu[lesion] = 20
    hu += rng.normal(0, 8, hu.shape)
    return hu.astype(np.int16), truth, lesion, kidney, muscle, spleen


def test_grow_liver_finds_the_missed_edge_and_tips_and_only_liver_like_tissue():
    from scipy import ndimage

    from lib.transforms.transforms import grow_liver

    hu, truth, lesion, kidney, muscle, spleen = _grow_scene()
    # the network's liver: 3 mm short of the edge and missing the two slices at each end
    label = np.zeros(truth.shape, np.uint8)
    label[ndimage.binary_erosion(truth, np.ones((7, 7, 1)))] = 1
    label[..., :4] = 0
    label[..., 10:] = 0
    label[lesion] = 2

    def dice(a):
        return 2 * (a & truth).sum() / (a.sum() + truth.sum())

    grown = grow_liver(label, hu, (1.0, 1.0, 5.0))
    assert dice(label > 0) < 0.8 and dice(grown > 0) > 0.95, (dice(label > 0), dice(grown > 0))
    assert np.array_equal(grown == 2, label == 2)  # lesions as they were
    assert not (grown > 0)[kidney | spleen].any()  # not the kidney (other HU), not the organ 40 mm away
    assert (grown > 0)[muscle].sum() < 0.02 * muscle.sum()  # the muscle next to it: 30 HU, 4 noise sds off
    assert np.array_equal(grown[label > 0], label[label > 0]) and set(np.unique(grown[grown != label])) <= {1}


def test_grow_liver_reaches_no_further_than_max_mm_and_needs_a_liver_to_read():
    from scipy import ndimage

    from lib.transforms.transforms import grow_liver

    hu, truth, lesion, *_ = _grow_scene(1)
    label = np.zeros(truth.shape, np.uint8)
    label[..., 7][truth[..., 7]] = 1  # one slice of liver: the rest is 5, 10, ... mm away from it
    for max_mm, slices in ((4.0, {7}), (5.0, {6, 7, 8}), (10.0, {5, 6, 7, 8, 9})):
        grown = grow_liver(label, hu, (1.0, 1.0, 5.0), max_mm=max_mm, min_ml=1.0)
        assert set(np.flatnonzero(grown.any((0, 1)))) == slices, max_mm
    far = ndimage.distance_transform_edt(label == 0, sampling=(1.0, 1.0, 5.0)) > 10.0
    assert not grow_liver(label, hu, (1.0, 1.0, 5.0), max_mm=10.0, min_ml=1.0)[far].any()
    # under min_ml of liver (this slice: about 11.6 mL) the label is returned unchanged; no liver at all too
    assert np.array_equal(grow_liver(label, hu, (1.0, 1.0, 5.0), min_ml=20.0), label)
    empty = np.zeros_like(label)
    assert np.array_equal(grow_liver(empty, hu, (1.0, 1.0, 5.0)), empty)
    # a liver of lesion only has no liver HU to read
    assert np.array_equal(grow_liver(np.where(label > 0, 2, 0).astype(np.uint8), hu, (1.0, 1.0, 5.0)),
                          np.where(label > 0, 2, 0))


def test_grow_liverd_records_what_it_added_in_ml():
    from monai.data import MetaTensor

    from lib.transforms.transforms import GrowLiverd

    hu, truth, *_ = _grow_scene(2)
    label = np.zeros(truth.shape, np.uint8)
    label[..., 4:10][truth[..., 4:10]] = 1
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    out = GrowLiverd(keys="pred")({"pred": MetaTensor(torch.from_numpy(label)[None], affine=torch.as_tensor(affine)),
                                   "image_hu": torch.from_numpy(hu)})
    added = (out["pred"][0].numpy() > 0).sum() - (label > 0).sum()
    assert added > 1000 and out["liver_grown_ml"] == pytest.approx(added * 5.0 / 1000, abs=0.01)
    assert isinstance(out["pred"], MetaTensor) and np.allclose(out["pred"].affine, affine)


def test_grow_liver_on_odd_volumes_keeps_the_label_and_warns_nothing():
    """One slice, one pixel thick, 0.3 or 3 mm pixels, float or int HU: the same shape back, the network's
    labels kept; a liver too thin to have a core (min_ml 0) read the median of nothing (NaN, with warnings)."""
    import warnings

    from lib.transforms.transforms import grow_liver

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shape in ((5, 5, 1), (40, 40, 1), (64, 48, 3), (1, 50, 50)):
            for spacing in ((0.3, 0.3, 10.0), (3.0, 3.0, 0.5), (2.0, 0.5, 1.0)):
                for dtype in (np.int16, np.float64):
                    hu = rng.normal(60, 10, shape).astype(dtype)
                    label = (rng.random(shape) < 0.5).astype(np.uint8)
                    label[rng.random(shape) < 0.05] = 2
                    out = grow_liver(label, hu, spacing, min_ml=0.0)
                    assert out.shape == label.shape and out.dtype == np.uint8
                    assert np.array_equal(out[label > 0], label[label > 0]) and np.array_equal(out == 2, label == 2)
