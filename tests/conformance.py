"""Reusable conformance checks for calcnode's outputs (spec dicom-outputs.md 6.5).

``check_cad_sr``, ``check_sc`` and ``check_gsps`` return a list of problems (empty = OK);
``run_dciodvfy``, ``run_dsrdump`` and ``render_gsps`` wrap the external validators. The SR checks
walk the content tree themselves because highdicom's finder fails on unnamed items.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue

from node.reporting import codes as C
from node.reporting.common import IDENTITY_KEYWORDS, PATIENT_STUDY_TYPE2
from node.reporting.uids import is_valid_uid

DCIODVFY, DSRDUMP, DCMP2PGM = "/usr/bin/dciodvfy", "/usr/bin/dsrdump", "/usr/bin/dcmp2pgm"
MAMMO_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
LOSSLESS_SYNTAXES = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"}
_DSRDUMP_EXPECTED = "template constraints not yet supported"
_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")

# PS3.3 Table A.35.5-2 as DCMTK enforces it: (source VT, relationship) -> (targets, by-reference ok)
RELATIONSHIPS = {
    ("CONTAINER", "CONTAINS"): ({"CODE", "NUM", "SCOORD", "IMAGE", "CONTAINER", "TEXT", "DATE"}, False),
    ("TEXT", "HAS OBS CONTEXT"): ({"TEXT", "CODE", "NUM", "DATE", "TIME", "PNAME", "UIDREF",
                                   "COMPOSITE"}, False),
    ("IMAGE", "HAS ACQ CONTEXT"): ({"TEXT", "CODE", "DATE", "TIME", "NUM", "UIDREF"}, False),
    ("CONTAINER", "HAS CONCEPT MOD"): ({"TEXT", "CODE"}, False),
    ("TEXT", "HAS PROPERTIES"): ({"CONTAINER", "TEXT", "CODE", "NUM", "DATE", "IMAGE", "SCOORD",
                                  "UIDREF"}, True),
    ("CODE", "INFERRED FROM"): ({"CODE", "NUM", "SCOORD", "CONTAINER", "TEXT", "IMAGE"}, True),
    ("SCOORD", "SELECTED FROM"): ({"IMAGE"}, True),
}
for _vt in ("CODE", "NUM"):
    RELATIONSHIPS[(_vt, "HAS OBS CONTEXT")] = RELATIONSHIPS[("TEXT", "HAS OBS CONTEXT")]
    RELATIONSHIPS[(_vt, "HAS PROPERTIES")] = RELATIONSHIPS[("TEXT", "HAS PROPERTIES")]
for _vt in ("CODE", "NUM", "COMPOSITE"):
    RELATIONSHIPS[(_vt, "HAS CONCEPT MOD")] = RELATIONSHIPS[("CONTAINER", "HAS CONCEPT MOD")]
RELATIONSHIPS[("NUM", "INFERRED FROM")] = RELATIONSHIPS[("CODE", "INFERRED FROM")]
RELATIONSHIPS[("CONTAINER", "HAS OBS CONTEXT")] = (
    RELATIONSHIPS[("TEXT", "HAS OBS CONTEXT")][0] | {"CONTAINER"}, False)


# -- tree walking --------------------------------------------------------------------------

def walk(root: Dataset, path: tuple[int, ...] = (1,)) -> Iterator[tuple[tuple[int, ...], Dataset]]:
    """Every content item with its 1-based path; the root (the dataset itself) is (1,)."""
    yield path, root
    for index, child in enumerate(root.get("ContentSequence") or [], start=1):
        yield from walk(child, path + (index,))


def _fmt(path: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in path)


def _code_of(item: Dataset, keyword: str) -> tuple[str, str] | None:
    seq = item.get(keyword)
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)) if seq else None


def _name(item: Dataset) -> tuple[str, str] | None:
    return _code_of(item, "ConceptNameCodeSequence")


def _key(code) -> tuple[str, str]:
    return code.value, code.scheme_designator


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


def _named_children(item: Dataset, code) -> list[Dataset]:
    return [c for c in _children(item) if _name(c) == _key(code)]


def _sources_by_uid(sources) -> dict[str, Dataset]:
    if isinstance(sources, Mapping):
        return {str(k): v for k, v in sources.items()}
    return {str(s.SOPInstanceUID): s for s in sources}


# -- Mammography CAD SR --------------------------------------------------------------------

ROOT_ORDER = [("HAS CONCEPT MOD", C.LANGUAGE_OF_CONTENT), ("CONTAINS", C.IMAGE_LIBRARY),
              ("CONTAINS", C.FINDINGS_SUMMARY), ("CONTAINS", C.SUMMARY_OF_DETECTIONS),
              ("CONTAINS", C.SUMMARY_OF_ANALYSES)]


def _check_root(sr: Dataset) -> list[str]:
    problems = []
    if sr.get("SOPClassUID") != MAMMO_CAD_SR:
        problems.append(f"SOPClassUID {sr.get('SOPClassUID')} is not Mammography CAD SR")
    if sr.get("ValueType") != "CONTAINER" or _name(sr) != _key(C.MAMMOGRAPHY_CAD_REPORT):
        problems.append("root is not CONTAINER (111036, DCM)")
    tpl = (sr.get("ContentTemplateSequence") or [Dataset()])[0]
    if (tpl.get("TemplateIdentifier"), tpl.get("MappingResource")) != ("4000", "DCMR"):
        problems.append("root template is not 4000/DCMR")
    if sr.get("ContinuityOfContent") != "SEPARATE":
        problems.append("root ContinuityOfContent is not SEPARATE")
    found = [(c.get("RelationshipType"), _name(c)) for c in _children(sr)]
    wanted = [(rel, _key(code)) for rel, code in ROOT_ORDER]
    if found != wanted:
        problems.append(f"root children {found} are not in the order {wanted}")
    return problems


def _check_relationships(items: dict) -> list[str]:
    problems = []
    for path, item in items.items():
        for index, child in enumerate(_children(item), start=1):
            rel, child_path = child.get("RelationshipType"), path + (index,)
            allowed = RELATIONSHIPS.get((item.get("ValueType"), rel))
            if allowed is None:
                problems.append(f"{_fmt(child_path)}: {rel} from {item.get('ValueType')} "
                                "is not allowed")
                continue
            if "ReferencedContentItemIdentifier" in child:
                if not allowed[1]:
                    problems.append(f"{_fmt(child_path)}: {rel} may not be by reference")
            elif child.get("ValueType") not in allowed[0]:
                problems.append(f"{_fmt(child_path)}: {rel} to {child.get('ValueType')} "
                                "is not allowed")
    return problems


def _library(items: dict) -> dict[tuple[int, ...], Dataset]:
    return {p: i for p, i in items.items() if len(p) == 3 and p[:2] == (1, 2)
            and i.get("ValueType") == "IMAGE"}


def _evidence_uids(sr: Dataset) -> set[str]:
    return {str(ref.ReferencedSOPInstanceUID)
            for study in sr.get("CurrentRequestedProcedureEvidenceSequence") or []
            for series in study.get("ReferencedSeriesSequence") or []
            for ref in series.get("ReferencedSOPSequence") or []}


def _check_references(sr: Dataset, items: dict, sources: dict) -> list[str]:
    problems = []
    library = _library(items)
    evidence = _evidence_uids(sr)
    for path, image in library.items():
        uid = str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        if uid not in evidence:
            problems.append(f"{_fmt(path)}: {uid} is not in the evidence sequence")
        if uid not in sources:
            problems.append(f"{_fmt(path)}: {uid} is not one of the source images")
        elif image.ReferencedSOPSequence[0].ReferencedSOPClassUID != sources[uid].SOPClassUID:
            problems.append(f"{_fmt(path)}: SOP class differs from the source")
        if any(c.get("RelationshipType") != "HAS ACQ CONTEXT" for c in _children(image)):
            problems.append(f"{_fmt(path)}: library IMAGE has a child other than HAS ACQ CONTEXT")
    for path, item in items.items():
        if "ReferencedContentItemIdentifier" in item:
            target = tuple(int(v) for v in _as_list(item.ReferencedContentItemIdentifier))
            if target not in library:
                problems.append(f"{_fmt(path)}: reference {_fmt(target)} is not an Image "
                                "Library IMAGE")
    for uid in {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                for p, i in items.items() if i.get("ValueType") == "IMAGE" and p not in library}:
        problems.append(f"IMAGE {uid} is referenced by value outside the Image Library")
    return problems


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _check_scoords(items: dict, sources: dict) -> list[str]:
    problems = []
    library = _library(items)
    for path, item in items.items():
        if item.get("ValueType") != "SCOORD":
            continue
        selected = [c for c in _children(item) if c.get("RelationshipType") == "SELECTED FROM"
                    and "ReferencedContentItemIdentifier" in c]
        if len(selected) != 1 or len(_children(item)) != 1:
            problems.append(f"{_fmt(path)}: SCOORD needs exactly one SELECTED FROM reference")
            continue
        data = [float(v) for v in _as_list(item.GraphicData)]
        kind = item.get("GraphicType")
        if len(data) % 2 or (kind == "POINT" and len(data) != 2):
            problems.append(f"{_fmt(path)}: {kind} has {len(data)} values")
        if kind == "POLYLINE" and data[:2] != data[-2:]:
            problems.append(f"{_fmt(path)}: POLYLINE is not closed")
        target = tuple(int(v) for v in _as_list(selected[0].ReferencedContentItemIdentifier))
        image = library.get(target)
        source = sources.get(str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)) \
            if image is not None else None
        if source is not None and not _inside(data, int(source.Columns), int(source.Rows)):
            problems.append(f"{_fmt(path)}: GraphicData outside [0, Columns] x [0, Rows]")
    return problems


def _inside(data: list[float], cols: int, rows: int) -> bool:
    xs, ys = np.asarray(data[0::2]), np.asarray(data[1::2])
    return bool(np.all((xs >= 0) & (xs <= cols) & (ys >= 0) & (ys <= rows)))


FINDING_ITEMS = (C.SINGLE_IMAGE_FINDING, C.COMPOSITE_FEATURE)
ALGORITHM_ITEMS = FINDING_ITEMS + (C.DETECTION_PERFORMED, C.ANALYSIS_PERFORMED)


def _check_codes(items: dict) -> list[str]:
    problems = []
    for path, item in items.items():
        for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            if _code_of(item, keyword) in C.RETIRED:
                problems.append(f"{_fmt(path)}: retired code {_code_of(item, keyword)}")
        name = _name(item)
        if name in {_key(c) for c in ALGORITHM_ITEMS if c is not C.ANALYSIS_PERFORMED}:
            if _code_of(item, "ConceptCodeSequence") not in C.FINDING_CODES:
                problems.append(f"{_fmt(path)}: finding code not in CID 6014")
        if name == _key(C.RENDERING_INTENT):
            if _code_of(item, "ConceptCodeSequence") not in C.RENDERING_INTENTS:
                problems.append(f"{_fmt(path)}: Rendering Intent not in CID 6034")
        if name in {_key(c) for c in FINDING_ITEMS + (C.INDIVIDUAL_IMPRESSION,)}:
            intents = [c for c in _named_children(item, C.RENDERING_INTENT)
                       if c.get("RelationshipType") == "HAS CONCEPT MOD"]
            if [_code_of(c, "ConceptCodeSequence") for c in intents] != \
                    [_key(C.PRESENTATION_REQUIRED)]:
                problems.append(f"{_fmt(path)}: needs one Rendering Intent Presentation Required")
    return problems


def _check_algorithm_ids(sr: Dataset, items: dict) -> list[str]:
    problems = []
    wanted = (str(sr.get("ManufacturerModelName", "")), str(sr.get("SoftwareVersions", "")))
    for path, item in items.items():
        if _name(item) not in {_key(c) for c in ALGORITHM_ITEMS}:
            continue
        names = [c.get("TextValue") for c in _named_children(item, C.ALGORITHM_NAME)]
        versions = [c.get("TextValue") for c in _named_children(item, C.ALGORITHM_VERSION)]
        if (names, versions) != ([wanted[0]], [wanted[1]]):
            problems.append(f"{_fmt(path)}: TID 4019 name/version {names}/{versions} differ "
                            f"from General Equipment {wanted}")
    return problems


_STATUS = {_key(C.SUCCEEDED): "ok", _key(C.PARTIALLY_SUCCEEDED): "partial",
           _key(C.FAILED): "failed", _key(C.NOT_ATTEMPTED): "none"}


def _check_summaries(sr: Dataset) -> list[str]:
    children = _children(sr)
    if len(children) != 5:
        return []
    summary, detections, analyses = children[2], children[3], children[4]
    problems = []
    lesions = _children(summary)
    for lesion in lesions:
        if (lesion.get("RelationshipType"), _name(lesion)) != ("INFERRED FROM",
                                                              _key(C.INDIVIDUAL_IMPRESSION)):
            problems.append("findings summary child is not an INFERRED FROM 111034 container")
        elif not [c for c in _children(lesion) if _name(c) in {_key(x) for x in FINDING_ITEMS}]:
            problems.append("Individual Impression/Recommendation holds no finding")
    det = _STATUS.get(_code_of(detections, "ConceptCodeSequence"), "?")
    ana = _STATUS.get(_code_of(analyses, "ConceptCodeSequence"), "?")
    problems += _check_branches(detections, det, C.SUCCESSFUL_DETECTIONS, C.FAILED_DETECTIONS)
    problems += _check_branches(analyses, ana, C.SUCCESSFUL_ANALYSES, C.FAILED_ANALYSES)
    if det in ("failed", "none", "?"):
        expected = C.NONE_SUCCEEDED
    elif det == "partial" or ana in ("partial", "failed"):
        expected = C.PARTIAL_WITH_FINDINGS if lesions else C.PARTIAL_WITHOUT_FINDINGS
    else:
        expected = C.WITH_FINDINGS if lesions else C.WITHOUT_FINDINGS
    if _code_of(summary, "ConceptCodeSequence") != _key(expected):
        problems.append(f"findings summary {_code_of(summary, 'ConceptCodeSequence')} "
                        f"inconsistent: expected {_key(expected)}")
    if expected == C.NONE_SUCCEEDED and lesions:
        problems.append("findings reported although no algorithm succeeded")
    return problems


def _check_branches(summary: Dataset, status: str, ok_code, failed_code) -> list[str]:
    expected = {"ok": [ok_code], "partial": [ok_code, failed_code], "failed": [failed_code],
                "none": []}.get(status)
    if expected is None:
        return [f"{_fmt((1,))}: summary value {_code_of(summary, 'ConceptCodeSequence')} not "
                "in CID 6042"]
    found = [(c.get("RelationshipType"), _name(c)) for c in _children(summary)]
    if found != [("INFERRED FROM", _key(code)) for code in expected]:
        return [f"summary {_name(summary)} = {status} has sub-trees {found}"]
    problems = []
    for branch in _children(summary):
        performed = _children(branch)
        if not performed or any(not [r for r in _children(p) if "ReferencedContentItemIdentifier"
                                     in r] for p in performed):
            problems.append(f"{_name(branch)} lists no image")
    return problems


def _codec(ds: Dataset) -> str:
    charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    return convert_encodings(list(charset) if not isinstance(charset, str) else [charset])[0]


def _check_text(sr: Dataset, items: dict) -> list[str]:
    codec, problems = _codec(sr), []
    for path, item in items.items():
        texts = [item.get("TextValue")]
        for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            texts += [c.get("CodeMeaning") for c in item.get(keyword) or []]
        for mv in item.get("MeasuredValueSequence") or []:
            texts += [u.get("CodeMeaning") for u in mv.MeasurementUnitsCodeSequence]
        for text in filter(None, texts):
            try:
                str(text).encode(codec)
            except UnicodeEncodeError:
                problems.append(f"{_fmt(path)}: {text!r} not representable in {codec}")
            if C.ZERO_WIDTH_SPACE in str(text):
                problems.append(f"{_fmt(path)}: {text!r} contains U+200B")
    return problems


def element_bytes(ds: Dataset, keyword: str) -> bytes | None:
    """The element as written (explicit VR little endian) in ``ds``'s own character set."""
    if keyword not in ds:
        return None
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, ds[keyword], encodings=convert_encodings(
        ds.get("SpecificCharacterSet") or "ISO_IR 6"))
    return fp.getvalue()


