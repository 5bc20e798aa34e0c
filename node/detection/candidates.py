"""Speck candidates: small bright objects that stand out of the local noise.

Each scale is a difference filter, a Gaussian of the speck's size minus a local-background box
mean, so a speck's response does not depend on the tissue around it. The response is divided by
the noise expected at that background level, measured on the image itself: quantum noise grows
with attenuation, so a fixed threshold in grey levels would flood dense tissue with false specks
and miss faint specks in fat. Specks are the connected regions above ``grow_cnr`` that reach
``seed_cnr`` somewhere (hysteresis).

References
----------
.. [1] R. M. Nishikawa et al., "Computer-aided detection of clustered microcalcifications on
   digital mammograms", Med. Biol. Eng. Comput. 33 (1995) 174-178 (difference-image technique).
.. [2] M. J. Yaffe, "Digital mammography", in Handbook of Medical Imaging vol. 1, SPIE (2000)
   (signal-dependent quantum noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from node.detection.breast import BreastMap
from node.detection.params import DetectionParams

NOISE_BINS = 16
LARGE_GUARD_MM = 1.5


@dataclass(frozen=True, eq=False)
class Objects:
    """Bright objects found in one image, one entry per object (arrays of equal length).

    ``row``, ``col``: centre in full-resolution pixels; ``diameter_mm``: equivalent-area
    diameter; ``length_mm``: major-axis length; ``peak_cnr``: highest contrast-to-noise;
    ``depth_mm``: distance under the skin line; ``near_large``: within ``LARGE_GUARD_MM`` of a
    bright object too large to be a speck (fragments of macrocalcifications, rims, vessels);
    ``surround``: how much brighter the centre is than the bright side of a ring around it,
    relative to its contrast over the ring's median (about 1 for an isolated speck, 0 or less
    on the edge of a larger bright region, where one side of the ring is as bright).
    """

    row: np.ndarray
    col: np.ndarray
    diameter_mm: np.ndarray
    length_mm: np.ndarray
    peak_cnr: np.ndarray
    depth_mm: np.ndarray
    near_large: np.ndarray
    surround: np.ndarray

    def __len__(self) -> int:
        return int(self.row.size)

    def take(self, keep: np.ndarray) -> "Objects":
        return Objects(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def contrast_to_noise(
    pixels: np.ndarray, spacing_mm: tuple[float, float], breast: BreastMap, params: DetectionParams
) -> tuple[np.ndarray, tuple[int, int]]:
    """Noise-normalised speck response over the breast's bounding box.

    Returns the float32 map (max over scales) and the (row, col) offset of the box.
    """
    pixel_mm = float(np.mean(spacing_mm))
    r0, r1, c0, c1 = breast.bbox
    image = pixels[r0:r1, c0:c1]
    size = max(3, int(round(params.background_mm / pixel_mm)) | 1)
    background = ndi.uniform_filter(image, size=size, mode="nearest")
    inside = _inside(breast, image.shape, (r0, c0))
    best = None
    for sigma_mm in params.speck_sigma_mm:
        response = ndi.gaussian_filter(image, sigma_mm / pixel_mm, truncate=3.0, mode="nearest")
        response -= background
        response /= _noise_map(background, response, inside)
        best = response if best is None else np.maximum(best, response, out=best)
    best[~inside] = 0.0
    return best, (r0, c0)


def _inside(breast: BreastMap, shape: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    f = breast.factor
    rows = (np.arange(shape[0]) + offset[0]) // f
    cols = (np.arange(shape[1]) + offset[1]) // f
    return breast.mask[np.ix_(rows, cols)]


def _noise_map(background: np.ndarray, response: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Robust noise of ``response`` as a function of ``background``, evaluated per pixel."""
    step = 3
    bg = background[::step, ::step][inside[::step, ::step]]
    rs = response[::step, ::step][inside[::step, ::step]]
    if bg.size < 100:
        return np.float32(max(float(np.std(response)), 1e-6))
    edges = np.quantile(bg, np.linspace(0.0, 1.0, NOISE_BINS + 1))
    which = np.clip(np.searchsorted(edges, bg, side="right") - 1, 0, NOISE_BINS - 1)
    centres, sigmas = [], []
    for b in range(NOISE_BINS):
        values = rs[which == b]
        if values.size < 50:
            continue
        centres.append(float(np.median(bg[which == b])))
        sigmas.append(1.4826 * float(np.median(np.abs(values - np.median(values)))))
    if not sigmas:
        return np.float32(max(1.4826 * float(np.median(np.abs(rs - np.median(rs)))), 1e-6))
    floor = max(1e-6, 0.25 * float(np.median(sigmas)))
    sigmas = np.maximum(np.asarray(sigmas, np.float32), floor)
    order = np.argsort(centres)
    lut_x, lut_y = np.asarray(centres)[order], sigmas[order]
    return np.interp(background, lut_x, lut_y).astype(np.float32)


