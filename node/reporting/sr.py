"""Mammography CAD SR (TID 4000) built with plain pydicom, following dicom-outputs.md 2-3.

The tree is built in a fixed order (language, Image Library, findings summary, Summary of
Detections, Summary of Analyses) so the Image Library entry of the k-th image is always at the
1-based path 1\\2\\k that the by-reference items point to.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, MammographyCADSRStorage
from pydicom.valuerep import DSfloat

from node.errors import ReportError
from node.model import Cluster, CompositeFinding, Equipment, SourceRef, StudyFindings
from node.reporting import codes as C
from node.reporting.common import (
    DESCRIPTION_MAX_CHARS, check_encodable, common_source, copy_identity, dicom_date, dicom_time,
    result_description, set_equipment, spacing_mm, to_dicom_xy,
)
from node.reporting.uids import derive_uid

SERIES_NUMBER = 900
LIBRARY_PATH = (1, 2)
ACQ, PROP = "HAS ACQ CONTEXT", "HAS PROPERTIES"
OUTLINE_VERTICES = 24


# -- content items -------------------------------------------------------------------------

def _item(rel: str | None, vt: str, name: Code | None, children=()) -> Dataset:
    ds = Dataset()
    if rel:
        ds.RelationshipType = rel
    ds.ValueType = vt
    if name is not None:
        ds.ConceptNameCodeSequence = [C.code_item(name)]
    if children:
        ds.ContentSequence = Sequence(list(children))
    return ds


def _container(rel, name, children=(), template=None) -> Dataset:
    ds = _item(rel, "CONTAINER", name, children)
    ds.ContinuityOfContent = "SEPARATE"
    if template:
        tpl = Dataset()
        tpl.MappingResource = "DCMR"
        tpl.TemplateIdentifier = template
        ds.ContentTemplateSequence = [tpl]
    return ds


def _code(rel, name, value: Code, children=()) -> Dataset:
    ds = _item(rel, "CODE", name, children)
    ds.ConceptCodeSequence = [C.code_item(value)]
    return ds


def _text(rel, name, value: str) -> Dataset:
    ds = _item(rel, "TEXT", name)
    ds.TextValue = value
    return ds


def _num(rel, name, value: float, unit: Code) -> Dataset:
    ds = _item(rel, "NUM", name)
    measured = Dataset()
    v = float(value)
    measured.NumericValue = str(int(v)) if v.is_integer() else DSfloat(v, auto_format=True)
    measured.MeasurementUnitsCodeSequence = [C.code_item(unit)]
    ds.MeasuredValueSequence = [measured]
    return ds


def _date_time(rel, vt: str, name, value: str) -> Dataset:
    ds = _item(rel, vt, name)
    setattr(ds, "Date" if vt == "DATE" else "Time", value)
    return ds


def _scoord(name, graphic_type: str, points_xy, lib_path) -> Dataset:
    ds = _item(PROP, "SCOORD", name, [_byref("SELECTED FROM", lib_path)])
    ds.GraphicType = graphic_type
    ds.GraphicData = [float(v) for xy in points_xy for v in xy]
    return ds


def _byref(rel: str, path) -> Dataset:
    ds = Dataset()
    ds.RelationshipType = rel
    ds.ReferencedContentItemIdentifier = [int(p) for p in path]
    return ds


# -- TID 4020 Image Library ----------------------------------------------------------------

def _library_entry(src: Dataset) -> Dataset:
    rows = []
    if src.get("ImageLaterality") in C.LATERALITY:
        rows.append(_code(ACQ, C.IMAGE_LATERALITY, C.LATERALITY[src.ImageLaterality]))
    if src.get("ViewCodeSequence"):
        rows.append(_view_row(src.ViewCodeSequence[0]))
    orientation = list(src.get("PatientOrientation") or [])
    if len(orientation) == 2:
        rows.append(_text(ACQ, C.PATIENT_ORIENTATION_ROW, orientation[0]))
        rows.append(_text(ACQ, C.PATIENT_ORIENTATION_COLUMN, orientation[1]))
    for keyword, vt, name in (("StudyDate", "DATE", C.STUDY_DATE), ("StudyTime", "TIME", C.STUDY_TIME),
                              ("ContentDate", "DATE", C.CONTENT_DATE),
                              ("ContentTime", "TIME", C.CONTENT_TIME)):
        if src.get(keyword):
            rows.append(_date_time(ACQ, vt, name, str(src[keyword].value)))
    spacing = spacing_mm(src)
    if spacing is not None:
        # PixelSpacing is row\column: horizontal = between columns = [1], vertical = [0].
        rows.append(_num(ACQ, C.HORIZONTAL_PIXEL_SPACING, round(spacing[1], 6), C.MILLIMETRE))
        rows.append(_num(ACQ, C.VERTICAL_PIXEL_SPACING, round(spacing[0], 6), C.MILLIMETRE))
    if src.get("PositionerPrimaryAngle") is not None:
        rows.append(_num(ACQ, C.POSITIONER_PRIMARY_ANGLE, float(src.PositionerPrimaryAngle),
                         C.DEGREE))
    image = _item("CONTAINS", "IMAGE", None, rows)
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    image.ReferencedSOPSequence = [ref]
    return image


def _view_row(view: Dataset) -> Dataset:
    """Image View copied from the source's ViewCodeSequence, with its modifiers if any."""
    modifiers = [_copied_code("HAS CONCEPT MOD", C.IMAGE_VIEW_MODIFIER, m)
                 for m in view.get("ViewModifierCodeSequence") or []]
    return _copied_code(ACQ, C.IMAGE_VIEW, view, modifiers)