def check_identity(output: Dataset, source: Dataset) -> list[str]:
    """Patient/Study attributes and the character set byte-equal to the source (spec 3.2)."""
    problems = []
    for keyword in ("SpecificCharacterSet",) + IDENTITY_KEYWORDS:
        mine, theirs = element_bytes(output, keyword), element_bytes(source, keyword)
        if theirs is None and keyword in PATIENT_STUDY_TYPE2:
            if output.get(keyword) not in ("", None):
                problems.append(f"{keyword} should be empty (absent in the source)")
        elif mine != theirs:
            problems.append(f"{keyword} differs from the source")
    return problems


def check_uids(output: Dataset, sources: Iterable[Dataset]) -> list[str]:
    problems = [f"{elem.keyword or elem.tag} {elem.value!r} is not a valid UID"
                for elem in output.iterall() if elem.VR == "UI"
                for uid in _as_list(elem.value) if uid and not is_valid_uid(str(uid))]
    source_series = {str(s.SeriesInstanceUID) for s in sources}
    if str(output.get("SeriesInstanceUID")) in source_series:
        problems.append("SeriesInstanceUID reuses a source series")
    if str(output.get("SOPInstanceUID")) in {str(s.SOPInstanceUID) for s in sources}:
        problems.append("SOPInstanceUID reuses a source instance")
    return problems


