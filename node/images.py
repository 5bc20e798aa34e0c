"""DICOM dataset -> Mammogram: with pixels.py, the only modules that read pixel attributes.

What it does, in the order of ../shared/spec/dicom-outputs.md section 1.4:
1. decide whether the object is a single-frame mammogram we can analyse (else
   ``UnusableImageError`` with a reason a person understands), from header values only:
   sizes are checked against the pixel data actually held before anything of the declared
   size is allocated, and laterality must be present and consistent;
2. decode the pixels with one decoder per transfer syntax, the fastest measured here;
3. the values made dense-is-bright, padding masked (pixels.normalise: the Modality LUT, For
   Processing log exposure, MONOCHROME1);
4. spacing in mm (PixelSpacing, else ImagerPixelSpacing / ERMF, else ImagerPixelSpacing with a
   warning, else a configured default with a warning), laterality, view, chest-wall side.

pixels.display_pixels renders the image as a viewer shows it for the burned-in overlays.
"""

from __future__ import annotations

import io
import logging
import os
import warnings

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID, JPEG2000, BreastProjectionXRayImageStorageForPresentation,
    BreastProjectionXRayImageStorageForProcessing, BreastTomosynthesisImageStorage,
    ComputedRadiographyImageStorage, DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing, DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing, JPEG2000Lossless, JPEGLSLossless, JPEGLSNearLossless,
    RLELossless,
)

from node.config import ImagesConfig
from node.errors import NotAnalysableError, UnusableImageError
from node.model import Laterality, Mammogram, Side, SourceRef, View
from node.pixels import FOR_PROCESSING_CLASSES, empty_rescale, is_for_processing, normalise

log = logging.getLogger(__name__)

MULTIFRAME_BREAST = {
    BreastTomosynthesisImageStorage: "Breast Tomosynthesis",
    BreastProjectionXRayImageStorageForPresentation: "Breast Projection (For Presentation)",
    BreastProjectionXRayImageStorageForProcessing: "Breast Projection (For Processing)",
}
MAMMOGRAPHY_CLASSES = {DigitalMammographyXRayImageStorageForPresentation,
                       DigitalMammographyXRayImageStorageForProcessing}
GENERAL_XRAY_CLASSES = {DigitalXRayImageStorageForPresentation, DigitalXRayImageStorageForProcessing,
                        ComputedRadiographyImageStorage}
# The fastest decoder per transfer syntax: median CPU time on one core to decode a 3328 x 4096
# 12-bit phantom (docs/benchmarks.md, "Decoding"). JPEG-LS: pyjpegls 0.34 s, pylibjpeg 1.2 s.
# JPEG 2000: pylibjpeg 1.65 s, pillow 1.66 s (a tie; pydicom's pillow plugin copies the image
# several times and refuses more than 16 bits). RLE: pylibjpeg 0.07 s, pydicom 0.5 s.
# A syntax not listed is decoded by the first plugin pydicom offers for it.
PREFERRED_DECODER = {
    JPEGLSLossless: "pyjpegls",
    JPEGLSNearLossless: "pyjpegls",
    JPEG2000Lossless: "pylibjpeg",
    JPEG2000: "pylibjpeg",
    RLELossless: "pylibjpeg",
}
MIN_SIDE_PX = 64
# The largest mammography detectors are about 24 x 30 cm at 50 um: 4800 x 6000 pixels.
MAX_SIDE_PX = 10000
BITS_ALLOCATED = (8, 16)
VIEW_CODES = {
    "399162004": View.CC,
    "399368009": View.MLO,
    "399260004": View.ML,
    "399352003": View.LM,
    "399099002": View.XCCL,
}


def source_ref(ds: Dataset) -> SourceRef:
    """The identity of an instance as outputs reference it."""
    return SourceRef(
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
    )


