"""The plain data passed between stages. Read this file to see what flows through the node.

Conventions:
- Pixel positions are numpy array coordinates ``(row, col)`` as floats: the centre of pixel
  ``arr[r, c]`` is ``(r, c)``. Only ``reporting`` converts to DICOM graphic data, which is
  ``(column + 0.5, row + 0.5)`` in the stored pixel grid of the referenced image.
- Lengths carry ``_mm`` in their names; pixel spacing is ``(row spacing, column spacing)`` as
  in DICOM PixelSpacing.
- Every dataclass is frozen; a variation is made with ``dataclasses.replace``.

This module imports no pydicom, pynetdicom or yaml.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class Laterality(str, enum.Enum):
    RIGHT = "R"
    LEFT = "L"
    BOTH = "B"


class View(str, enum.Enum):
    """Mammographic view, from ViewCodeSequence (CID 4014) or ViewPosition."""

    CC = "CC"
    MLO = "MLO"
    ML = "ML"
    LM = "LM"
    XCCL = "XCCL"
    OTHER = "OTHER"


class Side(str, enum.Enum):
    """The column side of the image on which the chest wall lies."""

    LEFT = "left"
    RIGHT = "right"


class Morphology(str, enum.Enum):
    """BI-RADS-style calcification morphology estimated for a cluster."""

    PUNCTATE = "punctate"
    AMORPHOUS = "amorphous"
    COARSE_HETEROGENEOUS = "coarse heterogeneous"
    FINE_PLEOMORPHIC = "fine pleomorphic"
    FINE_LINEAR_BRANCHING = "fine linear branching"


class Distribution(str, enum.Enum):
    """BI-RADS-style calcification distribution estimated for a cluster."""

    GROUPED = "grouped"
    LINEAR = "linear"
    SEGMENTAL = "segmental"
    REGIONAL = "regional"


@dataclass(frozen=True)
class SourceRef:
    """Identity of one received image instance, as outputs must reference it."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str


