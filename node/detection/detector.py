"""Microcalcification cluster detection: a pure function of pixels and millimetres.

``detect(pixels, spacing_mm, params)`` takes a float32 (rows, cols) image, bright = dense, and
returns the suspicious clusters, most certain first. The stages, in order:

1. ``breast``: breast mask and depth under the skin on a coarse grid;
2. ``candidates``: noise-normalised multi-scale speck filter, bright objects measured in mm;
3. ``classify``: which objects are specks (size, shape, skin, beside large objects);
4. ``clusters``: single-linkage grouping in mm;
5. ``classify``: benign-pattern rejection, certainty and descriptors of each group.

This package never imports pydicom and never touches files.
"""

from __future__ import annotations

import numpy as np

from node.detection import classify
from node.detection.breast import segment_breast
from node.detection.candidates import Objects, contrast_to_noise, find_objects
from node.detection.clusters import group_points, outline
from node.detection.params import DetectionParams
from node.model import Calcification, Cluster

__all__ = ["DetectionParams", "detect"]


def detect(
    pixels: np.ndarray,
    spacing_mm: tuple[float, float],
    params: DetectionParams = DetectionParams(),
    valid: np.ndarray | None = None,
) -> tuple[Cluster, ...]:
    """Find suspicious microcalcification clusters.

    Parameters
    ----------
    pixels : ndarray, float32, shape (rows, cols)
        The image, bright = dense (log-exposure scale).
    spacing_mm : (float, float)
        Row and column pixel spacing in mm at the breast.
    params : DetectionParams
        Every length in mm.
    valid : ndarray of bool, optional
        False on padding pixels.

    Returns
    -------
    tuple of Cluster
        Most certain first; centres and outlines in (row, col) pixels.
    """
    if pixels.ndim != 2 or min(pixels.shape) < 8:
        raise ValueError(f"expected a 2-D image of at least 8 x 8 pixels, got shape {pixels.shape}")
    pixels = np.asarray(pixels, dtype=np.float32)
    breast = segment_breast(pixels, spacing_mm, params, valid)
    if not breast.mask.any():
        return ()
    cnr, offset = contrast_to_noise(pixels, spacing_mm, breast, params)
    objects = find_objects(pixels, cnr, offset, spacing_mm, breast, params)
    specks = objects.take(classify.is_speck(objects, params))
    scale = np.asarray(spacing_mm, dtype=np.float64)
    points_mm = np.column_stack([specks.row * scale[0], specks.col * scale[1]])
    threshold = classify.reporting_threshold(params)
    found = []
    for members in group_points(points_mm, params.link_distance_mm, params.min_cluster_specks):
        cluster = _cluster(specks.take(members), points_mm[members], pixels.shape, scale, params)
        if cluster is not None and cluster.certainty >= threshold:
            found.append(cluster)
    return tuple(sorted(found, key=lambda c: -c.certainty))


def _cluster(
    members: Objects,
    points_mm: np.ndarray,
    shape: tuple[int, int],
    scale: np.ndarray,
    params: DetectionParams,
) -> Cluster | None:
    features = classify.measure(members, points_mm)
    if classify.benign_reason(features, params) is not None:
        return None
    pixel_mm = float(scale.mean())
    margin_px = params.outline_margin_mm / pixel_mm
    centre = (float(members.row.mean()), float(members.col.mean()))
    radius = float(np.hypot(members.row - centre[0], members.col - centre[1]).max()) + margin_px
    specks = tuple(
        Calcification(float(r), float(c), round(float(d), 3), round(float(s), 2))
        for r, c, d, s in zip(members.row, members.col, members.diameter_mm, members.peak_cnr)
    )
    return Cluster(
        centre_rc=centre,
        outline_rc=outline(members.row, members.col, margin_px, shape),
        radius_px=radius,
        calcifications=specks,
        certainty=round(classify.certainty(features), 1),
        extent_mm=round(features.extent_mm, 2),
        morphology=classify.morphology(features),
        distribution=classify.distribution(features),
    )