def check_analysable(ds: Dataset, config: ImagesConfig = ImagesConfig()) -> None:
    """Raise UnusableImageError unless the header describes an image we can analyse.

    Only header values are read: nothing here allocates pixel memory, so a header declaring
    20000 x 20000 pixels is refused before anything of that size exists.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in MULTIFRAME_BREAST:
        raise NotAnalysableError(f"{MULTIFRAME_BREAST[sop_class]} objects are multi-frame; not yet supported")
    if sop_class in GENERAL_XRAY_CLASSES:
        if ds.get("Modality") != "MG" and str(ds.get("BodyPartExamined", "")).upper() != "BREAST":
            raise NotAnalysableError(f"{_class_name(ds)} image that is not of the breast (Modality {ds.get('Modality', 'absent')})")
    elif sop_class not in MAMMOGRAPHY_CLASSES:
        raise NotAnalysableError(f"{_class_name(ds)} is not a mammography image")
    elif ds.get("Modality") not in (None, "", "MG"):  # absent in some real MG files: tolerated
        raise NotAnalysableError(f"Modality {ds.Modality} in a {_class_name(ds)} object: not a mammogram")
    if sop_class in FOR_PROCESSING_CLASSES and not config.analyse_for_processing:
        raise NotAnalysableError("For Processing image; configured to analyse For Presentation images only")
    if str(ds.get("QualityControlImage", "")).upper() == "YES":
        raise NotAnalysableError("quality-control image, not a patient image")
    if "PixelData" not in ds:
        raise UnusableImageError("no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise NotAnalysableError(f"multi-frame image ({frames} frames); not yet supported")
    check_pixel_module(ds)
    if str(ds.get("LossyImageCompression", "00")) == "01" and not config.accept_lossy:
        raise UnusableImageError("lossy-compressed image; configured to refuse lossy inputs")


def check_pixel_module(ds: Dataset) -> None:
    """The Image Pixel attributes describe one grayscale frame we can decode, and native
    (uncompressed) pixel data holds at least the bytes they declare."""
    if int(ds.get("SamplesPerPixel", 1)) != 1 or ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnusableImageError(f"not a grayscale image (PhotometricInterpretation {ds.get('PhotometricInterpretation', 'absent')})")
    allocated, stored = int(ds.get("BitsAllocated", 0)), int(ds.get("BitsStored", 0))
    if allocated not in BITS_ALLOCATED:
        raise UnusableImageError(f"BitsAllocated {allocated} is not supported (8 or 16 expected)")
    if not 1 <= stored <= allocated:
        raise UnusableImageError(f"BitsStored {stored} is more than BitsAllocated {allocated}"
                                 if stored > allocated else f"BitsStored {stored} is not a valid bit depth")
    if int(ds.get("PixelRepresentation", 0)) not in (0, 1):
        raise UnusableImageError(f"PixelRepresentation {ds.PixelRepresentation} is neither 0 nor 1")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if min(rows, cols) < MIN_SIDE_PX:
        raise UnusableImageError(f"image of {rows} x {cols} pixels is too small to be a mammogram")
    if not _is_encapsulated(ds):
        needed, held = rows * cols * allocated // 8, len(ds.PixelData or b"")
        if held < needed:
            raise UnusableImageError(
                f"pixel data holds {held} bytes, but {rows} x {cols} pixels of {allocated} bits "
                f"need {needed}: the image is incomplete or its header is wrong")
    if max(rows, cols) > MAX_SIDE_PX:
        raise UnusableImageError(f"image of {rows} x {cols} pixels is larger than any mammography "
                                 f"detector (at most {MAX_SIDE_PX} pixels a side)")


def to_mammogram(ds: Dataset, config: ImagesConfig = ImagesConfig()) -> Mammogram:
    """Decode a dataset into a Mammogram, or raise UnusableImageError saying why not."""
    try:
        return _to_mammogram(ds, config)
    except UnusableImageError:
        raise
    except Exception as exc:  # pydicom converts values lazily: a malformed one raises anything
        raise UnusableImageError(f"header value unusable ({type(exc).__name__}: {exc})") from exc


def _to_mammogram(ds: Dataset, config: ImagesConfig) -> Mammogram:
    check_analysable(ds, config)
    side = checked_laterality(ds)
    check_spacing(ds)
    warnings: list[str] = []
    spacing, spacing_source = pixel_spacing_mm(ds, config, warnings)
    if max(spacing) > config.max_spacing_mm:
        raise UnusableImageError(
            f"pixel spacing {max(spacing):.3g} mm is too coarse for microcalcifications "
            f"(at most {config.max_spacing_mm} mm)")
    if empty_rescale(ds):
        warnings.append("Rescale Slope or Intercept present but empty: taken as 1 and 0")
    if view(ds) is View.OTHER:
        warnings.append("no known view in the header (ViewCodeSequence, ViewPosition): "
                        "not paired with the other view of the breast")
    stored = decode(ds)
    pixels, valid = normalise(ds, stored)
    if str(ds.get("LossyImageCompression", "00")) == "01":
        warnings.append("lossy-compressed input: faint specks may be lost")
    return Mammogram(
        pixels=pixels,
        spacing_mm=spacing,
        spacing_source=spacing_source,
        laterality=side,
        view=view(ds),
        chest_wall=chest_wall_side(ds, pixels),
        for_processing=is_for_processing(ds),
        monochrome1=ds.PhotometricInterpretation == "MONOCHROME1",
        source=source_ref(ds),
        valid=valid,
        warnings=tuple(warnings),
    )


def read_file(path) -> Dataset:
    """The whole dataset of a DICOM file, or UnusableImageError saying why it cannot be read."""
    try:
        with open_bounded(path) as fp:
            return dcmread(fp)
    except Exception as exc:  # a damaged file makes pydicom raise many types
        raise UnusableImageError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


class _BoundedFile(io.FileIO):
    """A file read no further than its first ``end`` bytes, which keeps its own position: a
    BufferedReader's ``tell`` asks its raw file, and a seek of the system's is a system call,
    made for every element pydicom reads."""

    def __init__(self, path, end: int | None):
        super().__init__(path, "r")
        size = os.fstat(self.fileno()).st_size
        self.end = size if end is None else min(size, end)
        self.position = 0

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")[:max(self.end - self.position, 0)]
        done = super().readinto(view) or 0
        self.position += done
        return done

    def read(self, size: int | None = -1) -> bytes:
        left = max(self.end - self.position, 0)
        data = super().read(left if size is None or size < 0 else min(size, left))
        self.position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.position = super().seek(offset, whence)
        return self.position

    def tell(self) -> int:
        return self.position


class _BoundedReader(io.BufferedReader):
    """``read(n)`` never asks for more than what is left of the file. pydicom reads a damaged
    value length as it is, and Python allocates the bytes asked for before reading them: a
    flipped bit in a length would cost gigabytes."""

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self.raw.end - self.tell(), 0))
        return super().read(size)


def open_bounded(path, limit: int | None = None) -> io.BufferedReader:
    """A file opened for reading DICOM from untrusted senders (see _BoundedReader); nothing
    past its first ``limit`` bytes is read when given."""
    return _BoundedReader(_BoundedFile(path, limit))


def checked_laterality(ds: Dataset) -> Laterality:
    """The breast shown; refused when the header does not say, or says two things."""
    image_side = str(ds.get("ImageLaterality", "") or "").upper()
    series_side = str(ds.get("Laterality", "") or "").upper()
    if image_side in ("R", "L") and series_side in ("R", "L") and image_side != series_side:
        raise UnusableImageError(f"ImageLaterality {image_side} contradicts Laterality {series_side}: "
                                 "which breast is shown is unknown")
    side = laterality(ds)
    if side is None:
        raise UnusableImageError("no laterality in the header (ImageLaterality R, L or B): "
                                 "which breast is shown is unknown")
    return side


def check_spacing(ds: Dataset) -> None:
    """The spacing attribute used first (spec 1.3.1), when present, must hold two positive sizes:
    a zero or negative one means the header is wrong, and every size in mm would be too."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
        if values in ([None], [""], []):
            continue
        if _pair(values) is None:
            shown = "\\".join(str(v) for v in values)
            raise UnusableImageError(f"{keyword} {shown} is not a usable pixel size "
                                     "(two positive numbers of mm expected)")
        return


