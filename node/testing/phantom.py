"""Deterministic synthetic mammograms with ground truth, for tests and benchmarks.

The image is built in the attenuation domain: a line-integral map ``sum(mu * length)`` of a
compressed breast (fat / glandular power-law texture, skin, pectoral muscle on MLO), plus
calcifications (suspicious clusters and benign look-alikes, see ``distractors``), exposed to
``N0 * exp(-line integral)`` photons per pixel, blurred by the detector PSF, given quantum and
electronic noise, and rendered as a For Presentation (log, 12 bit) and a For Processing
(linear, 14 bit) image. Positions are numpy ``(row, col)`` pixels; lengths are mm.

Pure numpy / scipy; no pydicom. Same ``PhantomSpec`` (seed included) -> bit-identical output.

References
----------
Burgess, A. E., et al. "Human observer detection experiments with mammograms and power-law
noise." Med. Phys. 28 (2001): power-law (1/f^beta, beta ~ 3) anatomical background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.testing.distractors import (
    DISTRACTOR_KINDS, DRAW_ORDER, DRAWERS, MU_SOFT_EXCESS_PER_MM, Canvas, DistractorTruth,
    PlacementError, add_object, ellipsoid_path, find_spot, free_spots, irregular_path,
)

__all__ = ["ClusterPlacement", "ClusterTruth", "DistractorTruth", "Phantom", "PhantomSpec",
           "PlacementError",
           "make_phantom", "random_spec", "CLUSTER_KINDS", "DISTRACTOR_KINDS"]

CLUSTER_KINDS = ("pleomorphic", "linear_branching")
DENSE_AREA_FRACTION = {"a": 0.10, "b": 0.30, "c": 0.55, "d": 0.80}
MU_FAT_PER_MM = 0.05  # adipose tissue near 20 keV
PRESENTATION_MAX = 4095  # 12 bits stored
PROCESSING_MAX = 16383  # 14 bits stored
BACKGROUND_VALUE = 100  # For Presentation value of unattenuated air
ELECTRONIC_NOISE_PHOTONS = 3.0
CLUSTER_SKIN_MARGIN_MM = 8.0


@dataclass(frozen=True)
class ClusterPlacement:
    """Where (and optionally how big and of which kind) a cluster is wanted: its centre
    ``distance_mm`` from the nipple at ``angle_deg``. Angle 0 points from the nipple straight
    to the chest wall; positive angles turn towards the top of the image (row 0), within
    (-90, 90). ``radius_mm`` (1.5-5) and ``kind`` default to random, as for other clusters."""

    distance_mm: float
    angle_deg: float = 0.0
    radius_mm: float | None = None
    kind: str | None = None

    def __post_init__(self):
        if self.distance_mm <= 0 or not -90 < self.angle_deg < 90:
            raise ValueError(f"a placement needs distance_mm > 0 and -90 < angle_deg < 90, got "
                             f"{self.distance_mm}, {self.angle_deg}")
        if self.radius_mm is not None and not 1.5 <= self.radius_mm <= 5.0:
            raise ValueError(f"radius_mm must be 1.5-5, got {self.radius_mm}")
        if self.kind not in (None, *CLUSTER_KINDS):
            raise ValueError(f"unknown cluster kind {self.kind!r}")


@dataclass(frozen=True)
class PhantomSpec:
    """What to draw. ``spacing_mm`` is the square pixel spacing at the breast.

    ``chest_wall`` is the column side of the chest wall ("left" / "right"); by default right
    for an R breast and left for an L breast, as the images are usually displayed.
    ``cluster_kinds`` (cycled) picks each cluster's kind, else random. ``photons_per_mm2`` is
    the mean fluence reaching the detector behind the breast (automatic exposure control);
    default 2.5e5 /mm^2 (about 2500 photons per 0.1 mm pixel, 1200 per 0.07 mm pixel).
    ``cluster_at`` places the first clusters as ClusterPlacement asks instead of at random;
    when the wanted spot is not free (too near the skin or the pectoral muscle, or taken) the
    nearest free angle at the same distance from the nipple is used. Empty (default): every
    cluster placed at random.
    """

    rows: int = 512
    cols: int = 416
    spacing_mm: float = 0.1
    laterality: str = "R"
    view: str = "CC"
    density: str = "b"
    n_clusters: int = 1
    distractors: tuple[str, ...] = ()
    seed: int = 0
    cluster_kinds: tuple[str, ...] | None = None
    photons_per_mm2: float | None = None
    chest_wall: str | None = None
    cluster_at: tuple[ClusterPlacement, ...] = ()

    def __post_init__(self):
        if self.laterality not in ("R", "L") or self.view not in ("CC", "MLO"):
            raise ValueError(f"laterality/view must be R|L and CC|MLO, got {self.laterality}"
                             f" {self.view}")
        if self.density not in DENSE_AREA_FRACTION:
            raise ValueError(f"density must be one of a-d, got {self.density!r}")
        unknown = set(self.distractors) - set(DISTRACTOR_KINDS)
        unknown |= set(self.cluster_kinds or ()) - set(CLUSTER_KINDS)
        if unknown:
            raise ValueError(f"unknown kinds: {sorted(unknown)}")
        if self.chest_wall not in (None, "left", "right"):
            raise ValueError(f"chest_wall must be left|right, got {self.chest_wall!r}")
        if min(self.rows, self.cols) < 64 or self.spacing_mm <= 0:
            raise ValueError("image must be at least 64 x 64 pixels with positive spacing")
        if len(self.cluster_at) > self.n_clusters or not all(
                isinstance(at, ClusterPlacement) for at in self.cluster_at):
            raise ValueError(f"cluster_at needs at most n_clusters={self.n_clusters} "
                             f"ClusterPlacement, got {self.cluster_at}")

    @property
    def side(self) -> str:
        """The resolved chest-wall column side, "left" or "right"."""
        return self.chest_wall or ("right" if self.laterality == "R" else "left")


@dataclass(frozen=True)
class ClusterTruth:
    """One suspicious cluster: ``centre_rc`` (pixels) is the centroid of the specks,
    ``radius_mm`` encloses them all; ``specks`` are ``(row, col, diameter_mm)`` with the
    diameter of a circle of the same area (for elongated fragments sqrt(length * width))."""

    kind: str
    centre_rc: tuple[float, float]
    radius_mm: float
    specks: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True, eq=False)
class Phantom:
    """A rendered phantom and its ground truth.

    ``presentation``: uint16 MONOCHROME2, 12 bits, bright = dense (labels burned in).
    ``processing``: uint16 linear exposure, 14 bits, bright = more x-rays (no labels).
    ``breast_mask``: bool, tissue inside the skin line (pectoral muscle included).
    ``pectoral_mask``: bool or None (CC). ``nipple_rc``: pixels. ``thickness_mm``: compressed.
    """

    spec: PhantomSpec
    presentation: np.ndarray
    processing: np.ndarray
    breast_mask: np.ndarray
    pectoral_mask: np.ndarray | None
    clusters: tuple[ClusterTruth, ...]
    distractors: tuple[DistractorTruth, ...]
    nipple_rc: tuple[float, float]
    thickness_mm: float

    @property
    def chest_wall(self) -> str:
        return self.spec.side


@dataclass(frozen=True)
class _Geometry:
    """Random anatomy of one image; lengths in mm, ``r0_mm`` is the nipple's row."""

    a_mm: float  # chest wall to nipple
    b_mm: float  # half height of the breast at the chest wall
    r0_mm: float
    top_frac: float  # MLO: breast width at the top edge, as a fraction of a_mm
    pec_w_mm: float
    pec_h_mm: float
    thickness_mm: float
    edge_mm: float
    skin_mm: float
    psf_px: float