def check_cad_sr(sr: Dataset, sources: Mapping[str, Dataset]) -> list[str]:
    """Every check of spec 6.5 on a Mammography CAD SR; ``sources`` maps SOP Instance UID -> header."""
    sources = _sources_by_uid(sources)
    items = dict(walk(sr))
    problems = _check_root(sr)
    problems += _check_relationships(items)
    problems += _check_references(sr, items, sources)
    problems += _check_scoords(items, sources)
    problems += _check_codes(items)
    problems += _check_algorithm_ids(sr, items)
    problems += _check_summaries(sr)
    problems += _check_text(sr, items)
    for flag, value in (("CompletionFlag", "COMPLETE"), ("VerificationFlag", "UNVERIFIED")):
        if sr.get(flag) != value:
            problems.append(f"{flag} is {sr.get(flag)!r}, expected {value}")
    library_uids = [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                    for i in _library(items).values()]
    first = sources.get(library_uids[0]) if library_uids else None
    if first is None:
        problems.append("Image Library is empty or names no source image")
    else:
        problems += check_identity(sr, first)
    problems += check_uids(sr, sources.values())
    return problems


# -- Secondary capture ---------------------------------------------------------------------

def check_sc(sc: Dataset, source: Dataset) -> list[str]:
    """The overlay SC against spec section 4 and its source image."""
    problems = check_identity(sc, source) + check_uids(sc, [source])
    expected = {"SOPClassUID": SECONDARY_CAPTURE, "ConversionType": "WSD",
                "BurnedInAnnotation": "YES", "Modality": "OT", "PhotometricInterpretation": "RGB",
                "SamplesPerPixel": 3, "BitsAllocated": 8, "Rows": source.Rows,
                "Columns": source.Columns, "ImageLaterality": source.get("ImageLaterality"),
                "StudyInstanceUID": source.StudyInstanceUID}
    for keyword, value in expected.items():
        if sc.get(keyword) != value:
            problems.append(f"{keyword} is {sc.get(keyword)!r}, expected {value!r}")
    if list(sc.get("ImageType") or [])[:2] != ["DERIVED", "SECONDARY"]:
        problems.append(f"ImageType {sc.get('ImageType')} is not DERIVED\\SECONDARY")
    if list(sc.get("PatientOrientation") or []) != list(source.get("PatientOrientation") or []):
        problems.append("PatientOrientation differs from the source")
    if "PixelSpacing" not in sc:
        problems.append("PixelSpacing missing")
    views = sc.get("ViewCodeSequence") or []
    if source.get("ViewCodeSequence") and (
            len(views) != 1 or views[0].CodeValue != source.ViewCodeSequence[0].CodeValue):
        problems.append("ViewCodeSequence not copied from the source")
    if any("ViewModifierCodeSequence" in v and not v.ViewModifierCodeSequence for v in views):
        problems.append("empty ViewModifierCodeSequence in the SC")
    refs = sc.get("SourceImageSequence") or []
    if len(refs) != 1 or refs[0].get("ReferencedSOPInstanceUID") != source.SOPInstanceUID or \
            _code_of(refs[0], "PurposeOfReferenceCodeSequence") != \
            _key(C.SOURCE_IMAGE_FOR_PROCESSING):
        problems.append("SourceImageSequence does not reference the source with 121322")
    meta = getattr(sc, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in LOSSLESS_SYNTAXES:
        problems.append(f"pixel data not losslessly compressed ({syntax})")
    return problems


# -- GSPS ----------------------------------------------------------------------------------

def _gsps_references(pr: Dataset) -> list[str]:
    return [str(img.ReferencedSOPInstanceUID) for series in pr.ReferencedSeriesSequence
            for img in series.ReferencedImageSequence]


def _check_graphics(pr: Dataset, sources: dict) -> list[str]:
    problems = []
    for annotation in pr.get("GraphicAnnotationSequence") or []:
        uid = str(annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
        src = sources.get(uid)
        if src is None:
            problems.append(f"annotation references unknown image {uid}")
            continue
        cols, rows = int(src.Columns), int(src.Rows)
        for obj in annotation.get("GraphicObjectSequence") or []:
            data = [float(v) for v in _as_list(obj.GraphicData)]
            if obj.GraphicAnnotationUnits != "PIXEL" or not _inside(data, cols, rows):
                problems.append(f"{obj.GraphicType} {data} not PIXEL inside {cols}x{rows}")
            if obj.GraphicType == "CIRCLE" and len(data) != 4:
                problems.append("CIRCLE needs centre + one circumference point")
        for text in annotation.get("TextObjectSequence") or []:
            box = [float(v) for v in _as_list(text.get("BoundingBoxTopLeftHandCorner", []))
                   + _as_list(text.get("BoundingBoxBottomRightHandCorner", []))]
            if len(box) != 4 or not _inside(box, cols, rows):
                problems.append(f"text box {box} outside {cols}x{rows}")
    return problems


def check_gsps(pr: Dataset, sources) -> list[str]:
    """A GSPS against spec section 5: identity, laterality, LUT shape vs polarity, graphics."""
    sources = _sources_by_uid(sources)
    refs = _gsps_references(pr)
    missing = [uid for uid in refs if uid not in sources]
    if missing or not refs:
        return [f"GSPS references images that are not sources: {missing or 'none'}"]
    images = [sources[uid] for uid in refs]
    problems = check_identity(pr, images[0]) + check_uids(pr, sources.values())
    if pr.get("SOPClassUID") != GSPS or pr.get("Modality") != "PR":
        problems.append("not a Grayscale Softcopy Presentation State (PR)")
    lateralities = {str(i.get("ImageLaterality") or "") for i in images}
    if len(lateralities) != 1 or pr.get("Laterality") != lateralities.pop():
        problems.append(f"Laterality {pr.get('Laterality')!r} does not match the images")
    polarities = {str(i.PhotometricInterpretation) for i in images}
    shape = "INVERSE" if polarities == {"MONOCHROME1"} else "IDENTITY"
    if len(polarities) != 1 or pr.get("PresentationLUTShape") != shape:
        problems.append(f"PresentationLUTShape {pr.get('PresentationLUTShape')} for {polarities}")
    if not pr.get("SoftcopyVOILUTSequence"):
        problems.append("no SoftcopyVOILUTSequence (washed-out display)")
    if not _CS.match(str(pr.get("ContentLabel", ""))):
        problems.append(f"ContentLabel {pr.get('ContentLabel')!r} is not a valid CS")
    for area in pr.get("DisplayedAreaSelectionSequence") or []:
        uid = str(area.ReferencedImageSequence[0].ReferencedSOPInstanceUID) \
            if "ReferencedImageSequence" in area else refs[0]
        src = sources[uid]
        if [int(v) for v in area.DisplayedAreaBottomRightHandCorner] != [src.Columns, src.Rows]:
            problems.append("DisplayedAreaBottomRightHandCorner is not Columns\\Rows")
    return problems + _check_graphics(pr, sources)


# -- external tools ------------------------------------------------------------------------

def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def run_dciodvfy(path: str | Path) -> list[str]:
    """``dciodvfy -new``: the Error and Warning lines (empty = clean)."""
    result = _run([DCIODVFY, "-new", str(path)])
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith(("Error", "Warning"))]


def run_dsrdump(path: str | Path) -> tuple[int, list[str]]:
    """``dsrdump -Ee``: exit code and defect lines (all W:/E:/F: but DCMTK's TID note)."""
    result = _run([DSRDUMP, "-Ee", str(path)])
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if line.startswith(("W:", "E:", "F:")) and _DSRDUMP_EXPECTED not in line]
    return result.returncode, lines


