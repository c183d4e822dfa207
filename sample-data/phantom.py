"""Deterministic synthetic abdominal CT phantoms (pure numpy/scipy, no torch).

`generate_phantom(seed)` returns a contrast-enhanced abdominal CT volume in
Hounsfield units with a LiTS label (0 background, 1 liver, 2 lesion), in one of
two contrast phases (`PHASES`, drawn per seed):

* "early" (late arterial / early portal): liver 50-70 HU, bright blood pool
  (aorta and heart 150-250 HU), corticomedullary kidneys;
* "late" (portal venous / equilibrium): the liver enhanced by a further 20-45 HU,
  the blood pool 25-60 HU above it (so the heart is close to the liver), the
  spleen close to the liver, homogeneous (nephrographic) kidneys;

* body outline varying along z, with skin, subcutaneous fat (about -100 HU), an
  abdominal muscle wall and visceral fat; air (-1000 HU) and a CT table outside;
* spine (vertebral bodies with a cortical shell, discs, canal, pedicles,
  laminae, spinous and transverse processes), paraspinal and psoas muscles,
  ribs that slope down anteriorly with costal cartilage, a xiphoid;
* lung bases and the heart above a two-domed diaphragm;
* aorta, IVC, portal and splenic veins, kidneys (cortex, medulla, sinus fat),
  spleen, stomach with an air-fluid level, pancreas, gallbladder, colon with
  mottled stool and small-bowel loops with gas pockets;
* a liver in the patient's right upper quadrant (right lobe tapering
  inferiorly, left lobe crossing the midline, smooth random warps, clipped by
  the diaphragm, body wall and neighbouring organs) of 1200-2000 mL scaled to
  the body, 50-70 HU, with tapered portal and hepatic vein trees (~150 HU,
  labelled liver as in LiTS) and 0-8 irregular hypo- (10-40 HU, some with an
  enhancing rim) or hyperdense (90-130 HU) lesions of 3-60 mm, clipped to the
  liver mask;
* partial-volume blur (anisotropic, following the spacing) and slightly
  correlated gaussian noise (10-20 HU); int16 clipped to [-1024, 3071].

Geometry varies by seed: in-plane spacing 0.6-0.9 mm, slice thickness 1-5 mm,
20-60 slices centred on the liver, a table offset in the affine, and the stored
voxel order (`ORIENTATIONS`: RAS, LPS, LPI, or "permuted" with the axial axis
in the middle). World coordinates are NIfTI RAS+ millimetres: +x points
towards the patient's Right, +y Anterior, +z Superior. The liver, on the
patient's right, therefore sits at world x > 0 (as in real LiTS/TCIA scans)
and the spleen at x < 0, whatever the stored voxel order. DICOM's LPS is RAS
with x and y negated (there the liver is at x < 0).

Everything is drawn from `numpy.random.Generator(PCG64(...))` streams spawned
from the seed, so a seed always gives the same arrays, and overriding the
geometry (`spacing`, `n_slices`, `orientation`) or `n_lesions` does not change
the patient's anatomy (except for a uniform down-scaling of the whole patient
when the field of view, shape_xy x spacing, is too small for the drawn body).

Speed: a 512 x 512 x 40 volume takes about 3-4 s on one core (analytic shapes
evaluated on float32 grids, mostly inside bounding boxes or slice by slice).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

_APP = Path(__file__).resolve().parents[1] / "apps" / "liver_cascade"
if str(_APP) not in sys.path:
    sys.path.insert(0, str(_APP))
from lib.settings import LABELS  # noqa: E402  (the single source of truth for label values)

LIVER, LESION = LABELS["liver"], LABELS["lesion"]

# Stored voxel-axis codes (nibabel axcodes) for each named orientation.
ORIENTATIONS: Dict[str, Tuple[str, str, str]] = {
    "RAS": ("R", "A", "S"),
    "LPS": ("L", "P", "S"),  # what ITK/SimpleITK write for DICOM-derived volumes
    "LPI": ("L", "P", "I"),  # head-first slice order reversed
    "permuted": ("L", "S", "P"),  # axial axis stored in the middle: [x, z, y]
}
SLICE_THICKNESSES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_THICKNESS_P = (0.08, 0.04, 0.04, 0.10, 0.22, 0.20, 0.32)
DEFAULT_MAX_SLICES = 60
MIN_DEFAULT_SLICES = 20


@dataclass
class Phantom:
    """One synthetic CT: arrays in stored voxel order, geometry, ground truth.

    image: int16 HU, indexed [i, j, k] exactly as stored in the NIfTI file.
    label: uint8, 0 background / LABELS["liver"] / LABELS["lesion"], same shape.
    affine: 4x4 voxel index -> RAS+ world mm (NIfTI convention).
    spacing: (x, y, z) mm along the world's R-L, A-P and S-I axes, i.e. in-plane
        column/row spacing and slice thickness whatever the stored order (the
        per-voxel-axis spacing is `zooms`).
    orientation: a key of ORIENTATIONS.
    lesions: one dict per lesion: centre_mm (RAS world), radius_mm,
        diameter_mm (nominal, before the irregular border), kind
        ("hypodense"/"hyperdense"), rim (bool), hu (core HU), voxels (after
        clipping to the liver).
    info: seed, scale, liver_volume_ml (whole organ), noise_sd, contrast HUs.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: Tuple[float, float, float]
    orientation: str
    lesions: List[Dict] = field(default_factory=list)
    info: Dict = field(default_factory=dict)

    @property
    def zooms(self) -> Tuple[float, float, float]:
        """Voxel size along the stored array axes (what NIfTI pixdim holds)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def axial_axis(self) -> int:
        """Index of the stored array axis that runs inferior-superior."""
        return int(np.argmax(np.abs(self.affine[2, :3])))

    def save_nifti(self, image_path: str, label_path: Optional[str] = None) -> None:
        """Write the image (and optionally the label) with this affine, qform = sform = scanner."""
        import nibabel as nib

        for data, path in ((self.image, image_path), (self.label, label_path)):
            if path:
                img = nib.Nifti1Image(data, self.affine)
                img.set_qform(self.affine, code=1)
                img.set_sform(self.affine, code=1)
                img.header.set_xyzt_units("mm", "sec")
                nib.save(img, str(path))


# ----------------------------------------------------------------------------
# sampling grid and shape helpers
# ----------------------------------------------------------------------------


class _Box:
    """A sub-box of the grid: index slices (z, x, y) and broadcastable coordinates."""

    def __init__(self, sl, Z, X, Y):
        self.sl, self.Z, self.X, self.Y = sl, Z, X, Y


class _Grid:
    """Canonical (RAS-ordered) sampling grid in anatomical mm; volumes are indexed [z, x, y]."""

    def __init__(self, x, y, z):
        self.x, self.y, self.z = (np.asarray(v, np.float32) for v in (x, y, z))
        self.shape = (len(self.z), len(self.x), len(self.y))

    def box(self, lo, hi) -> Optional[_Box]:
        """The grid points with lo <= (x, y, z) <= hi, or None when there are none."""
        sl = []
        for a, l, h in ((self.z, lo[2], hi[2]), (self.x, lo[0], hi[0]), (self.y, lo[1], hi[1])):
            i0, i1 = int(np.searchsorted(a, l, "left")), int(np.searchsorted(a, h, "right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        sl = tuple(sl)
        return _Box(sl, self.z[sl[0]][:, None, None], self.x[sl[1]][None, :, None], self.y[sl[2]][None, None, :])

    def full(self) -> _Box:
        return self.box((-np.inf,) * 3, (np.inf,) * 3)


def _ellipsoid(b: _Box, c, r, rot_z: float = 0.0):
    """Normalised ellipsoid radius (< 1 inside); the x-y axes rotated by rot_z radians."""
    dx, dy, dz = b.X - c[0], b.Y - c[1], b.Z - c[2]
    if rot_z:
        cs, sn = np.cos(rot_z), np.sin(rot_z)
        dx, dy = cs * dx + sn * dy, -sn * dx + cs * dy
    return np.sqrt((dx / r[0]) ** 2 + (dy / r[1]) ** 2 + (dz / r[2]) ** 2)


def _capsule(b: _Box, p0, p1, r0, r1):
    """(distance to the segment p0-p1, local radius, position t in [0, 1] along it) for a tapered tube."""
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    d = p1 - p0
    L2 = float(d @ d) + 1e-6
    qx, qy, qz = b.X - p0[0], b.Y - p0[1], b.Z - p0[2]
    t = np.clip((qx * d[0] + qy * d[1] + qz * d[2]) / L2, 0.0, 1.0)
    dist = np.sqrt((qx - t * d[0]) ** 2 + (qy - t * d[1]) ** 2 + (qz - t * d[2]) ** 2)
    return dist, r0 + t * (r1 - r0), t


def _capsule_box(grid: _Grid, p0, p1, r):
    lo = np.minimum(p0, p1) - r - 1.0
    hi = np.maximum(p0, p1) + r + 1.0
    return grid.box(lo, hi)


def _ellipsoid_box(grid: _Grid, c, r, pad=1.0):
    m = max(r) + pad
    return grid.box(np.asarray(c) - m, np.asarray(c) + m)


def _smooth_field(b: _Box, waves) -> np.ndarray:
    """Sum of plane waves: a smooth pseudo-random field (zero mean, ~unit amplitude)."""
    out = 0.0
    for k, ph in waves:
        out = out + np.sin(b.X * k[0] + b.Y * k[1] + b.Z * k[2] + ph)
    return out / np.sqrt(len(waves))


def _random_waves(rng, n, wavelength):
    waves = []
    for _ in range(n):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        waves.append(((2 * np.pi / rng.uniform(*wavelength)) * u, rng.uniform(0, 2 * np.pi)))
    return waves


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


# ----------------------------------------------------------------------------
# the patient: every anatomical parameter, drawn once from the seed
# ----------------------------------------------------------------------------


class _Patient:
    """Anatomy in anatomical mm: x to the patient's right, y anterior, z superior,
    origin on the body axis at the level of the right diaphragm dome."""

    def __init__(self, rng: np.random.Generator, fov_mm: float):
        u = rng.uniform
        # abdominal cavity (inside the muscle wall) first, then the wall and fat around it
        cav = np.array([u(118, 142), u(72, 92), u(80, 95)])  # half-width, anterior, posterior depth
        fat = np.array([u(8, 40), u(8, 35), u(5, 18)])  # lateral, anterior, posterior
        mus = np.array([u(8, 13), u(8, 12), u(8, 11)])
        outer = cav + fat + mus + 2.0
        # a smaller patient when the field of view is small (as a radiographer would choose)
        s = self.scale = float(min(1.0, 0.45 * fov_mm / (outer[0] * 1.07)))
        self.a0, self.b_ant0, self.b_post0 = outer * s
        self.p_exp = u(2.2, 2.9)
        self.z_waves = [(u(0.015, 0.03), u(0, 6.3), u(0.01, 0.03)) for _ in range(2)]  # (freq, phase, amp)
        self.harmonics = [(k, u(-0.015, 0.015), u(0, 6.3)) for k in (2, 3, 4, 5)]
        self.skin = 2.0
        self.fat = dict(lat=fat[0] * s, ant=fat[1] * s, post=fat[2] * s)
        self.mus = dict(lat=mus[0] * s, ant=mus[1] * s, post=mus[2] * s)
        self.hu = dict(
            skin=u(20, 45), fat=u(-110, -90), visceral=u(-105, -85), muscle=u(40, 55), liver=u(50, 70),
            spleen=u(40, 50), vessel=u(140, 180), aorta=u(150, 250), ivc=u(110, 150), cortex=u(150, 250),
            medulla=u(100, 140), bowel_wall=u(60, 100), fluid=u(0, 20), bone_cancellous=u(180, 280),
            bone_cortex=u(600, 900), rib_cortex=u(800, 1000), rib_marrow=u(400, 550), lung=u(-870, -820),
            pancreas=u(80, 110), heart_blood=u(150, 250), disc=u(70, 100),
        )
        self.noise_sd = u(10, 20)
        # cavity half-sizes at the liver level (organs are placed relative to them)
        self.ac = self.a0 - self.skin - self.fat["lat"] - self.mus["lat"]
        self.bca = self.b_ant0 - self.skin - self.fat["ant"] - self.mus["ant"]
        self.bcp = self.b_post0 - self.skin - self.fat["post"] - self.mus["post"]
        ac, bca, bcp = self.ac, self.bca, self.bcp
        H = self.H = u(155, 185) * s  # craniocaudal height of the right lobe

        # spine and paraspinal muscles (constant in x-y, levels along z)
        self.rc = 9.0 * s  # canal radius
        self.vb = (u(19, 23) * s, u(15, 18) * s)  # vertebral body half-sizes (x, y)
        tip = -self.b_post0 + self.skin + self.fat["post"] + 4 * s
        self.y_canal = tip + u(28, 34) * s + self.rc
        self.y_vb = self.y_canal + self.rc + 3 * s + self.vb[1]
        self.vert_period = u(28, 33) * s
        self.vert_phase = u(0, self.vert_period)
        rx = u(24, 30) * s  # erector spinae: meet at the midline around the spinous processes
        self.paraspinal = (0.85 * rx, self.y_canal - 14 * s, rx, u(22, 27) * s)
        # ribs: 12 levels posteriorly, sloping down anteriorly by rib_drop
        self.rib_period = self.vert_period
        self.rib_drop = u(100, 130) * s
        self.z_rib12 = -u(0.5, 0.65) * H
        self.rib_t, self.rib_h = u(5, 7) * s, u(9, 12) * s
        # diaphragm domes (z of the abdominal surface); the left dome is lower
        self.dome_r = (0.4 * ac, -0.05 * bcp, 0.0)
        self.dome_l = (-0.4 * ac, -0.05 * bcp, -u(8, 22) * s)
        self.dome_curv = (u(35, 55) * s, u(55, 80) * s, u(25, 40) * s)  # lateral, posterior, anterior drop

        # vessels outside the liver
        self.aorta_r = u(10, 13) * s
        self.aorta_x = -u(0.08, 0.14) * ac
        self.ivc_r = (u(12, 15) * s, u(9, 12) * s)
        self.ivc_x = u(0.14, 0.2) * ac
        # liver: right lobe tapering inferiorly plus a left lobe crossing the midline
        self.liver = dict(
            cR=np.array([u(0.38, 0.5) * ac, -u(0.0, 0.12) * bcp, -u(0.35, 0.45) * H]),
            rR=np.array([u(0.55, 0.7) * ac, u(0.75, 0.95) * (bca + bcp) / 2, u(0.5, 0.58) * H]),
            shift=np.array([u(0.05, 0.2) * ac, -u(0.0, 0.25) * bcp]),
            taper=u(0.25, 0.45),
            cL=np.array([u(-0.05, 0.1) * ac, u(0.35, 0.55) * bca, -u(0.12, 0.25) * H]),
            rL=np.array([u(0.32, 0.45) * ac, u(0.28, 0.38) * bca, u(0.22, 0.3) * H]),
            warps=[(_unit(rng.normal(size=3)), k, ph, u(4, 10) * s)
                   for k, ph in _random_waves(rng, 4, (90 * s, 220 * s))],
            lobules=_random_waves(rng, 5, (50 * s, 120 * s)),
            lobule_amp=u(0.02, 0.05),
        )
        self.liver_target_ml = u(1200, 2000) * s ** 3
        self.liver_size = 1.0  # radius multiplier, fitted to the target volume by _fit_liver

        # kidneys (the right one lower), spleen, stomach, gallbladder, pancreas
        self.kidneys = []
        for side, dz in ((+1, -u(0.72, 0.85) * H), (-1, -u(0.6, 0.72) * H)):
            c = (side * (self.vb[0] + u(45, 58) * s), self.y_vb - u(2, 12) * s, dz)
            self.kidneys.append(dict(c=c, r=(u(24, 30) * s, u(20, 25) * s, u(48, 60) * s),
                                     rot=side * np.radians(u(25, 45)), side=side))
        self.spleen = dict(c=(-u(0.58, 0.7) * ac, -u(0.25, 0.4) * bcp, -u(0.28, 0.4) * H),
                           r=(u(0.16, 0.22) * ac, u(0.42, 0.55) * bcp, u(0.24, 0.32) * H), rot=np.radians(u(-55, -35)),
                           notch=u(0.5, 0.8))
        self.stomach = dict(c=(-u(0.3, 0.42) * ac, u(0.08, 0.25) * bca, -u(0.3, 0.42) * H),
                            r=(u(0.28, 0.36) * ac, u(0.38, 0.5) * bca, u(0.28, 0.36) * H), rot=np.radians(u(-30, 10)),
                            gas=u(0.15, 0.6), wall=u(3, 5) * s)
        self.gallbladder = None if rng.random() < 0.15 else dict(
            c=(u(0.1, 0.22) * ac, u(0.35, 0.55) * bca, -u(0.6, 0.72) * H),
            r=(u(12, 17) * s, u(13, 19) * s, u(30, 42) * s), rot=np.radians(u(20, 50)))
        zp = -u(0.62, 0.75) * H
        self.pancreas = [np.array(p) for p in (
            (u(0.12, 0.2) * ac, self.y_vb + self.vb[1] + u(25, 35) * s, zp - u(15, 25) * s),
            (-0.05 * ac, self.y_vb + self.vb[1] + u(30, 40) * s, zp),
            (-u(0.45, 0.55) * ac, self.y_vb + u(0, 10) * s, zp + u(15, 30) * s))]
        self.pancreas_r = u(9, 13) * s
        # bowel: colon (ascending, transverse, descending) and small-bowel loops
        self.colon_r = u(17, 24) * s
        self.colon = [np.array(p) for p in (
            (u(0.55, 0.65) * ac, -u(0.0, 0.15) * bcp, -1.8 * H),
            (u(0.5, 0.6) * ac, u(0.0, 0.1) * bca, -u(0.85, 0.95) * H),
            (u(0.2, 0.35) * ac, u(0.45, 0.6) * bca, -u(0.9, 1.05) * H),
            (-u(0.2, 0.35) * ac, u(0.45, 0.6) * bca, -u(0.95, 1.1) * H),
            (-u(0.6, 0.7) * ac, u(0.0, 0.15) * bca, -u(0.5, 0.6) * H),
            (-u(0.62, 0.7) * ac, -u(0.0, 0.15) * bcp, -1.8 * H))]
        self.stool_waves = _random_waves(rng, 6, (8 * s, 20 * s))
        self.stool_gas = u(0.35, 0.7)
        self.loops = []
        for i in range(int(rng.integers(26, 36))):
            if i < 8:  # jejunum in the left upper quadrant, below the stomach
                c = np.array([u(-0.75, -0.1) * ac, u(-0.2, 0.7) * bca, -u(0.55, 0.95) * H])
            else:
                c = np.array([u(-0.7, 0.55) * ac, u(-0.3, 0.8) * bca, -u(0.8, 1.7) * H])
            d = _unit(rng.normal(size=3)) * u(20, 50) * s
            self.loops.append(dict(p0=c - d / 2, p1=c + d / 2, r=u(9, 15) * s, wall=u(2, 3) * s,
                                   fill=u(-0.9, 0.6), content=u(0, 40) if rng.random() < 0.8 else u(180, 300)))
        # heart (above the diaphragm) and lung vessels
        self.heart = dict(c=(-u(0.1, 0.2) * ac, u(0.15, 0.3) * bca, u(40, 60) * s),
                          r=(u(0.45, 0.55) * ac, u(0.45, 0.6) * bca, u(60, 75) * s), wall=u(8, 12) * s)
        self.lung_vessels = [(u(-1, 1), u(-1, 1), u(0, 90) * s, u(1.0, 2.5) * s) for _ in range(int(rng.integers(40, 90)))]
        self.table_gap = u(3, 20) * s

    # --- body outline -------------------------------------------------------------

    def body_radius(self, theta, z, layer: str):
        """Radius (mm from the body axis) of a layer boundary in direction theta at height z.

        layer: "skin" (outer surface), "fat" (inner skin = outer fat), "muscle"
        (inner fat = outer muscle) or "cavity" (inner muscle boundary)."""
        c, sn = np.cos(theta), np.sin(theta)
        mod = 1.0
        for f, ph, amp in self.z_waves:
            mod = mod + amp * np.sin(f * z + ph)
        a = self.a0 * mod
        b = np.where(sn > 0, self.b_ant0, self.b_post0) * mod
        p = self.p_exp
        r = (np.abs(c) / a) ** p + (np.abs(sn) / b) ** p
        r = r ** (-1.0 / p)
        h = 1.0
        for k, amp, ph in self.harmonics:
            h = h + amp * np.cos(k * theta + ph)
        r = r * h
        if layer == "skin":
            return r
        r = r - self.skin
        if layer == "fat":
            return r
        w_ant, w_post, w_lat = np.maximum(sn, 0) ** 2, np.maximum(-sn, 0) ** 2, c ** 2
        r = r - (self.fat["ant"] * w_ant + self.fat["post"] * w_post + self.fat["lat"] * w_lat)
        if layer == "muscle":
            return r
        # thin at the linea alba (anterior midline) between the two recti
        alba = 1.0 - 0.75 * np.exp(-(((theta - np.pi / 2) / 0.07) ** 2))
        return r - (self.mus["ant"] * w_ant * alba + self.mus["post"] * w_post + self.mus["lat"] * w_lat)

    def in_cavity(self, b: _Box, margin=0.0):
        theta = np.arctan2(b.Y, b.X)
        return np.hypot(b.X, b.Y) < self.body_radius(theta, b.Z, "cavity") - margin

    def diaphragm(self, X, Y):
        """z of the diaphragm's abdominal surface (max of two domes)."""
        cx, cp, ca = self.dome_curv
        out = None
        for xd, yd, zd in (self.dome_r, self.dome_l):
            dy = Y - yd
            z = zd - cx * ((X - xd) / (0.6 * self.ac)) ** 2 - np.where(dy < 0, cp, ca) * (dy / self.bcp) ** 2
            out = z if out is None else np.maximum(out, z)
        return out

    def spine_block(self, b: _Box, grow=0.0):
        """Vertebral body, canal/arch and paraspinal muscles (for carving organs)."""
        vb = ((b.X / (self.vb[0] + 6 + grow)) ** 2 + ((b.Y - self.y_vb) / (self.vb[1] + 6 + grow)) ** 2) < 1
        arch = np.hypot(b.X, b.Y - self.y_canal) < self.rc + 8 + grow
        px, py, rx, ry = self.paraspinal
        para = ((np.abs(b.X) - px) / (rx + grow)) ** 2 + ((b.Y - py) / (ry + grow)) ** 2 < 1
        return vb | arch | para

    def aorta_centre(self, z):
        """In the abdomen anterior-left of the spine; above the diaphragm it moves left and back."""
        y = self.y_vb + self.vb[1] + self.aorta_r + 3 * self.scale
        t = np.clip(z / (40 * self.scale), 0, 1)
        return self.aorta_x - 0.15 * self.ac * t, y - 0.5 * np.clip(z, 0, 60 * self.scale)

    def ivc_centre(self, z):
        t = np.clip((z + 0.7 * self.H) / (0.7 * self.H), 0, 1)  # moves anteriorly near the heart
        return self.ivc_x, self.y_vb + self.vb[1] + self.ivc_r[1] + 2 + t * 18 * self.scale

    def tube_z(self, b: _Box, centre_fn, r, grow=0.0):
        cx, cy = centre_fn(b.Z)
        rx, ry = (r, r) if np.isscalar(r) else r
        return ((b.X - cx) / (rx + grow)) ** 2 + ((b.Y - cy) / (ry + grow)) ** 2 < 1

    # --- liver --------------------------------------------------------------------

    def liver_field(self, b: _Box):
        """Implicit liver shape (< 1 inside) before clipping."""
        L, k = self.liver, self.liver_size
        px, py, pz = b.X, b.Y, b.Z
        for u, wave, ph, amp in L["warps"]:
            d = (amp * k) * np.sin(b.X * wave[0] + b.Y * wave[1] + b.Z * wave[2] + ph)
            px, py, pz = px + u[0] * d, py + u[1] * d, pz + u[2] * d
        cR, rR = L["cR"], L["rR"] * k
        t = np.clip((cR[2] - pz) / rR[2], 0.0, 1.0)
        shrink = 1.0 - L["taper"] * t
        fR = ((px - cR[0] - L["shift"][0] * t) / (rR[0] * shrink)) ** 2 + \
             ((py - cR[1] - L["shift"][1] * t) / (rR[1] * shrink)) ** 2 + ((pz - cR[2]) / rR[2]) ** 2
        cL, rL = L["cL"], L["rL"] * np.sqrt(k)  # the fitted size acts mostly on the right lobe
        tl = np.clip((cL[0] - px) / rL[0], 0.0, 1.0)  # thinner towards the left tip
        fL = ((px - cL[0]) / rL[0]) ** 2 + ((py - cL[1]) / (rL[1] * (1 - 0.45 * tl))) ** 2 + \
             ((pz - cL[2]) / (rL[2] * (1 - 0.35 * tl))) ** 2
        fR, fL = np.sqrt(fR), np.sqrt(fL)
        kk = 0.25  # smooth union
        h = np.clip(0.5 + 0.5 * (fL - fR) / kk, 0.0, 1.0)
        f = fL + (fR - fL) * h - kk * h * (1 - h)
        return f * (1 + L["lobule_amp"] * _smooth_field(b, L["lobules"]))

    def liver_box_bounds(self):
        """A box (lo, hi) that surely contains the liver."""
        L, k = self.liver, self.liver_size
        pad = 1.5 * sum(w[3] for w in L["warps"]) * k + 2.0
        shift = np.r_[np.abs(L["shift"]), 0.0]
        lo = np.minimum(L["cR"] - L["rR"] * k * 1.05 - shift, L["cL"] - L["rL"] * k * 1.05) - pad
        hi = np.maximum(L["cR"] + L["rR"] * k * 1.05 + shift, L["cL"] + L["rL"] * k * 1.05) + pad
        lo[:2] = np.maximum(lo[:2], [-self.a0, -self.b_post0])
        hi[:2] = np.minimum(hi[:2], [self.a0, self.b_ant0])
        hi[2] = min(hi[2], 5.0)  # nothing above the dome
        return lo, hi

    def liver_mask(self, b: _Box):
        """The liver label: shape clipped by the wall, the diaphragm and neighbouring organs."""
        m = self.liver_field(b) < 1.0
        m &= b.Z < self.diaphragm(b.X, b.Y) - 4.0
        m &= self.in_cavity(b, margin=2.0)
        m &= ~self.spine_block(b, grow=4.0)
        m &= ~self.tube_z(b, self.aorta_centre, self.aorta_r, grow=5.0)
        m &= ~self.tube_z(b, self.ivc_centre, self.ivc_r, grow=1.0)
        # posteriorly the liver stays right of the IVC (the crus and adrenal lie medial to it)
        m &= ~((b.Y < self.y_vb + self.vb[1] + 2 * self.ivc_r[1]) & (b.X < self.ivc_x - self.ivc_r[0]))
        sp = self.spleen
        m &= _ellipsoid(b, sp["c"], np.add(sp["r"], 4.0), sp["rot"]) >= 1
        for kd in self.kidneys:
            m &= _ellipsoid(b, kd["c"], np.add(kd["r"], 5.0), kd["rot"]) >= 1
            # the liver lies antero-lateral to the kidney, never behind, medial to or below it:
            # carve the kidney swept backwards, downwards and medially
            c, r, sd = kd["c"], np.add(kd["r"], 4.0), kd["side"]
            for shift in ((0, -0.9, 0), (0, -0.6, -0.9), (-0.6 * sd, -0.5, -0.4)):
                m &= _ellipsoid(b, np.add(c, np.multiply(shift, kd["r"])), r, kd["rot"]) >= 1
        st = self.stomach
        m &= _ellipsoid(b, st["c"], np.add(st["r"], 3.0), st["rot"]) >= 1
        if self.gallbladder is not None:
            g = self.gallbladder
            m &= _ellipsoid(b, g["c"], np.add(g["r"], 1.5), g["rot"]) >= 1
        return m


