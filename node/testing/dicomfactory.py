"""Build realistic mammography DICOM datasets around a pixel array (tests, benchmarks, demo).

``make_mammo_dataset`` writes the header a modality sends: MG For Presentation (or For
Processing), laterality, view code, patient orientation with the chest wall on a chosen side,
detector spacing with magnification, window, and the pixels in a chosen transfer syntax.
Identity comes from a ``StudyIdentity`` so the four views of a study agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
)

# Test UIDs live under a root of their own so they never look like product output.
TEST_UID_ROOT = "2.25."

VIEW_CODES = {
    "CC": codes.SCT.CranioCaudal,
    "MLO": codes.SCT.MedioLateralObliqueProjection,
    "ML": codes.SCT.MedioLateralProjection,
    "XCCL": codes.SCT.CranioCaudalExaggeratedLaterally,
}
LATERALITY_CODES = {"R": codes.SCT.RightBreast, "L": codes.SCT.LeftBreast}

ENCODERS = {
    ExplicitVRLittleEndian: None,
    ImplicitVRLittleEndian: None,
    RLELossless: None,
    JPEG2000Lossless: "pylibjpeg",
    JPEGLSLossless: "pyjpegls",
}


def test_uid(*parts: object) -> str:
    """A deterministic ``2.25.`` UID from ``parts`` (a name-based UUID, as ISO/IEC 9834-8)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()[:16]
    value = int.from_bytes(digest, "big") >> 6  # keep well inside 128 bits
    return f"{TEST_UID_ROOT}{value}"


@dataclass(frozen=True)
class StudyIdentity:
    """Patient and study attributes shared by every image of one synthetic study."""

    seed: int
    patient_name: str = "SYNTHETIC^PATIENT"
    patient_id: str = ""
    accession_number: str = ""
    study_date: str = "20260102"
    study_time: str = "101500"
    character_set: str = "ISO_IR 100"
    extra: dict = field(default_factory=dict)

    @property
    def study_instance_uid(self) -> str:
        return test_uid("study", self.seed)

    @property
    def series_instance_uid(self) -> str:
        return test_uid("series", self.seed)

    @property
    def pid(self) -> str:
        return self.patient_id or f"SYN{self.seed:06d}"

    @property
    def accession(self) -> str:
        return self.accession_number or f"ACC{self.seed:07d}"


def patient_orientation(laterality: str, view: str, chest_wall: str) -> list[str]:
    """PatientOrientation (row direction, column direction) for a view.

    ``chest_wall`` is the image column side ("left" or "right") where the chest wall lies.
    The row direction points away from the chest wall (towards the nipple); the column
    direction is down the image: feet for MLO, lateral/medial for CC.
    """
    row = "A" if chest_wall == "left" else "P"
    if view in ("CC", "XCCL"):
        # Modalities conventionally show CC images with the lateral side at the top, so the
        # column direction points to the patient's left when the chest wall is on the right.
        return [row, "L" if chest_wall == "right" else "R"]
    side = "L" if laterality == "R" else "R"
    return [row, "F" + side]


