"""A synthetic ACR-style mammography accreditation phantom, for detector acceptance tests.

Modelled on the ACR mammography phantom (Gammex / RMI 156, CIRS 015): a 102 x 108 mm block
equivalent to a 42 mm compressed breast of 50 % glandular tissue, holding a wax insert with
five groups of six aluminium-oxide specks of 0.54, 0.40, 0.32, 0.24 and 0.16 mm. Here the
block lies against the chest-wall edge of the image with air on its three other sides, so the
detector's breast segmentation sees it as a breast. Only the specks are drawn (no fibres or
masses), on a uniform background.

The physics is ``node.testing.phantom``'s, reused rather than copied: attenuation line integral
(``mu * mm``) -> automatic exposure control (``phantom._exposure``: about 2.5e5 photons/mm^2
behind the block) -> detector PSF -> quantum and electronic noise -> 12-bit log For
Presentation image (``phantom._render``). The object is the same for every seed, as a real
phantom is; a seed gives one exposure: its noise and a placement of the phantom that differs
by up to ``PLACEMENT_JITTER_MM`` (so the specks fall on different sub-pixel phases).

Positions are numpy ``(row, col)`` pixels; lengths are mm. Pure numpy / scipy; no pydicom.

References
----------
American College of Radiology, "Mammography Quality Control Manual" (1999): phantom image
test, ACR accreditation phantom (RMI 156) test objects and scoring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from node.testing import phantom
from node.testing.distractors import MU_SOFT_EXCESS_PER_MM, Canvas, add_object, ellipsoid_path

__all__ = ["ACR_SPECK_DIAMETERS_MM", "AcrPhantom", "SpeckGroup", "make_acr_phantom"]

ACR_SPECK_DIAMETERS_MM = (0.54, 0.40, 0.32, 0.24, 0.16)
SPECKS_PER_GROUP = 6
BLOCK_THICKNESS_MM = 42.0
GLANDULAR_FRACTION = 0.5
MU_BLOCK_PER_MM = phantom.MU_FAT_PER_MM + GLANDULAR_FRACTION * MU_SOFT_EXCESS_PER_MM  # 0.065
# The wax (paraffin, adipose-like) replaces 7 mm of breast-equivalent material in the insert,
# which therefore shows as a slightly less attenuating rectangle, as on real phantom images.
WAX_THICKNESS_MM = 7.0
MU_WAX_PER_MM = phantom.MU_FAT_PER_MM
INSERT_SIZE_MM = (84.0, 45.0)  # (along the chest wall, away from it)
# Al2O3 (3.97 g/cm^3; mu/rho ~3.0 cm^2/g at 18 keV, 2.2 at 20 keV: NIST XCOM) has mu ~0.9-1.2
# /mm in a mammography beam; minus the ~0.06 /mm of the wax it displaces that is about 1.0 /mm,
# the faint end of the 1.0-2.2 /mm the clinical phantom uses for calcium.
SPECK_MU_EXCESS_PER_MM = 1.0
SPECK_SHAPE_SEED = 156  # the specks' shapes belong to the phantom, not to the exposure
# Five specks on a ring and one in the middle: neighbours 3.5-4.1 mm apart, a group ~7.5 mm
# across; groups 16 mm apart in a row parallel to the chest wall.
RING_RADIUS_MM = 3.5
GROUP_SPACING_MM = 16.0
AIR_MARGIN_MM = 10.0
FIELD_MM = (120.0, 98.0)  # default image: 1714 x 1400 at 0.07 mm, 1200 x 980 at 0.1 mm
PLACEMENT_JITTER_MM = 1.0
PSF_PX = 0.6  # the middle of phantom.py's 0.5-0.7 px


@dataclass(frozen=True)
class SpeckGroup:
    """One group of specks: ``centre_rc`` (pixels) is the middle speck, ``specks_rc`` every
    speck's centre (pixels), ``radius_mm`` the radius about ``centre_rc`` enclosing them."""

    diameter_mm: float
    centre_rc: tuple[float, float]
    specks_rc: tuple[tuple[float, float], ...]
    radius_mm: float