def read_pgm(path: str | Path) -> np.ndarray:
    """A binary (P5) PGM as written by dcmp2pgm."""
    data = Path(path).read_bytes()
    fields, offset = [], 0
    while len(fields) < 4:
        while data[offset:offset + 1].isspace():
            offset += 1
        if data[offset:offset + 1] == b"#":
            offset = data.index(b"\n", offset) + 1
            continue
        end = offset
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[offset:end])
        offset = end
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P5":
        raise ValueError(f"{path} is not a binary PGM")
    dtype = np.uint8 if maxval < 256 else np.dtype(">u2")
    return np.frombuffer(data[offset + 1:], dtype=dtype, count=width * height).reshape(height,
                                                                                        width)


def render_gsps(gsps_path: str | Path, image_path: str | Path, out_pgm: str | Path) -> np.ndarray:
    """Render ``image_path`` through the GSPS grayscale pipeline with ``dcmp2pgm -p``.

    dcmp2pgm applies VOI and the Presentation LUT but draws no annotations; callers compare the
    GSPS's own GraphicData with this rendering.
    """
    result = _run([DCMP2PGM, "-p", str(gsps_path), str(image_path), str(out_pgm)])
    if result.returncode != 0:
        raise RuntimeError(f"dcmp2pgm failed: {result.stderr.strip()}")
    return read_pgm(out_pgm)
