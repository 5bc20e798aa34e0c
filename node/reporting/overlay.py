"""Secondary-capture overlay: the displayed mammogram with CAD marks burned in (spec section 4).

A fallback every viewer shows: an RGB 8-bit Secondary Capture, JPEG-LS lossless (measured on a
4096 x 3328 RGB image: JPEG-LS 0.8 s / 18.9 MB against RLE 0.7 s / 32.1 MB with pylibjpeg-rle or
8.1 s with pydicom's own RLE encoder; the uncompressed frame is 40.9 MB).
"""

from __future__ import annotations

import copy
from datetime import datetime

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless

from node.errors import ReportError
from node.model import Equipment, ImageFindings
from node.reporting import codes as C
from node.reporting.common import (
    DESCRIPTION_MAX_CHARS, copy_identity, flag_text, mark_radius_px, set_creation_time,
    set_equipment, spacing_mm,
)
from node.reporting.uids import derive_uid

SERIES_NUMBER = 901
DISCLAIMER = " - not for primary diagnosis"
DERIVATION = "CAD marks burned into a windowed copy of the source image"
MARK_RGB = (255, 255, 0)
OUTLINE_RGB = (0, 0, 0)
LEGEND_FILL = (0, 0, 0)
RING_HALF_WIDTH_PX = 1.25  # ring 2-3 px wide: visible at full size, thin enough not to hide specks


def label_text(certainty: float) -> str:
    return f"Calc {round(float(certainty)):d}%"


def legend_text(equipment: Equipment, n_clusters: int) -> str:
    return (f"{equipment.model_name} {equipment.software_version} CAD marks - "
            f"{n_clusters} cluster(s) - not for primary diagnosis")


def series_description(equipment: Equipment, findings: ImageFindings) -> str:
    """e.g. "calcnode CAD overlay: SUSPICIOUS - not for primary diagnosis" (the disclaimer only
    when it fits in 64 characters). Every image of the series has clusters, so the flag holds for
    the whole series."""
    text = f"{equipment.model_name} CAD overlay: {flag_text(len(findings.clusters))}"
    if len(text + DISCLAIMER) <= DESCRIPTION_MAX_CHARS:
        text += DISCLAIMER
    return text[:DESCRIPTION_MAX_CHARS]


def font_size_px(rows: int, cols: int) -> int:
    """Text height scaled to the image: about 1/60 of the short side, at least 10 px."""
    return max(10, round(min(rows, cols) / 60))


def draw_ring(rgb: np.ndarray, centre_rc: tuple[float, float], radius_px: float) -> None:
    """Paint a ring around ``centre_rc`` (numpy row, col) in place; clipped at the image edge."""
    rows, cols = rgb.shape[:2]
    reach = radius_px + 2
    r0, r1 = max(0, int(centre_rc[0] - reach)), min(rows, int(centre_rc[0] + reach) + 2)
    c0, c1 = max(0, int(centre_rc[1] - reach)), min(cols, int(centre_rc[1] + reach) + 2)
    if r0 >= r1 or c0 >= c1:
        return
    rr, cc = np.mgrid[r0:r1, c0:c1]
    distance = np.hypot(rr - centre_rc[0], cc - centre_rc[1])
    rgb[r0:r1, c0:c1][np.abs(distance - radius_px) <= RING_HALF_WIDTH_PX] = MARK_RGB


