"""Drawing primitives and benign look-alikes ("distractors") for the synthetic mammogram.

Everything here adds attenuation to a line-integral map: a float32 ``(row, col)`` array of
``sum(mu * length)`` along the beam (dimensionless), later turned into photons by
``node.testing.phantom``. An object is described by a *path function* ``path(dy_mm, dx_mm)``
giving the length (mm) of the beam's chord through it at an offset from its centre; it is
supersampled over each pixel so sub-pixel specks keep their integrated attenuation.

Pure numpy / scipy; no pydicom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage

DISTRACTOR_KINDS = ("vascular", "macro", "rim", "popcorn", "skin", "scattered", "clip",
                    "marker", "label", "paddle_edge")
# Drawing order: large objects first so small ones can still find free space around them.
DRAW_ORDER = ("vascular", "popcorn", "rim", "macro", "clip", "skin", "marker", "scattered",
              "paddle_edge", "label")
MU_METAL_PER_MM = 20.0  # stainless steel near 20 keV (~200 /cm): saturates the detector
MU_SOFT_EXCESS_PER_MM = 0.03  # glandular / vessel / muscle tissue over fat near 20 keV

PathFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class PlacementError(ValueError):
    """No free position satisfies an object's constraints (image too small or too crowded)."""


@dataclass(frozen=True)
class DistractorTruth:
    """Ground truth of one benign object.

    ``centre_rc`` is in pixels ``(row, col)``; ``extent_mm`` is the largest dimension of the
    object's calcified (or metal / burned-in) part; ``points`` are the centres of its parts in
    pixels and ``diameters_mm`` their sizes (same order; empty for ``label`` / ``paddle_edge``,
    whose ``points`` are the two ends or corners).
    """

    kind: str
    centre_rc: tuple[float, float]
    extent_mm: float
    points: tuple[tuple[float, float], ...] = ()
    diameters_mm: tuple[float, ...] = ()


@dataclass
class Canvas:
    """Mutable drawing state shared by the drawers of one phantom (internal).

    ``skin_mm`` is the signed distance to the skin line in mm (positive inside the breast);
    ``chest_mm`` the distance from the chest wall in mm; ``occupied`` holds
    ``(row, col, radius_mm)`` of everything placed so far; ``burn`` holds
    ``(row0, col0, bool bitmap)`` written at the maximum stored value after rendering.
    """

    line_integral: np.ndarray
    skin_mm: np.ndarray
    chest_mm: np.ndarray
    pectoral: np.ndarray | None
    spacing_mm: float
    nipple_rc: tuple[float, float]
    label_text: str
    occupied: list = field(default_factory=list)
    burn: list = field(default_factory=list)


def ellipsoid_path(a_mm: float, b_mm: float, depth_mm: float, angle_rad: float = 0.0) -> PathFn:
    """Chord (mm) through an ellipsoid with in-plane semi-axes ``a_mm`` (along ``angle_rad``,
    measured from the column axis towards the row axis), ``b_mm``, and ``depth_mm`` along the beam."""
    s, c = math.sin(angle_rad), math.cos(angle_rad)

    def path(dy, dx):
        u, v = dy * s + dx * c, dy * c - dx * s
        return 2.0 * depth_mm * np.sqrt(np.clip(1.0 - (u / a_mm) ** 2 - (v / b_mm) ** 2, 0, None))
    return path


def shell_path(radius_mm: float, wall_mm: float) -> PathFn:
    """Chord (mm) through a spherical shell: long at the rim, short (lucent) in the centre."""
    inner = max(radius_mm - wall_mm, 0.0)

    def path(dy, dx):
        rho2 = dy * dy + dx * dx
        return (2.0 * np.sqrt(np.clip(radius_mm ** 2 - rho2, 0, None))
                - 2.0 * np.sqrt(np.clip(inner ** 2 - rho2, 0, None)))
    return path


