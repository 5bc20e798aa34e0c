"""Stored pixel values -> what they mean: for analysis (dense is bright), and as a viewer shows them.

``normalise`` (images.to_mammogram's step 3): the Modality LUT in float32; For Processing LIN
data log-transformed and oriented by PixelIntensityRelationshipSign so that attenuation is
bright, on a log-exposure scale like For Presentation data (PhotometricInterpretation plays no
part: it says how to display the values, not how they relate to the X-rays, PS3.3
C.8.11.3.1.2); For Presentation MONOCHROME1 inverted once, within the Modality LUT's output
range; PixelPaddingValue masked.

``display_pixels`` renders the image as a viewer shows it (the Modality LUT, the first VOI LUT
or window, polarity) for the burned-in overlays, with pydicom's own LUT functions, so that the
marks sit on the picture a radiologist knows.

Header defects some systems write are read the lenient way a viewer would: an empty Rescale
Slope or Intercept counts as absent (identity), and an unusable VOI (an empty VOI LUT Sequence,
a centre without a width, a width under 1) as none.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing
from pydicom.uid import DigitalMammographyXRayImageStorageForProcessing, DigitalXRayImageStorageForProcessing

FOR_PROCESSING_CLASSES = (DigitalMammographyXRayImageStorageForProcessing, DigitalXRayImageStorageForProcessing)


def normalise(ds: Dataset, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored values -> float32 bright = dense; and the mask of non-padding pixels."""
    valid = None
    if "PixelPaddingValue" in ds:
        valid = stored != ds.PixelPaddingValue
        valid = None if valid.all() else valid
    values = _modality_values(ds, stored)
    if is_for_processing(ds):
        values = _log_exposure(ds, values)
    elif ds.PhotometricInterpretation == "MONOCHROME1":
        lo, hi = modality_range(ds)
        values = np.subtract(np.float32(lo + hi), values, out=values)
    return np.ascontiguousarray(values, dtype=np.float32), valid


def _modality_values(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """The Modality LUT output as a new float32 array. pydicom's apply_modality_lut rescales in
    float64, which costs a 110 MB temporary and a second pass on a full-field image; float32
    holds every 16-bit value exactly."""
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(stored, ds).astype(np.float32)  # always a new array
    values = stored.astype(np.float32)
    if _rescaled(ds):
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        if slope != 1.0:
            values *= np.float32(slope)
        if intercept != 0.0:
            values += np.float32(intercept)
    return values


def _rescaled(ds: Dataset) -> bool:
    """Whether Rescale Slope and Intercept both hold a value. pydicom rescales only when both
    are present, and its windowing treats an empty one as absent; an empty one (a header defect
    some systems write) counts as absent everywhere here: identity."""
    return None not in (ds.get("RescaleSlope"), ds.get("RescaleIntercept"))


def empty_rescale(ds: Dataset) -> bool:
    """Whether Rescale Slope or Intercept is present without a value (images.py warns)."""
    return any(keyword in ds and ds.get(keyword) is None for keyword in ("RescaleSlope", "RescaleIntercept"))


def _modality_lut(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """pydicom's apply_modality_lut, with an empty Rescale Slope or Intercept as absent."""
    if "ModalityLUTSequence" not in ds and not _rescaled(ds):
        return values
    return apply_modality_lut(values, ds)


def _stored_ends(ds: Dataset) -> np.ndarray:
    """The lowest and highest stored value BitsStored and PixelRepresentation allow."""
    bits = int(ds.get("BitsStored", 16))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1])
    return np.array([0, 2**bits - 1])


def modality_range(ds: Dataset) -> tuple[float, float]:
    """The lowest and highest Modality LUT output over the stored values BitsStored allows."""
    out = _modality_values(ds, _stored_ends(ds))
    return float(out.min()), float(out.max())


def _log_exposure(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """For Processing data on a log-exposure scale, attenuation bright (``values`` is reused).

    PixelIntensityRelationship and its Sign say how the stored values relate to the X-ray
    intensity at the detector (PS3.3 C.8.11.3.1.2); PhotometricInterpretation does not change
    that. Sign +1 means higher values = more X-rays reached the detector, so attenuation is the
    negated log. The scale (1000 per e-fold) only keeps numbers familiar.
    """
    relationship = str(ds.get("PixelIntensityRelationship", "LIN")).upper()
    sign = -1.0 if int(ds.get("PixelIntensityRelationshipSign", 1) or 1) < 0 else 1.0
    if relationship == "LIN":
        np.maximum(values, np.float32(1.0), out=values)
        np.log(values, out=values)
        values *= np.float32(1000.0)
    values *= np.float32(-sign)
    return values


def is_for_processing(ds: Dataset) -> bool:
    if str(ds.get("SOPClassUID", "")) in FOR_PROCESSING_CLASSES:
        return True
    return str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING"


def display_pixels(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """uint8 (rows, cols) as a viewer shows the image: first VOI window, MONOCHROME1 inverted.
    ``stored`` is the decoded pixel data (images.decode, or ``ds.pixel_array``)."""
    values = _modality_lut(ds, stored)
    voi = _voi(ds)
    if voi:
        values = (apply_voi if voi == "lut" else apply_windowing)(values, ds, index=0)
        lo, hi = _voi_output_range(ds, voi)
    else:
        lo, hi = (float(v) for v in np.percentile(values[::4, ::4], [0.5, 99.5]))
    span = hi - lo  # negative when the window's output falls as values rise (see _voi_output_range)
    scale = 255.0 / (span if abs(span) >= 1e-6 else 1e-6)
    scaled = np.clip((np.asarray(values, np.float32) - lo) * scale, 0, 255).astype(np.uint8)
    return 255 - scaled if ds.PhotometricInterpretation == "MONOCHROME1" else scaled


def _voi(ds: Dataset) -> str:
    """The first VOI stage, in pydicom's order of preference: "lut", "window", or "" (neither
    usable: the data unchanged)."""
    return "lut" if has_voi_lut(ds) else "window" if first_window(ds) is not None else ""


def has_voi_lut(ds: Dataset) -> bool:
    """A first VOI LUT Sequence item with its descriptor and data (pydicom's test)."""
    lut = ds.get("VOILUTSequence")
    return bool(lut) and None not in (lut[0].get("LUTDescriptor"), lut[0].get("LUTData"))


def first_window(ds: Dataset) -> tuple[float, float] | None:
    """The first window's (centre, width) when there is a usable one: a centre and a width
    (pydicom's test), the width at least 1: pydicom refuses a narrower one, and it counts as none
    here (the image is stretched rather than not shown)."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (center, width))
    return (center, width) if width >= 1 else None


def _voi_output_range(ds: Dataset, voi: str) -> tuple[float, float]:
    """The VOI stage's output below and above the window, as pydicom applies it (PS3.3 C.11.2.1.2).

    pydicom maps the window onto the Modality LUT's output for the lowest and highest stored
    value, in that order: for a negative Rescale Slope the first is the larger, and its window
    output falls as values rise. After a Modality LUT Sequence it spans the LUT's bits.
    """
    if voi == "lut":
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if "ModalityLUTSequence" in ds:
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    below, above = _modality_lut(ds, _stored_ends(ds))  # in float64 when rescaled, as pydicom
    return float(below), float(above)
