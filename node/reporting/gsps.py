"""Grayscale Softcopy Presentation States drawing the CAD marks (spec section 5).

One GSPS per (laterality, polarity) group of images with findings: General Series Laterality
must name one breast, and the Presentation LUT shape (INVERSE for MONOCHROME1) is per state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from highdicom.content import PresentationLUTTransformation
from highdicom.pr.content import SoftcopyVOILUTTransformation
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian

from node.errors import ReportError
from node.model import Equipment, ImageFindings
from node.pixels import first_window, has_voi_lut, modality_range
from node.reporting.common import (
    PATIENT_STUDY_TYPE2,
    common_source, copy_identity, dicom_date, dicom_time, mark_radius_px, set_equipment,
    to_dicom_xy,
)
from node.reporting.overlay import label_text
from node.reporting.uids import derive_uid

SERIES_NUMBER = 902
CONTENT_LABEL = "CAD_MARKS"
LAYER = "CAD"
PIXEL = hd.pr.AnnotationUnitsValues.PIXEL


def _circle(cx: float, cy: float, radius: float, cols: int, rows: int) -> np.ndarray:
    """Centre plus a point on the circumference that lies inside the image (spec 5.2)."""
    for dx, dy in ((radius, 0.0), (-radius, 0.0), (0.0, radius), (0.0, -radius)):
        if 0 <= cx + dx <= cols and 0 <= cy + dy <= rows:
            return np.array([[cx, cy], [cx + dx, cy + dy]])
    # A ring larger than the image: shrink it to the nearest edge rather than leave the grid.
    return np.array([[cx, cy], [float(cols) if cx > cols / 2 else 0.0, cy]])


def _label_box(cx, cy, radius, text, cols, rows) -> tuple[float, float, float, float]:
    """A text box beside the circle, about 1/50 of the image high, kept inside the image."""
    height = max(12.0, min(rows, cols) / 50)
    width = min(0.6 * height * len(text), cols - 2.0)
    x0 = cx + radius + 4 if cx + radius + 4 + width <= cols else cx - radius - 4 - width
    x0 = min(max(x0, 1.0), cols - 1.0 - width)
    y0 = min(max(cy - height / 2, 1.0), rows - 1.0 - height)
    return (round(x0, 1), round(y0, 1), round(x0 + width, 1), round(y0 + height, 1))


def _annotation(source: Dataset, findings: ImageFindings, layer) -> hd.pr.GraphicAnnotation:
    rows, cols = int(source.Rows), int(source.Columns)
    graphics, texts = [], []
    for cluster in findings.clusters:
        cx, cy = to_dicom_xy(*cluster.centre_rc)
        if not (0 <= cx <= cols and 0 <= cy <= rows):
            raise ReportError(f"cluster centre {cluster.centre_rc} outside image "
                              f"{source.SOPInstanceUID}")
        radius = mark_radius_px(cluster, source)
        graphics.append(hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.CIRCLE,
            graphic_data=_circle(cx, cy, radius, cols, rows), units=PIXEL))
        text = label_text(cluster.certainty)
        texts.append(hd.pr.TextObject(text_value=text, units=PIXEL,
                                      bounding_box=_label_box(cx, cy, radius, text, cols, rows)))
    return hd.pr.GraphicAnnotation(referenced_images=[source], graphic_layer=layer,
                                   graphic_objects=graphics, text_objects=texts)


def _first_voi(src: Dataset) -> dict:
    """The source's first window, else its first VOI LUT, as SoftcopyVOILUTTransformation args;
    else (no usable VOI: none, or a width under 1, a centre without a width, an empty VOI LUT
    Sequence) a window over the whole Modality LUT output, the picture an identity VOI gives."""
    window = first_window(src)
    if window is not None:
        function = src.get("VOILUTFunction")
        function = function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else None
        return dict(window_center=window[0], window_width=window[1], voi_lut_function=function)
    if has_voi_lut(src):
        lut = src.VOILUTSequence[0]
        data = lut.LUTData
        array = (np.frombuffer(data, np.uint16) if isinstance(data, bytes)
                 else np.asarray(list(data) if isinstance(data, MultiValue) else [data]))
        bits = int(lut.LUTDescriptor[2])
        if bits not in (8, 16):
            # The GSPS allows 8 or 16 bit LUTs only: stretch e.g. 12-bit output to 16 bits, which
            # keeps the curve (the Presentation LUT maps the full VOI output range anyway).
            array = np.round(array.astype(np.float64) * (65535 / (2**bits - 1)))
        dtype = np.uint8 if bits == 8 else np.uint16
        return dict(voi_luts=[hd.VOILUT(first_mapped_value=int(lut.LUTDescriptor[1]),
                                        lut_data=array.astype(dtype),
                                        lut_explanation=lut.get("LUTExplanation"))])
    low, high = modality_range(src)
    return dict(window_center=(low + high) / 2, window_width=max(high - low, 1.0), voi_lut_function=None)


def _first_window(sources: Sequence[Dataset]) -> list[SoftcopyVOILUTTransformation] | None:
    """Fallback VOI when highdicom cannot copy the sources' own (it fails on in-memory
    VOILUTSequence data, on window + LUT mixes and on unusable windows): each image's first
    window or LUT, or a window over its whole range."""
    transformations = []
    for src in sources:
        args = _first_voi(src)
        refs = hd.ReferencedImageSequence([src]) if len(sources) > 1 else None
        transformations.append(SoftcopyVOILUTTransformation(referenced_images=refs, **args))
    return transformations or None


def _groups(sources, findings) -> list[tuple[list[Dataset], list[ImageFindings]]]:
    """Images with clusters grouped by (ImageLaterality, PhotometricInterpretation), in order."""
    by_uid = {str(src.SOPInstanceUID): src for src in sources}
    groups: dict[tuple[str, str], tuple[list, list]] = {}
    for image in findings:
        if not image.clusters:
            continue
        src = by_uid.get(image.source.sop_instance_uid)
        if src is None:
            raise ReportError(f"no source header for {image.source.sop_instance_uid}")
        key = (str(src.get("ImageLaterality") or ""), str(src.PhotometricInterpretation))
        group = groups.setdefault(key, ([], []))
        group[0].append(src)
        group[1].append(image)
    return list(groups.values())


def _header(src: Dataset) -> Dataset:
    """The source without its pixels, with absent Type 2 identity attributes present and empty.

    highdicom reads StudyID, ReferringPhysicianName ... from the referenced images and fails when
    a real-world header lacks them; the identity is copied from the source afterwards anyway.
    """
    header = Dataset()
    for element in src:
        if element.keyword != "PixelData":
            header.add(element)
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _presentation_state(images, image_findings, equipment, now, number, series_uid):
    images = [_header(src) for src in images]
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description="CAD marks")
    inverse = images[0].PhotometricInterpretation == "MONOCHROME1"
    uids = [str(src.SOPInstanceUID) for src in images] + [str(images[0].StudyInstanceUID)]
    kwargs = dict(
        referenced_images=images, series_instance_uid=series_uid, series_number=SERIES_NUMBER,
        sop_instance_uid=derive_uid("gsps", uids, equipment), instance_number=number,
        manufacturer=equipment.manufacturer, manufacturer_model_name=equipment.model_name,
        software_versions=equipment.software_version,
        device_serial_number=equipment.device_serial_number,
        content_label=CONTENT_LABEL, content_description="CAD calcification marks",
        content_creator_name=None,
        graphic_annotations=[_annotation(s, f, layer) for s, f in zip(images, image_findings)],
        graphic_layers=[layer],
        presentation_lut_transformation=PresentationLUTTransformation(
            presentation_lut_shape="INVERSE" if inverse else "IDENTITY"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    try:
        pr = hd.pr.GrayscaleSoftcopyPresentationState(**kwargs)
    except (ValueError, TypeError, AttributeError):
        # highdicom refuses some VOI combinations (window plus VOILUTSequence); keep the
        # first window so the display is not washed out.
        pr = hd.pr.GrayscaleSoftcopyPresentationState(
            **kwargs, voi_lut_transformations=_first_window(images))
    return pr


def build_gsps(sources: Sequence[Dataset], findings: Sequence[ImageFindings],
               equipment: Equipment, now: datetime) -> list[Dataset]:
    """One GSPS per (laterality, polarity) group of the images that have clusters."""
    if not sources:
        return []
    first = common_source(sources)
    series_uid = derive_uid("gsps-series", [str(s.SOPInstanceUID) for s in sources], equipment)
    states = []
    for number, (images, image_findings) in enumerate(_groups(sources, findings), start=1):
        pr = _presentation_state(images, image_findings, equipment, now, number, series_uid)
        copy_identity(pr, first)
        set_equipment(pr, equipment)
        # GSPS has no General Image module: no ContentDate/Time, only creation stamps.
        pr.InstanceCreationDate = pr.PresentationCreationDate = dicom_date(now)
        pr.InstanceCreationTime = pr.PresentationCreationTime = dicom_time(now)
        laterality = images[0].get("ImageLaterality")
        if laterality:
            pr.Laterality = laterality  # General Series 2C for a paired organ
        states.append(pr)
    return states