def _copied_code(rel, name, source_item: Dataset, children=()) -> Dataset:
    ds = _item(rel, "CODE", name, children)
    value = Dataset()
    for keyword in ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion"):
        if keyword in source_item:
            value[keyword] = source_item[keyword]
    value.CodeMeaning = str(source_item.CodeMeaning).replace(C.ZERO_WIDTH_SPACE, "")
    ds.ConceptCodeSequence = [value]
    return ds


# -- TID 4019 / 4006 / 4004 / 4003 ---------------------------------------------------------

def _algorithm(equipment: Equipment) -> list[Dataset]:
    rows = [_text(PROP, C.ALGORITHM_NAME, equipment.model_name),
            _text(PROP, C.ALGORITHM_VERSION, equipment.software_version)]
    rows += [_text(PROP, C.ALGORITHM_PARAMETERS, p) for p in equipment.algorithm_parameters]
    return rows


def _rendering_intent() -> Dataset:
    return _code("HAS CONCEPT MOD", C.RENDERING_INTENT, C.PRESENTATION_REQUIRED)


def _outline_xy(cluster: Cluster, rows: int, cols: int) -> list[tuple[float, float]]:
    """Closed polyline in DICOM (x, y), clipped to the image; a circle when no outline is given."""
    points = [to_dicom_xy(r, c) for r, c in cluster.outline_rc]
    if len(points) < 3:
        row, col = cluster.centre_rc
        angles = 2 * np.pi * np.arange(OUTLINE_VERTICES) / OUTLINE_VERTICES
        points = [to_dicom_xy(row + cluster.radius_px * np.sin(a), col + cluster.radius_px * np.cos(a))
                  for a in angles]
    points = [(min(max(x, 0.0), float(cols)), min(max(y, 0.0), float(rows))) for x, y in points]
    if points[0] != points[-1]:
        points.append(points[0])
    return points


def _single_image_finding(rel: str, cluster: Cluster, src: Dataset, lib_path,
                          equipment: Equipment) -> Dataset:
    rows, cols = int(src.Rows), int(src.Columns)
    centre = to_dicom_xy(*cluster.centre_rc)
    if not (0 <= centre[0] <= cols and 0 <= centre[1] <= rows):
        raise ReportError(f"cluster centre {cluster.centre_rc} (row, col) is outside the "
                          f"{rows}x{cols} image {src.SOPInstanceUID}")
    children = [_rendering_intent(), *_algorithm(equipment),
                _num(PROP, C.CERTAINTY_OF_FINDING, _percent(cluster.certainty), C.PERCENT),
                _num(PROP, C.NUMBER_OF_CALCIFICATIONS, cluster.count, C.NO_UNITS)]
    if cluster.morphology is not None:
        children.append(_code(PROP, C.CALCIFICATION_TYPE, C.MORPHOLOGY[cluster.morphology]))
    if cluster.distribution is not None:
        children.append(_code(PROP, C.CALCIFICATION_DISTRIBUTION,
                              C.DISTRIBUTION[cluster.distribution]))
    children.append(_scoord(C.CENTER, "POINT", [centre], lib_path))
    children.append(_scoord(C.OUTLINE, "POLYLINE", _outline_xy(cluster, rows, cols), lib_path))
    return _code(rel, C.SINGLE_IMAGE_FINDING, C.CALCIFICATION_CLUSTER, children)


def _percent(value: float) -> float:
    if not 0.0 <= float(value) <= 100.0:
        raise ReportError(f"certainty {value} is not a percentage 0..100")
    return round(float(value), 1)


