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
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from node.detection.breast import BreastMap
from node.detection.params import DetectionParams

NOISE_BINS = 16
NOISE_STEP = 3  # the noise is measured on every third row and column
NOISE_LEVELS = 1 << 20  # background levels the noise map is tabulated at (see _NoiseModel)
LARGE_GUARD_MM = 1.5


@dataclass(frozen=True, eq=False)
class Objects:
    """Bright objects found in one image, one entry per object (arrays of equal length).

    ``row``, ``col``: centre in full-resolution pixels; ``diameter_mm``: equivalent-area
    diameter; ``length_mm``: major-axis length; ``peak_cnr``: highest contrast-to-noise;
    ``depth_mm``: distance under the skin line; ``near_large``: within ``LARGE_GUARD_MM`` of a
    bright object too large to be a speck (fragments of macrocalcifications, rims, vessels);
    ``angle``: direction of the major axis in radians (row, col frame, modulo pi);
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
    angle: np.ndarray

    def __len__(self) -> int:
        return int(self.row.size)

    def take(self, keep: np.ndarray) -> "Objects":
        return Objects(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def too_large(diameter_mm: np.ndarray, length_mm: np.ndarray, params: DetectionParams) -> np.ndarray:
    """Mask of the objects too large to be specks: wider than ``max_speck_diameter_mm`` or
    longer than ``max_speck_length_mm`` (the one size rule of ``find_objects``' large-object
    guard, ``classify.is_speck`` and ``classify.Context``)."""
    return (diameter_mm > params.max_speck_diameter_mm) | (length_mm > params.max_speck_length_mm)


def contrast_to_noise(
    pixels: np.ndarray, spacing_mm: tuple[float, float], breast: BreastMap, params: DetectionParams
) -> tuple[np.ndarray, tuple[int, int]]:
    """Noise-normalised speck response over the breast's bounding box.

    Returns the float32 map (max over scales) and the (row, col) offset of the box.
    """
    pixel_mm = float(np.mean(spacing_mm))
    r0, r1, c0, c1 = breast.bbox
    image = pixels[r0:r1, c0:c1]
    columns = _transposed(image)
    size = max(3, int(round(params.background_mm / pixel_mm)) | 1)
    background = _separable(ndi.uniform_filter1d, columns, size, mode="nearest")
    inside = _inside(breast, image.shape, (r0, c0))
    noise = _NoiseModel(background, inside)
    best = spare = None
    for sigma_mm in params.speck_sigma_mm:
        response = _separable(ndi.gaussian_filter1d, columns, sigma_mm / pixel_mm, truncate=3.0,
                              mode="nearest", output=spare)
        response -= background
        response /= noise.of(response)
        if best is None:
            best = response
        else:
            best = np.maximum(best, response, out=best)
            spare = response  # reused by the next scale: at full size each map is 40 MB
    del columns, background, spare, noise
    best[~inside] = 0.0
    return best, (r0, c0)


def _separable(filter1d, columns: np.ndarray, *args, output: np.ndarray | None = None,
               **kwargs) -> np.ndarray:
    """``filter1d`` along axis 0, then along axis 1, of the image whose transpose is ``columns``:
    what scipy's n-d filters (``uniform_filter``, ``gaussian_filter``) compute, to the bit.

    The axis-0 pass runs along the rows of the transpose and its result is transposed back:
    scipy filters contiguous lines about three times faster than strided ones, which leaves
    time for the two transposes.
    """
    down = _transposed(filter1d(columns, *args, axis=1, **kwargs))
    return filter1d(down, *args, axis=1, output=down if output is None else output, **kwargs)


def _transposed(a: np.ndarray, rows: int = 64) -> np.ndarray:
    """``a.T`` as a C-contiguous array, copied in strips of ``rows`` rows that stay in cache
    (twice as fast as ``a.T.copy()``)."""
    out = np.empty(a.shape[::-1], a.dtype)
    for r in range(0, a.shape[0], rows):
        out[:, r : r + rows] = a[r : r + rows].T
    return out


def _inside(breast: BreastMap, shape: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """The breast mask at full resolution over a ``shape`` box at ``offset`` (cells repeated)."""
    f = breast.factor
    (r0, c0), (rows, cols) = offset, shape
    cells = breast.mask[r0 // f : (r0 + rows - 1) // f + 1, c0 // f : (c0 + cols - 1) // f + 1]
    full = np.repeat(np.repeat(cells, f, axis=0), f, axis=1)
    return full[r0 % f : r0 % f + rows, c0 % f : c0 % f + cols]


class _NoiseModel:
    """Robust noise of a filter's response as a function of the local background.

    The inside pixels of a sparse grid (every ``NOISE_STEP``-th row and column) fall into
    ``NOISE_BINS`` bins of equal count by background; in each bin the noise is the response's
    median absolute deviation, and between the bins' median backgrounds it is interpolated
    linearly. The bins depend on the background only, so they are sorted out once for all
    filters. Per pixel the interpolation is read from a table over ``NOISE_LEVELS`` evenly spaced
    background levels, at the pixel's nearest level (found once for all filters): interpolating
    every pixel in float64 took half the detector's time. The levels lie a millionth of the
    background range apart, so the map differs from the exact interpolation by about a part in a
    million, the size of the float32 rounding of the response itself.
    """

    def __init__(self, background: np.ndarray, inside: np.ndarray):
        self._background = background
        self._sample = inside[::NOISE_STEP, ::NOISE_STEP]
        bg = background[::NOISE_STEP, ::NOISE_STEP][self._sample]
        self._enough = bg.size >= 100
        if not self._enough:
            return
        edges = np.quantile(bg, np.linspace(0.0, 1.0, NOISE_BINS + 1))
        # bin b holds edges[b] <= bg < edges[b + 1], the largest values in the last bin
        which = np.zeros(bg.size, np.uint8)
        for edge in edges[1:-1]:
            which += bg >= edge
        self._by_bin = np.argsort(which, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(which, minlength=NOISE_BINS))])
        self._bins = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi - lo >= 50]
        bg = bg[self._by_bin]
        centres = [float(_median(bg[lo:hi])) for lo, hi in self._bins]
        self._order = np.argsort(centres)
        self._centres = np.asarray(centres)[self._order]
        self._levels = self._index = None

    def of(self, response: np.ndarray) -> np.ndarray | np.float32:
        """The noise of ``response`` at each pixel (or one value for the whole box)."""
        if not self._enough:
            return np.float32(max(float(np.std(response)), 1e-6))
        rs = response[::NOISE_STEP, ::NOISE_STEP][self._sample][self._by_bin]
        sigmas = []
        for lo, hi in self._bins:
            values = rs[lo:hi]
            sigmas.append(1.4826 * float(_median(np.abs(values - _median(values)))))
        if not sigmas:
            return np.float32(max(1.4826 * float(np.median(np.abs(rs - np.median(rs)))), 1e-6))
        floor = max(1e-6, 0.25 * float(np.median(sigmas)))
        sigmas = np.maximum(np.asarray(sigmas, np.float32), floor)[self._order]
        lo, hi = float(self._centres[0]), float(self._centres[-1])
        if not hi > lo:
            return np.interp(self._background, self._centres, sigmas).astype(np.float32)
        if self._index is None:
            self._levels = np.linspace(lo, hi, NOISE_LEVELS)
            scale = (NOISE_LEVELS - 1) / (hi - lo)
            level = np.multiply(self._background, np.float32(scale))
            level -= np.float32(lo * scale - 0.5)  # + 0.5: truncation below rounds to the nearest level
            np.clip(level, 0, NOISE_LEVELS - 1, out=level)
            self._index = level.astype(np.intp)
        return np.interp(self._levels, self._centres, sigmas).astype(np.float32)[self._index]


def _median(values: np.ndarray):
    """``np.median`` of a 1-D array without NaN, the same value, a few times faster."""
    k = values.size // 2
    if values.size % 2:
        return np.partition(values, k)[k]
    return np.mean(np.partition(values, (k - 1, k))[k - 1 : k + 1])


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
    flat = np.flatnonzero(grow)
    lab, count = _label(flat, grow.shape)
    rr, cc = np.divmod(flat, grow.shape[1])
    weights = cnr.reshape(-1)[flat]
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
    length, angle = _major_axis_px(rr, cc, lab, n)
    pixel_mm = float(np.mean(spacing_mm))
    rows = mean_r[keep] + offset[0]
    cols = mean_c[keep] + offset[1]
    diameter_mm = 2.0 * np.sqrt(area / np.pi) * pixel_mm
    length_mm = length * pixel_mm
    large = too_large(diameter_mm, length_mm, params) & (peak >= params.seed_cnr)
    large[0] = False
    guard = _large_guard(rr + offset[0], cc + offset[1], large[lab], breast, pixel_mm)
    return Objects(
        row=rows,
        col=cols,
        diameter_mm=diameter_mm[keep],
        length_mm=length_mm[keep],
        peak_cnr=peak[keep].astype(np.float64),
        depth_mm=breast.depth_at(rows, cols).astype(np.float64),
        near_large=guard[_cell(rows, breast), _cell(cols, breast, axis=1)],
        surround=surround_score(pixels, rows, cols, 2.0 * np.sqrt(area[keep] / np.pi), grow, offset),
        angle=angle[keep],
    )


def _label(flat: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """``ndi.label`` (4-connected) of a mask given by the sorted flat indices of its pixels.

    Returns each pixel's label (1..count, numbered as ndi.label does: in raster order of each
    region's first pixel) and the count. The mask is a few percent of the box, so a graph over
    its pixels is cheaper than labelling the box and scanning the labels for them.
    """
    n, cols = flat.size, shape[1]
    if n == 0:
        return np.zeros(0, np.intp), 0
    right = np.flatnonzero((np.diff(flat) == 1) & (flat[:-1] % cols != cols - 1))
    below = np.searchsorted(flat, flat + cols)
    down = np.flatnonzero(below < n)
    down = down[flat[below[down]] == flat[down] + cols]
    graph = coo_matrix((np.ones(right.size + down.size, np.int8),
                        (np.concatenate([right, down]), np.concatenate([right + 1, below[down]]))),
                       shape=(n, n))
    count, region = connected_components(graph, directed=False)
    first = np.unique(region, return_index=True)[1]
    number = np.empty(count, np.intp)
    number[np.argsort(first)] = np.arange(1, count + 1)
    return number[region], count


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
    high, median = _ring_levels(ring)
    score = (centre - high) / np.maximum(centre - median, 1e-6)
    return np.where(usable, score, 1.0)


def _ring_levels(ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nanpercentile(ring, 80, axis=1)`` and ``np.nanmedian(ring, axis=1)``, the same values,
    for rows with at least one number: the rows are grouped by how many numbers they hold, so
    numpy works on whole groups instead of one row at a time."""
    ring = np.sort(ring, axis=1)  # NaN last
    count = ring.shape[1] - np.isnan(ring).sum(axis=1)
    high, median = np.empty(len(ring)), np.empty(len(ring))
    for k in np.unique(count):
        rows = np.flatnonzero(count == k)
        values = ring[rows, :k]
        high[rows] = np.percentile(values, 80, axis=1)
        median[rows] = np.median(values, axis=1)
    return high, median