def decode(ds: Dataset) -> np.ndarray:
    """The stored pixel values (masked to BitsStored), with the fastest decoder available.

    Exactly one decoder is tried: a stream it finds corrupt is not handed to another one, since
    pylibjpeg-libjpeg turns a damaged JPEG-LS stream into an image of garbage without complaint.
    A second call on the same dataset returns the array already decoded.
    """
    plugin = decoding_plugin(_transfer_syntax(ds))
    # pixel_array_options() drops pydicom's decoded array: set it only when the plugin changes.
    if getattr(ds, "_calcnode_decoder", None) != plugin:
        ds.pixel_array_options(decoding_plugin=plugin)
        ds._calcnode_decoder = plugin
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise many types; each means "cannot decode"
        raise UnusableImageError(f"pixel data cannot be decoded ({_ts_name(ds)}): {exc}") from exc
    if arr.shape != (int(ds.Rows), int(ds.Columns)):
        raise UnusableImageError(f"decoded pixel array has shape {arr.shape}, header says {ds.Rows} x {ds.Columns}")
    return arr


def decoding_plugin(syntax) -> str:
    """The one pydicom decoding plugin used for ``syntax``: PREFERRED_DECODER's when installed,
    else the first pydicom offers; "" for native data, or when no plugin is installed or the
    syntax is unknown (pydicom then says why it cannot decode)."""
    try:
        if not syntax or not UID(syntax).is_compressed:
            return ""
        available = get_decoder(syntax).available_plugins
    except (ValueError, NotImplementedError):  # not a transfer syntax pydicom can decode
        return ""
    preferred = PREFERRED_DECODER.get(syntax, "")
    if preferred in available:
        return preferred
    return available[0] if available else ""