def box_path(half_length_mm: float, half_width_mm: float, thickness_mm: float,
             angle_rad: float) -> PathFn:
    """Chord (mm) through a flat rectangular slab (a metal strip seen face-on)."""
    s, c = math.sin(angle_rad), math.cos(angle_rad)

    def path(dy, dx):
        u, v = dy * s + dx * c, dy * c - dx * s
        inside = (np.abs(u) <= half_length_mm) & (np.abs(v) <= half_width_mm)
        return np.where(inside, thickness_mm, 0.0)
    return path


def union_path(parts: list[tuple[PathFn, float, float]]) -> PathFn:
    """Approximate union of parts ``(path, dy_mm, dx_mm)``: the longest chord at each point
    (exact for nested parts, and avoids double counting where jittered parts overlap)."""
    def path(dy, dx):
        return np.maximum.reduce([p(dy - oy, dx - ox) for p, oy, ox in parts])
    return path


def irregular_path(rng: np.random.Generator, diameter_mm: float) -> PathFn:
    """An irregular speck of nominal ``diameter_mm``: union of 1-3 jittered small ellipsoids."""
    r = diameter_mm / 2.0
    parts = [(ellipsoid_path(r * rng.uniform(0.75, 1.0), r * rng.uniform(0.5, 0.9),
                             r * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)), 0.0, 0.0)]
    for _ in range(int(rng.integers(0, 3))):
        off = rng.uniform(-r / 2, r / 2, 2)
        parts.append((ellipsoid_path(r * rng.uniform(0.3, 0.6), r * rng.uniform(0.25, 0.5),
                                     r * rng.uniform(0.3, 0.7), rng.uniform(0, math.pi)),
                      off[0], off[1]))
    return union_path(parts)


def add_object(line_integral: np.ndarray, centre_rc: tuple[float, float], radius_mm: float,
               spacing_mm: float, path: PathFn, mu_per_mm: float, supersample: int = 3) -> None:
    """Add ``mu_per_mm * path`` averaged over each pixel of a patch around ``centre_rc``.

    ``radius_mm`` bounds the object's reach from the centre; ``supersample`` sub-pixels per
    axis keep the integrated attenuation of sub-pixel specks right.
    """
    rows, cols = line_integral.shape
    reach = radius_mm / spacing_mm + 1.0
    r0, r1 = max(int(math.floor(centre_rc[0] - reach)), 0), min(int(math.ceil(centre_rc[0] + reach)) + 1, rows)
    c0, c1 = max(int(math.floor(centre_rc[1] - reach)), 0), min(int(math.ceil(centre_rc[1] + reach)) + 1, cols)
    if r0 >= r1 or c0 >= c1:
        return
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    dy = ((np.arange(r0, r1)[:, None] + sub[None, :]).ravel() - centre_rc[0]) * spacing_mm
    dx = ((np.arange(c0, c1)[:, None] + sub[None, :]).ravel() - centre_rc[1]) * spacing_mm
    chord = path(dy[:, None], dx[None, :])
    mean = chord.reshape(r1 - r0, supersample, c1 - c0, supersample).mean(axis=(1, 3))
    line_integral[r0:r1, c0:c1] += (mu_per_mm * mean).astype(np.float32)


def free_spots(canvas: Canvas, r: np.ndarray, c: np.ndarray, radius_mm: float, min_skin_mm: float, *,
               max_skin_mm: float = np.inf, gap_mm: float = 2.0, min_chest_mm: float = 0.0,
               avoid_pectoral: bool = True) -> np.ndarray:
    """Which candidate centres (pixel rows ``r``, columns ``c`` inside the image) pass
    ``find_spot``'s tests: deep enough in the skin, away from the chest wall, the pectoral
    muscle and everything already placed."""
    rows, cols = canvas.skin_mm.shape
    sp = canvas.spacing_mm
    ri = np.clip(np.rint(r).astype(int), 0, rows - 1)
    ci = np.clip(np.rint(c).astype(int), 0, cols - 1)
    skin = canvas.skin_mm[ri, ci]
    ok = (skin >= min_skin_mm + radius_mm) & (skin <= max_skin_mm)
    ok &= canvas.chest_mm[ri, ci] >= min_chest_mm + radius_mm
    if avoid_pectoral and canvas.pectoral is not None:
        reach = (radius_mm + 3.0) / sp
        for orr, occ in ((0, 0), (-reach, 0), (0, reach), (0, -reach), (reach, 0)):
            rr = np.clip(np.rint(r + orr).astype(int), 0, rows - 1)
            cc = np.clip(np.rint(c + occ).astype(int), 0, cols - 1)
            ok &= ~canvas.pectoral[rr, cc]
    for orow, ocol, orad in canvas.occupied:
        ok &= np.hypot(r - orow, c - ocol) * sp >= radius_mm + orad + gap_mm
    return ok