def find_objects(
    pixels: np.ndarray,
    cnr: np.ndarray,
    offset: tuple[int, int],
    spacing_mm: tuple[float, float],
    breast: BreastMap,
    params: DetectionParams,
) -> Objects:
    """Connected bright objects (hysteresis on the contrast-to-noise map), measured."""
    grow = cnr > params.grow_cnr
    labels, count = ndi.label(grow)
    rr, cc = np.nonzero(labels)
    lab = labels[rr, cc]
    weights = cnr[rr, cc]
    n = count + 1
    peak = np.zeros(n, np.float32)
    np.maximum.at(peak, lab, weights)
    keep = np.flatnonzero(peak >= params.seed_cnr)
    keep = keep[keep > 0]
    if keep.size == 0:
        return _empty()
    # Size and shape from the pixels above half the object's peak: the hysteresis extent grows
    # with contrast, the half-maximum extent does not.
    core = weights >= 0.5 * peak[lab]
    rr, cc, lab, weights = rr[core], cc[core], lab[core], weights[core]
    area = np.bincount(lab, minlength=n).astype(np.float64)
    wsum = np.bincount(lab, weights, minlength=n)
    mean_r = np.bincount(lab, weights * rr, minlength=n) / np.maximum(wsum, 1e-9)
    mean_c = np.bincount(lab, weights * cc, minlength=n) / np.maximum(wsum, 1e-9)
    length = _major_axis_px(rr, cc, lab, n)
    pixel_mm = float(np.mean(spacing_mm))
    rows = mean_r[keep] + offset[0]
    cols = mean_c[keep] + offset[1]
    large = (2.0 * np.sqrt(area / np.pi) * pixel_mm > params.max_speck_diameter_mm) | (
        length * pixel_mm > params.max_speck_length_mm
    )
    large &= peak >= params.seed_cnr
    large[0] = False
    guard = _large_guard(rr + offset[0], cc + offset[1], large[lab], breast, pixel_mm)
    return Objects(
        row=rows,
        col=cols,
        diameter_mm=2.0 * np.sqrt(area[keep] / np.pi) * pixel_mm,
        length_mm=length[keep] * pixel_mm,
        peak_cnr=peak[keep].astype(np.float64),
        depth_mm=breast.depth_at(rows, cols).astype(np.float64),
        near_large=guard[_cell(rows, breast), _cell(cols, breast, axis=1)],
        surround=surround_score(pixels, rows, cols, 2.0 * np.sqrt(area[keep] / np.pi), grow, offset),
    )