# ----------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------


def _coarse_liver(pt: _Patient, step: float):
    lo, hi = pt.liver_box_bounds()
    g = _Grid(*(np.arange(l, h + step, step) for l, h in zip(lo, hi)))
    return g, pt.liver_mask(g.full())


def _coarse_step(pt: _Patient, step: float) -> float:
    """A coarse-grid step (mm) for `step` at full scale, finer for a scaled-down patient."""
    return float(np.clip(step * pt.scale, 1.0, step))


def _fit_liver(pt: _Patient):
    """Scale the liver so that its (clipped) volume matches the drawn target."""
    step = _coarse_step(pt, 4.0)
    for _ in range(4):
        _, m = _coarse_liver(pt, step)
        vol = m.sum() * step ** 3 / 1000.0
        if vol <= 0 or abs(vol / pt.liver_target_ml - 1) < 0.03:
            break
        pt.liver_size = float(np.clip(pt.liver_size * (pt.liver_target_ml / vol) ** 0.45, 0.5, 1.8))


def _paint_body(pt: _Patient, grid: _Grid, hu: np.ndarray):
    """Air, skin, fat, muscle, visceral fat, lungs, diaphragm, muscles and table, slice by slice."""
    X, Y = grid.x[:, None], grid.y[None, :]
    rr, theta = np.hypot(X, Y), np.arctan2(Y, X)
    nbins = 2048
    tb = np.linspace(-np.pi, np.pi, nbins, endpoint=False) + np.pi / nbins
    bins = np.clip(((theta + np.pi) / (2 * np.pi) * nbins).astype(np.int32), 0, nbins - 1)
    zd = pt.diaphragm(X, Y)
    s = pt.scale
    px, py, prx, pry = pt.paraspinal
    para = ((np.abs(X) - px) / prx) ** 2 + ((Y - py) / pry) ** 2 < 1
    hz = pt.heart
    post_med = ((X - pt.aorta_x) / (35 * s)) ** 2 + ((Y - pt.y_vb) / (30 * s)) ** 2 < 1
    # CT table: a thin curved shell below the patient
    yt = -pt.b_post0 - pt.table_gap - (X / (2.2 * pt.a0)) ** 2 * 25 * s
    table = (Y < yt) & (Y > yt - 3) & (np.abs(X) < 1.05 * pt.a0)
    for k, z in enumerate(grid.z):
        h = hu[k]
        h[table] = 150.0
        r = {name: pt.body_radius(tb, z, name)[bins] for name in ("skin", "fat", "muscle", "cavity")}
        h[rr < r["skin"]] = pt.hu["skin"]
        h[rr < r["fat"]] = pt.hu["fat"]
        h[rr < r["muscle"]] = pt.hu["muscle"]
        cav = rr < r["cavity"]
        h[cav] = pt.hu["visceral"]
        # thorax: diaphragm (4 mm) then lungs, except the mediastinum
        above = cav & (z > zd)
        if above.any():
            h[above] = pt.hu["muscle"]
            lung = cav & (z > zd + 4.0) & ~post_med
            hx = ((X - hz["c"][0]) / (hz["r"][0] + 6)) ** 2 + ((Y - hz["c"][1]) / (hz["r"][1] + 6)) ** 2 \
                + ((z - hz["c"][2]) / (hz["r"][2] + 6)) ** 2
            lung &= hx >= 1
            h[lung] = pt.hu["lung"]
        # paraspinal muscles; psoas below the kidneys' upper poles
        h[para] = pt.hu["muscle"] + 5
        zt = -0.55 * pt.H
        if z < zt:
            rp = min(20 * s, 5 * s + (zt - z) * 0.25)
            for side in (1, -1):
                ps = ((X - side * (pt.vb[0] + rp * 0.6)) / rp) ** 2 + ((Y - pt.y_vb - 2 * s) / (rp * 0.85)) ** 2 < 1
                h[ps] = pt.hu["muscle"]
    # lung vessels: small bright dots in the lung bases
    for fx, fy, dz, rv in pt.lung_vessels:
        c = np.array([fx * 0.7 * pt.ac, fy * 0.6 * pt.bcp, dz + pt.dome_l[2]], np.float32)
        b = _ellipsoid_box(grid, c, (rv,) * 3)
        if b is not None:
            sub = hu[b.sl]
            m = (_ellipsoid(b, c, (rv, rv, rv * 2)) < 1) & (sub < -500)
            sub[m] = 40.0