def find_spot(canvas: Canvas, rng: np.random.Generator, radius_mm: float, min_skin_mm: float, *,
              max_skin_mm: float = np.inf, gap_mm: float = 2.0, min_chest_mm: float = 0.0,
              avoid_pectoral: bool = True, rounds: int = 10) -> tuple[float, float]:
    """A random centre (row, col) whose disc of ``radius_mm`` lies at least ``min_skin_mm``
    inside the skin line, clear of the pectoral muscle and of everything already placed.

    With ``radius_mm`` 0 and ``max_skin_mm`` set it finds points in a band along the skin.
    Raises PlacementError when none is found.
    """
    rows, cols = canvas.skin_mm.shape
    for _ in range(rounds):
        r, c = rng.uniform(0, rows - 1, 4096), rng.uniform(0, cols - 1, 4096)
        ok = free_spots(canvas, r, c, radius_mm, min_skin_mm, max_skin_mm=max_skin_mm, gap_mm=gap_mm,
                        min_chest_mm=min_chest_mm, avoid_pectoral=avoid_pectoral)
        hits = np.flatnonzero(ok)
        if hits.size:
            return float(r[hits[0]]), float(c[hits[0]])
    raise PlacementError(f"no free spot for an object of radius {radius_mm:.1f} mm "
                         f"at >= {min_skin_mm:.1f} mm inside the skin")


def _enclosing(points_rc: np.ndarray, diameters_mm, spacing_mm: float):
    centre = points_rc.mean(axis=0)
    dist = np.hypot(*(points_rc - centre).T) * spacing_mm + np.asarray(diameters_mm) / 2
    return (float(centre[0]), float(centre[1])), float(2 * dist.max())


def _truth(kind, points_rc, diameters_mm, spacing_mm) -> DistractorTruth:
    pts = np.asarray(points_rc, dtype=float).reshape(-1, 2)
    centre, extent = _enclosing(pts, diameters_mm, spacing_mm)
    return DistractorTruth(kind, centre, extent, tuple((float(a), float(b)) for a, b in pts),
                           tuple(float(d) for d in diameters_mm))


def _fit(canvas: Canvas, rng: np.random.Generator, size_mm: float, min_size_mm: float,
         min_skin_mm: float) -> tuple[tuple[float, float], float]:
    """A spot for an object ``size_mm`` across, shrinking it towards ``min_size_mm`` when a
    small or crowded breast has no room: ``(centre_rc, size_mm)``."""
    while True:
        try:
            return find_spot(canvas, rng, size_mm / 2 + 0.5, min_skin_mm), size_mm
        except PlacementError:
            if size_mm <= min_size_mm:
                raise
            size_mm = max(min_size_mm, size_mm * 0.75)


