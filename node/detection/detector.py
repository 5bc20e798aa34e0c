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

from dataclasses import dataclass

import numpy as np

from node.detection import classify
from node.detection.breast import BreastMap, segment_breast
from node.detection.candidates import Objects, contrast_to_noise, find_objects
from node.detection.clusters import group_points, outline
from node.detection.params import DetectionParams
from node.model import Calcification, Cluster

__all__ = ["Candidate", "DetectionParams", "candidates", "detect"]


def detect(
    pixels: np.ndarray,
    spacing_mm: tuple[float, float],
    params: DetectionParams = DetectionParams(),
    valid: np.ndarray | None = None,
    threshold: float | None = None,
    breast: BreastMap | None = None,
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
    threshold : float, optional
        The certainty a cluster needs; by default the one ``params.operating_point`` and
        ``params.report_certainty`` give. Benchmarks pass 0 to sweep the whole curve.
    breast : BreastMap, optional
        ``segment_breast(pixels, spacing_mm, params, valid)``, when the caller has it already.

    Returns
    -------
    tuple of Cluster
        Most certain first; centres and outlines in (row, col) pixels.
    """
    if threshold is None:
        threshold = classify.reporting_threshold(params)
    found = [
        _cluster(c, pixels.shape, spacing_mm, params)
        for c in candidates(pixels, spacing_mm, params, valid, breast)
        if c.benign is None and c.certainty >= threshold
    ]
    return tuple(sorted(found, key=lambda c: -c.certainty))


@dataclass(frozen=True, eq=False)
class Candidate:
    """A group of specks before the reporting threshold: its members, features, the benign
    pattern it was recognised as (or None) and its certainty (0-100)."""

    members: Objects
    features: classify.ClusterFeatures
    benign: str | None
    certainty: float


def candidates(
    pixels: np.ndarray,
    spacing_mm: tuple[float, float],
    params: DetectionParams = DetectionParams(),
    valid: np.ndarray | None = None,
    breast: BreastMap | None = None,
) -> list[Candidate]:
    """Every group of at least ``min_cluster_specks`` specks, measured and scored (stages 1-5).

    The same arguments as ``detect``; used by it and by the certainty fit
    (``benchmarks/fit_certainty.py``).
    """
    if pixels.ndim != 2 or min(pixels.shape) < 8:
        raise ValueError(f"expected a 2-D image of at least 8 x 8 pixels, got shape {pixels.shape}")
    pixels = np.asarray(pixels, dtype=np.float32)
    if breast is None:
        breast = segment_breast(pixels, spacing_mm, params, valid)
    if not breast.mask.any():
        return []
    cnr, offset = contrast_to_noise(pixels, spacing_mm, breast, params)
    objects = find_objects(pixels, cnr, offset, spacing_mm, breast, params)
    del cnr
    scale = np.asarray(spacing_mm, dtype=np.float64)
    speck = classify.is_speck(objects, params)
    context = classify.Context.build(objects, speck, scale, params)
    specks = objects.take(speck)
    points_mm = context.points_mm[speck]
    found = []
    strong = specks.peak_cnr >= params.strong_cnr
    for members in group_points(points_mm, params.link_distance_mm, params.min_cluster_specks,
                                strong, params.weak_link_mm):
        group = specks.take(members)
        features = classify.measure(group, points_mm[members], context)
        found.append(Candidate(group, features,
                               classify.benign_reason(features, params), classify.certainty(features)))
    return found


def _cluster(candidate: Candidate, shape: tuple[int, int], spacing_mm, params: DetectionParams) -> Cluster:
    members, features = candidate.members, candidate.features
    pixel_mm = float(np.mean(spacing_mm))
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
        certainty=round(candidate.certainty, 1),
        extent_mm=round(features.extent_mm, 2),
        morphology=classify.morphology(features),
        distribution=classify.distribution(features),
    )