def surround_score(pixels: np.ndarray, rows, cols, diameter_px, specks: np.ndarray, offset) -> np.ndarray:
    """(centre - 80th percentile of a ring) / (centre - ring median), per object.

    The ring lies 0.5 diameter + 3 px from the centre, 3 px wide, 16 directions: outside the
    speck, inside its neighbourhood. Ring pixels on other specks (``specks``, the hysteresis
    mask at ``offset``) are left out, so a speck inside a tight cluster is not penalised for
    its neighbours. Edges of larger bright structures (parenchyma, vessels) have a bright side
    that is no speck, and score low.
    """
    if len(rows) == 0:
        return np.zeros(0)
    angles = np.linspace(0.0, 2.0 * np.pi, 16, endpoint=False)
    radii = (np.asarray(diameter_px) / 2.0 + 3.0)[:, None, None] + np.arange(3.0)[None, None, :]
    ring_r = np.rint(rows[:, None, None] + radii * np.sin(angles)[None, :, None]).astype(int)
    ring_c = np.rint(cols[:, None, None] + radii * np.cos(angles)[None, :, None]).astype(int)
    ring_r = np.clip(ring_r, 0, pixels.shape[0] - 1)
    ring_c = np.clip(ring_c, 0, pixels.shape[1] - 1)
    ring = pixels[ring_r, ring_c].astype(np.float64).reshape(len(rows), -1)
    on_speck = specks[np.clip(ring_r - offset[0], 0, specks.shape[0] - 1),
                      np.clip(ring_c - offset[1], 0, specks.shape[1] - 1)].reshape(len(rows), -1)
    ring[on_speck] = np.nan
    r0, c0 = np.rint(rows).astype(int), np.rint(cols).astype(int)
    centre = np.zeros(len(rows))
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            centre += pixels[np.clip(r0 + dr, 0, pixels.shape[0] - 1), np.clip(c0 + dc, 0, pixels.shape[1] - 1)]
    centre /= 9.0
    usable = (~on_speck).sum(axis=1) >= 8
    ring[~usable] = 0.0  # crowded by specks on every side: judged by the specks, not the ring
    high, median = np.nanpercentile(ring, 80, axis=1), np.nanmedian(ring, axis=1)
    score = (centre - high) / np.maximum(centre - median, 1e-6)
    return np.where(usable, score, 1.0)


def _cell(coords: np.ndarray, breast: BreastMap, axis: int = 0) -> np.ndarray:
    return np.clip((coords // breast.factor).astype(int), 0, breast.mask.shape[axis] - 1)


def _large_guard(rows, cols, is_large, breast: BreastMap, pixel_mm: float) -> np.ndarray:
    """Coarse-grid mask of cells within LARGE_GUARD_MM of any pixel of a large object."""
    guard = np.zeros(breast.mask.shape, bool)
    guard[_cell(rows[is_large], breast), _cell(cols[is_large], breast, axis=1)] = True
    cells = int(np.ceil(LARGE_GUARD_MM / (breast.factor * pixel_mm)))
    return ndi.binary_dilation(guard, iterations=cells) if guard.any() else guard


def _major_axis_px(rr: np.ndarray, cc: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
    """Major-axis length of each labelled region from its second moments (at least 1 px)."""
    area = np.maximum(np.bincount(lab, minlength=n), 1).astype(np.float64)
    r = rr.astype(np.float64)
    c = cc.astype(np.float64)
    mr = np.bincount(lab, r, minlength=n) / area
    mc = np.bincount(lab, c, minlength=n) / area
    vrr = np.bincount(lab, r * r, minlength=n) / area - mr * mr
    vcc = np.bincount(lab, c * c, minlength=n) / area - mc * mc
    vrc = np.bincount(lab, r * c, minlength=n) / area - mr * mc
    half_trace = (vrr + vcc) / 2.0
    major = half_trace + np.sqrt(np.maximum(half_trace**2 - (vrr * vcc - vrc**2), 0.0))
    # a uniform segment of length L has variance L^2 / 12 along it; +1 px for the pixel size
    return np.sqrt(12.0 * np.maximum(major, 0.0)) + 1.0


def _empty() -> Objects:
    z = np.zeros(0)
    return Objects(z, z, z, z, z, z, np.zeros(0, bool), z)