def _paint_heart(pt, grid, hu):
    hz = pt.heart
    b = _ellipsoid_box(grid, hz["c"], hz["r"])
    if b is None:
        return
    e = _ellipsoid(b, hz["c"], hz["r"])
    above = b.Z > pt.diaphragm(b.X, b.Y) + 4.0
    sub = hu[b.sl]
    sub[(e < 1) & above] = pt.hu["muscle"]
    inner = _ellipsoid(b, hz["c"], np.subtract(hz["r"], hz["wall"]))
    sub[(inner < 1) & above] = pt.hu["heart_blood"]


def _paint_bowel(pt, grid, hu):
    """Colon (mottled stool and gas) and small-bowel loops (fluid, gas, wall)."""
    s = pt.scale
    for p0, p1 in zip(pt.colon[:-1], pt.colon[1:]):
        b = _capsule_box(grid, p0, p1, pt.colon_r)
        if b is None:
            continue
        dist, r, t = _capsule(b, p0, p1, pt.colon_r, pt.colon_r)
        inside = dist < r
        sub = hu[b.sl]
        cav = pt.in_cavity(b, margin=1.0)
        sub[inside & cav] = pt.hu["bowel_wall"] - 20
        lumen = (dist < r - 2.5 * s) & cav
        stool = _smooth_field(b, pt.stool_waves)
        val = np.where(stool > pt.stool_gas, -950.0, 10.0 + 25.0 * stool).astype(np.float32)
        # gas rises anteriorly (patient supine): the anterior part of the lumen is gas
        centre_y = p0[1] + t * (p1[1] - p0[1])
        val = np.where(b.Y > centre_y + 0.35 * r, -990.0, val)
        np.copyto(sub, val, where=lumen)
    for lp in pt.loops:
        b = _capsule_box(grid, lp["p0"], lp["p1"], lp["r"])
        if b is None:
            continue
        dist, r, _ = _capsule(b, lp["p0"], lp["p1"], lp["r"], lp["r"])
        cav = pt.in_cavity(b, margin=2.0) & ~pt.spine_block(b, grow=2.0)
        sub = hu[b.sl]
        sub[(dist < r) & cav] = pt.hu["bowel_wall"]
        lumen = (dist < r - lp["wall"]) & cav
        c = (np.asarray(lp["p0"]) + np.asarray(lp["p1"])) / 2
        gas = b.Y > c[1] + lp["fill"] * r  # air-fluid level
        sub[lumen] = lp["content"]
        sub[lumen & gas] = -990.0


