"""Grouping specks into clusters by distance in millimetres, and the geometry of a cluster.

Specks closer than ``link_distance_mm`` are linked; each connected group is a candidate cluster
(single-linkage, as radiologists' "grouped within about 1 cm" rule of thumb).

References
----------
.. [1] ACR BI-RADS Atlas, 5th ed. (2013), Mammography: calcification distribution ("grouped":
   few calcifications within a small portion of tissue, lower limit about 1 cm).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import ConvexHull, QhullError, cKDTree

OUTLINE_VERTICES_PER_SPECK = 12


def group_points(
    points_mm: np.ndarray,
    link_distance_mm: float,
    min_members: int,
    strong: np.ndarray | None = None,
    weak_link_mm: float | None = None,
) -> list[np.ndarray]:
    """Indices of the points of each single-linkage group with at least ``min_members``.

    ``points_mm`` is (n, 2) positions in mm. Two points are linked when closer than
    ``link_distance_mm``; when ``strong`` (bool per point) is given, a pair with a weak member
    must be closer than ``weak_link_mm``, so that faint specks, most of which are noise on a
    flat background, join a group only from close by and cannot bridge two groups. Groups come
    largest first.
    """
    n = len(points_mm)
    if n < min_members:
        return []
    pairs = cKDTree(points_mm).query_pairs(link_distance_mm, output_type="ndarray")
    if strong is not None and weak_link_mm is not None and len(pairs):
        weak_pair = ~(strong[pairs[:, 0]] & strong[pairs[:, 1]])
        gap = np.hypot(*(points_mm[pairs[:, 0]] - points_mm[pairs[:, 1]]).T)
        pairs = pairs[~weak_pair | (gap <= weak_link_mm)]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=count)
    groups = [np.flatnonzero(labels == g) for g in np.flatnonzero(sizes >= min_members)]
    return sorted(groups, key=len, reverse=True)


def extent_mm(points_mm: np.ndarray) -> float:
    """Largest distance between two members."""
    if len(points_mm) < 2:
        return 0.0
    diff = points_mm[:, None, :] - points_mm[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def linearity(points_mm: np.ndarray) -> float:
    """1 - minor/major spread of the members (0 = round group, 1 = on a line)."""
    if len(points_mm) < 3:
        return 1.0
    eig = np.linalg.eigvalsh(np.cov(points_mm.T))
    return float(1.0 - np.sqrt(max(eig[0], 0.0) / max(eig[1], 1e-12)))


def outline(
    rows: np.ndarray, cols: np.ndarray, margin_px: float, shape: tuple[int, int]
) -> tuple[tuple[float, float], ...]:
    """Closed polygon (row, col) around the members, ``margin_px`` outside them, in the image.

    The convex hull of a ring of points about each member: a tight, convex outline that every
    display draws as a closed POLYLINE. Vertices are kept within the pixel grid
    ([-0.5, rows - 0.5] x [-0.5, cols - 0.5]) so DICOM coordinates stay inside the image.
    """
    angles = np.linspace(0.0, 2.0 * np.pi, OUTLINE_VERTICES_PER_SPECK, endpoint=False)
    ring_r = (rows[:, None] + margin_px * np.sin(angles)[None, :]).ravel()
    ring_c = (cols[:, None] + margin_px * np.cos(angles)[None, :]).ravel()
    pts = np.column_stack([ring_r, ring_c])
    try:
        hull = pts[ConvexHull(pts).vertices]
    except QhullError:
        hull = pts[:OUTLINE_VERTICES_PER_SPECK]
    hull[:, 0] = np.clip(hull[:, 0], -0.5, shape[0] - 0.5)
    hull[:, 1] = np.clip(hull[:, 1], -0.5, shape[1] - 0.5)
    vertices = [(round(float(r), 2), round(float(c), 2)) for r, c in hull]
    return tuple(vertices + [vertices[0]])
