"""Helpers shared by the SR, SC and GSPS builders: identity, equipment, time, spacing, marks."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from datetime import datetime

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset

from node.config import ImagesConfig
from node.errors import ReportError
from node.images import pixel_spacing_mm
from node.model import Cluster, Equipment

# Spec 3.2: copied byte-for-byte from the source; Type 2 ones become empty when absent.
PATIENT_STUDY_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)
PATIENT_STUDY_OPTIONAL = (
    "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence",
    "PatientAge", "IssuerOfAccessionNumberSequence", "StudyDescription",
)
IDENTITY_KEYWORDS = ("StudyInstanceUID",) + PATIENT_STUDY_TYPE2 + PATIENT_STUDY_OPTIONAL

SUSPICIOUS, NOT_SUSPICIOUS = "SUSPICIOUS", "NOT SUSPICIOUS"
DESCRIPTION_MAX_CHARS = 64  # SeriesDescription is LO

# Distance between a cluster's enclosing circle and the drawn ring, so the mark does not hide
# the specks it points at.
MARK_MARGIN_MM = 2.0
DEFAULT_SPACING_MM = 0.1


def common_source(sources: Iterable[Dataset]) -> Dataset:
    """The first source, after checking that every source belongs to the same study and patient."""
    sources = list(sources)
    if not sources:
        raise ReportError("no source image to copy patient and study identity from")
    first = sources[0]
    for other in sources[1:]:
        for keyword in ("StudyInstanceUID", "PatientID"):
            if other.get(keyword) != first.get(keyword):
                raise ReportError(f"source images disagree on {keyword}; refusing to mix studies")
    return first


def flag_text(clusters: int) -> str:
    """The study-level result a worklist shows: any reported cluster makes it SUSPICIOUS."""
    return SUSPICIOUS if clusters > 0 else NOT_SUSPICIOUS


def result_description(model_name: str, clusters: int) -> str:
    """e.g. "calcnode CAD: SUSPICIOUS, 2 clusters" or "calcnode CAD: NOT SUSPICIOUS"."""
    text = f"{model_name} CAD: {flag_text(clusters)}"
    if clusters > 0:
        text += f", {clusters} cluster{'' if clusters == 1 else 's'}"
    return text[:DESCRIPTION_MAX_CHARS]


def copy_identity(target: Dataset, source: Dataset) -> None:
    """Copy Patient and General Study attributes and the character set from ``source``."""
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = copy.deepcopy(source.SpecificCharacterSet)
    for keyword in IDENTITY_KEYWORDS:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])
        elif keyword in PATIENT_STUDY_TYPE2:
            setattr(target, keyword, "")
        elif keyword in target:
            del target[keyword]


def set_equipment(target: Dataset, equipment: Equipment) -> None:
    """General Equipment from how the node names itself (viewers key on these)."""
    target.Manufacturer = equipment.manufacturer
    target.ManufacturerModelName = equipment.model_name
    target.SoftwareVersions = equipment.software_version
    target.DeviceSerialNumber = equipment.device_serial_number
    if equipment.institution_name:
        target.InstitutionName = equipment.institution_name


def dicom_date(now: datetime) -> str:
    return now.strftime("%Y%m%d")


def dicom_time(now: datetime) -> str:
    return now.strftime("%H%M%S")


def set_creation_time(target: Dataset, now: datetime) -> None:
    """Instance creation and content date/time, all from the injected ``now``."""
    target.InstanceCreationDate = dicom_date(now)
    target.InstanceCreationTime = dicom_time(now)
    target.ContentDate = dicom_date(now)
    target.ContentTime = dicom_time(now)


def spacing_mm(source: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing at the breast per spec 1.3.1, or None when the header has none."""
    spacing, used = pixel_spacing_mm(source, ImagesConfig(), [])
    return None if used == "default" else spacing


def mark_radius_px(cluster: Cluster, source: Dataset) -> float:
    """Radius of the drawn ring / GSPS circle: the cluster's radius plus a margin in mm."""
    spacing = spacing_mm(source) or (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
    return float(cluster.radius_px) + MARK_MARGIN_MM / min(spacing)


def to_dicom_xy(row: float, col: float) -> tuple[float, float]:
    """numpy (row, col) pixel centre -> DICOM (column, row) graphic coordinate."""
    return float(col) + 0.5, float(row) + 0.5


def check_encodable(texts: Sequence[str], source: Dataset, what: str) -> None:
    """Refuse text the dataset's character set cannot carry (it would be written as '?')."""
    charset = source.get("SpecificCharacterSet") or "ISO_IR 6"
    codec = convert_encodings(list(charset) if not isinstance(charset, str) else [charset])[0]
    for text in texts:
        try:
            text.encode(codec)
        except UnicodeEncodeError as exc:
            raise ReportError(f"{what} {text!r} cannot be written in {charset}") from exc