def _paint_organs(pt, grid, hu):
    """Pancreas, spleen, stomach, kidneys, great vessels (painted over fat and bowel)."""
    s = pt.scale
    # pancreas with the splenic vein along its back
    for p0, p1 in zip(pt.pancreas[:-1], pt.pancreas[1:]):
        b = _capsule_box(grid, p0, p1, pt.pancreas_r)
        if b is not None:
            dist, r, _ = _capsule(b, p0, p1, pt.pancreas_r, pt.pancreas_r * 0.8)
            hu[b.sl][dist < r] = pt.hu["pancreas"]
            v0, v1 = p0 - [0, pt.pancreas_r * 0.8, 0], p1 - [0, pt.pancreas_r * 0.8, 0]
            dist, r, _ = _capsule(b, v0, v1, 4.5 * s, 4.5 * s)
            hu[b.sl][dist < r] = pt.hu["vessel"]
    # stomach: wall, fluid, gas anteriorly (air-fluid level)
    st = pt.stomach
    b = _ellipsoid_box(grid, st["c"], st["r"])
    if b is not None:
        e = _ellipsoid(b, st["c"], st["r"], st["rot"])
        ok = pt.in_cavity(b, 1.0) & (b.Z < pt.diaphragm(b.X, b.Y) - 4)
        sub = hu[b.sl]
        sub[(e < 1) & ok] = pt.hu["bowel_wall"]
        lumen = (_ellipsoid(b, st["c"], np.subtract(st["r"], st["wall"]), st["rot"]) < 1) & ok
        sub[lumen] = pt.hu["fluid"] + 10
        gas_level = st["c"][1] + st["r"][1] * (1 - 2 * st["gas"])
        sub[lumen & (b.Y > gas_level)] = -990.0
    # spleen: a crescent (ellipsoid with a medial notch)
    sp = pt.spleen
    b = _ellipsoid_box(grid, sp["c"], sp["r"])
    if b is not None:
        e = _ellipsoid(b, sp["c"], sp["r"], sp["rot"])
        notch_c = (sp["c"][0] + sp["r"][0] * 1.2, sp["c"][1] + sp["r"][0] * 0.6, sp["c"][2])
        notch = _ellipsoid(b, notch_c, (sp["r"][0] * sp["notch"] * 1.3, sp["r"][1] * 0.6, sp["r"][2] * 0.7), sp["rot"])
        m = (e < 1) & (notch >= 1) & pt.in_cavity(b, 1.0) & (b.Z < pt.diaphragm(b.X, b.Y) - 4)
        hu[b.sl][m] = pt.hu["spleen"]
    # kidneys: cortex, medulla, sinus fat towards the hilum
    for kd in pt.kidneys:
        b = _ellipsoid_box(grid, kd["c"], kd["r"])
        if b is None:
            continue
        e = _ellipsoid(b, kd["c"], kd["r"], kd["rot"])
        sub = hu[b.sl]
        sub[e < 1] = pt.hu["cortex"]
        sub[e < 0.78] = pt.hu["medulla"]
        hil = (kd["c"][0] - kd["side"] * kd["r"][0] * 0.9, kd["c"][1] + kd["r"][1] * 0.3, kd["c"][2])
        sinus = _ellipsoid(b, hil, (kd["r"][0] * 0.55, kd["r"][1] * 0.45, kd["r"][2] * 0.45), kd["rot"]) < 1
        sub[sinus & (e < 1.02)] = -60.0
        pelvis = _ellipsoid(b, hil, (kd["r"][0] * 0.3, kd["r"][1] * 0.2, kd["r"][2] * 0.2), kd["rot"]) < 1
        sub[pelvis] = pt.hu["fluid"]
    # aorta and IVC, full height
    for fn, r, val in ((pt.aorta_centre, pt.aorta_r, pt.hu["aorta"]), (pt.ivc_centre, pt.ivc_r, pt.hu["ivc"])):
        rx = r if np.isscalar(r) else max(r)
        cx, cy = fn(grid.z)
        b = grid.box((np.min(cx) - rx - 2, np.min(cy) - rx - 2, -np.inf), (np.max(cx) + rx + 2, np.max(cy) + rx + 2, np.inf))
        if b is not None:
            hu[b.sl][pt.tube_z(b, fn, r)] = val