def _draw_geometry(spec: PhantomSpec, rng: np.random.Generator) -> _Geometry:
    height, width = spec.rows * spec.spacing_mm, spec.cols * spec.spacing_mm
    a = rng.uniform(0.62, 0.85) * width
    if spec.view == "CC":
        b, r0, top, pw, ph = rng.uniform(0.40, 0.48) * height, rng.uniform(0.47, 0.53) * height, 0, 0, 0
    else:
        b, r0 = rng.uniform(0.40, 0.46) * height, rng.uniform(0.52, 0.56) * height
        top = rng.uniform(0.5, 0.65)
        pw, ph = rng.uniform(0.6, 0.9) * top * a, rng.uniform(0.35, 0.55) * height
    return _Geometry(a, b, r0, top, pw, ph, rng.uniform(40.0, 65.0), rng.uniform(10.0, 15.0),
                     rng.uniform(1.0, 1.5), rng.uniform(0.5, 0.7))


def _inside(geom: _Geometry, view: str, v_mm: np.ndarray, u_mm: np.ndarray) -> np.ndarray:
    """Breast outline: a half ellipse on the chest wall; MLO adds the axillary part that
    reaches the top edge. ``v_mm`` down the rows, ``u_mm`` away from the chest wall (>= 0)."""
    inside = (u_mm / geom.a_mm) ** 2 + ((v_mm - geom.r0_mm) / geom.b_mm) ** 2 <= 1.0
    if view == "MLO":
        reach = geom.a_mm * (geom.top_frac + (1 - geom.top_frac) * v_mm / geom.r0_mm)
        inside |= (v_mm <= geom.r0_mm) & (u_mm <= reach)
    return inside