@dataclass(frozen=True, eq=False)
class Mammogram:
    """A decoded image ready for detection.

    ``pixels`` is float32 ``(rows, cols)`` in the stored grid, bright = dense, on a log-exposure
    scale (For Processing images are log-transformed so both intents look alike to the detector).
    ``valid`` is a bool mask of pixels that carry image data (False on padding), or None.
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float]
    spacing_source: str
    laterality: Laterality | None
    view: View
    chest_wall: Side
    for_processing: bool
    monochrome1: bool
    source: SourceRef
    valid: np.ndarray | None = None
    warnings: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(frozen=True)
class Calcification:
    """One detected speck: centre in pixels (row, col), equivalent diameter in mm."""

    row: float
    col: float
    diameter_mm: float
    contrast_to_noise: float


@dataclass(frozen=True)
class Cluster:
    """A suspicious group of calcifications on one image.

    ``outline_rc`` is a closed polygon (first vertex repeated last) around the members;
    ``radius_px`` the radius of a circle about ``centre_rc`` that encloses them, for drawing.
    ``certainty`` is 0-100. ``morphology`` and ``distribution`` are None when not estimated.
    """

    centre_rc: tuple[float, float]
    outline_rc: tuple[tuple[float, float], ...]
    radius_px: float
    calcifications: tuple[Calcification, ...]
    certainty: float
    extent_mm: float
    morphology: Morphology | None = None
    distribution: Distribution | None = None

    @property
    def count(self) -> int:
        return len(self.calcifications)


@dataclass(frozen=True)
class ImageFindings:
    """What detection found on one image (possibly nothing).

    ``spacing_mm`` and ``nipple_rc`` (the tip of the breast outline, in
    (row, col) pixels) place the clusters in the breast for CC / MLO correlation; None when
    unknown (the image then takes no part in correlation).
    """

    source: SourceRef
    clusters: tuple[Cluster, ...]
    seconds: float = 0.0
    laterality: Laterality | None = None
    view: View | None = None
    spacing_mm: tuple[float, float] | None = None
    nipple_rc: tuple[float, float] | None = None

    @property
    def view_label(self) -> str:
        """e.g. "RCC", "LMLO"; "?" for what the header did not say."""
        side = self.laterality.value if self.laterality else "?"
        return side + (self.view.value if self.view else "?")


@dataclass(frozen=True)
class ImageFailure:
    """An image of the study that was attempted but could not be analysed."""

    source: SourceRef
    reason: str


@dataclass(frozen=True)
class CompositeFinding:
    """One lesion seen on several images of the same breast (CC and MLO).

    ``members`` are (SOP Instance UID, index into that image's clusters).
    """

    members: tuple[tuple[str, int], ...]
    certainty: float


@dataclass(frozen=True)
class StudyFindings:
    """Everything the reports of one study are built from."""

    study_instance_uid: str
    images: tuple[ImageFindings, ...]
    failures: tuple[ImageFailure, ...] = ()
    composites: tuple[CompositeFinding, ...] = ()
    # SOP Instance UIDs of the images the CC/MLO correlation compared (those of breasts with
    # both views); empty when it was not attempted
    correlated_images: tuple[str, ...] = ()

    @property
    def correlation_attempted(self) -> bool:
        return bool(self.correlated_images)

    @property
    def cluster_count(self) -> int:
        return sum(len(i.clusters) for i in self.images)

    @property
    def highest_certainty(self) -> float | None:
        values = [c.certainty for i in self.images for c in i.clusters]
        return max(values) if values else None


@dataclass(frozen=True)
class Equipment:
    """How the node names itself in General Equipment and in TID 4019."""

    manufacturer: str
    model_name: str
    software_version: str
    device_serial_number: str
    institution_name: str = ""
    uid_root: str | None = None
    algorithm_parameters: tuple[str, ...] = ()


# --- the node: what the receiver, spool, assembly, workers and dispatcher hand each other ---


class Role(str, enum.Enum):
    """What the node does with a received instance."""

    IMAGE = "image"  # an image to analyse (checked in detail by images.check_analysable)
    KEPT = "kept"  # stored and never analysed: SR, presentation states, our own outputs ...


class StudyState(str, enum.Enum):
    RECEIVING = "receiving"  # instances arriving; waiting for assembly to call it complete
    ANALYSING = "analysing"  # handed to a worker process
    DONE = "done"  # analysed, outputs queued
    FAILED = "failed"  # analysis failed; ``reason`` says why


class DeliveryState(str, enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class StoreOutcome(str, enum.Enum):
    """How one C-STORE to a destination ended (sender.py)."""

    SUCCESS = "success"  # 0x0000 or a warning status: the peer has it
    TRANSIENT = "transient"  # refused, timed out, aborted, 0xA7xx: try again later
    PERMANENT = "permanent"  # the peer will never take it as it is: marked failed


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    status: int | None  # DIMSE status, None when no response came
    reason: str


@dataclass(frozen=True)
class InstanceRecord:
    """One received instance, as the spool keeps it; ``path`` is relative to the spool."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: str
    size_bytes: int
    received_at: float
    calling_ae: str
    association_id: str
    role: Role
    laterality: str = ""
    view: str = ""


@dataclass(frozen=True)
class StudyProgress:
    """What assembly needs to decide whether a receiving study is complete (times in epoch s)."""

    study_instance_uid: str
    first_received_at: float
    last_received_at: float
    views: frozenset[str]  # "RCC", "LMLO" ... of the image instances received
    association_open: bool  # an association that sent part of it is still open


@dataclass(frozen=True)
class OutboxJob:
    """One output to deliver to one destination."""

    delivery_id: int
    output_uid: str
    sop_class_uid: str
    study_instance_uid: str
    destination: str
    path: str  # absolute
    attempts: int
    created_at: float


@dataclass(frozen=True)
class AnalysisTask:
    """One study handed to a worker process: its image files (absolute paths) and context."""

    study_instance_uid: str
    generation: int  # the analysis run; a result of an older run is discarded
    paths: tuple[str, ...]
    calling_ae: str
    predecessor: SourceRef | None = None  # the SR of the previous run, superseded by this one


@dataclass(frozen=True)
class OutputFile:
    kind: str  # "sr", "sc", "gsps"
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    path: str  # absolute


@dataclass(frozen=True)
class AnalysisOutcome:
    """What a worker returns for one study."""

    study_instance_uid: str
    generation: int
    outputs: tuple[OutputFile, ...]
    images: int  # analysed
    failed_images: int
    clusters: int
    highest_certainty: float | None
    seconds: float
    notes: tuple[str, ...] = ()  # per-image failures and skips, for a person