def draw_macro(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """One dense coarse calcification, 1.5-4 mm, irregular."""
    centre, d = _fit(canvas, rng, rng.uniform(1.5, 4.0), 1.5, 4.0)
    add_object(canvas.line_integral, centre, d / 2 + 0.5, canvas.spacing_mm,
               irregular_path(rng, d), rng.uniform(1.0, 1.5))
    canvas.occupied.append((*centre, d / 2 + 0.5))
    return _truth("macro", [centre], [d], canvas.spacing_mm)


def draw_rim(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """Eggshell (rim) calcification: a shell 3-8 mm across, wall 0.3-0.6 mm, lucent centre."""
    centre, d = _fit(canvas, rng, rng.uniform(3.0, 8.0), 3.0, 4.0)
    add_object(canvas.line_integral, centre, d / 2, canvas.spacing_mm,
               shell_path(d / 2, rng.uniform(0.3, 0.6)), rng.uniform(0.6, 1.2), supersample=2)
    canvas.occupied.append((*centre, d / 2 + 0.5))
    return _truth("rim", [centre], [d], canvas.spacing_mm)


def draw_popcorn(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """Popcorn (degenerating fibroadenoma): 3-7 coarse blobs of 1-3 mm in a 5-10 mm lump."""
    centre, lump = _fit(canvas, rng, rng.uniform(5.0, 10.0), 5.0, 4.0)
    sp = canvas.spacing_mm
    # The fibroadenoma itself: a faint soft-tissue ellipsoid under the blobs.
    add_object(canvas.line_integral, centre, lump / 2, sp,
               ellipsoid_path(lump / 2, lump / 2 * rng.uniform(0.7, 1.0), lump / 2),
               MU_SOFT_EXCESS_PER_MM, supersample=1)
    points, sizes = [], []
    for _ in range(int(rng.integers(3, 8))):
        d = rng.uniform(1.0, min(3.0, lump / 2))
        ang, rad = rng.uniform(0, 2 * math.pi), rng.uniform(0, lump / 2 - d / 2)
        p = (centre[0] + rad * math.sin(ang) / sp, centre[1] + rad * math.cos(ang) / sp)
        add_object(canvas.line_integral, p, d / 2 + 0.3, sp, irregular_path(rng, d),
                   rng.uniform(0.8, 1.3), supersample=2)
        points.append(p)
        sizes.append(d)
    canvas.occupied.append((*centre, lump / 2 + 0.5))
    return _truth("popcorn", points, sizes, sp)


def draw_skin(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """4-10 lucent-centred dermal calcifications of 0.5-1.5 mm within 2 mm of the skin line."""
    sp = canvas.spacing_mm
    anchor = find_spot(canvas, rng, 0.0, 0.5, max_skin_mm=1.8, gap_mm=6.0, min_chest_mm=10.0)
    points, sizes = [], []
    for _ in range(200):
        if len(points) >= int(rng.integers(4, 11)) and len(points) >= 4:
            break
        d = rng.uniform(0.5, 1.5)
        ang, rad = rng.uniform(0, 2 * math.pi), rng.uniform(0, 10.0)
        p = (anchor[0] + rad * math.sin(ang) / sp, anchor[1] + rad * math.cos(ang) / sp)
        ri, ci = int(round(p[0])), int(round(p[1]))
        if not (0 <= ri < canvas.skin_mm.shape[0] and 0 <= ci < canvas.skin_mm.shape[1]):
            continue
        if not (0.2 + d / 4 <= canvas.skin_mm[ri, ci] <= 2.0) or canvas.chest_mm[ri, ci] < 10.0:
            continue
        if any(math.hypot(p[0] - q[0], p[1] - q[1]) * sp < (d + e) / 2 + 0.5
               for q, e in zip(points, sizes)):
            continue
        points.append(p)
        sizes.append(d)
    if len(points) < 4:
        raise PlacementError("skin line too short for dermal calcifications")
    for p, d in zip(points, sizes):
        add_object(canvas.line_integral, p, d / 2, sp,
                   shell_path(d / 2, d / 2 * rng.uniform(0.3, 0.45)), rng.uniform(0.8, 1.3))
    truth = _truth("skin", points, sizes, sp)
    canvas.occupied.append((*truth.centre_rc, truth.extent_mm / 2))
    return truth


def draw_scattered(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """20-60 lone punctate specks of 0.15-0.4 mm, >= 10 mm apart, all over the breast
    (as many as fit: a small test breast holds fewer)."""
    sp = canvas.spacing_mm
    wanted = int(rng.integers(20, 61))
    points, sizes = [], []
    for _ in range(wanted):
        try:
            p = find_spot(canvas, rng, 0.3, 2.0, gap_mm=3.0, rounds=2)
        except PlacementError:
            break
        if any(math.hypot(p[0] - q[0], p[1] - q[1]) * sp < 10.0 for q in points):
            continue
        d = rng.uniform(0.15, 0.4)
        add_object(canvas.line_integral, p, d / 2, sp,
                   ellipsoid_path(d / 2, d / 2 * rng.uniform(0.7, 1.0), d / 2),
                   rng.uniform(0.6, 1.3))
        points.append(p)
        sizes.append(d)
    if len(points) < 3:
        raise PlacementError("no room for scattered calcifications")
    canvas.occupied.extend((p[0], p[1], 1.0) for p in points)
    return _truth("scattered", points, sizes, sp)


def draw_clip(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """A metal biopsy clip, 2-4 x 0.5-1 mm, as a filled strip or a U of wire; saturates."""
    length, width = rng.uniform(2.0, 4.0), rng.uniform(0.5, 1.0)
    angle = rng.uniform(0, math.pi)
    centre = find_spot(canvas, rng, length / 2 + 0.5, 5.0)
    if rng.random() < 0.5:
        path = box_path(length / 2, width / 2, 0.5, angle)
    else:
        wire = 0.12
        s, c = math.sin(angle), math.cos(angle)
        off = width / 2 - wire  # legs either side of the axis, joined at one end
        parts = [(box_path(length / 2, wire, 0.5, angle), off * c, -off * s),
                 (box_path(length / 2, wire, 0.5, angle), -off * c, off * s),
                 (box_path(wire, width / 2, 0.5, angle), length / 2 * s, length / 2 * c)]
        path = union_path(parts)
    add_object(canvas.line_integral, centre, length / 2 + width, canvas.spacing_mm, path,
               MU_METAL_PER_MM)
    canvas.occupied.append((*centre, length / 2 + 0.5))
    return DistractorTruth("clip", centre, float(length), (centre,), (float(length),))


def draw_marker(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """A metal BB skin marker, a 2-4 mm sphere centred on the skin line; saturates."""
    d = rng.uniform(2.0, 4.0)
    band = max(0.3, canvas.spacing_mm)
    centre = find_spot(canvas, rng, 0.0, -band, max_skin_mm=band, gap_mm=d / 2 + 2.0,
                       min_chest_mm=15.0)
    add_object(canvas.line_integral, centre, d / 2, canvas.spacing_mm,
               ellipsoid_path(d / 2, d / 2, d / 2), MU_METAL_PER_MM)
    canvas.occupied.append((*centre, d / 2 + 0.5))
    return DistractorTruth("marker", centre, float(d), (centre,), (float(d),))


DRAWERS = {
    "macro": draw_macro, "rim": draw_rim, "popcorn": draw_popcorn, "skin": draw_skin,
    "scattered": draw_scattered, "clip": draw_clip, "marker": draw_marker,
}


def _vessel_centreline(canvas: Canvas, rng: np.random.Generator, radius_mm: float):
    """A gently curving centreline (pixels, one sample per half pixel) that stays >= 3 mm
    inside the skin and clear of placed objects; 20-80 mm long (16 mm in a crowded small breast)."""
    sp, (rows, cols) = canvas.spacing_mm, canvas.skin_mm.shape
    step_mm = 0.5 * sp
    for attempt in range(80):
        start = find_spot(canvas, rng, radius_mm, 6.0, gap_mm=3.0)
        to_nipple = math.atan2(canvas.nipple_rc[0] - start[0], canvas.nipple_rc[1] - start[1])
        heading = to_nipple + rng.uniform(-0.9, 0.9) + (math.pi if rng.random() < 0.3 else 0.0)
        s = np.arange(int(rng.uniform(30.0, 80.0) / step_mm)) * step_mm
        theta = heading + rng.uniform(0.2, 0.5) * np.sin(2 * math.pi * s / rng.uniform(25, 60)
                                                         + rng.uniform(0, 2 * math.pi))
        pts = np.column_stack([start[0] + np.cumsum(np.sin(theta)) * 0.5,
                               start[1] + np.cumsum(np.cos(theta)) * 0.5])
        ri, ci = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
        inside = (ri >= 0) & (ri < rows) & (ci >= 0) & (ci < cols)
        ok = inside.copy()
        ok[inside] = canvas.skin_mm[ri[inside], ci[inside]] >= 3.0 + radius_mm
        for orow, ocol, orad in canvas.occupied:
            ok &= np.hypot(pts[:, 0] - orow, pts[:, 1] - ocol) * sp >= orad + radius_mm + 2.0
        end = int(np.argmin(ok)) if not ok.all() else len(ok)
        if end * step_mm >= (20.0 if attempt < 40 else 16.0):  # small test breasts
            return pts[:end], theta[:end], step_mm
    raise PlacementError("no room for a vessel")


def _add_tube(canvas: Canvas, pts: np.ndarray, radius_mm: float, mu_per_mm: float) -> None:
    """A cylinder of ``radius_mm`` along ``pts``: chord 2*sqrt(r^2 - d^2) at distance d."""
    sp, (rows, cols) = canvas.spacing_mm, canvas.line_integral.shape
    pad = radius_mm / sp + 2
    r0, c0 = (max(int(v), 0) for v in np.floor(pts.min(axis=0) - pad))
    r1, c1 = np.ceil(pts.max(axis=0) + pad).astype(int) + 1
    r1, c1 = min(r1, rows), min(c1, cols)
    axis = np.ones((r1 - r0, c1 - c0), dtype=bool)
    ri, ci = np.rint(pts[:, 0]).astype(int) - r0, np.rint(pts[:, 1]).astype(int) - c0
    axis[ri, ci] = False
    dist = ndimage.distance_transform_edt(axis, sampling=sp)
    chord = 2.0 * np.sqrt(np.clip(radius_mm ** 2 - dist ** 2, 0, None))
    canvas.line_integral[r0:r1, c0:c1] += (mu_per_mm * chord).astype(np.float32)


def draw_vascular(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """A curving vessel 1-2 mm wide, 20-80 mm long (30+ where the breast allows), mildly
    dense, with tram-track calcification: two parallel rows of dashes (0.2-0.8 mm wide,
    0.8-3 mm long) along its walls over a stretch of >= 15 mm (or the whole vessel if shorter).
    """
    sp = canvas.spacing_mm
    radius = rng.uniform(0.5, 1.0)
    pts, theta, step_mm = _vessel_centreline(canvas, rng, radius)
    _add_tube(canvas, pts, radius, MU_SOFT_EXCESS_PER_MM * rng.uniform(1.0, 1.5))
    length = len(pts) * step_mm
    stretch = min(rng.uniform(15.0, 40.0), length - 1.0)
    first = rng.uniform(0.0, length - stretch)
    points, sizes = [], []
    for side in (-1.0, 1.0):
        s = first + rng.uniform(0.0, 1.0)
        while s < first + stretch:
            dash, width = rng.uniform(0.8, 3.0), rng.uniform(0.2, min(0.8, radius))
            i = min(int((s + dash / 2) / step_mm), len(pts) - 1)
            normal = np.array([math.cos(theta[i]), -math.sin(theta[i])])
            p = pts[i] + side * (radius - width / 2) / sp * normal
            # The wall is seen edge-on, so the beam crosses a long chord of calcified wall.
            depth = math.sqrt(2.0 * radius * width) / 2
            add_object(canvas.line_integral, tuple(p), dash / 2, sp,
                       ellipsoid_path(dash / 2, width / 2, depth, theta[i]), rng.uniform(0.6, 1.2))
            points.append(tuple(p))
            sizes.append(math.sqrt(dash * width))
            s += dash + rng.uniform(0.3, 1.5)
    canvas.occupied.extend((p[0], p[1], radius + 0.5) for p in pts[:: max(int(2.0 / step_mm), 1)])
    return _truth("vascular", points, sizes, sp)



# 5 x 7 bitmap glyphs (rows top to bottom) for the letters of view labels.
_FONT = {
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "C": ("01110", "10001", "10000", "10000", "10000", "10001", "01110"),
    "M": ("10001", "11011", "10101", "10101", "10001", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
}


def text_bitmap(text: str, height_px: int) -> np.ndarray:
    """Bool bitmap of ``text`` (letters R L C M O) about ``height_px`` rows high."""
    cell = max(1, round(height_px / 7))
    glyphs = [np.array([[ch == "1" for ch in row] for row in _FONT[letter]]) for letter in text]
    gap = np.zeros((7, 1), dtype=bool)
    line = np.hstack([part for g in glyphs for part in (g, gap)][:-1])
    return np.kron(line, np.ones((cell, cell), dtype=bool))


def draw_label(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """Burned-in view label (e.g. "RCC") 4-8 mm high in an air corner away from the chest
    wall; written at the maximum stored value after rendering. ``points`` = box corners."""
    sp, (rows, cols) = canvas.spacing_mm, canvas.skin_mm.shape
    margin = max(int(3.0 / sp), 2)
    far_left = canvas.chest_mm[0, 0] > canvas.chest_mm[0, -1]
    for height_mm in (rng.uniform(4.0, 8.0), 4.0, 2.5):
        bitmap = text_bitmap(canvas.label_text, int(round(height_mm / sp)))
        h, w = bitmap.shape
        c0 = margin if far_left else cols - margin - w
        for r0 in (rows - margin - h, margin) if rng.random() < 0.5 else (margin, rows - margin - h):
            box = canvas.skin_mm[max(r0 - 2, 0):r0 + h + 2, max(c0 - 2, 0):c0 + w + 2]
            if c0 >= 0 and r0 >= 0 and box.size and box.max() < -1.0:
                canvas.burn.append((r0, c0, bitmap))
                corners = ((float(r0), float(c0)), (float(r0 + h - 1), float(c0 + w - 1)))
                return DistractorTruth("label", (r0 + (h - 1) / 2, c0 + (w - 1) / 2),
                                       float(max(h, w) * sp), corners)
    raise PlacementError("no air corner for the label")


def draw_paddle_edge(canvas: Canvas, rng: np.random.Generator) -> DistractorTruth:
    """Edge of the compression paddle: a straight line 1-3 px wide over the whole image height,
    parallel to the chest wall 2-6 mm beyond the nipple, of moderate attenuation (drawn in the
    line integral, so it is in both images and carries noise). ``points`` = its two ends."""
    sp, (rows, cols) = canvas.spacing_mm, canvas.skin_mm.shape
    outward = 1 if canvas.chest_mm[0, -1] > canvas.chest_mm[0, 0] else -1
    col = int(round(canvas.nipple_rc[1] + outward * rng.uniform(2.0, 6.0) / sp))
    width = int(rng.integers(1, 4))
    while 0 <= col < cols and (canvas.skin_mm[:, col:col + width] > -0.5).any():
        col += outward  # stay in air: the breast may bulge past the nipple's column
    col = min(max(col, 0), cols - width)
    canvas.line_integral[:, col:col + width] += np.float32(rng.uniform(0.8, 1.5))
    centre_col = col + (width - 1) / 2
    return DistractorTruth("paddle_edge", ((rows - 1) / 2, centre_col), float(rows * sp),
                           ((0.0, centre_col), (float(rows - 1), centre_col)))


DRAWERS.update(vascular=draw_vascular, label=draw_label, paddle_edge=draw_paddle_edge)