def _portal_and_hepatic_veins(pt: _Patient, rng: np.random.Generator):
    """Tapered segments (p0, p1, r0, r1): the extrahepatic portal trunk, and the
    intrahepatic portal and hepatic vein trees."""
    s, ac, bca, bcp, H = pt.scale, pt.ac, pt.bca, pt.bcp, pt.H
    k = pt.liver_size
    segs = []

    def jitter(p, amt=8.0):
        return np.asarray(p, float) + rng.normal(0, amt * s, 3)

    def branch(p0, direction, length, r0, r1, depth):
        p1 = p0 + _unit(direction) * length
        segs.append((p0, p1, r0, r1))
        if depth > 0:
            for _ in range(int(rng.integers(1, 3))):
                t = rng.uniform(0.4, 0.9)
                q = p0 + t * (p1 - p0)
                d = _unit(_unit(direction) + rng.normal(0, 0.8, 3))
                branch(q, d, length * rng.uniform(0.4, 0.7), max(1.2 * s, r0 * 0.55), max(0.8 * s, r1 * 0.6), depth - 1)

    # hepatic veins: from the IVC under the dome, fanning out anteriorly and to the right
    ivx, ivy = pt.ivc_centre(np.float32(-20 * s))
    root = np.array([ivx, ivy, -20.0 * s])
    for d, ln in (((1.0, -0.15, -0.25), 0.55), ((0.55, 0.8, -0.3), 0.5), ((-0.45, 0.9, -0.1), 0.45)):
        branch(root + rng.normal(0, 3 * s, 3), np.add(d, rng.normal(0, 0.15, 3)), ln * ac * k * rng.uniform(0.9, 1.2),
               rng.uniform(5, 7) * s, 2.0 * s, 2)
    # portal vein: confluence -> porta hepatis -> right (anterior/posterior) and left branches
    conf = jitter((0.05 * ac, pt.y_vb + pt.vb[1] + 28 * s, -0.72 * H))
    porta = jitter((0.28 * ac, 0.05 * bca, -0.52 * H))
    trunk = (conf, porta, 7.5 * s, 6.5 * s)
    rpv = jitter((0.5 * ac, 0.0, -0.45 * H))
    segs.append((porta, rpv, 6 * s, 5 * s))
    branch(rpv, (0.3, 0.9, 0.35), 0.4 * bca * k, 4 * s, 2 * s, 2)
    branch(rpv, (0.4, -0.8, -0.2), 0.45 * bcp * k, 4 * s, 2 * s, 2)
    lpv = jitter((0.0, 0.25 * bca, -0.45 * H))
    segs.append((porta, lpv, 5 * s, 4.5 * s))
    branch(lpv, (-0.3, 0.9, -0.1), 0.35 * bca * k, 3.5 * s, 1.8 * s, 2)
    branch(lpv, (-0.9, 0.3, 0.2), 0.4 * ac * k, 3.5 * s, 1.8 * s, 1)
    return trunk, segs


