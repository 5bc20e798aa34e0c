"""The synthetic mammogram generator: determinism, truth, contrast, encodings."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForProcessing, ExplicitVRLittleEndian, JPEG2000Lossless,
    JPEGLSLossless,
)
from scipy import ndimage

from node.testing.phantom import (
    CLUSTER_KINDS, DISTRACTOR_KINDS, PhantomSpec, make_phantom, random_spec,
)
from node.testing.study import VIEWS, write_study

SMALL = dict(rows=512, cols=416, spacing_mm=0.1)


def _same(a, b) -> bool:
    return (np.array_equal(a.presentation, b.presentation)
            and np.array_equal(a.processing, b.processing)
            and np.array_equal(a.breast_mask, b.breast_mask)
            and a.clusters == b.clusters and a.distractors == b.distractors)


def test_same_seed_gives_identical_output_and_other_seed_differs():
    spec = PhantomSpec(**SMALL, view="MLO", n_clusters=2, distractors=("macro", "label"), seed=11)
    first, again = make_phantom(spec), make_phantom(spec)
    assert _same(first, again)
    other = make_phantom(PhantomSpec(**SMALL, view="MLO", n_clusters=2,
                                     distractors=("macro", "label"), seed=12))
    assert not np.array_equal(first.presentation, other.presentation)
    assert first.clusters != other.clusters


def test_images_have_the_promised_ranges_and_layout():
    phantom = make_phantom(PhantomSpec(**SMALL, laterality="L", view="CC", seed=3))
    assert phantom.presentation.dtype == np.uint16 and phantom.presentation.max() <= 4095
    assert phantom.processing.dtype == np.uint16 and phantom.processing.max() <= 16383
    assert 0.35 <= phantom.breast_mask.mean() <= 0.75
    # Chest wall on the left for an L breast: the breast touches column 0, not the last one.
    assert phantom.breast_mask[:, 0].any() and not phantom.breast_mask[:, -1].any()
    air, breast = ~phantom.breast_mask, phantom.breast_mask
    assert np.median(phantom.presentation[air]) < 300 < np.median(phantom.presentation[breast])
    assert np.median(phantom.processing[air]) > np.median(phantom.processing[breast])


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_cluster_truth_is_inside_the_breast_and_away_from_the_skin(view):
    phantom = make_phantom(PhantomSpec(**SMALL, view=view, n_clusters=2, seed=5,
                                       cluster_kinds=CLUSTER_KINDS))
    skin_mm = ndimage.distance_transform_edt(phantom.breast_mask) * SMALL["spacing_mm"]
    assert [c.kind for c in phantom.clusters] == list(CLUSTER_KINDS)
    for cluster in phantom.clusters:
        assert 5 <= len(cluster.specks) <= 30 and cluster.radius_mm <= 5.5
        for row, col, diameter_mm in cluster.specks:
            assert 0.05 <= diameter_mm <= 1.0
            assert skin_mm[int(round(row)), int(round(col))] >= 7.5
            if phantom.pectoral_mask is not None:
                assert not phantom.pectoral_mask[int(round(row)), int(round(col))]
    first, second = phantom.clusters
    gap_px = np.hypot(first.centre_rc[0] - second.centre_rc[0],
                      first.centre_rc[1] - second.centre_rc[1])
    assert gap_px * SMALL["spacing_mm"] > first.radius_mm + second.radius_mm


def test_specks_are_brighter_than_their_surroundings():
    rises = []
    for seed in range(4):
        phantom = make_phantom(PhantomSpec(**SMALL, n_clusters=2, seed=seed))
        image = phantom.presentation.astype(float)
        for cluster in phantom.clusters:
            for row, col, _ in cluster.specks:
                r, c = int(round(row)), int(round(col))
                background = np.median(image[r - 20:r + 21, c - 20:c + 21])
                rises.append(image[r - 1:r + 2, c - 1:c + 2].max() - background)
    rises = np.array(rises)
    assert np.median(rises) > 30 and (rises > 0).mean() > 0.8


@pytest.mark.parametrize("kind", DISTRACTOR_KINDS)
@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_every_distractor_kind_draws_with_truth(kind, view):
    phantom = make_phantom(PhantomSpec(**SMALL, view=view, n_clusters=1, distractors=(kind,),
                                       seed=2))
    (truth,) = phantom.distractors
    assert truth.kind == kind and truth.extent_mm > 0
    for row, col in truth.points or (truth.centre_rc,):
        assert 0 <= row < SMALL["rows"] and 0 <= col < SMALL["cols"]
    r, c = (int(round(v)) for v in truth.centre_rc)
    if kind in ("clip", "marker"):
        assert phantom.presentation[r, c] == 4095  # metal saturates
    if kind == "label":
        (r0, c0), (r1, c1) = truth.points
        box = phantom.presentation[int(r0):int(r1) + 1, int(c0):int(c1) + 1]
        assert (box == 4095).any() and not phantom.breast_mask[int(r0):int(r1) + 1,
                                                                int(c0):int(c1) + 1].any()
    if kind in ("macro", "rim", "popcorn", "scattered", "clip"):
        assert all(phantom.breast_mask[int(round(p[0])), int(round(p[1]))] for p in truth.points)


def test_random_spec_is_deterministic_and_renders():
    spec = random_spec(21)
    assert spec == random_spec(21) and spec.seed == 21
    assert 0 <= spec.n_clusters <= 2 and len(spec.distractors) <= 3
    assert make_phantom(spec).spec is spec


def _pixels(output):
    return {name: pydicom.dcmread(path).pixel_array for name, (path, _) in output.views.items()}


def test_study_round_trips_identically_through_lossless_syntaxes(tmp_path):
    plain = write_study(tmp_path / "plain", 8, distractors=("label",))
    reference = _pixels(plain)
    assert list(reference) == [name for name, _, _ in VIEWS]
    for name, (path, phantom) in plain.views.items():
        assert np.array_equal(reference[name], phantom.presentation)
        assert pydicom.dcmread(path).BurnedInAnnotation == "YES"
    for syntax in (JPEG2000Lossless, JPEGLSLossless):
        coded = write_study(tmp_path / syntax.name.replace(" ", "_"), 8, distractors=("label",),
                            transfer_syntax=syntax)
        assert pydicom.dcmread(coded.views["RCC"][0]).file_meta.TransferSyntaxUID == syntax
        for name, pixels in _pixels(coded).items():
            assert np.array_equal(pixels, reference[name]), (syntax.name, name)


def test_monochrome1_is_the_inverse_within_bits_stored(tmp_path):
    normal = _pixels(write_study(tmp_path / "m2", 4))
    inverted = write_study(tmp_path / "m1", 4, monochrome1=True)
    ds = pydicom.dcmread(inverted.views["LMLO"][0])
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    for name, pixels in _pixels(inverted).items():
        assert np.array_equal(pixels.astype(int), 4095 - normal[name].astype(int))


def test_for_processing_file_is_linear_14_bit(tmp_path):
    output = write_study(tmp_path, 6, for_processing=True, transfer_syntax=ExplicitVRLittleEndian)
    path, phantom = output.views["RCC"]
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == DigitalMammographyXRayImageStorageForProcessing
    assert ds.PresentationIntentType == "FOR PROCESSING"
    assert ds.BitsStored == 14 and ds.PixelIntensityRelationship == "LIN"
    assert np.array_equal(ds.pixel_array, phantom.processing)
