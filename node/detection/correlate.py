"""CC <-> MLO correlation: a cluster seen on both views of a breast becomes one composite finding.

Radiologists match a lesion between the craniocaudal (CC) and mediolateral oblique (MLO) views
of a breast by its distance from the nipple, which changes little between the two
compressions [1]_; two-view CAD schemes for microcalcifications pair cluster candidates the
same way [2]_ [3]_. Here a CC cluster and an MLO cluster of the same breast are paired when

* their distances from the nipple (in mm, along a straight line in the image) differ by at
  most ``NIPPLE_DISTANCE_TOLERANCE_MM`` (15 mm), and
* their extents are compatible: the larger is at most ``EXTENT_RATIO_MAX`` (3) times the
  smaller, extents below ``EXTENT_FLOOR_MM`` (2 mm) counting as 2 mm.

The tolerance is the upper end of the spread of about 1-1.5 cm usually seen between the radial
nipple distances of one lesion on the two views [1]_ [2]_ (recalled from these papers, not
re-read here; check before tuning): a CAD mark confirmed on a second view is worth more than a
missed pairing costs, and the nipple found by ``breast.nipple_position`` adds its own error of a
few mm. The extent gate is loose on purpose: a cluster's projected extent depends on the
projection direction and on how many of its specks each view shows.

Pairing is one-to-one, so a cluster is in at most one composite: among the feasible CC x MLO
pairs of a breast, the pairing of least total cost is found with the Hungarian method [4]_
(``scipy.optimize.linear_sum_assignment``) on a matrix augmented with "unpaired" options [5]_.
A pair costs its disagreement (``_cost``: 0 for a perfect match, at most 1.25 at the edge of
the gates); leaving a cluster unpaired costs ``_UNPAIRED`` (0.75). Two unpaired clusters cost
more than any feasible pair, so a feasible pair without rivals is always taken; between rival
pairings the better-agreeing one wins, even when it pairs fewer clusters (a near-perfect match
is not broken up to make two poor ones).

The certainty of a composite combines its members' certainties ``p_i`` (0-100) as
``100 * (1 - prod(1 - p_i / 100))``, capped at ``CERTAINTY_CAP`` (99.9): the composite is a
false positive only if every member is, and the views' false positives are treated as
independent (different superimposed tissue and noise in the two projections). The combination
is monotone and above every member's certainty; after rounding to the 0.1 % the SR carries it
is kept at least 0.1 above the highest member (unless that member is at the cap already).

Pure numpy / scipy; no pydicom.

References
----------
.. [1] S. van Engeland, N. Karssemeijer, "Matching breast lesions in multiple mammographic
   views", MICCAI 2001, LNCS 2208, 1172-1173.
.. [2] B. Sahiner, H.-P. Chan, L. M. Hadjiiski, M. A. Helvie, C. Paramagul, J. Ge, J. Wei,
   C. Zhou, "Joint two-view information for computerized detection of microcalcifications on
   mammograms", Med. Phys. 33 (2006) 2574-2585.
.. [3] S. Paquerault, N. Petrick, H.-P. Chan, B. Sahiner, M. A. Helvie, "Improvement of
   computerized mass detection on mammograms: fusion of two-view information", Med. Phys. 29
   (2002) 238-247.
.. [4] H. W. Kuhn, "The Hungarian method for the assignment problem", Naval Research Logistics
   Quarterly 2 (1955) 83-97.
.. [5] D. F. Crouse, "On implementing 2D rectangular assignment algorithms", IEEE Trans.
   Aerospace and Electronic Systems 52 (2016) 1679-1696 (the algorithm behind SciPy's
   ``linear_sum_assignment``; non-assignment handled by augmenting the cost matrix).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from node.detection.breast import BreastMap, nipple_position, segment_breast
from node.detection.params import DetectionParams
from node.model import CompositeFinding, ImageFindings, Laterality, Side, View

__all__ = ["NIPPLE_DISTANCE_TOLERANCE_MM", "EXTENT_RATIO_MAX", "EXTENT_FLOOR_MM",
           "CERTAINTY_CAP", "combined_certainty", "correlate", "correlated_breasts", "correlated_images",
           "locate_nipple", "nipple_distance_mm"]

NIPPLE_DISTANCE_TOLERANCE_MM = 15.0
EXTENT_RATIO_MAX = 3.0
EXTENT_FLOOR_MM = 2.0
CERTAINTY_CAP = 99.9
_EXTENT_WEIGHT = 0.25  # extent disagreement counts a quarter as much as distance disagreement
_UNPAIRED = 0.75  # cost of leaving one cluster unpaired (see the module docstring)
_INFEASIBLE = 1e6  # a pair outside the gates, or an "unpaired" slot of another cluster


@dataclass(frozen=True)
class _Placed:
    """One cluster of one image, placed in its breast."""

    uid: str
    index: int
    nipple_distance_mm: float
    extent_mm: float
    certainty: float


def nipple_distance_mm(centre_rc: tuple[float, float], nipple_rc: tuple[float, float],
                       spacing_mm: tuple[float, float]) -> float:
    """Straight-line distance in mm between a point and the nipple, both (row, col) pixels."""
    return float(math.hypot((centre_rc[0] - nipple_rc[0]) * spacing_mm[0],
                            (centre_rc[1] - nipple_rc[1]) * spacing_mm[1]))


def combined_certainty(certainties: Sequence[float]) -> float:
    """Certainty (0-100) of a composite from its members' (see the module docstring)."""
    values = [float(p) for p in certainties]
    if not values or any(not 0.0 <= p <= 100.0 for p in values):
        raise ValueError(f"certainties must be percentages 0..100, got {certainties}")
    best = max(values)
    combined = 100.0 * (1.0 - math.prod(1.0 - p / 100.0 for p in values))
    return round(min(max(combined, best + 0.1), max(CERTAINTY_CAP, best)), 1)