def _place_lesions(pt: _Patient, rng: np.random.Generator, n: int, grid: _Grid, coarse):
    """Lesion centres deep enough inside the liver (distance map of the coarse
    liver `coarse` = (grid, mask, step)) and inside the slab."""
    g, m, step = coarse
    depth = ndimage.distance_transform_edt(m, sampling=step)
    zlo, zhi = float(grid.z[0]), float(grid.z[-1])
    zz = g.z[:, None, None] + np.zeros(m.shape, np.float32)
    in_slab = (zz >= zlo) & (zz <= zhi)
    cand = np.argwhere(m & in_slab)
    if len(cand) == 0:
        return []
    cand_depth = depth[tuple(cand.T)]
    cand_xyz = np.stack([g.x[cand[:, 1]], g.y[cand[:, 2]], g.z[cand[:, 0]]], 1)
    out = []
    for _ in range(n):
        diam = float(np.exp(rng.uniform(np.log(3.0), np.log(60.0))))
        amp = rng.uniform(0.05, 0.25)
        kind = "hypodense" if rng.random() < 0.7 else "hyperdense"
        hu = rng.uniform(10, 40) if kind == "hypodense" else rng.uniform(90, 130)
        rim = bool(kind == "hypodense" and rng.random() < 0.3)
        waves = _random_waves(rng, 6, (1.0, 3.0))  # applied to the unit direction
        pick = rng.random()
        while diam >= 3.0:  # shrink a lesion that does not fit anywhere
            r = diam / 2
            ok = cand_depth >= 0.85 * r * (1 + amp) + 1.0
            for les in out:
                ok &= np.linalg.norm(cand_xyz - les["c"], axis=1) > r + les["r"] * (1 + 0.25) + 2
            if ok.any():
                idx = np.flatnonzero(ok)[int(pick * ok.sum())]
                break
            diam *= 0.8
        else:
            continue
        c = cand_xyz[idx].astype(float)
        # snap to a voxel centre of the output grid so even a 3 mm lesion is sampled
        c = np.array([a[np.argmin(np.abs(a - v))] for a, v in zip((grid.x, grid.y, grid.z), c)], float)
        out.append(dict(c=c, r=diam / 2, diam=diam, amp=amp, waves=waves, kind=kind, hu=hu, rim=rim))
    return out


