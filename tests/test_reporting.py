"""Unit tests of node.reporting: SR tree, UIDs, identity, coordinates, SC and GSPS attributes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_voi_lut

from conformance import check_cad_sr, check_gsps, check_identity, check_sc, walk
from node.errors import ReportError
from node.model import (
    Calcification, Cluster, CompositeFinding, Distribution, Equipment, ImageFailure,
    ImageFindings, Morphology, SourceRef, StudyFindings,
)
from node.reporting.gsps import build_gsps
from node.reporting.overlay import build_overlay_sc, font_size_px
from node.reporting.sr import build_cad_sr
from node.reporting.uids import derive_uid, is_valid_uid
from node.testing.dicomfactory import StudyIdentity, make_mammo_dataset

NOW = dt.datetime(2026, 1, 2, 10, 30, 0)
EQUIPMENT = Equipment("calcnode project", "calcnode", "0.1.0", "0001",
                      algorithm_parameters=("threshold=0.5", "model=sha256:abc"))
SPECKS = ((0, 0), (4, 6), (-5, 3), (7, -4), (-3, -6))
CENTRES = {("R", "CC"): (200, 150), ("R", "MLO"): (260, 170)}


@pytest.fixture(autouse=True)
def raise_on_invalid_values(monkeypatch):
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.RAISE)
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.RAISE)


def make_image(identity, laterality, view, number, *, monochrome1=False, centre=None):
    """A 512 x 416 MG image with a few bright 3x3 specks around ``centre`` (row, col)."""
    rng = np.random.default_rng(number)
    pixels = rng.normal(900, 40, (512, 416)).clip(0, 4095)
    if centre is not None:
        for dr, dc in SPECKS:
            pixels[centre[0] + dr - 1:centre[0] + dr + 2, centre[1] + dc - 1:centre[1] + dc + 2] = 3000
    if monochrome1:
        pixels = 4095 - pixels
    return make_mammo_dataset(pixels.astype(np.uint16), identity=identity, laterality=laterality,
                              view=view, instance_number=number, monochrome1=monochrome1)


def make_cluster(centre, certainty=85.0, morphology=None, distribution=None):
    calcs = tuple(Calcification(centre[0] + dr, centre[1] + dc, 0.3, 6.0) for dr, dc in SPECKS)
    outline = tuple((centre[0] + 9 * np.sin(a), centre[1] + 9 * np.cos(a))
                    for a in np.linspace(0, 2 * np.pi, 17))
    return Cluster(centre, outline, 9.0, calcs, certainty, 1.5, morphology, distribution)


def ref(ds) -> SourceRef:
    return SourceRef(ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID)


def make_study(*, seed=1, findings=True, composite=True, failed=(), monochrome1=False, **ident):
    """Four views; specks (and clusters when ``findings``) on RCC and RMLO."""
    identity = StudyIdentity(seed=seed, **ident)
    views = [("R", "CC"), ("R", "MLO"), ("L", "CC"), ("L", "MLO")]
    images = [make_image(identity, lat, view, n + 1, monochrome1=monochrome1,
                         centre=CENTRES.get((lat, view)))
              for n, (lat, view) in enumerate(views)]
    analysed, failures = [], []
    for (lat, view), ds in zip(views, images):
        if f"{lat}{view}" in failed:
            failures.append(ImageFailure(ref(ds), "unreadable"))
            continue
        centre = CENTRES.get((lat, view)) if findings else None
        clusters = (make_cluster(centre, 85.0 if view == "CC" else 80.0),) if centre else ()
        analysed.append(ImageFindings(ref(ds), clusters))
    composites = ()
    if findings and composite and not failed:
        composites = (CompositeFinding(((images[0].SOPInstanceUID, 0),
                                        (images[1].SOPInstanceUID, 0)), 83.0),)
    correlated = tuple(i.source.sop_instance_uid for i in analysed) if composites else ()
    study = StudyFindings(identity.study_instance_uid, tuple(analysed), tuple(failures),
                          composites, correlated_images=correlated)
    return images, study


def sources_of(images):
    return {ds.SOPInstanceUID: ds for ds in images}


def roundtrip(ds):
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def concept(item):
    return item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None


def value(item):
    return item.ConceptCodeSequence[0].CodeValue


def root_values(sr):
    """(findings summary, detections, analyses) code values of the root."""
    return tuple(value(sr.ContentSequence[i]) for i in (2, 3, 4))


def display_of(ds) -> np.ndarray:
    """The uint8 image as a viewer shows it: first window, MONOCHROME1 inverted."""
    grey = apply_voi_lut(ds.pixel_array, ds, index=0).astype(np.float64)
    grey = (grey - grey.min()) / max(grey.max() - grey.min(), 1e-9) * 255
    if ds.PhotometricInterpretation == "MONOCHROME1":
        grey = 255 - grey
    return grey.astype(np.uint8)


# -- SR --------------------------------------------------------------------------------------

def test_sr_with_composite_follows_tid_4000():
    images, study = make_study()
    sr = roundtrip(build_cad_sr(sources_of(images), study, EQUIPMENT, NOW))
    assert check_cad_sr(sr, sources_of(images)) == []
    assert root_values(sr) == ("111242", "111222", "111222")
    impression = sr.ContentSequence[2].ContentSequence[0]
    assert (impression.RelationshipType, concept(impression)) == ("INFERRED FROM", "111034")
    composite = impression.ContentSequence[1]
    assert (concept(composite), value(composite)) == ("111015", "129769006")
    findings = [c for c in composite.ContentSequence if concept(c) == "111059"]
    assert [f.RelationshipType for f in findings] == ["INFERRED FROM"] * 2
    centres = [[list(c.GraphicData) for c in f.ContentSequence if concept(c) == "111010"][0]
               for f in findings]
    # numpy (row, col) -> DICOM (col + 0.5, row + 0.5)
    assert centres == [[150.5, 200.5], [170.5, 260.5]]
    targets = [[list(s.ContentSequence[0].ReferencedContentItemIdentifier)
                for s in f.ContentSequence if s.ValueType == "SCOORD"] for f in findings]
    assert targets == [[[1, 2, 1]] * 2, [[1, 2, 2]] * 2]
    assert "Recommendation" in impression.ConceptNameCodeSequence[0].CodeMeaning
    assert "\u200b" not in impression.ConceptNameCodeSequence[0].CodeMeaning


def test_sr_single_view_cluster_is_contained_by_its_impression():
    images, study = make_study(composite=False)
    sr = build_cad_sr(sources_of(images), study, EQUIPMENT, NOW)
    assert check_cad_sr(sr, sources_of(images)) == []
    lesions = sr.ContentSequence[2].ContentSequence
    assert len(lesions) == 2
    for lesion in lesions:
        finding = lesion.ContentSequence[1]
        assert (finding.RelationshipType, concept(finding)) == ("CONTAINS", "111059")
    assert root_values(sr) == ("111242", "111222", "111225")
    assert "ContentSequence" not in sr.ContentSequence[4]


def test_sr_without_findings_says_succeeded():
    images, study = make_study(findings=False)
    sr = roundtrip(build_cad_sr(sources_of(images), study, EQUIPMENT, NOW))
    assert check_cad_sr(sr, sources_of(images)) == []
    assert root_values(sr) == ("111241", "111222", "111225")
    assert sr.SeriesDescription == "calcnode CAD: NOT SUSPICIOUS"
    assert "ContentSequence" not in sr.ContentSequence[2]
    performed = sr.ContentSequence[3].ContentSequence[0].ContentSequence[0]
    refs = [list(c.ReferencedContentItemIdentifier) for c in performed.ContentSequence
            if "ReferencedContentItemIdentifier" in c]
    assert refs == [[1, 2, k] for k in range(1, 5)]


def test_summary_of_analyses_names_only_the_images_compared():
    images, study = make_study(failed=("LMLO",), composite=False)
    study = dataclasses.replace(study, correlated_images=(images[0].SOPInstanceUID, images[1].SOPInstanceUID))
    sr = roundtrip(build_cad_sr(sources_of(images), study, EQUIPMENT, NOW))
    assert check_cad_sr(sr, sources_of(images)) == []
    analyses = sr.ContentSequence[4]
    assert root_values(sr)[2] == "111222"  # Summary of Analyses: Succeeded
    performed = analyses.ContentSequence[0].ContentSequence[0]
    refs = [list(c.ReferencedContentItemIdentifier) for c in performed.ContentSequence
            if "ReferencedContentItemIdentifier" in c]
    assert refs == [[1, 2, 1], [1, 2, 2]]  # RCC and RMLO; not LCC, whose breast has one view here


def test_sr_partial_failure_lists_both_branches():
    images, study = make_study(failed=("LMLO",))
    sr = build_cad_sr(sources_of(images), study, EQUIPMENT, NOW)
    assert check_cad_sr(sr, sources_of(images)) == []
    assert root_values(sr)[:2] == ("111244", "111223")
    ok, failed = sr.ContentSequence[3].ContentSequence
    assert (concept(ok), concept(failed)) == ("111063", "111025")
    failed_refs = [list(c.ReferencedContentItemIdentifier)
                   for c in failed.ContentSequence[0].ContentSequence
                   if "ReferencedContentItemIdentifier" in c]
    library = sr.ContentSequence[1].ContentSequence
    assert failed_refs == [[1, 2, 4]]
    assert library[3].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == images[3].SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert len(evidence.ReferencedSOPSequence) == 4


def test_sr_total_failure():
    images, study = make_study(findings=False, failed=("RCC", "RMLO", "LCC", "LMLO"))
    sr = build_cad_sr(sources_of(images), study, EQUIPMENT, NOW)
    assert check_cad_sr(sr, sources_of(images)) == []
    assert root_values(sr) == ("111245", "111224", "111225")
    assert sr.SeriesDescription == "calcnode CAD: analysis failed"
    assert [concept(c) for c in sr.ContentSequence[3].ContentSequence] == ["111025"]


def test_sr_descriptors_only_when_estimated():
    images, study = make_study(composite=False)
    cluster = dataclasses.replace(study.images[0].clusters[0], morphology=Morphology.PUNCTATE,
                                  distribution=Distribution.GROUPED)
    first = dataclasses.replace(study.images[0], clusters=(cluster,))
    study = dataclasses.replace(study, images=(first,) + study.images[1:])
    sr = build_cad_sr(sources_of(images), study, EQUIPMENT, NOW)
    found = {concept(i): value(i) for _, i in walk(sr) if concept(i) in ("111009", "111008")}
    assert found == {"111009": "129755006", "111008": "129766004"}
    counts = [concept(i) for _, i in walk(sr)].count("111009")
    assert counts == 1


def test_sr_refuses_mixed_studies_and_missing_sources():
    images, study = make_study()
    other, _ = make_study(seed=2)
    mixed = sources_of(images)
    mixed[images[3].SOPInstanceUID] = other[3]
    with pytest.raises(ReportError):
        build_cad_sr(mixed, study, EQUIPMENT, NOW)
    with pytest.raises(ReportError):
        build_cad_sr(sources_of(images[:3]), study, EQUIPMENT, NOW)


def test_sr_series_and_attributes():
    images, study = make_study()
    sr = build_cad_sr(sources_of(images), study, EQUIPMENT, NOW)
    assert (sr.Modality, sr.SeriesNumber) == ("SR", 900)
    assert sr.SeriesDescription == "calcnode CAD: SUSPICIOUS, 2 clusters"
    assert (sr.ContentDate, sr.ContentTime) == ("20260102", "103000")
    assert (sr.ManufacturerModelName, sr.SoftwareVersions) == ("calcnode", "0.1.0")
    assert sr.SeriesInstanceUID != images[0].SeriesInstanceUID


# -- UIDs and identity -----------------------------------------------------------------------

def test_uids_are_deterministic_and_change_with_content():
    images, study = make_study()
    first = build_cad_sr(sources_of(images), study, EQUIPMENT, NOW)
    again = build_cad_sr(sources_of(images), study, EQUIPMENT, NOW + dt.timedelta(hours=1))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == \
        (again.SOPInstanceUID, again.SeriesInstanceUID)
    other = dataclasses.replace(EQUIPMENT, algorithm_parameters=("threshold=0.6",))
    assert build_cad_sr(sources_of(images), study, other, NOW).SOPInstanceUID != \
        first.SOPInstanceUID
    assert derive_uid("sr", ["1.2", "1.3"], EQUIPMENT) == derive_uid("sr", ["1.3", "1.2"], EQUIPMENT)
    assert derive_uid("sr", ["1.2"], EQUIPMENT) != derive_uid("sc", ["1.2"], EQUIPMENT)
    rooted = dataclasses.replace(EQUIPMENT, uid_root="1.2.826.0.1.3680043.10.999")
    uid = derive_uid("sr", ["1.2"], rooted)
    assert uid.startswith("1.2.826.0.1.3680043.10.999.") and is_valid_uid(uid)
    assert uid == derive_uid("sr", ["1.2"], rooted)
    assert is_valid_uid(first.SOPInstanceUID) and first.SOPInstanceUID.startswith("2.25.")


@pytest.mark.parametrize("charset, name", [("ISO_IR 100", "Müller^Jürgen"),
                                           ("ISO_IR 192", "山田^花子=Müller")])
def test_identity_copied_byte_for_byte(charset, name):
    images, study = make_study(character_set=charset, patient_name=name,
                               extra={"IssuerOfPatientID": "HÔPITAL"})
    images = [roundtrip(ds) for ds in images]
    sr = roundtrip(build_cad_sr(sources_of(images), study, EQUIPMENT, NOW))
    assert sr.SpecificCharacterSet == charset
    assert str(sr.PatientName) == name
    assert check_identity(sr, images[0]) == []
    sc = roundtrip(build_overlay_sc(images[0], display_of(images[0]), study.images[0],
                                    EQUIPMENT, NOW))
    assert check_identity(sc, images[0]) == []
    pr = roundtrip(build_gsps(images, study.images, EQUIPMENT, NOW)[0])
    assert check_identity(pr, images[0]) == []


# -- SC and GSPS -----------------------------------------------------------------------------

def test_overlay_sc_attributes_and_ring():
    images, study = make_study()
    source = images[1]
    sc = roundtrip(build_overlay_sc(source, display_of(source), study.images[1], EQUIPMENT, NOW,
                                    instance_number=2))
    assert check_sc(sc, source) == []
    assert sc.SeriesNumber == 901 and sc.InstanceNumber == 2
    assert sc.SeriesDescription == "calcnode CAD overlay: SUSPICIOUS - not for primary diagnosis"
    assert list(sc.PatientOrientation) == ["P", "FL"]
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    rgb = sc.pixel_array
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 60)
    rows, cols = np.nonzero(yellow[200:320, 110:230])
    radius = 9.0 + 2.0 / 0.1  # cluster radius + 2 mm margin at 0.1 mm/pixel
    distance = np.hypot(rows + 200 - 260, cols + 110 - 170)
    ring = distance[np.abs(distance - radius) < 3]
    assert ring.size > 2 * np.pi * radius  # a closed ring at least ~2 px wide
    for dr, dc in SPECKS:  # the specks themselves stay visible
        assert not yellow[260 + dr, 170 + dc]
    assert yellow[400:, :].any() or yellow[:100, :].any()  # legend box in a corner


def test_overlay_is_deterministic():
    images, study = make_study()
    build = lambda: build_overlay_sc(images[0], display_of(images[0]), study.images[0],  # noqa: E731
                                     EQUIPMENT, NOW)
    first, second = build(), build()
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.PixelData == second.PixelData
    assert font_size_px(4096, 3328) > font_size_px(512, 416) >= 10


def test_gsps_per_laterality_and_polarity():
    images, study = make_study()
    states = [roundtrip(pr) for pr in build_gsps(images, study.images, EQUIPMENT, NOW)]
    assert len(states) == 1  # only the right breast has findings
    pr = states[0]
    assert check_gsps(pr, sources_of(images)) == []
    assert (pr.Laterality, pr.PresentationLUTShape, pr.SeriesNumber) == ("R", "IDENTITY", 902)
    assert pr.ContentLabel == "CAD_MARKS"
    circle = pr.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    assert circle.GraphicType == "CIRCLE"
    assert list(circle.GraphicData) == pytest.approx([150.5, 200.5, 150.5 + 29.0, 200.5])
    mono1, study1 = make_study(seed=3, monochrome1=True)
    pr1 = build_gsps(mono1, study1.images, EQUIPMENT, NOW)[0]
    assert pr1.PresentationLUTShape == "INVERSE"
    assert check_gsps(pr1, sources_of(mono1)) == []


def test_gsps_accepts_sigmoid_and_voi_lut_sequence_sources():
    images, study = make_study()
    images[0].VOILUTFunction = "SIGMOID"
    images[0].WindowCenter, images[0].WindowWidth = [900.0, 1000.0], [300.0, 600.0]
    pr = build_gsps(images, study.images, EQUIPMENT, NOW)[0]
    assert check_gsps(pr, sources_of(images)) == []
    functions = {v.get("VOILUTFunction") for v in pr.SoftcopyVOILUTSequence}
    assert "SIGMOID" in functions
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [256, 0, 16]
    lut.LUTData = list(range(0, 4096, 16))
    images[1].VOILUTSequence = [lut]
    del images[1].WindowCenter, images[1].WindowWidth, images[1].VOILUTFunction
    pr = build_gsps(images, study.images, EQUIPMENT, NOW)[0]
    assert check_gsps(pr, sources_of(images)) == []