def _cell(coords: np.ndarray, breast: BreastMap, axis: int = 0) -> np.ndarray:
    return np.clip((coords // breast.factor).astype(int), 0, breast.mask.shape[axis] - 1)


def _large_guard(rows, cols, is_large, breast: BreastMap, pixel_mm: float) -> np.ndarray:
    """Coarse-grid mask of cells within LARGE_GUARD_MM of any pixel of a large object."""
    guard = np.zeros(breast.mask.shape, bool)
    guard[_cell(rows[is_large], breast), _cell(cols[is_large], breast, axis=1)] = True
    cells = int(np.ceil(LARGE_GUARD_MM / (breast.factor * pixel_mm)))
    return ndi.binary_dilation(guard, iterations=cells) if guard.any() else guard


def _major_axis_px(rr: np.ndarray, cc: np.ndarray, lab: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Major-axis length (at least 1 px) and direction (radians, modulo pi) of each labelled
    region, from its second moments."""
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
    angle = 0.5 * np.arctan2(2.0 * vrc, vrr - vcc)
    return np.sqrt(12.0 * np.maximum(major, 0.0)) + 1.0, angle


def _empty() -> Objects:
    z = np.zeros(0)
    return Objects(z, z, z, z, z, z, np.zeros(0, bool), z, z)