@dataclass(frozen=True, eq=False)
class AcrPhantom:
    """A rendered phantom exposure and its truth.

    ``presentation``: uint16 MONOCHROME2, 12 bits, bright = dense. ``block`` and ``insert``:
    ``(row0, row1, col0, col1)`` pixel bounds (half-open, rounded) of the phantom block and of
    the wax insert. ``n0``: photons per pixel of the unattenuated beam; ``gain``: For
    Presentation values per unit of log exposure.
    """

    presentation: np.ndarray
    spacing_mm: float
    groups: tuple[SpeckGroup, ...]
    block: tuple[int, int, int, int]
    insert: tuple[int, int, int, int]
    chest_wall: str
    n0: float
    gain: float

    def photons_behind(self, region: str = "block") -> float:
        """Mean photons per pixel behind the block ("block") or the wax insert ("insert")."""
        line = BLOCK_THICKNESS_MM * MU_BLOCK_PER_MM
        if region == "insert":
            line -= WAX_THICKNESS_MM * (MU_BLOCK_PER_MM - MU_WAX_PER_MM)
        return self.n0 * math.exp(-line)


def make_acr_phantom(seed: int, *, spacing_mm: float = 0.07, rows: int | None = None,
                     cols: int | None = None, photons_per_mm2: float | None = None,
                     chest_wall: str = "left") -> AcrPhantom:
    """Render one exposure of the ACR-style phantom.

    ``rows`` / ``cols`` default to a ``FIELD_MM`` field (120 x 98 mm); a smaller field must
    still hold the row of groups and the insert (at least about 107 x 68 mm). ``photons_per_mm2``
    is the fluence behind the block (default 2.5e5 /mm^2, as ``phantom``). Same arguments ->
    bit-identical output. Raises ValueError when the groups do not fit.
    """
    if spacing_mm <= 0 or chest_wall not in ("left", "right"):
        raise ValueError(f"need a positive spacing and chest_wall left|right, got {spacing_mm},"
                         f" {chest_wall!r}")
    rows = rows or round(FIELD_MM[0] / spacing_mm)
    cols = cols or round(FIELD_MM[1] / spacing_mm)
    jitter = np.random.default_rng([seed, 1]).uniform(-PLACEMENT_JITTER_MM, PLACEMENT_JITTER_MM, 2)
    block_mm, insert_mm, centres_mm = _layout(rows * spacing_mm, cols * spacing_mm, jitter)
    line = BLOCK_THICKNESS_MM * MU_BLOCK_PER_MM * _box(rows, cols, block_mm, spacing_mm)
    line -= WAX_THICKNESS_MM * (MU_BLOCK_PER_MM - MU_WAX_PER_MM) * _box(rows, cols, insert_mm, spacing_mm)
    inside_mm = _depth_mm(rows, cols, block_mm, spacing_mm)
    groups = _draw_specks(line, centres_mm, spacing_mm)
    flip = chest_wall == "right"
    if flip:  # draw with the chest wall on the left, then mirror the columns
        line = np.ascontiguousarray(line[:, ::-1])
        inside_mm = np.ascontiguousarray(inside_mm[:, ::-1])
        groups = tuple(_mirror(g, cols) for g in groups)
    canvas = Canvas(line, inside_mm, np.zeros_like(line), None, spacing_mm, (rows / 2, cols / 2), "")
    spec = phantom.PhantomSpec(rows=rows, cols=cols, spacing_mm=spacing_mm, seed=seed,
                               photons_per_mm2=photons_per_mm2)
    n0, gain = phantom._exposure(spec, canvas)
    presentation, _ = phantom._render(canvas, n0, gain, PSF_PX, np.random.default_rng([seed, 0]))
    return AcrPhantom(presentation, spacing_mm, groups, _pixels(block_mm, spacing_mm, cols, flip),
                      _pixels(insert_mm, spacing_mm, cols, flip), chest_wall, n0, gain)