def pixel_spacing_mm(ds: Dataset, config: ImagesConfig, warnings: list[str]) -> tuple[tuple[float, float], str]:
    """(row, column) spacing at the breast, and which attribute it came from (spec 1.3.1)."""
    ps = _pair(ds.get("PixelSpacing"))
    if ps:
        return ps, "PixelSpacing"
    ips = _pair(ds.get("ImagerPixelSpacing"))
    ermf = ds.get("EstimatedRadiographicMagnificationFactor")
    if ips and ermf is not None and float(ermf) > 0:
        return (ips[0] / float(ermf), ips[1] / float(ermf)), "ImagerPixelSpacing / ERMF"
    if ips:
        warnings.append("no magnification factor: detector spacing used, sizes about 10 % too large")
        return ips, "ImagerPixelSpacing"
    warnings.append(f"no pixel spacing in the header: assumed {config.default_spacing_mm} mm")
    return (config.default_spacing_mm, config.default_spacing_mm), "default"


def _pair(value) -> tuple[float, float] | None:
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None


def laterality(ds: Dataset) -> Laterality | None:
    value = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).upper()
    return {"R": Laterality.RIGHT, "L": Laterality.LEFT, "B": Laterality.BOTH}.get(value)


def view(ds: Dataset) -> View:
    """The view from ViewCodeSequence (trusted first), else ViewPosition."""
    seq = ds.get("ViewCodeSequence")
    if seq and str(seq[0].get("CodeValue", "")) in VIEW_CODES:
        return VIEW_CODES[str(seq[0].CodeValue)]
    try:
        return View(str(ds.get("ViewPosition", "")).upper())
    except ValueError:
        return View.OTHER


def chest_wall_side(ds: Dataset, pixels: np.ndarray) -> Side:
    """The image column side of the chest wall.

    PatientOrientation's first value is the direction of increasing column: "A" means the
    nipple is to the right, so the chest wall is left; "P" the reverse. Without it, the side
    with more tissue along the edge is taken.
    """
    orientation = ds.get("PatientOrientation")
    if orientation and len(orientation) >= 1:
        first = str(orientation[0]).upper()
        if first.startswith("A"):
            return Side.LEFT
        if first.startswith("P"):
            return Side.RIGHT
    left, right = float(pixels[:, :8].mean()), float(pixels[:, -8:].mean())
    return Side.LEFT if left >= right else Side.RIGHT


def _class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    name = getattr(uid, "name", "") if uid else ""
    return name or f"SOP class {uid or 'absent'}"


def _transfer_syntax(ds: Dataset):
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _is_encapsulated(ds: Dataset) -> bool:
    ts = _transfer_syntax(ds)
    if not ts:
        return False
    try:
        return UID(ts).is_encapsulated
    except ValueError:
        raise UnusableImageError(f"unknown transfer syntax {ts}") from None


def _ts_name(ds: Dataset) -> str:
    ts = _transfer_syntax(ds)
    return getattr(ts, "name", str(ts)) if ts else "unknown transfer syntax"


def quiet_pydicom() -> None:
    """pydicom warns (and logs) about every malformed value it meets, quoting the value: a
    patient name could land in the log. The node reports what matters about an input itself."""
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