def _pectoral(geom: _Geometry, v_mm, u_mm) -> np.ndarray:
    """Pectoral muscle triangle in the top corner at the chest wall, 0..1 (soft 1.5 mm edge)."""
    if geom.pec_w_mm <= 0:
        return np.zeros(np.broadcast_shapes(np.shape(v_mm), np.shape(u_mm)), np.float32)
    depth = (1.0 - u_mm / geom.pec_w_mm - v_mm / geom.pec_h_mm) * min(geom.pec_w_mm, geom.pec_h_mm)
    return np.clip(depth / 1.5, 0.0, 1.0).astype(np.float32)


def _axis_mm(n: int, n_lo: int, margin: int, spacing_mm: float):
    """Low-resolution sample positions (mm) matching ``ndimage.zoom`` corner alignment,
    extended by ``margin`` samples beyond the image."""
    step = (n - 1) / (n_lo - 1)
    return np.arange(-margin, n_lo + margin) * step * spacing_mm, step * spacing_mm


def power_law_texture(shape: tuple[int, int], spacing_mm: float, rng: np.random.Generator,
                      beta: float = 3.0, cutoff_mm: float = 40.0) -> np.ndarray:
    """Gaussian texture with power spectrum ~ 1/f^beta (f in cycles/mm), zero mean, unit std.

    ``cutoff_mm`` flattens the spectrum beyond that wavelength so the mean stays finite.
    """
    fr = np.fft.fftfreq(shape[0], d=spacing_mm)[:, None]
    fc = np.fft.rfftfreq(shape[1], d=spacing_mm)[None, :]
    amplitude = (fr ** 2 + fc ** 2 + cutoff_mm ** -2) ** (-beta / 4)
    tex = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * amplitude, s=shape)
    return (tex - tex.mean()) / tex.std()


def _anatomy_low(spec: PhantomSpec, geom: _Geometry, rng: np.random.Generator):
    """Skin distance (mm) and glandular-equivalent fraction on a ~0.4 mm grid."""
    factor = max(1, round(0.4 / spec.spacing_mm))
    n_r, n_c = math.ceil((spec.rows - 1) / factor) + 1, math.ceil((spec.cols - 1) / factor) + 1
    margin = math.ceil(20.0 / (factor * spec.spacing_mm))
    v, step_r = _axis_mm(spec.rows, n_r, margin, spec.spacing_mm)
    c, step_c = _axis_mm(spec.cols, n_c, margin, spec.spacing_mm)
    u = (spec.cols - 1) * spec.spacing_mm - c if spec.side == "right" else c
    v, u = v[:, None], np.maximum(u, 0.0)[None, :]  # beyond the chest wall the body goes on
    inside = _inside(geom, spec.view, v, u)
    half = 0.5 * min(step_r, step_c)
    skin = np.where(inside, ndimage.distance_transform_edt(inside, sampling=(step_r, step_c)) - half,
                    half - ndimage.distance_transform_edt(~inside, sampling=(step_r, step_c)))
    # Smooth away the staircase of the sampled outline so the skin line is not jagged.
    skin = ndimage.gaussian_filter(skin, 1.5)
    crop = (slice(margin, margin + n_r), slice(margin, margin + n_c))
    skin, v, u = skin[crop], v[crop[0]], u[:, crop[1]]
    gland = _glandular(spec, geom, skin, v, u, rng, (step_r + step_c) / 2)
    pect = _pectoral(geom, v, u)
    # Muscle is denser than gland and thick at the chest wall: ~0.4 of extra line integral.
    muscle = 1.0 + 0.4 / (geom.thickness_mm * MU_SOFT_EXCESS_PER_MM)
    return skin.astype(np.float32), (gland * (1 - pect) + muscle * pect).astype(np.float32)


