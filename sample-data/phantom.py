"""Deterministic synthetic abdominal CT phantoms (pure numpy/scipy).

A phantom is an abdominal CT volume in Hounsfield units with a LiTS label
(0 background, 1 liver, 2 lesion): body outline with skin, subcutaneous fat and
a muscle wall, visceral fat, spine and ribs, contrast-enhanced aorta, IVC and
kidneys, spleen, bowel loops with gas, and a liver of varied shape in the
right upper quadrant with enhancing vessels and 0-8 irregular hypo- or
hyperdense lesions of 3-60 mm; partial-volume blur and correlated noise.
Geometry varies by seed: in-plane spacing 0.6-0.9 mm, slices 1-5 mm, slice
count, and the stored orientation (RAS, LPS, LPI or axes permuted).

World coordinates are RAS+ millimetres (+x = patient's left-to-right, i.e. the
liver, on the patient's right, sits at x > 0).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
from scipy import ndimage

ORIENTATIONS = ("RAS", "LPS", "LPI", "permuted")
LIVER, LESION = 1, 2


@dataclass
class Phantom:
    image: np.ndarray  # int16 HU, voxel order as stored
    label: np.ndarray  # uint8 {0, 1, 2}
    affine: np.ndarray  # 4x4 voxel -> RAS+ mm
    spacing: Tuple[float, float, float]  # (x, y, z) mm of the canonical grid
    orientation: str
    lesions: List[Dict] = field(default_factory=list)

    def save_nifti(self, image_path: str, label_path: Optional[str] = None):
        nib.save(nib.Nifti1Image(self.image, self.affine), image_path)
        if label_path:
            nib.save(nib.Nifti1Image(self.label, self.affine), label_path)


def _ellipsoid(X, Y, Z, c, r):
    return ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2


def _bumpy(rng, X, Y, Z, c, r, amp=0.15, n=5):
    """Ellipsoid 'distance' (< 1 inside) with smooth random bumps on its surface."""
    d = np.sqrt(_ellipsoid(X, Y, Z, c, r))
    ux, uy, uz = (X - c[0]) / r[0], (Y - c[1]) / r[1], (Z - c[2]) / r[2]
    norm = np.sqrt(ux ** 2 + uy ** 2 + uz ** 2) + 1e-6
    ux, uy, uz = ux / norm, uy / norm, uz / norm
    mod = np.zeros_like(d)
    for _ in range(n):
        k = rng.normal(size=3)
        k /= np.linalg.norm(k)
        f = rng.uniform(1.0, 3.0)
        mod += np.sin(f * np.pi * (k[0] * ux + k[1] * uy + k[2] * uz) + rng.uniform(0, 2 * np.pi))
    return d * (1.0 + amp * mod / np.sqrt(n))


def generate_phantom(
    seed: int,
    shape_xy: Tuple[int, int] = (512, 512),
    n_slices: Optional[int] = None,
    spacing: Optional[Sequence[float]] = None,
    n_lesions: Optional[int] = None,
    orientation: Optional[str] = None,
    max_slices: int = 64,
) -> Phantom:
    rng = np.random.default_rng(np.random.PCG64(seed))
    nx, ny = shape_xy
    if spacing is None:
        s = rng.uniform(0.6, 0.9)
        spacing = (s, s, float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0])))
    sx, sy, sz = (float(v) for v in spacing)
    orientation = orientation or ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}")

    # body and liver size, scaled to what fits in the field of view
    fov = min(nx * sx, ny * sy)
    scale = min(1.0, 0.92 * fov / 340.0)
    body_a, body_b = rng.uniform(150, 170) * scale, rng.uniform(105, 125) * scale
    liver_r = np.array([rng.uniform(75, 95), rng.uniform(65, 80), rng.uniform(65, 85)]) * scale
    liver_c = np.array([body_a * rng.uniform(0.35, 0.45), body_b * rng.uniform(0.0, 0.15), 0.0])

    # z coverage: the liver plus margins, capped
    zmin, zmax = -liver_r[2] - 25, liver_r[2] + 25
    if n_slices is None:
        n_slices = int(min(max_slices, np.ceil((zmax - zmin) / sz)))
    z0 = -0.5 * (n_slices - 1) * sz + rng.uniform(-0.2, 0.2) * liver_r[2]

    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y = (np.arange(ny) - (ny - 1) / 2) * sy
    z = z0 + np.arange(n_slices) * sz
    X, Y, Z = np.meshgrid(x.astype(np.float32), y.astype(np.float32), z.astype(np.float32), indexing="ij")

    hu = np.full(X.shape, -1000.0, np.float32)
    # body: skin, subcutaneous fat, muscle wall, visceral fat
    wobble = 1.0 + 0.03 * np.sin(Z / 40.0 + rng.uniform(0, 6))
    body = np.sqrt((X / (body_a * wobble)) ** 2 + (Y / (body_b * wobble)) ** 2)
    fat_t = rng.uniform(10, 25) * scale
    mus_t = rng.uniform(8, 14) * scale
    r_in_fat = 1 - 2.5 / body_b
    r_in_mus = 1 - (2.5 + fat_t) / body_b
    r_in_vis = 1 - (2.5 + fat_t + mus_t) / body_b
    hu[body < 1] = 30  # skin
    hu[body < r_in_fat] = -100  # subcutaneous fat
    hu[body < r_in_mus] = 45  # muscle wall
    inside = body < r_in_vis
    hu[inside] = -90  # visceral fat

    # spine: vertebral body, canal, posterior elements
    sp_c = (0.0, -body_b * 0.55)
    vb_r = 17 * scale
    d_vb = np.hypot(X - sp_c[0], Y - sp_c[1])
    hu[d_vb < vb_r + 10 * scale] = 45  # psoas/paraspinal muscle around
    hu[d_vb < vb_r] = 700
    hu[d_vb < vb_r - 2.5] = 230
    canal = np.hypot(X - sp_c[0], Y - (sp_c[1] - vb_r - 8 * scale)) < 7 * scale
    post = np.hypot(X - sp_c[0], Y - (sp_c[1] - vb_r - 8 * scale)) < 13 * scale
    hu[post & ~canal] = 650
    hu[canal] = 20
    # ribs: thin arcs near the wall, periodic in z, upper part
    theta = np.arctan2(Y, X)
    rib_r = r_in_vis - 0.02
    rib_phase = np.cos(2 * np.pi * (Z - rng.uniform(0, 25)) / 25.0) > 0.55
    segments = np.cos(14 * theta + rng.uniform(0, 6)) > 0.2
    rib = (np.abs(body - rib_r) < 3.0 / body_b) & rib_phase & segments & (np.abs(np.sin(theta)) < 0.9)
    rib &= Z > -20 * scale
    hu[rib] = rng.uniform(500, 800)

    # kidneys (lower), spleen (patient's left = x < 0), aorta, IVC
    for side in (+1, -1):
        kc = (side * body_a * 0.45, -body_b * 0.35, -liver_r[2] * 0.6 + rng.uniform(-10, 10))
        kd = _ellipsoid(X, Y, Z, kc, (28 * scale, 22 * scale, 50))
        hu[kd < 1] = 160
        hu[kd < 0.35] = 40  # renal sinus / medulla
    spleen = _bumpy(rng, X, Y, Z, (-body_a * 0.5, -body_b * 0.15, liver_r[2] * 0.3), (40 * scale, 30 * scale, 55), 0.1) < 1
    hu[spleen & inside] = rng.uniform(40, 50)
    hu[np.hypot(X + 15 * scale, Y - (sp_c[1] + vb_r + 12 * scale)) < 12 * scale] = rng.uniform(170, 230)  # aorta
    ivc = np.hypot(X - 22 * scale, Y - (sp_c[1] + vb_r + 14 * scale)) < 11 * scale
    # bowel loops with gas (anterior, patient's left and lower)
    for _ in range(int(rng.integers(5, 10))):
        bc = (rng.uniform(-0.6, 0.2) * body_a, rng.uniform(0.1, 0.6) * body_b, rng.uniform(-1.2, 0.2) * liver_r[2])
        br = (rng.uniform(12, 25) * scale, rng.uniform(12, 25) * scale, rng.uniform(20, 50))
        bd = _ellipsoid(X, Y, Z, bc, br)
        loop = (bd < 1) & inside
        hu[loop] = 70  # enhancing wall
        hu[(bd < 0.6) & inside] = rng.uniform(10, 35)  # contents
        gas = _ellipsoid(X, Y, Z, (bc[0], bc[1] + 0.4 * br[1], bc[2]), (br[0] * 0.5, br[1] * 0.35, br[2] * 0.5)) < 1
        hu[gas & (bd < 0.8) & inside] = -950

    # liver, clipped to the abdominal cavity, and not crossing the spine
    liver_d = _bumpy(rng, X, Y, Z, liver_c, liver_r, amp=0.18)
    # taper the left lobe: the liver narrows towards the midline
    liver = (liver_d < 1) & inside & (X > -body_a * 0.25) & (d_vb > vb_r + 12 * scale)
    liver &= ~(np.hypot(X + 15 * scale, Y - (sp_c[1] + vb_r + 12 * scale)) < 14 * scale)
    liver_hu = rng.uniform(50, 70)
    hu[liver] = liver_hu
    hu[ivc] = 130
    # vessels: random tubes through the liver
    vessels = np.zeros_like(liver)
    lb = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in ndimage.find_objects(liver.astype(np.uint8))[0]) \
        if liver.any() else (slice(0, 0),) * 3
    Xl, Yl, Zl = X[lb], Y[lb], Z[lb]
    for _ in range(int(rng.integers(4, 8))):
        p0 = liver_c + rng.uniform(-0.5, 0.5, 3) * liver_r
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        rad = rng.uniform(2.5, 6.0) * scale
        rel = np.stack([Xl - p0[0], Yl - p0[1], Zl - p0[2]])
        t = np.tensordot(v, rel, axes=1)
        dist2 = (rel ** 2).sum(0) - t ** 2
        vessels[lb] |= (dist2 < rad ** 2) & (np.abs(t) < liver_r.max() * 0.8)
    hu[vessels & liver] = rng.uniform(130, 170)

    label = np.zeros(X.shape, np.uint8)
    label[liver] = LIVER
    lesions = []
    n_lesions = int(rng.integers(0, 9)) if n_lesions is None else int(n_lesions)
    liver_idx = np.argwhere(ndimage.binary_erosion(liver, iterations=2) if liver.sum() > 500 else liver)
    for i in range(n_lesions if len(liver_idx) else 0):
        centre_v = liver_idx[int(rng.integers(len(liver_idx)))]
        c = np.array([x[centre_v[0]], y[centre_v[1]], z[centre_v[2]]])
        diam = float(np.exp(rng.uniform(np.log(3.0), np.log(60.0))))
        r = diam / 2 * rng.uniform(0.8, 1.2, 3)
        r = np.maximum(r, [sx * 0.8, sy * 0.8, sz * 0.6])
        box = [slice(max(0, int(np.searchsorted(a, cc - 1.5 * rr))), int(np.searchsorted(a, cc + 1.5 * rr)) + 1)
               for a, cc, rr in zip((x, y, z), c, r)]
        sub = tuple(box)
        d = _bumpy(rng, X[sub], Y[sub], Z[sub], c, r, amp=0.25, n=6)
        m = (d < 1) & liver[sub]
        if not m.any():
            continue
        kind = "hypodense" if rng.random() < 0.7 else "hyperdense"
        les_hu = rng.uniform(10, 40) if kind == "hypodense" else rng.uniform(90, 130)
        region = hu[sub]
        region[m] = les_hu
        # a rim for some lesions
        if rng.random() < 0.3:
            rim = m & (d > 0.8)
            region[rim] = les_hu + 25
        lab = label[sub]
        lab[m] = LESION
        lesions.append({"centre_mm": c.round(1).tolist(), "diameter_mm": round(diam, 1), "kind": kind,
                        "hu": round(float(les_hu), 1)})

    # partial-volume blur and correlated CT-like noise
    blur = (0.7 * 0.7 / sx, 0.7 * 0.7 / sy, max(0.3, 0.6 * 1.5 / sz))
    hu = ndimage.gaussian_filter(hu, blur, mode="nearest")
    noise = rng.normal(0, 1, hu.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, (0.7, 0.7, 0.0))
    noise *= rng.uniform(10, 18) / (noise.std() + 1e-6)
    hu = np.clip(hu + noise, -1024, 3071)
    image = np.rint(hu).astype(np.int16)

    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [x[0], y[0], z[0]]
    image, label, affine = _reorient(image, label, affine, orientation)
    return Phantom(image, label, affine, (sx, sy, sz), orientation, lesions)


def _reorient(image, label, affine, orientation):
    """Store the canonical RAS grid in another voxel order (same world geometry)."""
    target = {"RAS": ("R", "A", "S"), "LPS": ("L", "P", "S"), "LPI": ("L", "P", "I"),
              "permuted": ("L", "S", "P")}[orientation]
    start = nib.orientations.io_orientation(affine)
    end = nib.orientations.axcodes2ornt(target)
    t = nib.orientations.ornt_transform(start, end)
    new_affine = affine @ nib.orientations.inv_ornt_aff(t, image.shape)
    image = np.ascontiguousarray(nib.orientations.apply_orientation(image, t))
    label = np.ascontiguousarray(nib.orientations.apply_orientation(label, t)).astype(np.uint8)
    return image, label, new_affine