def _text_box(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _place_label(centre_rc, radius_px, size, shape) -> tuple[int, int]:
    """Top-left (x, y) of a label right of the ring, or left when it would leave the image."""
    rows, cols = shape
    width, height = size
    x = centre_rc[1] + radius_px + 4
    if x + width > cols - 1:
        x = centre_rc[1] - radius_px - 4 - width
    y = centre_rc[0] - height / 2
    x = min(max(x, 1), max(1, cols - 1 - width))
    y = min(max(y, 1), max(1, rows - 1 - height))
    return int(x), int(y)


def _legend_corner(display: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """The corner whose patch is darkest (background rather than breast) for the legend box."""
    rows, cols = display.shape
    width, height = size
    corners = [(4, 4), (cols - width - 4, 4), (4, rows - height - 4),
               (cols - width - 4, rows - height - 4)]
    corners = [(max(0, x), max(0, y)) for x, y in corners]
    means = [float(display[y:y + height, x:x + width].mean()) for x, y in corners]
    return corners[int(np.argmin(means))]


def _draw_legend(draw, display, text: str, font_px: int) -> None:
    rows, cols = display.shape
    lines = [text]
    font = ImageFont.load_default(size=font_px)
    if _text_box(draw, text, font)[0] > cols - 12:
        lines = text.split(" - ", 1)
        lines[1:] = [f"- {lines[1]}"] if len(lines) > 1 else []
    while font_px > 6 and max(_text_box(draw, line, font)[0] for line in lines) > cols - 12:
        font_px -= 1
        font = ImageFont.load_default(size=font_px)
    block = "\n".join(lines)
    left, top, right, bottom = draw.multiline_textbbox((0, 0), block, font=font)
    size = (right - left + 8, bottom - top + 8)
    x, y = _legend_corner(display, size)
    draw.rectangle((x, y, x + size[0], y + size[1]), fill=LEGEND_FILL, outline=MARK_RGB)
    draw.multiline_text((x + 4 - left, y + 4 - top), block, font=font, fill=MARK_RGB)


def render_marks(display: np.ndarray, findings: ImageFindings, source: Dataset,
                 equipment: Equipment) -> np.ndarray:
    """RGB uint8 copy of ``display`` with a ring and label per cluster and a legend box."""
    rgb = np.repeat(display[:, :, None], 3, axis=2)
    radii = [mark_radius_px(cluster, source) for cluster in findings.clusters]
    for cluster, radius in zip(findings.clusters, radii):
        draw_ring(rgb, cluster.centre_rc, radius)
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    font_px = font_size_px(*display.shape)
    font = ImageFont.load_default(size=font_px)
    stroke = max(1, font_px // 12)
    for cluster, radius in zip(findings.clusters, radii):
        text = label_text(cluster.certainty)
        x, y = _place_label(cluster.centre_rc, radius, _text_box(draw, text, font), display.shape)
        left, top = draw.textbbox((0, 0), text, font=font)[:2]
        draw.text((x - left, y - top), text, font=font, fill=MARK_RGB,
                  stroke_width=stroke, stroke_fill=OUTLINE_RGB)
    _draw_legend(draw, display, legend_text(equipment, len(findings.clusters)), font_px)
    return np.asarray(image, dtype=np.uint8)


def _check_inputs(source: Dataset, display: np.ndarray, findings: ImageFindings) -> None:
    if display.dtype != np.uint8 or display.ndim != 2:
        raise ReportError("display must be a 2-D uint8 array")
    if display.shape != (int(source.Rows), int(source.Columns)):
        raise ReportError(f"display {display.shape} does not match the source "
                          f"{source.Rows}x{source.Columns}")
    if findings.source.sop_instance_uid != source.SOPInstanceUID:
        raise ReportError("findings and source are different images")


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [C.code_item(C.SOURCE_IMAGE_FOR_PROCESSING)]
    return item


def _view_without_empty_modifiers(source: Dataset) -> list[Dataset]:
    """The source view code; an empty ViewModifierCodeSequence is an error in the SC IOD."""
    view = copy.deepcopy(source.ViewCodeSequence[0])
    if "ViewModifierCodeSequence" in view and not view.ViewModifierCodeSequence:
        del view.ViewModifierCodeSequence
    return [view]


def _copy_anatomy(sc: Dataset, source: Dataset) -> None:
    orientation = list(source.get("PatientOrientation") or [])
    if len(orientation) == 2:
        sc.PatientOrientation = orientation  # keeps compound values such as "FL"
    if source.get("ImageLaterality"):
        sc.ImageLaterality = source.ImageLaterality
    if source.get("ViewCodeSequence"):
        sc.ViewCodeSequence = _view_without_empty_modifiers(source)
    sc.BodyPartExamined = source.get("BodyPartExamined") or "BREAST"


def build_overlay_sc(source: Dataset, display: np.ndarray, findings: ImageFindings,
                     equipment: Equipment, now: datetime, *, instance_number: int = 1) -> Dataset:
    """RGB Secondary Capture of ``display`` (uint8, as a viewer shows ``source``) with marks."""
    _check_inputs(source, display, findings)
    rgb = render_marks(display, findings, source, equipment)
    study = str(source.StudyInstanceUID)
    spacing = spacing_mm(source)
    orientation = list(source.get("PatientOrientation") or [])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT" if len(orientation) == 2 else None,
        series_instance_uid=derive_uid("sc-series", [study], equipment),
        series_number=SERIES_NUMBER,
        sop_instance_uid=derive_uid("sc", [str(source.SOPInstanceUID), study], equipment),
        instance_number=instance_number, manufacturer=equipment.manufacturer,
        pixel_spacing=spacing,
        # highdicom accepts single letters only; the full values are set below.
        patient_orientation=tuple(v[0] for v in orientation) if len(orientation) == 2 else None,
        transfer_syntax_uid=JPEGLSLossless,
    )
    copy_identity(sc, source)
    set_equipment(sc, equipment)
    set_creation_time(sc, now)
    _copy_anatomy(sc, source)
    sc.SeriesDescription = series_description(equipment, findings)
    sc.ConversionType = "WSD"  # highdicom writes DI (digital interface); this is a workstation
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = DERIVATION
    sc.SourceImageSequence = [_source_reference(source)]
    return sc
