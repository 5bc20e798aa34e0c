"""CC / MLO correlation: nipple position, pairing, certainty, the phantom's correlated lesion,
and the composite finding in the SR of a whole study."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from datetime import datetime

import numpy as np
import pydicom
import pytest

from conformance import DCIODVFY, DSRDUMP, check_cad_sr, run_dciodvfy, run_dsrdump, walk
from node.config import Config
from node import pipeline
from node.detection import correlate as correlate_module, detector
from node.detection.breast import nipple_position, segment_breast
from node.detection.correlate import (
    NIPPLE_DISTANCE_TOLERANCE_MM, combined_certainty, correlate, correlated_breasts,
    correlated_images, locate_nipple, nipple_distance_mm,
)
from node.detection.params import DetectionParams
from node.model import Cluster, ImageFindings, Laterality, Side, SourceRef, View
from node.pipeline import analyse_study
from node.reporting import codes as C
from node.images import to_mammogram
from node.testing.dicomfactory import StudyIdentity
from node.testing.phantom import ClusterPlacement, PhantomSpec, make_phantom, random_spec
from node.testing.study import phantom_dataset, write_study
from peers import require

NIPPLE = (500.0, 100.0)
SPACING = (0.1, 0.1)


# -- synthetic positions -------------------------------------------------------------------

def cluster(distance_mm: float, angle_deg: float = 0.0, certainty: float = 80.0,
            extent_mm: float = 4.0) -> Cluster:
    """A cluster ``distance_mm`` from NIPPLE (chest wall on the right: +col is posterior)."""
    a = math.radians(angle_deg)
    centre = (NIPPLE[0] - distance_mm * math.sin(a) / SPACING[0],
              NIPPLE[1] + distance_mm * math.cos(a) / SPACING[1])
    return Cluster(centre, (), 20.0, (), certainty, extent_mm)


def image(uid: str, laterality: str, view: str, *clusters: Cluster, nipple=NIPPLE,
          spacing=SPACING) -> ImageFindings:
    source = SourceRef("1.2.840.10008.5.1.4.1.1.1.2", uid, "1.2.3", "1.2")
    return ImageFindings(source, clusters, laterality=Laterality(laterality), view=View(view),
                         spacing_mm=spacing, nipple_rc=nipple)


def members(composites) -> list[tuple[tuple[str, int], ...]]:
    return [c.members for c in composites]


def test_a_pair_within_tolerance_becomes_one_composite_more_certain_than_either():
    images = [image("cc", "R", "CC", cluster(40.0, 20.0, certainty=80.0)),
              image("mlo", "R", "MLO", cluster(48.0, -35.0, certainty=70.0))]
    composites = correlate(images)
    assert members(composites) == [(("cc", 0), ("mlo", 0))]
    assert composites[0].certainty == combined_certainty([80.0, 70.0]) == 94.0
    assert correlated_breasts(images) == (Laterality.RIGHT,)


@pytest.mark.parametrize("difference_mm, paired", [(NIPPLE_DISTANCE_TOLERANCE_MM - 0.5, True),
                                                    (NIPPLE_DISTANCE_TOLERANCE_MM + 0.5, False)])
def test_the_nipple_distance_tolerance(difference_mm, paired):
    images = [image("cc", "L", "CC", cluster(30.0)),
              image("mlo", "L", "MLO", cluster(30.0 + difference_mm, 30.0))]
    assert len(correlate(images)) == int(paired)
    assert correlated_breasts(images) == (Laterality.LEFT,)  # attempted either way


def test_clusters_of_different_breasts_or_of_one_view_are_never_paired():
    assert correlate([image("rcc", "R", "CC", cluster(30.0)),
                      image("lmlo", "L", "MLO", cluster(30.0))]) == ()
    twice = [image("cc1", "R", "CC", cluster(30.0)), image("cc2", "R", "CC", cluster(30.0)),
             image("mlo1", "L", "MLO", cluster(30.0)), image("mlo2", "L", "MLO", cluster(30.0))]
    assert correlate(twice) == ()
    assert correlated_breasts(twice) == ()


def test_incompatible_extents_are_not_paired_and_tiny_ones_count_as_the_floor():
    far = [image("cc", "R", "CC", cluster(30.0, extent_mm=2.0)),
           image("mlo", "R", "MLO", cluster(30.0, extent_mm=7.0))]
    assert correlate(far) == ()
    tiny = [image("cc", "R", "CC", cluster(30.0, extent_mm=0.5)),
            image("mlo", "R", "MLO", cluster(30.0, extent_mm=5.9))]
    assert len(correlate(tiny)) == 1


def test_pairing_is_one_to_one_and_prefers_the_best_agreement():
    images = [image("cc", "R", "CC", cluster(30.0), cluster(60.0, 10.0)),
              image("mlo", "R", "MLO", cluster(62.0, -20.0), cluster(33.0), cluster(31.0, 5.0))]
    assert sorted(members(correlate(images))) == [(("cc", 0), ("mlo", 2)), (("cc", 1), ("mlo", 0))]
    # a near-perfect match is not broken up to pair every cluster with a poor partner
    images = [image("cc", "R", "CC", cluster(30.0), cluster(16.0, 40.0)),
              image("mlo", "R", "MLO", cluster(29.0), cluster(44.0, -30.0))]
    assert members(correlate(images)) == [(("cc", 0), ("mlo", 0))]
    used = [m for c in correlate(images) for m in c.members]
    assert len(used) == len(set(used))


def test_both_breasts_and_several_images_of_one_view():
    images = [image("rcc", "R", "CC", cluster(30.0)), image("rmlo", "R", "MLO", cluster(31.0)),
              image("lcc", "L", "CC", cluster(50.0, certainty=60.0)),
              image("lmlo", "L", "MLO", cluster(12.0, certainty=60.0)),
              image("lmlo2", "L", "MLO", cluster(52.0, certainty=60.0))]
    assert members(correlate(images)) == [(("rcc", 0), ("rmlo", 0)), (("lcc", 0), ("lmlo2", 0))]
    assert correlated_breasts(images) == (Laterality.RIGHT, Laterality.LEFT)


def test_images_without_a_nipple_or_a_view_take_no_part():
    images = [image("cc", "R", "CC", cluster(30.0), nipple=None),
              image("mlo", "R", "MLO", cluster(30.0))]
    assert correlate(images) == () and correlated_breasts(images) == ()
    assert correlated_images(images) == ()


def test_the_images_compared_are_those_of_breasts_with_both_views():
    images = [image("rcc", "R", "CC"), image("lcc", "L", "CC", cluster(30.0)),
              image("rmlo", "R", "MLO"), image("rmlo2", "R", "MLO", nipple=None)]
    assert correlated_images(images) == ("rcc", "rmlo")  # not the single left view, nor a nipple-less one
    unknown = [image("cc", "R", "CC", cluster(30.0)),
               ImageFindings(image("x", "R", "MLO").source, (cluster(30.0),), nipple_rc=NIPPLE,
                             spacing_mm=SPACING)]
    assert correlate(unknown) == ()


def test_nipple_distance_uses_row_and_column_spacing():
    assert nipple_distance_mm((130.0, 40.0), (100.0, 0.0), (0.1, 0.075)) == pytest.approx(
        math.hypot(3.0, 3.0))


@pytest.mark.parametrize("certainties, expected", [
    ([80.0, 85.0], 97.0), ([50.0, 50.0], 75.0), ([90.0, 0.04], 90.1), ([99.0, 95.0], 99.9),
    ([100.0, 50.0], 100.0), ([30.0, 40.0, 50.0], 79.0)])
def test_combined_certainty_is_above_every_member_and_capped(certainties, expected):
    value = combined_certainty(certainties)
    assert value == expected
    assert value > max(certainties) or max(certainties) >= 99.9


def test_combined_certainty_refuses_non_percentages():
    with pytest.raises(ValueError):
        combined_certainty([120.0, 50.0])
    with pytest.raises(ValueError):
        combined_certainty([])


# -- nipple position -----------------------------------------------------------------------

def drawn_breast(view: str, chest_wall: str, *, a=60.0, b=45.0, r0=52.0, cell_mm=0.5):
    """A breast mask on a 120 x 90 mm grid: half ellipse on the chest wall (tip ``a`` mm
    out at row ``r0`` mm); MLO adds the axillary part up to the top edge. Returns the mask
    and the tip (row, col) in cells."""
    rows, cols = int(120 / cell_mm), int(90 / cell_mm)
    v = np.arange(rows)[:, None] * cell_mm
    c = np.arange(cols)[None, :] * cell_mm
    u = (cols - 1) * cell_mm - c if chest_wall == "right" else c
    mask = (u / a) ** 2 + ((v - r0) / b) ** 2 <= 1.0
    if view == "MLO":
        mask |= (v <= r0) & (u <= a * (0.55 + 0.45 * v / r0)) & (u >= 0)
    tip_col = (cols - 1) - a / cell_mm if chest_wall == "right" else a / cell_mm
    return mask, (r0 / cell_mm, tip_col)


@pytest.mark.parametrize("chest_wall", ["left", "right"])
@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_nipple_position_is_the_tip_of_a_drawn_breast(view, chest_wall):
    mask, tip = drawn_breast(view, chest_wall)
    found = nipple_position(mask, (0.5, 0.5), chest_wall)
    assert abs(found[0] - tip[0]) <= 2.0 and abs(found[1] - tip[1]) <= 1.0, (found, tip)
    assert nipple_position(mask, (0.5, 0.5), Side(chest_wall)) == found


def test_nipple_position_when_there_is_none():
    assert nipple_position(np.zeros((50, 40), bool), (0.5, 0.5), "left") is None
    full = np.ones((50, 40), bool)  # the breast runs off the far edge
    assert nipple_position(full, (0.5, 0.5), "right") is None
    with pytest.raises(ValueError):
        nipple_position(full, (0.5, 0.5), "top")


@pytest.mark.parametrize("chest_wall", ["left", "right"])
@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_locate_nipple_finds_the_phantom_nipple(view, chest_wall):
    phantom = make_phantom(PhantomSpec(view=view, chest_wall=chest_wall, n_clusters=0, seed=21,
                                       distractors=("label", "marker")))
    found = locate_nipple(phantom.presentation.astype(np.float32), SPACING, chest_wall,
                          DetectionParams())
    assert nipple_distance_mm(found, phantom.nipple_rc, SPACING) <= 2.0, (found, phantom.nipple_rc)


def test_the_pipeline_segments_each_image_once_for_detection_and_the_nipple(monkeypatch):
    phantom = make_phantom(PhantomSpec(view="CC", chest_wall="right", n_clusters=1, seed=23))
    mammogram = to_mammogram(phantom_dataset(phantom, StudyIdentity(23), 1))
    params = Config().detection
    clusters = detector.detect(mammogram.pixels, mammogram.spacing_mm, params, mammogram.valid)
    nipple = locate_nipple(mammogram.pixels, mammogram.spacing_mm, mammogram.chest_wall, params,
                           mammogram.valid)
    calls = []
    monkeypatch.setattr(pipeline, "segment_breast",
                        lambda *args: calls.append(args) or segment_breast(*args))
    for module in (detector, correlate_module):  # given the segmentation, neither segments again
        monkeypatch.setattr(module, "segment_breast", lambda *args: pytest.fail("segmented twice"))
    found = pipeline._findings(dataclasses.replace(mammogram, source=SourceRef("1.2", "1.2.3", "1.2", "1.2")),
                               Config())
    assert len(calls) == 1
    assert found.clusters == clusters and found.nipple_rc == nipple  # the same answers


# -- the phantom's correlated lesion -------------------------------------------------------

# Hashes of existing specs, computed before cluster_at / correlated existed: old specs and
# write_study calls must render the very same pixels (they are numpy/scipy-version bound).
BEFORE = {
    "spec0": "628a9990df8f6a3486fb06aa725c0863de48af37a18bc08189f0f43a1418aa29",
    "spec1": "11759894d4daeaf19282e067b0ea854e1f8bc63beaa52219aee2b6a95b8ae56f",
    "spec2": "67456a561f0b0ee98c5f0d1d2d841d71afec1aec6194238f922a711dfc7d6257",
    "spec3": "09f0e5ec0aa3302feb53af2084f770b97d722a780bb4da73bf7ed9c20a9c6ffd",
    "random1": "3efbd18801f0b941f69df5240d38a659697302988a4c8a40db07017edefc8c68",
    "study3_RCC": "b58e9c1012fdded09c61af1caced1b9d3987f9cdb6c9241503128a858b29bca4",
    "study3_LCC": "ca6531a2d1ceb9d3d3500533891c0823d6fbac02b100f80e631763649f2dc864",
    "study3_RMLO": "9b36de4ed601bcc06f46dead52785674e9cae263db28a1ede045b9191b597467",
    "study3_LMLO": "7e84e9975f7d6eb2fc664340f0b2a2e02110d5018f2662b25cc4ad1876476600",
}
SPECS = {
    "spec0": PhantomSpec(),
    "spec1": PhantomSpec(laterality="L", view="MLO", n_clusters=2, seed=7,
                         distractors=("vascular", "label")),
    "spec2": PhantomSpec(view="MLO", density="d", n_clusters=1, seed=11, chest_wall="left"),
    "spec3": PhantomSpec(laterality="R", view="CC", n_clusters=3, seed=5,
                         cluster_kinds=("linear_branching",)),
    "random1": random_spec(1),
}


def test_existing_specs_and_studies_render_the_same_pixels_as_before(tmp_path):
    now = {}
    for name, spec in SPECS.items():
        phantom = make_phantom(spec)
        now[name] = hashlib.sha256(phantom.presentation.tobytes()
                                   + phantom.processing.tobytes()).hexdigest()
    for name, (path, _) in write_study(tmp_path, 3).views.items():
        now["study3_" + name] = hashlib.sha256(pydicom.dcmread(path).PixelData).hexdigest()
    assert now == BEFORE


@pytest.mark.parametrize("chest_wall", ["left", "right"])
@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_cluster_at_places_the_cluster_at_the_wanted_nipple_distance(view, chest_wall):
    for seed, at in ((1, ClusterPlacement(18.0, 30.0)), (2, ClusterPlacement(22.0, -60.0)),
                     (3, ClusterPlacement(20.0, 85.0, 3.0, "linear_branching"))):
        phantom = make_phantom(PhantomSpec(view=view, chest_wall=chest_wall, n_clusters=2,
                                           seed=seed, cluster_at=(at,)))
        truth = phantom.clusters[0]
        distance = nipple_distance_mm(truth.centre_rc, phantom.nipple_rc, SPACING)
        assert abs(distance - at.distance_mm) <= truth.radius_mm, (seed, distance, at)
        if at.kind is not None:
            assert truth.kind == at.kind and truth.radius_mm <= at.radius_mm + 0.5
        behind = truth.centre_rc[1] - phantom.nipple_rc[1]
        assert behind * (1 if chest_wall == "right" else -1) > 0  # towards the chest wall
        r, c = (int(round(v)) for v in truth.centre_rc)
        assert phantom.breast_mask[r, c]


def test_cluster_at_is_checked():
    with pytest.raises(ValueError):
        PhantomSpec(n_clusters=1, cluster_at=(ClusterPlacement(20.0), ClusterPlacement(30.0)))
    with pytest.raises(ValueError):
        PhantomSpec(n_clusters=1, cluster_at=((20.0, 0.0),))
    for bad in (dict(distance_mm=20.0, angle_deg=95.0), dict(distance_mm=0.0),
                dict(distance_mm=20.0, radius_mm=8.0), dict(distance_mm=20.0, kind="round")):
        with pytest.raises(ValueError):
            ClusterPlacement(**bad)


def test_write_study_draws_one_lesion_at_the_same_nipple_distance_on_cc_and_mlo(tmp_path):
    for seed in (1, 2, 3):
        written = write_study(tmp_path / str(seed), seed, correlated="L",
                              clusters_per_view=(0, 1, 0, 2))
        lesions = [written.views[v][1].clusters[0] for v in ("LCC", "LMLO")]
        distances = [nipple_distance_mm(lesion.centre_rc, written.views[v][1].nipple_rc, SPACING)
                     for v, lesion in zip(("LCC", "LMLO"), lesions)]
        assert abs(distances[0] - distances[1]) <= 5.0, (seed, distances)
        assert lesions[0].kind == lesions[1].kind
        assert abs(lesions[0].radius_mm - lesions[1].radius_mm) <= 2.0
    with pytest.raises(ValueError):
        write_study(tmp_path / "bad", 1, correlated="R", clusters_per_view=(1, 0, 0, 0))
    with pytest.raises(ValueError):
        write_study(tmp_path / "bad", 1, correlated="B")


# -- end to end ----------------------------------------------------------------------------

# A 1024 x 832 study at 0.1 mm with one lesion drawn on RCC and RMLO and a cluster on LMLO only.
# Seed 6 is one whose drawn clusters the detector finds (checked below, so a detector change
# that loses them fails here loudly rather than passing vacuously).
E2E_SEED = 6


def _code(item, keyword="ConceptNameCodeSequence"):
    seq = item.get(keyword)
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)) if seq else None


def _key(code):
    return code.value, code.scheme_designator


def _found_truth(written, findings, names) -> dict[str, tuple[str, int]]:
    """(SOP Instance UID, cluster index) of the detected cluster at each view's drawn cluster."""
    hits = {}
    for image in findings.images:
        view = names[image.source.sop_instance_uid]
        for truth in written.views[view][1].clusters[:1]:
            near = [i for i, c in enumerate(image.clusters)
                    if math.dist(c.centre_rc, truth.centre_rc) * SPACING[0] <= truth.radius_mm + 3]
            if near:
                hits[view] = (image.source.sop_instance_uid, near[0])
    return hits