def make_mammo_dataset(
    stored: np.ndarray,
    *,
    identity: StudyIdentity,
    laterality: str,
    view: str,
    instance_number: int = 1,
    spacing_mm: float = 0.1,
    magnification: float = 1.08,
    spacing_attrs: str = "both",
    chest_wall: str | None = None,
    bits_stored: int = 12,
    monochrome1: bool = False,
    for_processing: bool = False,
    window: tuple[float, float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    manufacturer: str = "SYNTHETIC",
) -> Dataset:
    """A single-frame Digital Mammography X-Ray Image dataset holding ``stored``.

    ``stored`` is uint16 ``(rows, cols)``; for MONOCHROME1 pass values already inverted.
    ``spacing_mm`` is the pixel spacing at the breast; the detector pitch written to
    ImagerPixelSpacing is ``spacing_mm * magnification``. ``spacing_attrs`` chooses what the
    header carries: "both" (PixelSpacing GEOMETRY + ImagerPixelSpacing + ERMF, as the spec's
    example), "ihe" (ImagerPixelSpacing + ERMF, no PixelSpacing), "imager" (ImagerPixelSpacing
    only) or "none".
    """
    if stored.dtype != np.uint16 or stored.ndim != 2:
        raise ValueError("stored must be a 2-D uint16 array")
    chest_wall = chest_wall or ("right" if laterality == "R" else "left")
    rows, cols = stored.shape
    sop_class = (DigitalMammographyXRayImageStorageForProcessing if for_processing
                 else DigitalMammographyXRayImageStorageForPresentation)
    ds = Dataset()
    ds.SpecificCharacterSet = identity.character_set
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = test_uid("image", identity.seed, laterality, view, instance_number,
                                 for_processing)
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.pid
    ds.PatientBirthDate = "19650101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.StudyDate = identity.study_date
    ds.StudyTime = identity.study_time
    ds.AccessionNumber = identity.accession
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MAMMO SCREENING BILATERAL"
    ds.Modality = "MG"
    ds.SeriesInstanceUID = identity.series_instance_uid + ("1" if for_processing else "")
    ds.SeriesNumber = 2 if for_processing else 1
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "PHANTOM"
    ds.InstanceNumber = instance_number
    ds.ContentDate = identity.study_date
    ds.ContentTime = identity.study_time
    ds.AcquisitionDateTime = identity.study_date + identity.study_time
    ds.PatientOrientation = patient_orientation(laterality, view, chest_wall)
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    view_item = _code_item(VIEW_CODES.get(view, codes.SCT.CranioCaudal))
    view_item.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [view_item]
    ds.AnatomicRegionSequence = [_code_item(codes.SCT.Breast)]
    ds.BodyPartExamined = "BREAST"
    ds.OrganExposed = "BREAST"
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.DetectorType = "DIRECT"
    _set_spacing(ds, spacing_mm, magnification, spacing_attrs)
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.KVP = 29
    ds.PixelIntensityRelationship = "LIN" if for_processing else "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    if not for_processing:
        centre, width = window or _auto_window(stored, monochrome1)
        ds.WindowCenter = round(centre, 1)
        ds.WindowWidth = round(max(width, 2.0), 1)
        ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.QualityControlImage = "NO"
    ds.AcquisitionContextSequence = []
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    for keyword, value in identity.extra.items():
        setattr(ds, keyword, value)
    return _encode(ds, transfer_syntax)


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning.replace("\u200b", "")
    return item


def _set_spacing(ds: Dataset, spacing_mm: float, magnification: float, attrs: str) -> None:
    pitch = round(spacing_mm * magnification, 6)
    if attrs in ("both", "ihe", "imager"):
        ds.ImagerPixelSpacing = [pitch, pitch]
    if attrs in ("both", "ihe"):
        sod = 650.0 / magnification
        ds.DistanceSourceToDetector = 650.0
        ds.DistanceSourceToPatient = round(sod, 3)
        ds.EstimatedRadiographicMagnificationFactor = round(650.0 / round(sod, 3), 6)
    if attrs == "both":
        calibrated = round(pitch / float(ds.EstimatedRadiographicMagnificationFactor), 6)
        ds.PixelSpacing = [calibrated, calibrated]
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "Corrected for magnification at the breast"


def _auto_window(stored: np.ndarray, monochrome1: bool) -> tuple[float, float]:
    sample = stored[::8, ::8]
    lo, hi = np.percentile(sample[sample > 0] if np.any(sample > 0) else sample, [2, 99.8])
    return float(lo + hi) / 2.0, float(hi - lo)


def _encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\0" * 128
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    uid = UID(transfer_syntax)
    if uid.is_compressed:
        if uid not in ENCODERS:
            raise ValueError(f"no encoder for transfer syntax {uid}")
        plugin = ENCODERS[uid]
        # keep the SOP Instance UID: lossless re-encoding is the same instance
        ds.compress(uid, encoding_plugin=plugin or "", generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = uid
    return ds