def _paint_liver(pt, grid, hu, label, rng_vessels, lesions):
    lo, hi = pt.liver_box_bounds()
    b = grid.box(lo, hi)
    if b is None:
        return
    liver = pt.liver_mask(b)
    sub, lab = hu[b.sl], label[b.sl]
    tex = pt.hu["liver"] + 3.0 * _smooth_field(b, pt.liver["lobules"][:3])
    np.copyto(sub, tex.astype(np.float32), where=liver)
    lab[liver] = LIVER
    # portal and hepatic veins (only their intrahepatic parts; the portal trunk also outside)
    trunk, segs = _portal_and_hepatic_veins(pt, rng_vessels)
    for i, (p0, p1, r0, r1) in enumerate([trunk] + segs):
        vb = _capsule_box(grid, p0, p1, max(r0, r1))
        if vb is None:
            continue
        dist, r, _ = _capsule(vb, p0, p1, r0, r1)
        m = dist < r
        vsub, vlab = hu[vb.sl], label[vb.sl]
        if i == 0:  # the portal trunk also runs outside the liver (through fat, behind the pancreas)
            vsub[m & (vsub > -200) & (vsub < 120)] = pt.hu["vessel"]
        vsub[m & (vlab == LIVER)] = pt.hu["vessel"]
    # gallbladder in its fossa under the liver (carved out of the liver label)
    g = pt.gallbladder
    if g is not None:
        gb = _ellipsoid_box(grid, g["c"], g["r"])
        if gb is not None:
            e = _ellipsoid(gb, g["c"], g["r"], g["rot"])
            ok = pt.in_cavity(gb, 1.0)
            hu[gb.sl][(e < 1) & ok] = pt.hu["bowel_wall"]
            hu[gb.sl][(e < 0.85) & ok] = pt.hu["fluid"]
    # lesions, clipped to the liver
    for les in lesions:
        rmax = les["r"] * (1 + les["amp"]) + 1
        lb = grid.box(les["c"] - rmax, les["c"] + rmax)
        q = (lb.X - les["c"][0], lb.Y - les["c"][1], lb.Z - les["c"][2])
        dist = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
        ub = _Box(None, q[2] / dist, q[0] / dist, q[1] / dist)  # field on the unit direction
        rad = les["r"] * (1 + les["amp"] * _smooth_field(ub, les["waves"]))
        lsub, llab = hu[lb.sl], label[lb.sl]
        m = (dist < np.maximum(rad, 0.5)) & (llab > 0)
        val = np.full(m.shape, les["hu"], np.float32)
        if les["rim"]:  # an enhancing rim around a hypodense core
            val = np.where(dist > 0.75 * rad, les["hu"] + 45.0, val)
        np.copyto(lsub, val.astype(np.float32), where=m)
        llab[m] = LESION
        les["voxels"] = int(m.sum())


def _paint_bones(pt, grid, hu):
    """Spine (with discs and posterior elements), ribs with cortex and cartilage, xiphoid."""
    s = pt.scale
    X, Y = grid.x[:, None], grid.y[None, :]
    rr = np.hypot(X, Y)
    sin_phi = Y / np.maximum(rr, 1e-3)  # -1 posterior, 0 lateral, +1 anterior
    phi = np.degrees(np.arcsin(np.clip(sin_phi, -1, 1)))
    theta = np.arctan2(Y, X)
    vbm = np.sqrt((X / pt.vb[0]) ** 2 + ((Y - pt.y_vb) / pt.vb[1]) ** 2)
    dcan = np.hypot(X, Y - pt.y_canal)
    ring = (dcan > pt.rc) & (dcan < pt.rc + 5.5 * s) & (Y < pt.y_canal + pt.rc * 0.8)
    spinous = (np.abs(X) < 3.5 * s) & (Y < pt.y_canal - pt.rc) & (Y > pt.y_canal - pt.rc - 30 * s)
    transverse = (np.abs(Y - pt.y_canal - 2 * s) < 2.5 * s + 1.5 * s * (np.abs(X) < pt.rc + 8 * s)) \
        & (np.abs(X) > pt.rc) & (np.abs(X) < pt.rc + 24 * s)
    cord = dcan < pt.rc * 0.55
    # rib end angle (degrees of phi) for the 12 ribs, index 0 = 12th rib (floating)
    rib_end = np.array([-35, -5, 25, 40, 50, 55, 60, 65, 70, 72, 75, 75], float)
    xiph = ((X / (12 * s)) ** 2 + ((Y - (pt.b_ant0 - pt.fat["ant"] - 8 * s)) / (5 * s)) ** 2) < 1
    nbins = 2048
    tb = np.linspace(-np.pi, np.pi, nbins, endpoint=False) + np.pi / nbins
    bins = np.clip(((theta + np.pi) / (2 * np.pi) * nbins).astype(np.int32), 0, nbins - 1)
    for k, z in enumerate(grid.z):
        h = hu[k]
        ph = ((z - pt.vert_phase) / pt.vert_period) % 1.0
        if ph < 0.2:  # intervertebral disc
            h[vbm < 1.03] = pt.hu["disc"]
        else:
            h[vbm < 1] = pt.hu["bone_cortex"]
            h[vbm < 1 - 2.0 / pt.vb[1]] = pt.hu["bone_cancellous"]
        h[ring] = pt.hu["bone_cortex"]
        if 0.3 < ph < 0.85:
            h[spinous] = pt.hu["bone_cortex"]
        if 0.25 < ph < 0.6:
            h[transverse] = pt.hu["bone_cortex"]
        h[dcan <= pt.rc] = 15.0  # CSF
        h[cord] = 35.0
        # ribs: inside the muscle layer, sloping down anteriorly
        r_c = pt.body_radius(tb, z, "cavity")[bins] + pt.rib_t / 2 + 0.5
        u = z + pt.rib_drop * (1 + sin_phi) / 2 - pt.z_rib12
        idx = np.rint(u / pt.rib_period)
        dz = u - idx * pt.rib_period
        valid = (idx >= 0) & (idx <= 11) & (np.abs(X) > pt.rc + 22 * s)
        e = np.sqrt(((rr - r_c) / (pt.rib_t / 2)) ** 2 + (dz / (pt.rib_h / 2)) ** 2)
        end = rib_end[np.clip(idx, 0, 11).astype(int)]
        bone = valid & (e < 1) & (phi <= end)
        cart = valid & (e < 0.9) & (phi > end) & (phi <= end + 18) & (idx >= 4)
        h[cart] = 140.0
        h[bone] = pt.hu["rib_cortex"]
        h[bone & (e < 0.6)] = pt.hu["rib_marrow"]
        if z > pt.dome_l[2] - 25 * s:
            h[xiph] = pt.hu["bone_cortex"] * 0.7


def sample_geometry(seed: int) -> Dict:
    """The acquisition geometry a seed draws (before any override in generate_phantom):
    spacing (x, y, z) mm, orientation code, lesion count, slab margins/jitter and
    the world offset of the anatomy (table position)."""
    r_geom = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed)).spawn(5)[0]))
    s_xy = float(r_geom.uniform(0.6, 0.9))
    s_z = float(r_geom.choice(SLICE_THICKNESSES, p=_THICKNESS_P))
    orientation = list(ORIENTATIONS)[int(r_geom.integers(len(ORIENTATIONS)))]
    margins = r_geom.uniform(10, 40, 2)
    slab_jitter = float(r_geom.uniform(-0.1, 0.1))
    offset = np.array([r_geom.uniform(-10, 10), r_geom.uniform(-20, 40), r_geom.uniform(-450, 150)])
    n_lesions = int(r_geom.integers(0, 9))
    return dict(spacing=(s_xy, s_xy, s_z), orientation=orientation, n_lesions=n_lesions, margins=margins,
                slab_jitter=slab_jitter, offset=offset)


PHASES = ("early", "late")