def _sr_lesions(sr):
    """The SR's composite features and single-image findings, each with the views it marks."""
    items = dict(walk(sr))
    library = {p: str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
               for p, i in items.items() if i.get("ValueType") == "IMAGE"}

    def views(finding):
        return [library[tuple(int(v) for v in
                              child.ContentSequence[0].ReferencedContentItemIdentifier)]
                for child in finding.ContentSequence
                if child.get("ValueType") == "SCOORD" and _code(child) == _key(C.CENTER)]

    lesions = [lesion.ContentSequence[1] for lesion in sr.ContentSequence[2].ContentSequence]
    return ([f for f in lesions if _code(f) == _key(C.COMPOSITE_FEATURE)],
            [f for f in lesions if _code(f) == _key(C.SINGLE_IMAGE_FINDING)], views)


@pytest.mark.slow
def test_a_lesion_on_both_views_becomes_one_composite_in_a_valid_sr(tmp_path):
    written = write_study(tmp_path / "in", E2E_SEED, rows=1024, cols=832, spacing_mm=0.1,
                          clusters_per_view=(1, 0, 1, 1), correlated="R")
    datasets = [pydicom.dcmread(p) for p in written.paths]
    names = {str(ds.SOPInstanceUID): name for name, ds in zip(written.views, datasets)}
    uids = {name: uid for uid, name in names.items()}
    result = analyse_study(datasets, Config(), datetime(2024, 1, 2, 3, 4, 5))
    findings = result.findings
    hits = _found_truth(written, findings, names)
    assert set(hits) == {"RCC", "RMLO", "LMLO"}, f"the detector misses drawn clusters: {hits}"
    assert findings.correlation_attempted
    lesion = [c for c in findings.composites if hits["RCC"] in c.members]
    assert len(lesion) == 1 and lesion[0].members == (hits["RCC"], hits["RMLO"])
    assert not [c for c in findings.composites if hits["LMLO"] in c.members]
    clusters = {(i.source.sop_instance_uid, k): c for i in findings.images
                for k, c in enumerate(i.clusters)}
    certainties = [clusters[m].certainty for m in lesion[0].members]
    assert lesion[0].certainty == combined_certainty(certainties)
    assert lesion[0].certainty > max(certainties) or max(certainties) >= 99.9

    sr = dict(result.outputs)["sr"]
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    sr = pydicom.dcmread(path)
    assert check_cad_sr(sr, {str(ds.SOPInstanceUID): ds for ds in datasets}) == []
    composites, singles, views = _sr_lesions(sr)
    assert len(composites) == len(findings.composites)
    feature = [f for f in composites
               if uids["RCC"] in {v for m in f.ContentSequence
                                  if _code(m) == _key(C.SINGLE_IMAGE_FINDING) for v in views(m)}]
    assert len(feature) == 1
    feature = feature[0]
    assert _code(feature, "ConceptCodeSequence") == _key(C.CALCIFICATION_CLUSTER)  # CID 6014
    rows = {_code(c): c for c in feature.ContentSequence}
    for name, wanted in ((C.SCOPE_OF_FEATURE, C.ON_MULTIPLE_IMAGES),
                         (C.COMPOSITE_TYPE, C.RELATED_SPATIALLY)):
        assert _code(rows[_key(name)], "ConceptCodeSequence") == _key(wanted)
    certainty = rows[_key(C.CERTAINTY_OF_FEATURE)].MeasuredValueSequence[0].NumericValue
    assert float(certainty) == lesion[0].certainty
    members = [c for c in feature.ContentSequence if _code(c) == _key(C.SINGLE_IMAGE_FINDING)]
    assert [m.RelationshipType for m in members] == ["INFERRED FROM"] * 2
    assert [views(m) for m in members] == [[uids["RCC"]], [uids["RMLO"]]]
    lmlo = [f for f in singles if views(f) == [uids["LMLO"]]]
    assert lmlo and all(f.RelationshipType == "CONTAINS" for f in lmlo)
    assert _code(sr.ContentSequence[4], "ConceptCodeSequence") == _key(C.SUCCEEDED)  # analyses

    require(DCIODVFY, DSRDUMP)
    assert run_dciodvfy(path) == []
    assert run_dsrdump(path) == (0, [])
