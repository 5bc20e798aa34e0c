"""Which bright objects are specks, which groups are benign patterns, and how certain a cluster is.

Rejected as not suspicious:
- objects wider than ``max_speck_diameter_mm`` or longer than ``max_speck_length_mm``
  (macrocalcifications, popcorn, rims, clips, markers, vessels) and the fragments beside them;
- specks within ``skin_margin_mm`` of the skin line (skin calcifications);
- groups wider than ``max_cluster_extent_mm`` (diffuse or regional spread, vascular tracks);
- long, straight groups and groups of coarse dashes along one axis (vascular calcification);
- groups with fewer than ``min_cluster_specks`` members, and groups of three of which two are at
  noise level (scattered single specks).

The certainty is a logistic model of the group's measurements (``certainty_inputs``) fitted on
the tuning seeds by ``benchmarks/fit_certainty.py``; see ``certainty``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scipy.spatial import cKDTree

from node.detection import weights
from node.detection.candidates import Objects, too_large
from node.detection.clusters import extent_mm, linearity
from node.detection.params import DetectionParams
from node.model import Distribution, Morphology

VASCULAR_MIN_EXTENT_MM = 12.0
# A member "stands clearly out of the noise" at this contrast-to-noise (the certainty counts them:
# a group of one clear speck and two noise specks is a lone, often scattered, calcification).
# Fixed here, not read from ``params.strong_cnr`` (same value, the linking threshold): the
# certainty weights (weights.py) were fitted with this feature; tuning the linking must not move it.
CLEAR_CNR = 6.0
# Three specks of which two are at noise level are one speck (often a lone scattered
# calcification) and two noise specks: on the tuning seeds 1000-1479 and 2000-2159 this held back
# 4 scattered and 132 noise groups, and 1 of about 550 groups on drawn clusters.
FAINT_TRIPLE_CNR = 5.0
VASCULAR_MIN_LINEARITY = 0.85
# Vessel-wall calcification: coarse dashes (equivalent diameter over 0.55 mm, median length over
# 1.45 diameters) all drawn out along the group's axis. Fine linear casts are thinner. On the
# tuning seeds 1000-1299 this rule held back 14 of 14 vascular candidate groups and 0 of 291
# groups on drawn clusters. Three coarse dashes (median length over 1.25 diameters) are a piece of
# such a track (4 of 4 vascular, 0 of 409 drawn-cluster groups on seeds 1000-1479).
VASCULAR_ALIGNMENT = 0.8
VASCULAR_FRAGMENT_ELONGATION = 1.25
# Three or more elongated objects beyond the group's ends, on its axis and pointing along it: the
# group is a stretch of a calcified vessel (1 of 1 such vascular group, 0 of about 480 drawn-cluster
# groups, which had at most 2, on tuning seeds 1000-1419 and 2000-2079).
VASCULAR_CONTINUED = 3
VASCULAR_ELONGATION = 1.45
VASCULAR_DASH_DIAMETER_MM = 0.55
LINEAR_DISTRIBUTION = 0.75
# A speck must stand out of its ring of neighbours on every side, not only over the mean:
# this is what separates specks from the edges of parenchymal structures.
MIN_SURROUND = 0.35


OPERATING_POINTS = (-1.0, -0.5, 0.0, 0.5, 1.0)
CONTEXT_RADIUS_MM = 10.0
CASTING_ALIGNED_ELONGATION = 0.12  # alignment x (elongation - 1) of duct casts
CASTING_LINEARITY = 0.7
PLEOMORPHIC_SIZE_CV = 0.12  # spread of member diameters / mean  # how far around a group its neighbourhood is looked at


@dataclass(frozen=True)
class ClusterFeatures:
    """Measurements of one candidate cluster; lengths in mm, density per cm^2.

    ``alignment``: how well the members' long axes follow the group's main axis (1 all along it,
    0 for round specks or random directions, -1 all across it). ``large_near``: bright objects too
    large or long to be specks within ``CONTEXT_RADIUS_MM`` of the group's edge (vessel dashes,
    macrocalcifications, clips). ``specks_near``: specks outside the group in that neighbourhood.
    ``parallel``: the share of members that are dashes with another dash beside them, across
    their own axis (0.7-2.5 mm across, less than 1.5 mm along): two parallel rows, the
    tram-track of a calcified vessel's walls. ``clear``: members of contrast-to-noise
    ``CLEAR_CNR`` or more. ``continued``: elongated objects beyond the group's ends, within
    1.5 mm of its axis and pointing along it (a vessel going on).
    """

    count: int
    extent_mm: float
    linearity: float
    median_cnr: float
    top_cnr: float
    size_cv: float
    mean_diameter_mm: float
    elongation: float
    density_per_cm2: float
    third_cnr: float = 0.0
    alignment: float = 0.0
    large_near: int = 0
    specks_near: int = 0
    nearest_mm: float = 0.0
    parallel: float = 0.0
    clear: int = 0
    continued: int = 0


@dataclass(frozen=True, eq=False)
class Context:
    """What surrounds the groups of one image: every bright object's position in mm, and which
    are specks and which are too large to be."""

    points_mm: np.ndarray
    speck: np.ndarray
    large: np.ndarray
    tree: cKDTree
    angle: np.ndarray | None = None
    ratio: np.ndarray | None = None

    @classmethod
    def build(cls, objects: Objects, speck: np.ndarray, scale: np.ndarray, params: DetectionParams):
        points = np.column_stack([objects.row * scale[0], objects.col * scale[1]])
        large = too_large(objects.diameter_mm, objects.length_mm, params)
        return cls(points, speck, large, cKDTree(points if len(points) else np.zeros((0, 2))),
                   objects.angle, objects.length_mm / np.maximum(objects.diameter_mm, 1e-6))


def is_speck(objects: Objects, params: DetectionParams) -> np.ndarray:
    """Mask of the objects that may be microcalcifications."""
    return (
        ~too_large(objects.diameter_mm, objects.length_mm, params)
        & (objects.depth_mm >= params.skin_margin_mm)
        & ~objects.near_large
        & (objects.surround >= MIN_SURROUND)
    )


def measure(members: Objects, points_mm: np.ndarray, context: Context | None = None) -> ClusterFeatures:
    """Features of a group of specks at ``points_mm`` (n, 2)."""
    span = extent_mm(points_mm)
    radius_cm = max(span / 2.0, 1.0) / 10.0
    cnr = np.sort(members.peak_cnr)[::-1]
    diameters = members.diameter_mm
    ratio = members.length_mm / np.maximum(members.diameter_mm, 1e-6)
    large_near = specks_near = continued = 0
    if context is not None and len(context.points_mm):
        centre = points_mm.mean(axis=0)
        reach = float(np.hypot(*(points_mm - centre).T).max()) + CONTEXT_RADIUS_MM
        near = np.asarray(context.tree.query_ball_point(centre, reach), dtype=int)
        large_near = int(context.large[near].sum())
        continued = _continued(points_mm, near, context)
        specks_near = max(int(context.speck[near].sum()) - len(members), 0)
    return ClusterFeatures(
        count=len(members),
        extent_mm=span,
        linearity=linearity(points_mm),
        median_cnr=float(np.median(cnr)),
        top_cnr=float(np.mean(cnr[:3])),
        size_cv=float(np.std(diameters) / max(np.mean(diameters), 1e-6)),
        mean_diameter_mm=float(np.mean(diameters)),
        elongation=float(np.median(ratio)),
        density_per_cm2=len(members) / (math.pi * radius_cm**2),
        third_cnr=float(cnr[min(2, len(cnr) - 1)]),
        alignment=_alignment(points_mm, members.angle, ratio),
        large_near=large_near,
        specks_near=specks_near,
        nearest_mm=_nearest_mm(points_mm),
        parallel=_parallel(points_mm, members.angle, ratio),
        clear=int((cnr >= CLEAR_CNR).sum()),
        continued=continued,
    )


def _continued(points_mm: np.ndarray, near: np.ndarray, context: Context) -> int:
    """Elongated objects outside the group lying on its axis and pointing along it: a vessel
    that goes on beyond the group's ends."""
    if len(points_mm) < 2 or context.angle is None or len(near) == 0:
        return 0
    _, vectors = np.linalg.eigh(np.cov(points_mm.T))
    axis = vectors[:, -1]
    offsets = context.points_mm[near] - points_mm.mean(axis=0)
    along = np.abs(offsets @ axis)
    across = np.abs(offsets @ vectors[:, 0])
    beyond = along > np.abs((points_mm - points_mm.mean(axis=0)) @ axis).max() + 0.5
    pointing = np.abs(np.cos(context.angle[near] - math.atan2(axis[1], axis[0]))) > 0.85
    return int((beyond & (across < 1.5) & pointing & (context.ratio[near] >= 1.5)).sum())


