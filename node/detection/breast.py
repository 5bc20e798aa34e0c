"""Breast segmentation on a coarse grid: what is breast, and how deep inside it each point lies.

Air, burned-in labels, metal markers outside the breast and compression-paddle edges are not
breast: the tissue threshold sits just above the air level, a morphological opening removes thin
lines and text strokes, and only the largest connected region is kept. The depth map (distance to
the skin line in mm) lets later stages tell skin calcifications from parenchymal ones.

References
----------
.. [1] N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans. SMC 9
   (1979) 62-66.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from node.detection.params import DetectionParams


@dataclass(frozen=True, eq=False)
class BreastMap:
    """The breast on a coarse grid of ``factor`` x ``factor`` full-resolution pixels.

    ``mask`` and ``depth_mm`` are ``(ceil(rows / factor), ceil(cols / factor))``; ``depth_mm``
    is the distance to the skin line (0 outside the breast). The image border is not skin: the
    chest wall runs off the image. ``bbox`` is (row0, row1, col0, col1) in full-resolution
    pixels, half-open.
    """

    mask: np.ndarray
    depth_mm: np.ndarray
    factor: int
    bbox: tuple[int, int, int, int]

    def depth_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Depth in mm under the skin at full-resolution positions (row, col)."""
        r = np.clip((np.asarray(rows) // self.factor).astype(int), 0, self.mask.shape[0] - 1)
        c = np.clip((np.asarray(cols) // self.factor).astype(int), 0, self.mask.shape[1] - 1)
        return self.depth_mm[r, c]

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean())


def block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks; the ragged edge is padded by replication."""
    rows, cols = pixels.shape
    pr, pc = -rows % factor, -cols % factor
    padded = np.pad(pixels, ((0, pr), (0, pc)), mode="edge") if (pr or pc) else pixels
    shape = (padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return padded.reshape(shape).mean(axis=(1, 3), dtype=np.float32)


def segment_breast(
    pixels: np.ndarray,
    spacing_mm: tuple[float, float],
    params: DetectionParams,
    valid: np.ndarray | None = None,
) -> BreastMap:
    """Segment the breast of a float32 (rows, cols) image, bright = dense.

    Parameters
    ----------
    pixels : ndarray
        Image, bright = dense.
    spacing_mm : (float, float)
        Row and column spacing in mm.
    params : DetectionParams
        ``mask_resolution_mm`` sets the coarse grid.
    valid : ndarray of bool, optional
        False where the image holds padding rather than data.
    """
    pixel_mm = float(np.mean(spacing_mm))
    factor = max(1, int(round(params.mask_resolution_mm / pixel_mm)))
    low = block_mean(pixels, factor)
    usable = np.ones(low.shape, bool) if valid is None else block_mean(valid.astype(np.float32), factor) > 0.5
    if usable.mean() < 0.98:
        tissue = usable  # the modality marked the background as padding already
    else:
        tissue = usable & (low > _tissue_threshold(low[usable]))
    cell_mm = factor * pixel_mm
    radius = max(1, int(round(1.5 / cell_mm)))
    tissue = ndi.binary_opening(tissue, structure=_disk(radius))
    mask = ndi.binary_fill_holes(_largest_region(tissue))
    depth = ndi.distance_transform_edt(np.pad(mask, 1, mode="edge"))[1:-1, 1:-1]
    depth_mm = (depth * cell_mm).astype(np.float32) * mask
    return BreastMap(mask=mask, depth_mm=depth_mm, factor=factor, bbox=_bbox(mask, factor, pixels.shape))


def _tissue_threshold(values: np.ndarray) -> float:
    """A threshold just above the air level.

    Otsu's threshold separates air from tissue only roughly (dense tissue pulls it up), so the
    air class found by Otsu gives the air level and its noise, and the threshold is set a few
    noise widths above it, or a small fraction of the tissue range, whichever is larger.
    """
    if values.size == 0 or float(values.max()) == float(values.min()):
        return -np.inf
    otsu = threshold_otsu(values)
    air = values[values <= otsu]
    tissue = values[values > otsu]
    air_level = float(np.median(air))
    air_noise = 1.4826 * float(np.median(np.abs(air - air_level)))
    span = float(np.percentile(tissue, 50)) - air_level
    if air.size < 0.02 * values.size or span <= 0:
        return -np.inf  # no air in the field: the whole image is breast
    return air_level + max(6.0 * air_noise, 0.08 * span)


def _largest_region(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _bbox(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    if not mask.any():
        return (0, 0, 0, 0)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (
        int(rows[0] * factor),
        int(min(shape[0], (rows[-1] + 1) * factor)),
        int(cols[0] * factor),
        int(min(shape[1], (cols[-1] + 1) * factor)),
    )


NIPPLE_TIP_MM = 1.5  # outline points this close to the farthest reach count as the breast's tip


def nipple_position(
    mask: np.ndarray,
    spacing_mm: tuple[float, float],
    chest_wall: str,
    tip_mm: float = NIPPLE_TIP_MM,
) -> tuple[float, float] | None:
    """The nipple as the tip of the breast outline: the point farthest from the chest wall.

    Parameters
    ----------
    mask : ndarray of bool, shape (rows, cols)
        The breast, at any resolution (e.g. ``BreastMap.mask``).
    spacing_mm : (float, float)
        Row and column spacing of ``mask`` in mm.
    chest_wall : {"left", "right"} or model.Side
        The column side of the image on which the chest wall lies.
    tip_mm : float
        Rows whose outline reaches within ``tip_mm`` of the farthest reach belong to the tip;
        the nipple row is the middle of the tip's run of rows (a coarse grid flattens the
        tip into several rows of equal reach).

    Returns
    -------
    (float, float) or None
        (row, col) in ``mask``'s grid; None when the mask is empty or the breast runs off the
        image edge opposite the chest wall (the nipple is not in the image).

    Notes
    -----
    Distance from the chest wall is measured perpendicular to the image's chest-wall edge on
    every view. On a CC view that edge stands for the chest wall. On an MLO view the chest wall
    is the pectoral line, tilted against the edge, so the point found lies somewhat off the
    true nipple along the outline; a shift along the outline changes a lesion's distance from
    the nipple only to second order (lesions lie behind the nipple, roughly perpendicular to
    the outline at the tip), which is what ipsilateral correlation uses it for.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        return None
    side = str(getattr(chest_wall, "value", chest_wall))
    if side not in ("left", "right"):
        raise ValueError(f"chest_wall must be 'left' or 'right', got {chest_wall!r}")
    cols = mask.shape[1]
    reach_px = np.arange(cols)[::-1] if side == "right" else np.arange(cols)
    reach = np.where(mask, reach_px[None, :], -1).max(axis=1)  # per row; -1 on empty rows
    farthest = int(reach.max())
    if farthest >= cols - 1:
        return None
    tip = reach >= farthest - tip_mm / float(spacing_mm[1])
    runs, _ = ndi.label(tip)
    rows = np.flatnonzero(runs == runs[int(np.argmax(reach))])
    col = cols - 1 - farthest if side == "right" else farthest
    return (float(rows[0] + rows[-1]) / 2.0, float(col))