def _composite(composite: CompositeFinding, findings: list[Dataset], n_images: int,
               equipment: Equipment) -> Dataset:
    scope = C.ON_MULTIPLE_IMAGES if n_images > 1 else C.ON_ONE_OF_THE_IMAGES
    children = [_rendering_intent(),
                _code(PROP, C.COMPOSITE_TYPE, C.RELATED_SPATIALLY),
                _code(PROP, C.SCOPE_OF_FEATURE, scope),
                *_algorithm(equipment),
                _num(PROP, C.CERTAINTY_OF_FEATURE, _percent(composite.certainty), C.PERCENT),
                *findings]
    return _code("CONTAINS", C.COMPOSITE_FEATURE, C.CALCIFICATION_CLUSTER, children)


def _impression(content: Dataset) -> Dataset:
    return _container("INFERRED FROM", C.INDIVIDUAL_IMPRESSION, [_rendering_intent(), content])


def _lesions(findings: StudyFindings, sources, lib_paths, equipment) -> list[Dataset]:
    """One TID 4003 container per lesion: composites first, then clusters in no composite."""
    clusters = {(img.source.sop_instance_uid, i): c
                for img in findings.images for i, c in enumerate(img.clusters)}
    used: set[tuple[str, int]] = set()
    lesions = []
    for composite in findings.composites:
        members = []
        for member in composite.members:
            key = (member[0], int(member[1]))
            if key not in clusters or key in used:
                raise ReportError(f"composite member {key} is unknown or used twice")
            used.add(key)
            members.append(_single_image_finding("INFERRED FROM", clusters[key], sources[key[0]],
                                                 lib_paths[key[0]], equipment))
        n_images = len({uid for uid, _ in composite.members})
        lesions.append(_impression(_composite(composite, members, n_images, equipment)))
    for key, cluster in clusters.items():
        if key not in used:
            lesions.append(_impression(_single_image_finding(
                "CONTAINS", cluster, sources[key[0]], lib_paths[key[0]], equipment)))
    return lesions


# -- TID 4001 / 4015-4018 summaries --------------------------------------------------------

def _findings_summary(findings: StudyFindings, lesions: list[Dataset]) -> Dataset:
    found = findings.cluster_count > 0
    if not findings.images:
        value = C.NONE_SUCCEEDED
    elif findings.failures:
        value = C.PARTIAL_WITH_FINDINGS if found else C.PARTIAL_WITHOUT_FINDINGS
    else:
        value = C.WITH_FINDINGS if found else C.WITHOUT_FINDINGS
    return _code("CONTAINS", C.FINDINGS_SUMMARY, value, lesions)


def _performed(name, value, paths, equipment) -> Dataset:
    refs = [_byref(PROP, path) for path in paths]
    return _code("CONTAINS", name, value, [*_algorithm(equipment), *refs])


def _detections(ok_paths, failed_paths, equipment) -> Dataset:
    branches = []
    if ok_paths:
        branches.append(_container("INFERRED FROM", C.SUCCESSFUL_DETECTIONS, [_performed(
            C.DETECTION_PERFORMED, C.CALCIFICATION_CLUSTER, ok_paths, equipment)]))
    if failed_paths:
        branches.append(_container("INFERRED FROM", C.FAILED_DETECTIONS, [_performed(
            C.DETECTION_PERFORMED, C.CALCIFICATION_CLUSTER, failed_paths, equipment)]))
    if ok_paths and failed_paths:
        status = C.PARTIALLY_SUCCEEDED
    else:
        status = C.SUCCEEDED if ok_paths else C.FAILED
    return _code("CONTAINS", C.SUMMARY_OF_DETECTIONS, status, branches)


def _analyses(used_paths, equipment) -> Dataset:
    """TID 4000's Summary of Analyses: the CC/MLO correlation, with the images it compared."""
    if not used_paths:
        return _code("CONTAINS", C.SUMMARY_OF_ANALYSES, C.NOT_ATTEMPTED)
    branch = _container("INFERRED FROM", C.SUCCESSFUL_ANALYSES, [_performed(
        C.ANALYSIS_PERFORMED, C.SPATIAL_COLLOCATION, used_paths, equipment)])
    return _code("CONTAINS", C.SUMMARY_OF_ANALYSES, C.SUCCEEDED, [branch])


# -- the document --------------------------------------------------------------------------

def _ordered_sources(sources: Mapping[str, Dataset], findings: StudyFindings) -> list[Dataset]:
    uids = [i.source.sop_instance_uid for i in findings.images]
    uids += [f.source.sop_instance_uid for f in findings.failures]
    if not uids:
        raise ReportError("findings name no image: nothing to report")
    if len(set(uids)) != len(uids):
        raise ReportError("an image appears twice among the findings and failures")
    missing = [uid for uid in uids if uid not in sources]
    if missing:
        raise ReportError(f"no source header for {len(missing)} image(s), e.g. {missing[0]}")
    return [sources[uid] for uid in uids]


