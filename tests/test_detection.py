"""Detection stages on small drawn images with known answers (0.1 mm pixels)."""

import numpy as np
import pytest

from node.detection import classify
from node.detection.breast import segment_breast
from node.detection.candidates import contrast_to_noise, find_objects
from node.detection.clusters import group_points, outline
from node.detection.detector import detect
from node.detection.params import DetectionParams

SPACING = (0.1, 0.1)
PARAMS = DetectionParams()


def drawn_breast(rows=600, cols=500, noise=15.0, seed=0):
    """A half-ellipse 'breast' against the right edge on dark air, with mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    inside = ((xx - cols) / (0.8 * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2 < 1
    img = np.where(inside, 1500.0, 200.0)
    img += rng.normal(0, noise, img.shape)
    return img.astype(np.float32), inside


def add_speck(img, row, col, diameter_px, amplitude=120.0):
    yy, xx = np.ogrid[0:img.shape[0], 0:img.shape[1]]
    img[(yy - row) ** 2 + (xx - col) ** 2 <= (diameter_px / 2.0) ** 2] += amplitude


def add_cluster(img, centre, n, spread_px, seed, diameters=(2, 4)):
    rng = np.random.default_rng(seed)
    points = []
    while len(points) < n:
        r, c = centre[0] + rng.uniform(-spread_px, spread_px), centre[1] + rng.uniform(-spread_px, spread_px)
        if all(np.hypot(r - pr, c - pc) > 6 for pr, pc in points):
            points.append((r, c))
            add_speck(img, r, c, rng.uniform(*diameters))
    return points


def test_breast_mask_excludes_air_labels_and_paddle_edge():
    img, inside = drawn_breast()
    img[20:60, 20:120] = 4000.0          # burned-in label in the air
    img[:, 60:62] = 900.0                # paddle edge: a thin bright line in the air
    breast = segment_breast(img, SPACING, PARAMS)
    f = breast.factor
    coarse_truth = inside[::f, ::f][: breast.mask.shape[0], : breast.mask.shape[1]]
    agreement = (breast.mask == coarse_truth).mean()
    assert agreement > 0.97
    assert not breast.mask[20 // f : 60 // f, 20 // f : 120 // f].any()
    assert not breast.mask[:, 60 // f].any()


def test_depth_is_zero_at_the_skin_and_large_inside_but_not_at_the_chest_wall():
    img, _ = drawn_breast()
    breast = segment_breast(img, SPACING, PARAMS)
    assert breast.depth_at(np.array([300]), np.array([105]))[0] < 2.0   # near the skin edge
    assert breast.depth_at(np.array([300]), np.array([400]))[0] > 15.0  # deep inside
    assert breast.depth_at(np.array([300]), np.array([499]))[0] > 15.0  # chest wall is not skin


@pytest.mark.parametrize("diameter_px", [3, 5])
def test_a_single_speck_is_found_and_sized(diameter_px):
    img, _ = drawn_breast(noise=10.0)
    add_speck(img, 300.0, 350.0, diameter_px, amplitude=150.0)
    breast = segment_breast(img, SPACING, PARAMS)
    cnr, offset = contrast_to_noise(img, SPACING, breast, PARAMS)
    objects = find_objects(img, cnr, offset, SPACING, breast, PARAMS)
    near = np.hypot(objects.row - 300, objects.col - 350) < 3
    assert near.sum() == 1
    assert objects.diameter_mm[near][0] == pytest.approx(diameter_px * 0.1, abs=0.15)


def test_noise_normalisation_favours_the_quiet_region():
    """The same speck stands out in quiet tissue and drowns in noisy tissue."""
    rng = np.random.default_rng(3)
    img, inside = drawn_breast(noise=0.0)
    dense = inside & (np.arange(img.shape[0])[:, None] >= 300)
    noise = np.where(dense, 60.0, 8.0)
    img += (rng.normal(0, 1, img.shape) * noise).astype(np.float32)
    img[dense] += 400.0  # dense half: brighter and noisier, as quantum noise behaves
    add_speck(img, 200.0, 380.0, 3, amplitude=80.0)
    add_speck(img, 420.0, 380.0, 3, amplitude=80.0)
    breast = segment_breast(img, SPACING, PARAMS)
    cnr, (r0, c0) = contrast_to_noise(img, SPACING, breast, PARAMS)
    assert cnr[200 - r0, 380 - c0] > 2.5 * cnr[420 - r0, 380 - c0]


def test_a_cluster_is_found_where_it_was_drawn():
    img, _ = drawn_breast()
    truth = add_cluster(img, (300, 340), n=8, spread_px=30, seed=1)
    clusters = detect(img, SPACING)
    assert len(clusters) == 1
    cluster = clusters[0]
    centre = np.mean(truth, axis=0)
    assert np.hypot(*(np.array(cluster.centre_rc) - centre)) < 8
    assert 6 <= cluster.count <= 8
    assert 0 < cluster.certainty <= 100
    for r, c in truth:
        assert np.hypot(r - cluster.centre_rc[0], c - cluster.centre_rc[1]) < cluster.radius_px


def test_nothing_is_found_in_plain_tissue():
    img, _ = drawn_breast(seed=4)
    assert detect(img, SPACING) == ()


def test_macrocalcifications_are_not_clusters():
    img, _ = drawn_breast()
    for k in range(5):
        add_speck(img, 250 + 25 * k, 330 + 10 * (k % 2), 20, amplitude=300.0)  # 2 mm blobs
    assert detect(img, SPACING) == ()


def test_skin_calcifications_are_not_clusters():
    img, inside = drawn_breast()
    rows = np.arange(220, 380, 25)
    for r in rows:
        edge_col = np.flatnonzero(inside[int(r)])[0]
        add_speck(img, r, edge_col + 8, 4, amplitude=200.0)  # 0.8 mm under the skin
    assert detect(img, SPACING) == ()


def test_scattered_single_specks_are_not_clusters():
    img, _ = drawn_breast()
    for r in range(120, 480, 100):
        for c in range(280, 500, 100):
            add_speck(img, r, c, 3, amplitude=150.0)
    assert detect(img, SPACING) == ()


def test_a_long_vascular_line_is_not_a_cluster():
    img, _ = drawn_breast()
    for k in range(14):  # dashes every 2 mm along 26 mm
        add_speck(img, 170 + 20 * k, 300 + 4 * k, 4, amplitude=160.0)
    assert detect(img, SPACING) == ()


def test_a_rim_calcification_is_not_a_cluster():
    img, _ = drawn_breast()
    yy, xx = np.ogrid[0:img.shape[0], 0:img.shape[1]]
    ring = np.abs(np.hypot(yy - 300, xx - 350) - 25) < 2.5  # 5 mm eggshell
    img[ring] += 250.0
    assert detect(img, SPACING) == ()


def test_group_points_links_by_distance_in_mm():
    points = np.array([[0, 0], [4, 0], [8, 0], [30, 0], [34, 0], [100, 100]], float)
    groups = group_points(points, link_distance_mm=5.0, min_members=2)
    assert [sorted(g.tolist()) for g in groups] == [[0, 1, 2], [3, 4]]
    assert group_points(points, 5.0, min_members=4) == []


def test_outline_is_closed_encloses_members_and_stays_in_the_image():
    rows, cols = np.array([5.0, 20.0, 12.0]), np.array([3.0, 8.0, 30.0])
    poly = outline(rows, cols, margin_px=10.0, shape=(40, 40))
    assert poly[0] == poly[-1]
    arr = np.array(poly)
    assert arr.min() >= -0.5 and arr[:, 0].max() <= 39.5 and arr[:, 1].max() <= 39.5
    from skimage.measure import points_in_poly

    assert points_in_poly(np.column_stack([rows, cols]), arr).all()


def test_operating_point_moves_the_threshold_monotonically():
    low = classify.reporting_threshold(DetectionParams(operating_point=-1.0))
    mid = classify.reporting_threshold(DetectionParams(operating_point=0.0))
    high = classify.reporting_threshold(DetectionParams(operating_point=1.0))
    assert low < mid < high


def test_certainty_grows_with_count_and_contrast():
    base = classify.ClusterFeatures(5, 5.0, 0.3, 6.0, 8.0, 0.3, 0.3, 1.2, 10.0)
    more = classify.ClusterFeatures(12, 5.0, 0.3, 6.0, 8.0, 0.3, 0.3, 1.2, 10.0)
    brighter = classify.ClusterFeatures(5, 5.0, 0.3, 9.0, 14.0, 0.3, 0.3, 1.2, 10.0)
    assert classify.certainty(more) > classify.certainty(base)
    assert classify.certainty(brighter) > classify.certainty(base)


def test_detect_rejects_non_images():
    with pytest.raises(ValueError):
        detect(np.zeros((4, 4), np.float32), SPACING)