def locate_nipple(pixels: np.ndarray, spacing_mm: tuple[float, float], chest_wall: Side | str,
                  params: DetectionParams = DetectionParams(),
                  valid: np.ndarray | None = None,
                  breast: BreastMap | None = None) -> tuple[float, float] | None:
    """The nipple of a float32 (rows, cols) image, bright = dense, in (row, col) pixels.

    Segments the breast on the detector's coarse grid (``segment_breast``) and takes the tip
    of its outline (``breast.nipple_position``); None when no tip lies inside the image.
    ``breast``: that segmentation, when the caller has it already (the pipeline, from detection).
    """
    if breast is None:
        breast = segment_breast(pixels, spacing_mm, params, valid)
    f = breast.factor
    tip = nipple_position(breast.mask, (spacing_mm[0] * f, spacing_mm[1] * f), chest_wall)
    if tip is None:
        return None
    centre = (f - 1) / 2.0  # of a coarse cell, in full-resolution pixels
    return (min(tip[0] * f + centre, pixels.shape[0] - 1.0),
            min(tip[1] * f + centre, pixels.shape[1] - 1.0))


def _placeable(image: ImageFindings) -> bool:
    return image.nipple_rc is not None and image.spacing_mm is not None


def _views(images: Sequence[ImageFindings], laterality: Laterality,
           view: View) -> list[ImageFindings]:
    return [i for i in images if i.laterality == laterality and i.view == view and _placeable(i)]


def correlated_breasts(images: Sequence[ImageFindings]) -> tuple[Laterality, ...]:
    """The breasts with at least one CC and one MLO image whose nipple was found."""
    return tuple(side for side in (Laterality.RIGHT, Laterality.LEFT)
                 if _views(images, side, View.CC) and _views(images, side, View.MLO))


def correlated_images(images: Sequence[ImageFindings]) -> tuple[str, ...]:
    """SOP Instance UIDs of the images ``correlate`` compares: the CC and MLO images whose
    nipple was found, of the breasts that have both (the SR's Summary of Analyses lists them)."""
    breasts = correlated_breasts(images)
    return tuple(i.source.sop_instance_uid for i in images
                 if i.laterality in breasts and i.view in (View.CC, View.MLO) and _placeable(i))


def _placed(images: list[ImageFindings]) -> list[_Placed]:
    return [_Placed(image.source.sop_instance_uid, index,
                    nipple_distance_mm(cluster.centre_rc, image.nipple_rc, image.spacing_mm),
                    float(cluster.extent_mm), float(cluster.certainty))
            for image in images for index, cluster in enumerate(image.clusters)]


def _extent_log_ratio(a: _Placed, b: _Placed) -> float:
    return abs(math.log(max(a.extent_mm, EXTENT_FLOOR_MM) / max(b.extent_mm, EXTENT_FLOOR_MM)))


def _feasible(a: _Placed, b: _Placed) -> bool:
    return (abs(a.nipple_distance_mm - b.nipple_distance_mm) <= NIPPLE_DISTANCE_TOLERANCE_MM
            and _extent_log_ratio(a, b) <= math.log(EXTENT_RATIO_MAX) + 1e-12)


def _cost(a: _Placed, b: _Placed) -> float:
    """Disagreement of a pair: 0 for a perfect match, at most 1 + _EXTENT_WEIGHT in the gates."""
    if not _feasible(a, b):
        return _INFEASIBLE
    return (abs(a.nipple_distance_mm - b.nipple_distance_mm) / NIPPLE_DISTANCE_TOLERANCE_MM
            + _EXTENT_WEIGHT * _extent_log_ratio(a, b) / math.log(EXTENT_RATIO_MAX))


def _pair(cc: list[_Placed], mlo: list[_Placed]) -> list[CompositeFinding]:
    n, m = len(cc), len(mlo)
    if not n or not m:
        return []
    # [[pairs, CC i unpaired], [MLO j unpaired, dummy x dummy]] (rows: CC + m dummies)
    cost = np.full((n + m, m + n), _INFEASIBLE)
    cost[:n, :m] = [[_cost(a, b) for b in mlo] for a in cc]
    cost[np.arange(n), m + np.arange(n)] = _UNPAIRED
    cost[n + np.arange(m), np.arange(m)] = _UNPAIRED
    cost[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(cost)
    composites = []
    for i, j in zip(rows, cols):
        if i < n and j < m and cost[i, j] < _INFEASIBLE:
            a, b = cc[i], mlo[j]
            composites.append(CompositeFinding(((a.uid, a.index), (b.uid, b.index)),
                                               combined_certainty([a.certainty, b.certainty])))
    return sorted(composites, key=lambda c: -c.certainty)


def correlate(images: Sequence[ImageFindings]) -> tuple[CompositeFinding, ...]:
    """Pair the clusters of the CC and MLO views of each breast into composite findings.

    Parameters
    ----------
    images : sequence of ImageFindings
        The analysed images of one study. Only images with ``laterality`` R or L, ``view`` CC
        or MLO, ``spacing_mm`` and ``nipple_rc`` take part; several CC (or MLO) images of one
        breast pool their clusters.

    Returns
    -------
    tuple of CompositeFinding
        Right breast first, then left, most certain first within a breast. Members are
        (SOP Instance UID, cluster index), the CC cluster first; each cluster is in at most
        one composite. Clusters left unpaired stay single-image findings.
    """
    composites: list[CompositeFinding] = []
    for side in correlated_breasts(images):
        composites += _pair(_placed(_views(images, side, View.CC)),
                            _placed(_views(images, side, View.MLO)))
    return tuple(composites)