def _glandular(spec, geom, skin, v, u, rng, spacing_mm) -> np.ndarray:
    """Glandular fraction 0..1: power-law texture biased towards the retro-areolar centre,
    thresholded so the requested share of the breast area is dense."""
    tex = power_law_texture(skin.shape, spacing_mm, rng)
    centre = np.exp(-0.5 * ((v - geom.r0_mm) / (0.6 * geom.b_mm)) ** 2)
    prior = np.clip(skin / 20.0, 0, 1) * centre * (1 - 0.6 * np.exp(-u / 12.0))
    z = tex + 1.5 * prior
    breast = (skin > 0) & (_pectoral(geom, v, u) < 0.5)
    threshold = np.quantile(z[breast], 1 - DENSE_AREA_FRACTION[spec.density]) if breast.any() else 0
    gland = 0.06 + 0.8 / (1 + np.exp(-(z - threshold) / 1.0))
    # A projection averages gland and fat along the ray through 40-65 mm of tissue, so the
    # fraction changes gradually: soften the map over ~1 mm (also hides the coarse grid).
    gland = ndimage.gaussian_filter(gland, 1.0 / spacing_mm)
    # Subcutaneous fat: little gland within ~8 mm of the skin.
    return 0.06 + (gland - 0.06) * np.clip(skin / 8.0, 0, 1)


