"""DetectionParams: every tunable of the detector, lengths in millimetres.

The defaults are the product's settings; ``config/calcnode.yaml`` may override any of them under
``detection:``. They were chosen on generator seeds of the tuning set (benchmarks/detect.py
``--set tune``), never on the benchmark sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _limits(lo: float, hi: float) -> dict:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class DetectionParams:
    """Parameters of ``node.detection.detect``.

    Breast mask
        ``mask_resolution_mm``: pixel size of the low-resolution grid the breast is segmented on.
        ``skin_margin_mm``: specks closer than this to the skin line are skin calcifications.
    Specks
        ``speck_sigma_mm``: Gaussian scales of the speck filters (one per speck size band).
        ``background_mm``: width of the local-background window subtracted from the speck filter.
        ``seed_cnr`` / ``grow_cnr``: contrast-to-noise thresholds of the hysteresis detection.
        ``max_speck_diameter_mm``: larger bright objects are macrocalcifications, clips, markers.
        ``max_speck_length_mm``: longer objects are vessels, rims, edges.
    Clusters
        ``link_distance_mm``: specks closer than this belong to the same cluster.
        ``strong_cnr`` / ``weak_link_mm``: a speck fainter than ``strong_cnr`` links to others only
        within ``weak_link_mm`` (faint specks on a flat background are mostly noise; they must not
        bridge two groups or stretch one).
        ``min_cluster_specks``: fewer specks is not a cluster.
        ``max_cluster_extent_mm``: a group wider than this is diffuse or vascular, not a cluster.
        ``outline_margin_mm``: the drawn outline lies this far outside the member specks.
    Certainty
        ``operating_point``: where on the FROC curve to report, -1 (more sensitive) .. 1 (fewer
        marks): -1, -0.5, 0, 0.5 and 1 are the certainty thresholds that gave 0.1, 0.05, 0.02,
        0.01 and 0.005 false marks per tuning image (``weights.OPERATING_THRESHOLDS``).
        ``report_certainty``: a floor; no cluster below this certainty (0-100) is reported,
        whatever the operating point.
    """

    mask_resolution_mm: float = field(default=0.8, metadata=_limits(0.2, 4.0))
    skin_margin_mm: float = field(default=3.0, metadata=_limits(0.0, 20.0))
    speck_sigma_mm: tuple[float, ...] = field(default=(0.07, 0.14), metadata=_limits(0.02, 1.0))
    background_mm: float = field(default=1.2, metadata=_limits(0.3, 5.0))
    seed_cnr: float = field(default=4.0, metadata=_limits(1.0, 50.0))
    grow_cnr: float = field(default=2.5, metadata=_limits(0.5, 50.0))
    max_speck_diameter_mm: float = field(default=1.0, metadata=_limits(0.2, 5.0))
    max_speck_length_mm: float = field(default=2.5, metadata=_limits(0.2, 10.0))
    link_distance_mm: float = field(default=5.0, metadata=_limits(0.5, 20.0))
    strong_cnr: float = field(default=6.0, metadata=_limits(1.0, 50.0))
    weak_link_mm: float = field(default=3.5, metadata=_limits(0.1, 20.0))
    min_cluster_specks: int = field(default=3, metadata=_limits(2, 50))
    max_cluster_extent_mm: float = field(default=15.0, metadata=_limits(2.0, 100.0))
    outline_margin_mm: float = field(default=1.5, metadata=_limits(0.0, 10.0))
    report_certainty: float = field(default=0.0, metadata=_limits(0.0, 100.0))
    operating_point: float = field(default=0.0, metadata=_limits(-1.0, 1.0))