def _alignment(points_mm: np.ndarray, angles: np.ndarray, ratio: np.ndarray) -> float:
    """Weighted mean of cos(2 * (member axis - group axis)), weights growing with elongation."""
    weights = np.clip(ratio - 1.2, 0.0, 2.0)
    if len(points_mm) < 2 or weights.sum() < 1e-6:
        return 0.0
    _, vectors = np.linalg.eigh(np.cov(points_mm.T))
    axis = math.atan2(vectors[1, -1], vectors[0, -1])
    return float(np.sum(weights * np.cos(2.0 * (angles - axis))) / weights.sum())


def _parallel(points_mm: np.ndarray, angles: np.ndarray, ratio: np.ndarray) -> float:
    """Share of members that are dashes (length / diameter >= 1.5) with another dash beside them:
    0.7-2.5 mm across the dash's own axis and less than 1.5 mm along it (see ClusterFeatures).
    Round specks have no axis, so a dense round cluster scores 0."""
    dash = ratio >= 1.5
    if dash.sum() < 2:
        return 0.0
    pts, ang = points_mm[dash], angles[dash]
    offsets = pts[None, :, :] - pts[:, None, :]  # [i, j] = j - i
    along = np.abs(offsets[..., 0] * np.cos(ang)[:, None] + offsets[..., 1] * np.sin(ang)[:, None])
    across = np.abs(-offsets[..., 0] * np.sin(ang)[:, None] + offsets[..., 1] * np.cos(ang)[:, None])
    partner = (across >= 0.7) & (across <= 2.5) & (along <= 1.5)
    return float(partner.any(axis=1).sum() / len(points_mm))