def _apply_phase(pt: "_Patient", rng: np.random.Generator, phase: str) -> float:
    """Shift the patient's enhancement to `phase`; returns the liver's HU shift."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
    if phase == "early":
        return 0.0
    u, h = rng.uniform, pt.hu
    shift = u(20, 45)
    h["liver"] += shift
    blood = h["liver"] + u(25, 60)
    for k in ("aorta", "heart_blood", "ivc", "vessel"):
        h[k] = blood + u(-10, 10)
    h["spleen"] = h["liver"] + u(-10, 10)
    h["cortex"] = h["medulla"] = u(140, 200)
    h["pancreas"] = u(70, 100)
    return shift


def generate_phantom(
    seed: int,
    shape_xy: Tuple[int, int] = (512, 512),
    n_slices: Optional[int] = None,
    spacing: Optional[Sequence[Optional[float]]] = None,
    n_lesions: Optional[int] = None,
    orientation: Optional[str] = None,
    max_slices: int = DEFAULT_MAX_SLICES,
    phase: Optional[str] = None,
) -> Phantom:
    """A synthetic abdominal CT for `seed` (see the module docstring).

    shape_xy: in-plane size (columns along R-L, rows along A-P).
    n_slices: number of axial slices; default covers the liver plus 10-40 mm
        margins at the drawn thickness, between 20 and `max_slices`.
    spacing: (x, y, z) mm; any entry may be None to keep the seed's draw
        (in-plane 0.6-0.9 mm, thickness one of SLICE_THICKNESSES).
    n_lesions: number of lesions to place (default 0-8 by seed); fewer are
        placed only when the liver is too small to hold them apart. Centres are
        kept apart by the radii (the other lesion's with its border's wobble)
        plus 2 mm, not the new lesion's wobble: two irregular lesions can still
        touch, so the label may hold fewer 3D components than `lesions` lists
        (seed 6 at 256x256: 7 drawn, 6 components).
    orientation: a key of ORIENTATIONS (default: drawn from the seed).
    phase: a contrast phase of PHASES (default: drawn from the seed, half each).
    """
    geo = sample_geometry(seed)
    r_anat, r_les, r_ves, r_noise, r_phase = (np.random.Generator(np.random.PCG64(c))
                                              for c in np.random.SeedSequence(int(seed)).spawn(6)[1:])
    sp = list(spacing) if spacing is not None else [None, None, None]
    if len(sp) != 3:
        raise ValueError("spacing must be (x, y, z) mm; entries may be None")
    sx, sy, sz = (float(v) if v is not None else float(d) for v, d in zip(sp, geo["spacing"]))
    orientation = orientation or geo["orientation"]
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {list(ORIENTATIONS)}, not {orientation!r}")
    margins, slab_jitter, offset = geo["margins"], geo["slab_jitter"], geo["offset"]
    n_les_drawn = geo["n_lesions"]
    nx, ny = (int(v) for v in shape_xy)

    pt = _Patient(r_anat, fov_mm=min(nx * sx, ny * sy))
    drawn_phase = PHASES[int(r_phase.random() < 0.5)]
    phase = phase or drawn_phase
    liver_shift = _apply_phase(pt, r_phase, phase)
    _fit_liver(pt)

    # slab: the liver's extent plus margins, centred on it
    coarse_step = _coarse_step(pt, 3.0)
    g, m = _coarse_liver(pt, coarse_step)  # the fitted liver, for the slab, lesion sites and volume
    zs = g.z[m.any(axis=(1, 2))]
    z_top, z_bot = (float(zs.max()), float(zs.min())) if len(zs) else (0.0, -pt.H)
    if n_slices is None:
        n_slices = int(np.clip(np.ceil((z_top - z_bot + margins.sum()) / sz) + 1, MIN_DEFAULT_SLICES, max_slices))
    n_slices = int(n_slices)
    centre_z = (z_top + margins[0] + z_bot - margins[1]) / 2 + slab_jitter * (z_top - z_bot)
    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y_mid = (pt.b_ant0 - pt.b_post0 - pt.table_gap - 45 * pt.scale) / 2  # centre of body + table
    y = (np.arange(ny) - (ny - 1) / 2) * sy + y_mid
    z = centre_z + (np.arange(n_slices) - (n_slices - 1) / 2) * sz
    grid = _Grid(x, y, z)

    hu = np.full(grid.shape, -1000.0, np.float32)
    label = np.zeros(grid.shape, np.uint8)
    _paint_body(pt, grid, hu)
    _paint_heart(pt, grid, hu)
    _paint_bowel(pt, grid, hu)
    _paint_organs(pt, grid, hu)
    lesions = _place_lesions(pt, r_les, n_les_drawn if n_lesions is None else int(n_lesions), grid, (g, m, coarse_step))
    for les in lesions:  # hyperdense lesions keep their contrast to the enhanced liver
        if les["kind"] == "hyperdense":
            les["hu"] += liver_shift
    _paint_liver(pt, grid, hu, label, r_ves, lesions)
    _paint_bones(pt, grid, hu)

    # partial-volume blur (in-plane psf sigma 0.5-0.65 mm, i.e. ~0.6-1 voxel at 0.6-0.9 mm;
    # 0.45 of a slice along z, the slice profile) and in-plane correlated noise
    psf = r_noise.uniform(0.5, 0.65)
    hu = ndimage.gaussian_filter(hu, (0.45, psf / sx, psf / sy), mode="nearest", truncate=3.0)
    noise = r_noise.standard_normal(grid.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, (0.0, 0.7, 0.7), truncate=3.0)
    noise *= pt.noise_sd / float(noise.std() + 1e-6)
    hu += noise
    np.clip(hu, -1024, 3071, out=hu)
    image = np.rint(hu).astype(np.int16).transpose(1, 2, 0)  # -> [x, y, z]
    label = label.transpose(1, 2, 0)

    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = np.array([x[0], y[0], z[0]]) + offset
    image, label, affine = _reorient(image, label, affine, orientation)

    les_out = []
    for les in lesions:
        if les.get("voxels", 0) > 0:
            les_out.append({"centre_mm": [round(float(v), 2) for v in les["c"] + offset],
                            "radius_mm": round(les["r"], 2), "diameter_mm": round(les["diam"], 2),
                            "kind": les["kind"], "rim": les["rim"], "hu": round(float(les["hu"]), 1),
                            "voxels": les["voxels"]})
    info = dict(seed=int(seed), scale=round(pt.scale, 3), offset_mm=[round(float(v), 2) for v in offset],
                liver_volume_ml=round(float(m.sum()) * coarse_step ** 3 / 1000, 1),
                phase=phase, noise_sd=round(pt.noise_sd, 1), liver_hu=round(pt.hu["liver"], 1), aorta_hu=round(pt.hu["aorta"], 1))
    return Phantom(image, label, affine, (sx, sy, sz), orientation, les_out, info)


def _reorient(image, label, affine, orientation):
    """Store the canonical RAS grid in another voxel order (same world geometry)."""
    import nibabel as nib

    t = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                        nib.orientations.axcodes2ornt(ORIENTATIONS[orientation]))
    new_affine = affine @ nib.orientations.inv_ornt_aff(t, image.shape)
    image = np.ascontiguousarray(nib.orientations.apply_orientation(image, t))
    label = np.ascontiguousarray(nib.orientations.apply_orientation(label, t)).astype(np.uint8)
    return image, label, new_affine


def to_ras(image: np.ndarray, affine: np.ndarray):
    """(array, affine) reoriented to RAS voxel order (axial axis last)."""
    import nibabel as nib

    t = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt("RAS"))
    return (np.ascontiguousarray(nib.orientations.apply_orientation(image, t)),
            affine @ nib.orientations.inv_ornt_aff(t, image.shape))