def _zoom(low: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    factors = (shape[0] / low.shape[0], shape[1] / low.shape[1])
    out = ndimage.zoom(low, factors, order=1, output=np.float32, grid_mode=False,
                       mode="nearest")
    if out.shape != shape:  # rounding of the zoom factor: never expected, but be exact
        out = out[: shape[0], : shape[1]]
    return out


def _rng(spec: PhantomSpec, stream: str, occurrence: int = 0) -> np.random.Generator:
    """An independent generator per purpose, so adding a distractor leaves the anatomy,
    the clusters and the noise untouched."""
    names = ("anatomy", "clusters", "noise") + DISTRACTOR_KINDS
    return np.random.default_rng([spec.seed, names.index(stream), occurrence])


def _canvas(spec: PhantomSpec, geom: _Geometry, rng: np.random.Generator) -> Canvas:
    """Full-resolution anatomy (line integral, skin distance, pectoral) ready to draw on."""
    skin_lo, gland_lo = _anatomy_low(spec, geom, rng)
    shape, sp = (spec.rows, spec.cols), spec.spacing_mm
    skin, gland = _zoom(skin_lo, shape), _zoom(gland_lo, shape)
    thickness = geom.thickness_mm * np.sqrt(np.clip(skin / geom.edge_mm, 0, 1))
    line = thickness * (MU_FAT_PER_MM + MU_SOFT_EXCESS_PER_MM * gland)
    # The skin is a denser shell, seen edge-on along the outline.
    line += np.float32(0.15) * ((skin > 0) & (skin < geom.skin_mm))
    c_mm = np.arange(spec.cols, dtype=np.float32) * sp
    u = (spec.cols - 1) * sp - c_mm if spec.side == "right" else c_mm
    chest = np.broadcast_to(u[None, :], shape)
    pect = None
    if spec.view == "MLO":
        v = np.arange(spec.rows, dtype=np.float32)[:, None] * sp
        # Same edge as _pectoral's 0.5 level, as a cheap boolean at full resolution.
        level = 1.0 - 0.75 / min(geom.pec_w_mm, geom.pec_h_mm)
        pect = (u[None, :] / np.float32(geom.pec_w_mm) + v / np.float32(geom.pec_h_mm)) < level
    nipple_col = (spec.cols - 1) - geom.a_mm / sp if spec.side == "right" else geom.a_mm / sp
    return Canvas(line, skin, chest, pect, sp, (geom.r0_mm / sp, nipple_col),
                  spec.laterality + spec.view)


def _pleomorphic(rng: np.random.Generator, radius_mm: float) -> list:
    """5-30 irregular specks of 0.1-0.5 mm scattered within ``radius_mm``:
    ``(dy_mm, dx_mm, diameter_mm, path)``."""
    specks, wanted = [], int(rng.integers(5, 31))
    for _ in range(2000):
        if len(specks) == wanted:
            break
        d = 0.1 + 0.4 * rng.random() ** 1.5
        ang, rad = rng.uniform(0, 2 * math.pi), (radius_mm - d / 2) * math.sqrt(rng.random())
        dy, dx = rad * math.sin(ang), rad * math.cos(ang)
        if all(math.hypot(dy - s[0], dx - s[1]) >= (d + s[2]) / 2 + 0.15 for s in specks):
            specks.append((dy, dx, d, irregular_path(rng, d)))
    return specks


def _segments(rng: np.random.Generator, radius_mm: float) -> list:
    """1-3 branching segments ``(start_yx, angle, length_mm)`` within ``radius_mm``."""
    main = rng.uniform(0, math.pi)
    start = (-radius_mm * math.sin(main), -radius_mm * math.cos(main))
    segments = [(start, main, 2 * radius_mm)]
    for _ in range(int(rng.integers(0, 3))):
        t = rng.uniform(0.6, 1.5) * radius_mm
        origin = (start[0] + t * math.sin(main), start[1] + t * math.cos(main))
        angle = main + rng.choice([-1, 1]) * rng.uniform(0.35, 0.9)
        length = rng.uniform(0.4, 0.8) * radius_mm
        end = (origin[0] + length * math.sin(angle), origin[1] + length * math.cos(angle))
        length *= min(1.0, radius_mm / max(math.hypot(*end), 1e-9))
        segments.append((origin, angle, length))
    return segments


def _linear_branching(rng: np.random.Generator, radius_mm: float) -> list:
    """Elongated fragments (0.1-0.5 mm wide, 0.3-1.5 mm long) strung along branching
    segments, casting a duct: ``(dy_mm, dx_mm, diameter_mm, path)``, 5-30 of them."""
    for _ in range(50):
        specks = []
        for (y0, x0), angle, length in _segments(rng, radius_mm):
            s = rng.uniform(0.0, 0.5)
            while s < length - 0.3 and len(specks) < 30:
                frag = min(rng.uniform(0.3, 1.5), length - s)
                width = min(rng.uniform(0.1, 0.5), frag)
                jitter, tilt = rng.normal(0, 0.05), angle + rng.normal(0, 0.15)
                mid = s + frag / 2
                dy = y0 + mid * math.sin(angle) + jitter * math.cos(angle)
                dx = x0 + mid * math.cos(angle) - jitter * math.sin(angle)
                path = ellipsoid_path(frag / 2, width / 2, width / 2, tilt)
                specks.append((dy, dx, math.sqrt(frag * width), path))
                s += frag + rng.uniform(0.2, 0.8)
        if len(specks) >= 5:
            return specks
    raise PlacementError("could not string 5 fragments along the segments")


def _spot_at(canvas: Canvas, at: ClusterPlacement, radius_mm: float,
             min_skin_mm: float, gap_mm: float = 2.0) -> tuple[float, float]:
    """The free centre ``at.distance_mm`` from the nipple at ``at.angle_deg``, or at the
    nearest free angle on that circle; the tests are ``find_spot``'s."""
    distance_mm, wanted = at.distance_mm, at.angle_deg
    sp, (nipple_r, nipple_c) = canvas.spacing_mm, canvas.nipple_rc
    rows, cols = canvas.skin_mm.shape
    to_chest = 1.0 if canvas.chest_mm[0, -1] < canvas.chest_mm[0, 0] else -1.0
    angles = np.arange(-89.5, 90.0, 0.5)
    angles = angles[np.argsort(np.abs(angles - wanted), kind="stable")]
    r = nipple_r - distance_mm * np.sin(np.radians(angles)) / sp
    c = nipple_c + to_chest * distance_mm * np.cos(np.radians(angles)) / sp
    ok = (r >= 0) & (r <= rows - 1) & (c >= 0) & (c <= cols - 1)
    ok &= free_spots(canvas, r, c, radius_mm, min_skin_mm, gap_mm=gap_mm)
    hits = np.flatnonzero(ok)
    if not hits.size:
        raise PlacementError(f"no free spot {distance_mm:.1f} mm from the nipple for an object "
                             f"of radius {radius_mm:.1f} mm")
    return float(r[hits[0]]), float(c[hits[0]])


def _draw_cluster(canvas: Canvas, rng: np.random.Generator, kind: str,
                  at: ClusterPlacement | None = None) -> ClusterTruth:
    """Place one suspicious cluster >= 8 mm inside the skin (at random, or where ``at``
    asks) and draw its specks; each has its own calcium density (delta mu 1.0-2.2 /mm over
    tissue near 20 keV, between calcium oxalate and hydroxyapatite deposits) so some are
    fainter than others."""
    if at is not None and at.radius_mm is not None:
        radius = at.radius_mm
    else:
        radius = rng.uniform(1.5, 5.0) if kind == "pleomorphic" else rng.uniform(2.0, 5.0)
    while True:  # a small or crowded breast gets a smaller cluster rather than none
        try:
            if at is None:
                centre = find_spot(canvas, rng, radius + 0.3, CLUSTER_SKIN_MARGIN_MM)
            else:
                centre = _spot_at(canvas, at, radius + 0.3, CLUSTER_SKIN_MARGIN_MM)
            break
        except PlacementError:
            if radius <= 1.5:
                raise
            radius = max(1.5, radius * 0.7)
    specks = (_pleomorphic if kind == "pleomorphic" else _linear_branching)(rng, radius)
    sp, rows_cols = canvas.spacing_mm, []
    for dy, dx, d, path in specks:
        rc = (centre[0] + dy / sp, centre[1] + dx / sp)
        add_object(canvas.line_integral, rc, max(d, 1.6) / 2, sp, path, rng.uniform(1.0, 2.2))
        rows_cols.append((rc[0], rc[1], d))
    arr = np.array(rows_cols)
    middle = arr[:, :2].mean(axis=0)
    reach = np.hypot(*(arr[:, :2] - middle).T) * sp + arr[:, 2] / 2
    canvas.occupied.append((*centre, radius + 0.5))
    return ClusterTruth(kind, (float(middle[0]), float(middle[1])), float(reach.max()),
                        tuple((float(r), float(c), float(d)) for r, c, d in rows_cols))


def _exposure(spec: PhantomSpec, canvas: Canvas) -> tuple[float, float]:
    """Automatic exposure control: photons per pixel ``n0`` of the unattenuated beam so the
    breast receives ``photons_per_mm2`` on average, and the For Presentation gain (values
    per unit of log exposure) that puts the densest anatomy near 3400 of 4095."""
    sub = (slice(None, None, 4), slice(None, None, 4))
    line, skin = canvas.line_integral[sub], canvas.skin_mm[sub]
    breast = line[skin > 2.0] if (skin > 2.0).any() else line.ravel()
    fluence = spec.photons_per_mm2 or 2.5e5
    n0 = fluence * spec.spacing_mm ** 2 / float(np.mean(np.exp(-breast.astype(np.float64))))
    gain = float(np.clip(3300.0 / max(np.percentile(breast, 99), 1e-3), 400.0, 1000.0))
    return n0, gain


def _render(canvas: Canvas, n0: float, gain: float, psf_px: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Photons -> detector PSF -> quantum (Gaussian approximation of Poisson, fine above a
    few hundred photons) and electronic noise -> (presentation, processing) uint16."""
    photons = np.exp(-canvas.line_integral)
    photons *= np.float32(n0)
    photons = ndimage.gaussian_filter(photons, psf_px, mode="nearest", output=np.float32)
    noise = rng.standard_normal(photons.shape, dtype=np.float32)
    noise *= np.sqrt(np.maximum(photons, 0) + np.float32(ELECTRONIC_NOISE_PHOTONS ** 2))
    photons += noise
    np.maximum(photons, np.float32(0.5), out=photons)
    processing = photons * np.float32(0.9 * PROCESSING_MAX / n0)
    processing = np.clip(np.rint(processing), 1, PROCESSING_MAX).astype(np.uint16)
    log_exposure = np.log(photons)
    presentation = np.float32(BACKGROUND_VALUE + gain * math.log(n0)) - np.float32(gain) * log_exposure
    presentation = np.clip(np.rint(presentation), 0, PRESENTATION_MAX).astype(np.uint16)
    return presentation, processing


def _cluster_kind(spec: PhantomSpec, i: int, rng: np.random.Generator) -> str:
    """Cluster ``i``'s kind: the placement's, else ``cluster_kinds`` cycled, else random."""
    if i < len(spec.cluster_at) and spec.cluster_at[i].kind is not None:
        return spec.cluster_at[i].kind
    kinds = spec.cluster_kinds or ()
    return kinds[i % len(kinds)] if kinds else str(rng.choice(CLUSTER_KINDS))


def make_phantom(spec: PhantomSpec) -> Phantom:
    """Render ``spec`` into a Phantom (pixels and ground truth).

    Clusters are drawn first, then distractors in a fixed order (large ones first); the
    ``distractors`` truth follows that order. Raises PlacementError when the image is too
    small or crowded for what was asked.
    """
    geom = _draw_geometry(spec, _rng(spec, "anatomy"))
    canvas = _canvas(spec, geom, _rng(spec, "anatomy", 1))
    n0, gain = _exposure(spec, canvas)  # from anatomy alone: objects must not change it
    cluster_rng = _rng(spec, "clusters")
    clusters = tuple(_draw_cluster(canvas, cluster_rng, _cluster_kind(spec, i, cluster_rng),
                                   spec.cluster_at[i] if i < len(spec.cluster_at) else None)
                     for i in range(spec.n_clusters))
    ordered = sorted(enumerate(spec.distractors), key=lambda item: DRAW_ORDER.index(item[1]))
    distractors = tuple(DRAWERS[kind](canvas, _rng(spec, kind, i)) for i, kind in ordered)
    presentation, processing = _render(canvas, n0, gain, geom.psf_px, _rng(spec, "noise"))
    for r0, c0, bitmap in canvas.burn:
        window = presentation[r0:r0 + bitmap.shape[0], c0:c0 + bitmap.shape[1]]
        window[bitmap[: window.shape[0], : window.shape[1]]] = PRESENTATION_MAX
    return Phantom(spec, presentation, processing, canvas.skin_mm > 0, canvas.pectoral,
                   clusters, distractors, canvas.nipple_rc, geom.thickness_mm)


def random_spec(seed: int, *, rows: int = 512, cols: int = 416, spacing_mm: float = 0.1,
                max_clusters: int = 2, max_distractor_kinds: int = 3,
                distractor_pool: tuple[str, ...] = DISTRACTOR_KINDS,
                photons_per_mm2: float | None = None) -> PhantomSpec:
    """A PhantomSpec drawn from ``seed`` for benchmark sets: density, view, laterality,
    0..``max_clusters`` clusters and 0..``max_distractor_kinds`` distinct distractor kinds."""
    rng = np.random.default_rng([seed, 1000])
    n_kinds = int(rng.integers(0, max_distractor_kinds + 1))
    kinds = rng.choice(np.array(distractor_pool), size=min(n_kinds, len(distractor_pool)),
                       replace=False)
    return PhantomSpec(rows=rows, cols=cols, spacing_mm=spacing_mm,
                       laterality=str(rng.choice(["R", "L"])), view=str(rng.choice(["CC", "MLO"])),
                       density=str(rng.choice(list("abcd"))),
                       n_clusters=int(rng.integers(0, max_clusters + 1)),
                       distractors=tuple(sorted(str(k) for k in kinds)), seed=seed,
                       photons_per_mm2=photons_per_mm2)