def _layout(height_mm: float, width_mm: float, jitter_mm: np.ndarray):
    """Block and insert boxes ``(top, bottom, near, far)`` in mm (columns measured from the
    chest wall) and the group centres ``(row_mm, col_mm)``, chest wall on the left. Whether
    the groups fit is decided before the placement jitter, so it does not depend on the seed."""
    block = (AIR_MARGIN_MM, height_mm - AIR_MARGIN_MM, -1.0, width_mm - AIR_MARGIN_MM)
    middle_r = (block[0] + block[1]) / 2
    middle_c = min(block[3] / 2, block[3] - 8.0 - INSERT_SIZE_MM[1] / 2)
    half_r = min(INSERT_SIZE_MM[0], block[1] - block[0] - 8.0) / 2
    half_c = min(INSERT_SIZE_MM[1], block[3] - 8.0) / 2
    insert = (middle_r - half_r, middle_r + half_r, middle_c - half_c, middle_c + half_c)
    offsets = (np.arange(len(ACR_SPECK_DIAMETERS_MM)) - (len(ACR_SPECK_DIAMETERS_MM) - 1) / 2)
    centres = [(middle_r + k * GROUP_SPACING_MM, middle_c) for k in offsets]
    reach = RING_RADIUS_MM + max(ACR_SPECK_DIAMETERS_MM)
    if (centres[0][0] - reach < insert[0] + 3.0 or centres[-1][0] + reach > insert[1] - 3.0
            or middle_c - reach < insert[2] + 3.0 or insert[2] < 4.0):
        raise ValueError(f"a {height_mm:.0f} x {width_mm:.0f} mm field cannot hold the ACR"
                         " speck groups 3 mm inside the wax insert")
    dr, dc = float(jitter_mm[0]), float(jitter_mm[1])
    block = (block[0] + dr, block[1] + dr, block[2], block[3] + dc)  # the chest wall stays put
    insert = (insert[0] + dr, insert[1] + dr, insert[2] + dc, insert[3] + dc)
    return block, insert, [(r + dr, c + dc) for r, c in centres]


def _box(rows: int, cols: int, box_mm, spacing_mm: float) -> np.ndarray:
    """Fraction of each pixel inside the box (anti-aliased edges), float32."""
    def cover(n, lo, hi):
        centre = np.arange(n) * spacing_mm
        return np.clip(np.minimum(centre + spacing_mm / 2, hi) - np.maximum(centre - spacing_mm / 2, lo),
                       0, None) / spacing_mm
    return np.outer(cover(rows, box_mm[0], box_mm[1]), cover(cols, box_mm[2], box_mm[3])).astype(np.float32)


def _depth_mm(rows: int, cols: int, block_mm, spacing_mm: float) -> np.ndarray:
    """Signed distance (mm) inside the block from its air edges (not the chest wall)."""
    r = np.arange(rows, dtype=np.float32)[:, None] * spacing_mm
    c = np.arange(cols, dtype=np.float32)[None, :] * spacing_mm
    return np.minimum(np.minimum(r - block_mm[0], block_mm[1] - r), block_mm[3] - c).astype(np.float32)


def _draw_specks(line: np.ndarray, centres_mm, spacing_mm: float) -> tuple[SpeckGroup, ...]:
    """Six near-spherical specks per group (in-plane semi-axes r*k and r/k, k 0.9-1.1, so the
    equal-area diameter is the nominal one; depth r): the middle one first, then the ring,
    starting with the speck farthest from the chest wall."""
    shapes = np.random.default_rng(SPECK_SHAPE_SEED)
    groups = []
    ring = [2 * math.pi * i / (SPECKS_PER_GROUP - 1) for i in range(SPECKS_PER_GROUP - 1)]
    offsets = [(0.0, 0.0)] + [(RING_RADIUS_MM * math.sin(a), RING_RADIUS_MM * math.cos(a)) for a in ring]
    for diameter, (row_mm, col_mm) in zip(ACR_SPECK_DIAMETERS_MM, centres_mm):
        r = diameter / 2
        specks = []
        for dy, dx in offsets:
            rc = ((row_mm + dy) / spacing_mm, (col_mm + dx) / spacing_mm)
            k = shapes.uniform(0.9, 1.1)
            path = ellipsoid_path(r * k, r / k, r, shapes.uniform(0, math.pi))
            add_object(line, rc, 1.2 * r, spacing_mm, path, SPECK_MU_EXCESS_PER_MM)
            specks.append((float(rc[0]), float(rc[1])))
        groups.append(SpeckGroup(diameter, specks[0], tuple(specks), RING_RADIUS_MM + r))
    return tuple(groups)


def _mirror(group: SpeckGroup, cols: int) -> SpeckGroup:
    def flip(rc):
        return (rc[0], (cols - 1) - rc[1])
    return SpeckGroup(group.diameter_mm, flip(group.centre_rc),
                      tuple(flip(rc) for rc in group.specks_rc), group.radius_mm)


def _pixels(box_mm, spacing_mm: float, cols: int, flip: bool) -> tuple[int, int, int, int]:
    r0, r1 = (int(round(v / spacing_mm)) for v in box_mm[:2])
    c0, c1 = max(0, int(round(box_mm[2] / spacing_mm))), min(cols, int(round(box_mm[3] / spacing_mm)))
    return (r0, r1, cols - c1, cols - c0) if flip else (r0, r1, c0, c1)
