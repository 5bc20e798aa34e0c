"""The ACR-style phantom: determinism, layout, speck contrast, noise, and the detector's acceptance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from node.detection.detector import detect
from node.detection.params import DetectionParams
from node.testing.acr import ACR_SPECK_DIAMETERS_MM, SPECKS_PER_GROUP, make_acr_phantom
from node.testing.phantom import BACKGROUND_VALUE, ELECTRONIC_NOISE_PHOTONS

FIELD_MM = (110.0, 70.0)  # smaller than the default 120 x 98 mm field, still holds the groups
SPACINGS = (0.07, 0.1)
NOISE_FREE = 1e10  # photons/mm^2: quantum noise far below one grey level


def small(seed: int, spacing_mm: float, **kwargs):
    return make_acr_phantom(seed, spacing_mm=spacing_mm, rows=round(FIELD_MM[0] / spacing_mm),
                            cols=round(FIELD_MM[1] / spacing_mm), **kwargs)


def _mm(a, b, spacing_mm: float) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1]) * spacing_mm


def test_same_seed_gives_identical_output_and_other_seed_differs():
    first, again, other = small(3, 0.1), small(3, 0.1), small(4, 0.1)
    assert np.array_equal(first.presentation, again.presentation) and first.groups == again.groups
    assert not np.array_equal(first.presentation, other.presentation)
    assert first.groups != other.groups  # the phantom is placed anew for every exposure
    assert first.presentation.dtype == np.uint16 and first.presentation.max() <= 4095


@pytest.mark.parametrize("spacing_mm", SPACINGS)
def test_groups_of_six_specks_in_a_row_inside_the_wax_insert(spacing_mm):
    acr = small(5, spacing_mm)
    assert [g.diameter_mm for g in acr.groups] == list(ACR_SPECK_DIAMETERS_MM)
    r0, r1, c0, c1 = acr.insert
    for group in acr.groups:
        assert len(group.specks_rc) == SPECKS_PER_GROUP and group.specks_rc[0] == group.centre_rc
        ring = [_mm(s, group.centre_rc, spacing_mm) for s in group.specks_rc[1:]]
        gaps = [_mm(a, b, spacing_mm) for i, a in enumerate(group.specks_rc) for b in group.specks_rc[i + 1:]]
        assert max(ring) + group.diameter_mm / 2 <= group.radius_mm + 1e-6 <= 5.0
        assert 3.0 <= min(gaps) and max(gaps) <= 10.0
        for row, col in group.specks_rc:
            assert r0 + 3 / spacing_mm <= row <= r1 - 3 / spacing_mm
            assert c0 + 3 / spacing_mm <= col <= c1 - 3 / spacing_mm
    apart = [_mm(a.centre_rc, b.centre_rc, spacing_mm) for a, b in zip(acr.groups, acr.groups[1:])]
    assert all(15.0 <= d <= 20.0 for d in apart)


def test_a_field_too_small_for_the_row_of_groups_is_refused():
    with pytest.raises(ValueError, match="cannot hold"):
        make_acr_phantom(0, spacing_mm=0.1, rows=900, cols=700)


@pytest.mark.parametrize("chest_wall", ["left", "right"])
def test_block_lies_on_the_chest_wall_with_air_on_three_sides(chest_wall):
    acr = small(6, 0.1, chest_wall=chest_wall)
    image = acr.presentation
    wall = 0 if chest_wall == "left" else -1
    far_side = image[:, -30:] if chest_wall == "left" else image[:, :30]
    for edge in (image[:30], image[-30:], far_side):
        assert abs(np.median(edge) - BACKGROUND_VALUE) < 5  # air
    middle = slice(image.shape[0] // 2 - 50, image.shape[0] // 2 + 50)
    assert np.median(image[middle, wall]) > 2500  # the block runs off the chest-wall edge
    r0, r1, c0, c1 = acr.block
    assert (c0 == 0) == (chest_wall == "left") and (c1 == image.shape[1]) == (chest_wall == "right")
    assert np.median(image[r0 + 20:r1 - 20, c0 + 20:c1 - 20]) > 2500


@pytest.mark.parametrize("spacing_mm", SPACINGS)
@pytest.mark.parametrize("chest_wall", ["left", "right"])
def test_every_speck_is_drawn_where_the_truth_says(spacing_mm, chest_wall):
    acr = small(7, spacing_mm, photons_per_mm2=NOISE_FREE, chest_wall=chest_wall)
    image = acr.presentation.astype(np.float32)
    for group in acr.groups:
        for row, col in group.specks_rc:
            r, c = int(round(row)), int(round(col))
            window = image[r - 6:r + 7, c - 6:c + 7]
            peak = np.unravel_index(np.argmax(window), window.shape)
            assert math.hypot(peak[0] - 6 + r - row, peak[1] - 6 + c - col) <= 1.0


@pytest.mark.parametrize("spacing_mm", SPACINGS)
def test_speck_contrast_grows_with_size_and_0_24_mm_stands_out_of_the_noise(spacing_mm):
    acr = small(8, spacing_mm)
    image = acr.presentation.astype(np.float64)
    noise = _flat_strip(acr).std()
    contrasts = []
    for group in acr.groups:
        rises = []
        for row, col in group.specks_rc:
            r, c = int(round(row)), int(round(col))
            background = np.median(image[r - 25:r + 26, c - 25:c + 26])
            rises.append(image[r - 1:r + 2, c - 1:c + 2].max() - background)
        contrasts.append(float(np.mean(rises)))
    assert contrasts == sorted(contrasts, reverse=True)  # diameters run large to small
    by_size = dict(zip(ACR_SPECK_DIAMETERS_MM, contrasts))
    assert by_size[0.24] > 5 * noise  # clearly visible, as on real FFDM systems
    assert by_size[0.16] < 0.7 * by_size[0.24]


def _flat_strip(acr) -> np.ndarray:
    """Insert pixels beside the groups: > 8 mm from their specks, > 3 mm from the insert edge."""
    r0, r1, c0, c1 = acr.insert
    col = int(round(acr.groups[0].centre_rc[1]))
    sp = acr.spacing_mm
    near_c = col + int(8 / sp) if acr.chest_wall == "left" else c0 + int(3 / sp)
    far_c = c1 - int(3 / sp) if acr.chest_wall == "left" else col - int(8 / sp)
    return acr.presentation[r0 + int(3 / sp):r1 - int(3 / sp), near_c:far_c].astype(np.float64)


@pytest.mark.parametrize("spacing_mm", SPACINGS)
def test_noise_is_the_predicted_quantum_and_electronic_noise(spacing_mm):
    """White noise after the PSF: sigma = gain * sqrt(N + e^2) / N grey levels at N photons."""
    acr = small(9, spacing_mm)
    n = acr.photons_behind("insert")
    assert n == pytest.approx(2.5e5 * spacing_mm ** 2, rel=0.15)  # the exposure control's fluence
    strip = _flat_strip(acr)
    predicted = acr.gain * math.sqrt(n + ELECTRONIC_NOISE_PHOTONS ** 2) / n
    assert strip.std() == pytest.approx(predicted, rel=0.1)
    # and it is white: neighbouring pixels are (nearly) uncorrelated
    centred = strip - ndimage.uniform_filter(strip, 15)
    assert abs(np.corrcoef(centred[:, 1:].ravel(), centred[:, :-1].ravel())[0, 1]) < 0.15


@pytest.mark.parametrize("spacing_mm", SPACINGS)
def test_detector_finds_every_group_of_0_24_mm_and_above(spacing_mm):
    acr = small(1, spacing_mm)
    clusters = detect(acr.presentation.astype(np.float32), (spacing_mm, spacing_mm), DetectionParams())
    for group in acr.groups:
        if group.diameter_mm >= 0.24:
            found = [c for c in clusters
                     if _mm(c.centre_rc, group.centre_rc, spacing_mm) <= group.radius_mm + 3.0]
            assert found, f"{group.diameter_mm} mm group not found at {spacing_mm} mm pixels"
            assert max(c.count for c in found) >= 5
    matched = [c for c in clusters
               if any(_mm(c.centre_rc, g.centre_rc, spacing_mm) <= g.radius_mm + 3.0 for g in acr.groups)]
    assert len(matched) == len(clusters)  # no false cluster on a uniform background
