"""Which bright objects are specks, which groups are benign patterns, and how certain a cluster is.

Rejected as not suspicious:
- objects wider than ``max_speck_diameter_mm`` or longer than ``max_speck_length_mm``
  (macrocalcifications, popcorn, rims, clips, markers, vessels) and the fragments beside them;
- specks within ``skin_margin_mm`` of the skin line (skin calcifications);
- groups wider than ``max_cluster_extent_mm`` (diffuse or regional spread, vascular tracks);
- long, straight groups (vascular "tram-track" lines);
- groups with fewer than ``min_cluster_specks`` members (scattered single specks).

The certainty is a logistic score of the cluster's features: number of specks, their
contrast-to-noise, the spread of their sizes (pleomorphism) and how tightly they are grouped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from node.detection.candidates import Objects
from node.detection.clusters import extent_mm, linearity
from node.detection.params import DetectionParams
from node.model import Distribution, Morphology

VASCULAR_MIN_EXTENT_MM = 12.0
VASCULAR_MIN_LINEARITY = 0.85
LINEAR_DISTRIBUTION = 0.75
# A speck must stand out of its ring of neighbours on every side, not only over the mean:
# this is what separates specks from the edges of parenchymal structures.
MIN_SURROUND = 0.35


@dataclass(frozen=True)
class ClusterFeatures:
    """Measurements of one candidate cluster; lengths in mm, density per cm^2."""

    count: int
    extent_mm: float
    linearity: float
    median_cnr: float
    top_cnr: float
    size_cv: float
    mean_diameter_mm: float
    elongation: float
    density_per_cm2: float


def is_speck(objects: Objects, params: DetectionParams) -> np.ndarray:
    """Mask of the objects that may be microcalcifications."""
    return (
        (objects.diameter_mm <= params.max_speck_diameter_mm)
        & (objects.length_mm <= params.max_speck_length_mm)
        & (objects.depth_mm >= params.skin_margin_mm)
        & ~objects.near_large
        & (objects.surround >= MIN_SURROUND)
    )


def measure(members: Objects, points_mm: np.ndarray) -> ClusterFeatures:
    """Features of a group of specks at ``points_mm`` (n, 2)."""
    span = extent_mm(points_mm)
    radius_cm = max(span / 2.0, 1.0) / 10.0
    cnr = np.sort(members.peak_cnr)[::-1]
    diameters = members.diameter_mm
    return ClusterFeatures(
        count=len(members),
        extent_mm=span,
        linearity=linearity(points_mm),
        median_cnr=float(np.median(cnr)),
        top_cnr=float(np.mean(cnr[:3])),
        size_cv=float(np.std(diameters) / max(np.mean(diameters), 1e-6)),
        mean_diameter_mm=float(np.mean(diameters)),
        elongation=float(np.median(members.length_mm / np.maximum(members.diameter_mm, 1e-6))),
        density_per_cm2=len(members) / (math.pi * radius_cm**2),
    )


def benign_reason(f: ClusterFeatures, params: DetectionParams) -> str | None:
    """Why a group is a benign pattern rather than a suspicious cluster, or None."""
    if f.count < params.min_cluster_specks:
        return "too few specks"
    if f.extent_mm > params.max_cluster_extent_mm:
        return "spread too wide (diffuse or vascular)"
    if f.extent_mm > VASCULAR_MIN_EXTENT_MM and f.linearity > VASCULAR_MIN_LINEARITY:
        return "long straight track (vascular)"
    return None


def certainty(f: ClusterFeatures) -> float:
    """Certainty 0-100 that the group is a suspicious calcification cluster.

    Chance groups of noise specks sit just above the detection threshold; real calcifications
    stand well out of the noise, so contrast-to-noise carries most of the evidence, then the
    number of members.
    """
    z = (
        0.8 * (min(f.top_cnr, 15.0) - 5.0)
        + 0.5 * min(f.median_cnr - 4.5, 4.0)
        + 1.0 * math.log(f.count / 3.0)
    )
    return 100.0 / (1.0 + math.exp(-z))


def reporting_threshold(params: DetectionParams) -> float:
    """The certainty a cluster needs, moved along the operating curve by ``operating_point``."""
    shifted = params.report_certainty + 30.0 * params.operating_point
    return float(min(max(shifted, 0.0), 99.0))


def morphology(f: ClusterFeatures) -> Morphology:
    """BI-RADS-style morphology estimate from size, shape and size spread."""
    if f.elongation > 2.0 or (f.linearity > LINEAR_DISTRIBUTION and f.elongation > 1.5):
        return Morphology.FINE_LINEAR_BRANCHING
    if f.size_cv > 0.35:
        return Morphology.FINE_PLEOMORPHIC
    if f.mean_diameter_mm < 0.25 and f.median_cnr < 6.0:
        return Morphology.AMORPHOUS
    return Morphology.PUNCTATE


def distribution(f: ClusterFeatures) -> Distribution:
    """Linear when the members lie along a line, grouped otherwise."""
    return Distribution.LINEAR if f.linearity > LINEAR_DISTRIBUTION and f.count >= 4 else Distribution.GROUPED
