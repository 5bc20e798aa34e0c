"""Write synthetic four-view screening studies (RCC, LCC, RMLO, LMLO) as DICOM files.

Pixels come from ``node.testing.phantom``; headers from ``node.testing.dicomfactory``. The
pixels depend only on the seed and geometry, never on the encoding, so a test can check that
the detector finds the same clusters in every transfer syntax and photometric variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.testing.dicomfactory import StudyIdentity, make_mammo_dataset
from node.testing.phantom import (
    CLUSTER_KINDS, PRESENTATION_MAX, PROCESSING_MAX, ClusterPlacement, Phantom, PhantomSpec,
    make_phantom,
)

# (name, laterality, view) in instance-number order.
VIEWS = (("RCC", "R", "CC"), ("LCC", "L", "CC"), ("RMLO", "R", "MLO"), ("LMLO", "L", "MLO"))
# the 8 mm skin margin of a cluster + its largest radius and clearance (5.3 mm), rounded up:
# nearer the nipple a lesion cannot lie that far inside the skin
LESION_MIN_NIPPLE_DISTANCE_MM = 14.0


@dataclass(frozen=True)
class StudyOutput:
    """What ``write_study`` wrote: ``views`` maps "RCC" ... to ``(path, Phantom)``."""

    identity: StudyIdentity
    views: dict[str, tuple[Path, Phantom]]

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self.views.values()]


def view_spec(seed: int, index: int, *, rows: int, cols: int, spacing_mm: float, density: str,
              n_clusters: int, distractors: tuple[str, ...] = (),
              cluster_at: tuple[ClusterPlacement, ...] = ()) -> PhantomSpec:
    """The PhantomSpec of view ``VIEWS[index]`` of study ``seed`` (chest wall right for R,
    left for L). Each view gets its own phantom seed, ``4 * seed + index``."""
    _, laterality, view = VIEWS[index]
    return PhantomSpec(rows=rows, cols=cols, spacing_mm=spacing_mm, laterality=laterality,
                       view=view, density=density, n_clusters=n_clusters,
                       distractors=tuple(distractors), seed=4 * seed + index,
                       cluster_at=tuple(cluster_at))


def lesion_placements(seed: int, laterality: str, *, cols: int,
                      spacing_mm: float) -> dict[str, ClusterPlacement]:
    """Where one lesion of breast ``laterality`` lies on its CC and on its MLO view, e.g.
    ``{"RCC": ClusterPlacement(...), "RMLO": ClusterPlacement(...)}``.

    Distance from the nipple, kind and radius are the same on both views, as they nearly are
    for a real lesion under the two compressions; the angle differs (the views look at the
    breast from different directions) and so do the specks (each view draws its own). Drawn
    from ``seed`` alone, so a study is still a function of its arguments.
    """
    rng = np.random.default_rng([seed, 2, "RL".index(laterality)])
    nipple_depth_mm = 0.62 * cols * spacing_mm  # the shortest chest wall - nipple the phantom draws
    high = max(LESION_MIN_NIPPLE_DISTANCE_MM, 0.5 * nipple_depth_mm)
    distance = float(rng.uniform(LESION_MIN_NIPPLE_DISTANCE_MM, high))
    kind = str(rng.choice(CLUSTER_KINDS))
    radius = float(rng.uniform(2.0, 5.0))
    return {laterality + view: ClusterPlacement(distance, float(rng.uniform(-45.0, 45.0)),
                                                radius, kind)
            for view in ("CC", "MLO")}


def phantom_dataset(phantom: Phantom, identity: StudyIdentity, instance_number: int,
                    transfer_syntax: str = ExplicitVRLittleEndian, monochrome1: bool = False,
                    for_processing: bool = False, spacing_attrs: str = "both") -> Dataset:
    """One MG Dataset holding ``phantom``'s pixels.

    For Presentation stores the 12-bit log image; For Processing the 14-bit linear image.
    MONOCHROME1 stores ``(2**BitsStored - 1) - value`` for For Presentation; For Processing
    values stay linear in exposure (Sign +1) and only their display flips. BurnedInAnnotation is YES when a
    label was burned into the For Presentation pixels.
    """
    spec = phantom.spec
    stored, bits, top = ((phantom.processing, 14, PROCESSING_MAX) if for_processing
                         else (phantom.presentation, 12, PRESENTATION_MAX))
    if monochrome1 and not for_processing:
        # For Processing values are linear in exposure whatever the photometric interpretation
        # (PixelIntensityRelationshipSign says how); MONOCHROME1 only flips the display.
        stored = (top - stored.astype(np.int32)).astype(np.uint16)
    ds = make_mammo_dataset(stored, identity=identity, laterality=spec.laterality,
                            view=spec.view, instance_number=instance_number,
                            spacing_mm=spec.spacing_mm, spacing_attrs=spacing_attrs,
                            chest_wall=spec.side, bits_stored=bits, monochrome1=monochrome1,
                            for_processing=for_processing, transfer_syntax=transfer_syntax)
    if not for_processing and "label" in spec.distractors:
        ds.BurnedInAnnotation = "YES"
    return ds


def write_study(out_dir: str | Path, seed: int, *, rows: int = 512, cols: int = 416,
                spacing_mm: float = 0.1, density: str = "b",
                transfer_syntax: str = ExplicitVRLittleEndian, monochrome1: bool = False,
                for_processing: bool = False, clusters_per_view: tuple[int, ...] = (1, 0, 1, 0),
                distractors: tuple[str, ...] = (), spacing_attrs: str = "both",
                correlated: str | None = None) -> StudyOutput:
    """Write ``<out_dir>/RCC.dcm``, ``LCC.dcm``, ``RMLO.dcm``, ``LMLO.dcm`` of one study.

    ``clusters_per_view`` counts suspicious clusters per view in ``VIEWS`` order;
    ``distractors`` are drawn on every view. Cluster positions are independent per view,
    except with ``correlated`` = "R" or "L": then the first cluster of that breast's CC and
    MLO is one lesion, drawn at the same distance from the nipple on both views
    (``lesion_placements``; both views need at least one cluster). Default None: as before.
    """
    if len(clusters_per_view) != len(VIEWS):
        raise ValueError(f"clusters_per_view needs {len(VIEWS)} counts, got {clusters_per_view}")
    wanted = {}
    if correlated is not None:
        if correlated not in ("R", "L"):
            raise ValueError(f"correlated must be R, L or None, got {correlated!r}")
        wanted = lesion_placements(seed, correlated, cols=cols, spacing_mm=spacing_mm)
        if any(clusters_per_view[i] < 1 for i, (name, _, _) in enumerate(VIEWS) if name in wanted):
            raise ValueError(f"a correlated lesion in {correlated} needs a cluster on both its "
                             f"views, got clusters_per_view={clusters_per_view}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = StudyIdentity(seed)
    views = {}
    for index, (name, _, _) in enumerate(VIEWS):
        spec = view_spec(seed, index, rows=rows, cols=cols, spacing_mm=spacing_mm,
                         density=density, n_clusters=clusters_per_view[index],
                         distractors=distractors,
                         cluster_at=(wanted[name],) if name in wanted else ())
        phantom = make_phantom(spec)
        ds = phantom_dataset(phantom, identity, index + 1, transfer_syntax, monochrome1,
                             for_processing, spacing_attrs)
        path = out / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        views[name] = (path, phantom)
    return StudyOutput(identity, views)