def _nearest_mm(points_mm: np.ndarray) -> float:
    """Median distance from a member to its nearest fellow member."""
    if len(points_mm) < 2:
        return 0.0
    distance = np.hypot(*(points_mm[:, None, :] - points_mm[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    return float(np.median(distance.min(axis=1)))


def benign_reason(f: ClusterFeatures, params: DetectionParams) -> str | None:
    """Why a group is a benign pattern rather than a suspicious cluster, or None."""
    if f.count < params.min_cluster_specks:
        return "too few specks"
    if f.count <= 3 and f.median_cnr < FAINT_TRIPLE_CNR:
        return "one clear speck among noise (scattered)"
    if f.extent_mm > params.max_cluster_extent_mm:
        return "spread too wide (diffuse or vascular)"
    if f.extent_mm > VASCULAR_MIN_EXTENT_MM and f.linearity > VASCULAR_MIN_LINEARITY:
        return "long straight track (vascular)"
    if f.mean_diameter_mm > VASCULAR_DASH_DIAMETER_MM and (
            (f.alignment > VASCULAR_ALIGNMENT and f.elongation > VASCULAR_ELONGATION)
            or (f.count <= 3 and f.elongation > VASCULAR_FRAGMENT_ELONGATION)):
        return "coarse dashes along one axis (vascular)"
    if f.continued >= VASCULAR_CONTINUED:
        return "a vessel going on beyond the group (vascular)"
    return None


CERTAINTY_INPUTS = (
    "log count", "log third cnr", "log median cnr", "log top cnr", "nearest mm", "log extent mm",
    "elongation", "aligned elongation", "mean diameter mm", "size cv", "linearity",
    "log large near", "log specks near", "parallel", "log clear specks",
)


def certainty_inputs(f: ClusterFeatures) -> np.ndarray:
    """The inputs of the certainty model, in ``CERTAINTY_INPUTS`` order (logs of counts and
    contrasts, so that doubling matters the same at every level)."""
    return np.array([
        math.log(f.count),
        math.log(max(f.third_cnr, 1.0)),
        math.log(max(f.median_cnr, 1.0)),
        math.log(max(f.top_cnr, 1.0)),
        min(f.nearest_mm, 10.0),
        math.log(1.0 + f.extent_mm),
        min(f.elongation, 5.0),
        f.alignment * (min(f.elongation, 5.0) - 1.0),
        f.mean_diameter_mm,
        f.size_cv,
        f.linearity,
        math.log1p(f.large_near),
        math.log1p(f.specks_near),
        f.parallel,
        math.log1p(f.clear),
    ])


def certainty(f: ClusterFeatures) -> float:
    """Certainty 0-100 that the group is a suspicious calcification cluster.

    A logistic model of ``certainty_inputs`` fitted on generator images of the tuning seeds
    (``benchmarks/fit_certainty.py``, weights in ``weights.py``): contrast of the members above
    the noise carries most of the evidence against chance groups of noise specks; the members'
    elongation along the group's axis, large bright objects nearby and the spacing of the members
    carry the evidence against vessels and scattered specks.
    """
    z = (certainty_inputs(f) - np.asarray(weights.MEAN)) / np.asarray(weights.SCALE)
    logit = float(z @ np.asarray(weights.WEIGHTS)) + weights.BIAS
    return 100.0 / (1.0 + math.exp(-min(max(logit, -50.0), 50.0)))


def reporting_threshold(params: DetectionParams) -> float:
    """The certainty a cluster needs: the fitted threshold of ``operating_point`` (interpolated
    between -1, -0.5, 0, 0.5 and 1, which gave 0.1, 0.05, 0.02, 0.01 and 0.005 false marks per
    tuning image), and never below ``report_certainty``."""
    curve = np.interp(params.operating_point, OPERATING_POINTS, weights.OPERATING_THRESHOLDS)
    return float(min(max(curve, params.report_certainty), 100.0))


def morphology(f: ClusterFeatures) -> Morphology:
    """BI-RADS-style morphology estimate from the members' shape, size and size spread.

    Fine linear / branching: members drawn out along the group's axis (casts of a duct), the
    group itself elongated. Coarse heterogeneous: members of 0.5 mm and more, of varied size.
    Amorphous: tiny, faint members. Fine pleomorphic: small members of varied size. Punctate:
    small round members of one size. On the tuning set the first rule marked 80 % of drawn linear
    branching clusters and 2 % of drawn pleomorphic ones.
    """
    if f.alignment * (f.elongation - 1.0) > CASTING_ALIGNED_ELONGATION and f.linearity > CASTING_LINEARITY:
        return Morphology.FINE_LINEAR_BRANCHING
    if f.mean_diameter_mm >= 0.5 and f.size_cv > 0.3:
        return Morphology.COARSE_HETEROGENEOUS
    if f.mean_diameter_mm < 0.25 and f.median_cnr < 6.0:
        return Morphology.AMORPHOUS
    if f.size_cv >= PLEOMORPHIC_SIZE_CV:
        return Morphology.FINE_PLEOMORPHIC
    return Morphology.PUNCTATE


def distribution(f: ClusterFeatures) -> Distribution:
    """Linear when the members lie along a line, grouped otherwise."""
    return Distribution.LINEAR if f.linearity > LINEAR_DISTRIBUTION and f.count >= 4 else Distribution.GROUPED