def _evidence(study_uid: str, images: list[Dataset]) -> Sequence:
    by_series: dict[str, list[Dataset]] = {}
    for src in images:
        by_series.setdefault(str(src.SeriesInstanceUID), []).append(src)
    series_items = []
    for series_uid, members in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = [_sop_ref(src) for src in members]
        series_items.append(series)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = series_items
    return Sequence([study])


def _hierarchical_ref(ref: SourceRef) -> Sequence:
    """SR Document General Module's Hierarchical SOP Instance Reference Macro for one object."""
    sop = Dataset()
    sop.ReferencedSOPClassUID = ref.sop_class_uid
    sop.ReferencedSOPInstanceUID = ref.sop_instance_uid
    series = Dataset()
    series.SeriesInstanceUID = ref.series_instance_uid
    series.ReferencedSOPSequence = [sop]
    study = Dataset()
    study.StudyInstanceUID = ref.study_instance_uid
    study.ReferencedSeriesSequence = [series]
    return Sequence([study])


def _sop_ref(src: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    return ref


def _content_tree(sources, findings, images, equipment) -> Dataset:
    lib_paths = {str(src.SOPInstanceUID): (*LIBRARY_PATH, k + 1) for k, src in enumerate(images)}
    ok_paths = [lib_paths[i.source.sop_instance_uid] for i in findings.images]
    failed_paths = [lib_paths[f.source.sop_instance_uid] for f in findings.failures]
    lesions = _lesions(findings, sources, lib_paths, equipment)
    children = [
        _code("HAS CONCEPT MOD", C.LANGUAGE_OF_CONTENT, C.ENGLISH_US),
        _container("CONTAINS", C.IMAGE_LIBRARY, [_library_entry(src) for src in images]),
        _findings_summary(findings, lesions),
        _detections(ok_paths, failed_paths, equipment),
        _analyses([lib_paths[uid] for uid in findings.correlated_images], equipment),
    ]
    return _container(None, C.MAMMOGRAPHY_CAD_REPORT, children, template="4000")


def build_cad_sr(sources: Mapping[str, Dataset], findings: StudyFindings, equipment: Equipment,
                 now: datetime, predecessor: SourceRef | None = None) -> Dataset:
    """The Mammography CAD SR of one study and run (TID 4000), identity copied from the sources.

    ``sources`` maps SOP Instance UID -> header of every image in ``findings.images`` and
    ``findings.failures``. ``predecessor`` is the SR of an earlier run of the same study that
    this one supersedes (a re-analysis after late images); it goes in the Predecessor
    Documents Sequence unless it is this very document. Raises ReportError when inputs are
    inconsistent.
    """
    images = _ordered_sources(sources, findings)
    first = common_source(images)
    if str(first.StudyInstanceUID) != findings.study_instance_uid:
        raise ReportError("findings and source images name different studies")
    check_encodable([equipment.model_name, equipment.software_version,
                     *equipment.algorithm_parameters], first, "algorithm text")
    uids = [str(src.SOPInstanceUID) for src in images]
    ds = Dataset()
    copy_identity(ds, first)
    ds.SOPClassUID = MammographyCADSRStorage
    ds.SOPInstanceUID = derive_uid("sr", uids, equipment)
    ds.InstanceCreationDate, ds.InstanceCreationTime = dicom_date(now), dicom_time(now)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = derive_uid("sr-series", uids, equipment)
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = _series_description(findings, equipment)
    ds.ReferencedPerformedProcedureStepSequence = []
    set_equipment(ds, equipment)
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = dicom_date(now), dicom_time(now)
    ds.PerformedProcedureCodeSequence = []
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(findings.study_instance_uid, images)
    if predecessor is not None and predecessor.sop_instance_uid != ds.SOPInstanceUID:
        if predecessor.study_instance_uid != findings.study_instance_uid:
            raise ReportError("the predecessor SR belongs to another study")
        ds.PredecessorDocumentsSequence = _hierarchical_ref(predecessor)
    for element in _content_tree(sources, findings, images, equipment):
        ds.add(element)
    _add_file_meta(ds)
    return ds


def _series_description(findings: StudyFindings, equipment: Equipment) -> str:
    """The result in words, for worklists and study browsers that list series descriptions."""
    if not findings.images:  # no image could be analysed: "NOT SUSPICIOUS" would mislead
        return f"{equipment.model_name} CAD: analysis failed"[:DESCRIPTION_MAX_CHARS]
    return result_description(equipment.model_name, findings.cluster_count)


def _add_file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
