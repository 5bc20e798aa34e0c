"""Detection stages on small drawn images with known answers (0.1 mm pixels)."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial import cKDTree

from node.detection import classify, weights
from node.detection.breast import segment_breast
from node.detection.candidates import Objects, contrast_to_noise, find_objects
from node.detection.clusters import group_points, outline
from node.detection.detector import candidates, detect
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


def test_certainty_grows_with_clear_members_and_contrast():
    base = classify.ClusterFeatures(5, 5.0, 0.3, 6.0, 8.0, 0.3, 0.3, 1.2, 10.0, third_cnr=6.0, clear=3)
    more = replace(base, count=12, clear=10)
    brighter = replace(base, median_cnr=9.0, top_cnr=14.0, third_cnr=9.0)
    assert classify.certainty(more) > classify.certainty(base)
    assert classify.certainty(brighter) > classify.certainty(base)


def test_detect_rejects_non_images():
    with pytest.raises(ValueError):
        detect(np.zeros((4, 4), np.float32), SPACING)


# --- grouping with strong and weak specks --------------------------------------------------------

def _groups(points, strong=None, weak_link_mm=None, link=5.0, min_members=3):
    found = group_points(np.asarray(points, float), link, min_members, strong, weak_link_mm)
    return sorted(sorted(g.tolist()) for g in found)


def _two_strong_groups_9mm_apart():
    left = [[0, 0], [2, 0], [0, 2], [2, 2]]      # nearest point of each group: (2, 2) and (11, 2)
    right = [[11, 0], [13, 0], [11, 2], [13, 2]]
    return left + right


def test_a_weak_point_midway_does_not_bridge_two_strong_groups():
    points = _two_strong_groups_9mm_apart() + [[6.5, 2]]  # 4.5 mm from each group
    strong = np.array([True] * 8 + [False])
    assert _groups(points, strong, weak_link_mm=3.5) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_strong_point_midway_bridges_two_groups():
    points = _two_strong_groups_9mm_apart() + [[6.5, 2]]
    strong = np.ones(9, bool)
    assert _groups(points, strong, weak_link_mm=3.5) == [list(range(9))]


@pytest.mark.parametrize("gap_mm, joins", [(2.0, True), (4.5, False)])
def test_a_weak_point_joins_a_group_only_from_close_by(gap_mm, joins):
    points = [[0, 0], [2, 0], [0, 2], [2, 2], [2 + gap_mm, 2]]
    strong = np.array([True, True, True, True, False])
    groups = _groups(points, strong, weak_link_mm=3.5)
    assert groups == ([[0, 1, 2, 3, 4]] if joins else [[0, 1, 2, 3]])


def test_weak_points_link_to_each_other_only_within_the_weak_distance():
    points = [[0, 0], [3, 0], [6, 0], [20, 0], [24, 0], [28, 0]]  # 3 mm apart, then 4 mm apart
    strong = np.zeros(6, bool)
    assert _groups(points, strong, weak_link_mm=3.5) == [[0, 1, 2]]


def test_without_strong_grouping_is_plain_single_linkage():
    rng = np.random.default_rng(5)
    points = rng.uniform(0, 40, (60, 2))
    plain = _groups(points, link=5.0, min_members=2)
    assert plain == _groups(points, strong=np.ones(60, bool), weak_link_mm=3.5, link=5.0, min_members=2)
    assert plain == _groups(points, strong=np.zeros(60, bool), weak_link_mm=None, link=5.0, min_members=2)
    # and the weak rule does change this layout, so the comparison above is not vacuous
    assert plain != _groups(points, strong=np.zeros(60, bool), weak_link_mm=3.5, link=5.0, min_members=2)
    midway = _two_strong_groups_9mm_apart() + [[6.5, 2]]
    assert _groups(midway) == [list(range(9))]


# --- member geometry: alignment, parallel rows, spacing -----------------------------------------

def _line_mm(n, step_mm, angle, origin=(20.0, 20.0)):
    """n points step_mm apart from origin along direction angle (radians from the row axis)."""
    t = np.arange(n) * step_mm
    return np.column_stack([origin[0] + t * np.cos(angle), origin[1] + t * np.sin(angle)])


@pytest.mark.parametrize("angle", [0.0, np.pi / 6, np.pi / 2, 2.0])
def test_alignment_of_members_along_across_and_round(angle):
    points = _line_mm(6, 2.0, angle)
    elongated = np.full(6, 3.0)
    along = classify._alignment(points, np.full(6, angle), elongated)
    across = classify._alignment(points, np.full(6, angle + np.pi / 2), elongated)
    round_ = classify._alignment(points, np.full(6, angle), np.ones(6))
    assert along > 0.95
    assert across < -0.95
    assert round_ == 0.0
    # members at 45 degrees to the axis say nothing
    assert abs(classify._alignment(points, np.full(6, angle + np.pi / 4), elongated)) < 0.05


def _tram_points_mm(n_per_row=6, step_mm=2.0, gap_mm=1.2, angle=np.pi / 6, stagger_mm=0.0):
    normal = np.array([-np.sin(angle), np.cos(angle)])
    one = _line_mm(n_per_row, step_mm, angle)
    other = _line_mm(n_per_row, step_mm, angle) + gap_mm * normal
    other += stagger_mm * np.array([np.cos(angle), np.sin(angle)])
    return np.vstack([one, other])


def _parallel(points_mm, angle, ratio):
    n = len(points_mm)
    return classify._parallel(points_mm, np.broadcast_to(angle, (n,)).astype(float), np.full(n, float(ratio)))


@pytest.mark.parametrize("angle", [0.0, np.pi / 6, np.pi / 2, 2.0])
@pytest.mark.parametrize("stagger_mm", [0.0, 1.0])
def test_two_rows_of_dashes_1_2_mm_apart_are_parallel(angle, stagger_mm):
    assert _parallel(_tram_points_mm(angle=angle, stagger_mm=stagger_mm), angle, 3.0) >= 0.8


def test_a_single_row_of_dashes_is_not_parallel():
    assert _parallel(_line_mm(8, 1.5, np.pi / 6), np.pi / 6, 3.0) == 0.0


def test_rows_too_far_apart_are_not_parallel():
    assert _parallel(_tram_points_mm(gap_mm=4.0), np.pi / 6, 3.0) == 0.0


# A round cluster of 8 specks 1.2-2.5 mm apart within 3 mm of its centre (linearity 0.1): the
# typical suspicious cluster, not two rows.
ROUND_BLOB_MM = np.array([[0.8, -1.4], [0.6, 1.4], [0.3, 2.6], [2.2, 0.3], [-1.2, -0.5],
                          [-2.2, 1.3], [2.6, -0.9], [-1.0, -2.1]]) + 20.0


def test_a_dense_round_blob_of_round_specks_is_not_parallel():
    assert classify.linearity(ROUND_BLOB_MM) < 0.2
    angles = np.random.default_rng(0).uniform(0, np.pi, len(ROUND_BLOB_MM))
    assert _parallel(ROUND_BLOB_MM, angles, 1.25) == 0.0   # pixelated discs measure 1.1-1.4
    assert _parallel(_tram_points_mm(), angles[:1], 1.25) == 0.0  # even laid out as two rows


def test_dashes_side_by_side_but_not_across_their_axis_are_not_parallel():
    # two rows 1.2 mm apart whose dashes lie across the rows: neighbours are along each dash
    points = _tram_points_mm(step_mm=3.0, angle=0.0)
    assert _parallel(points, np.pi / 2, 3.0) == 0.0


def test_nearest_mm_is_the_median_nearest_neighbour_distance():
    points = np.array([[0, 0], [1, 0], [1, 3], [5, 3], [5, 9]], float)  # nearest: 1, 1, 3, 4, 6
    assert classify._nearest_mm(points) == pytest.approx(3.0)
    assert classify._nearest_mm(points[:4]) == pytest.approx(2.0)
    assert classify._nearest_mm(points[:1]) == 0.0


# --- measure with the image's context -----------------------------------------------------------

def objects_of(rows, cols, diameter_mm=0.3, length_mm=None, cnr=10.0, angle=0.0, depth_mm=20.0):
    """Objects with the given centres (pixels) and per-object or shared measurements."""
    rows = np.asarray(rows, float)
    n = len(rows)

    def each(v):
        return np.broadcast_to(np.asarray(v, float), (n,)).copy()

    diameter = each(diameter_mm)
    return Objects(rows, np.asarray(cols, float), diameter,
                   diameter.copy() if length_mm is None else each(length_mm), each(cnr), each(depth_mm),
                   np.zeros(n, bool), np.ones(n), each(angle))


def _context_layout():
    """At 0.1 mm: a group of 4 specks around (50.5, 50.5) mm, two large objects (7.5 and
    11.5 mm from its centre; its reach is 0.71 + 10 mm) and two other specks (5.5 and 27 mm)."""
    rows = [500, 510, 500, 510, 505, 505, 505, 700]
    cols = [500, 500, 510, 510, 580, 620, 450, 700]
    diameter = [0.3, 0.3, 0.3, 0.3, 2.0, 0.5, 0.3, 0.3]
    length = [0.4, 0.4, 0.4, 0.4, 2.2, 4.0, 0.4, 0.4]   # 4: too wide, 5: too long
    cnr = [5.0, 9.0, 7.0, 12.0, 20.0, 20.0, 8.0, 8.0]
    objects = objects_of(rows, cols, diameter, length, cnr)
    speck = classify.is_speck(objects, PARAMS)
    assert speck.tolist() == [True] * 4 + [False, False] + [True, True]
    context = classify.Context.build(objects, speck, np.array(SPACING), PARAMS)
    return objects, speck, context


def test_measure_counts_large_objects_and_other_specks_within_reach():
    objects, speck, context = _context_layout()
    members = np.arange(4)
    f = classify.measure(objects.take(members), context.points_mm[members], context)
    assert f.count == 4
    assert f.large_near == 1     # the 2 mm blob at 7.5 mm; the 4 mm dash at 11.5 mm is out of reach
    assert f.specks_near == 1    # the speck at 5.5 mm; the group's own 4 members are not counted
    assert f.third_cnr == 7.0
    assert f.top_cnr == pytest.approx((12 + 9 + 7) / 3)
    assert f.median_cnr == pytest.approx(8.0)
    assert f.extent_mm == pytest.approx(np.sqrt(2.0))
    assert f.nearest_mm == pytest.approx(1.0)


def test_measure_without_context_sees_no_neighbours():
    objects, _, context = _context_layout()
    f = classify.measure(objects.take(np.arange(4)), context.points_mm[:4])
    assert f.large_near == 0 and f.specks_near == 0


def test_third_cnr_is_the_third_highest_peak_whatever_the_order():
    cnr = [4.0, 30.0, 6.0, 11.0, 9.0]
    objects = objects_of(np.arange(5) * 10.0, np.zeros(5), cnr=cnr)
    points = np.column_stack([objects.row, objects.col]) * 0.1
    f = classify.measure(objects, points)
    assert f.third_cnr == 9.0
    assert f.top_cnr == pytest.approx((30 + 11 + 9) / 3)
    two = classify.measure(objects.take(np.array([0, 2])), points[[0, 2]])
    assert two.third_cnr == 4.0  # fewer than three: the faintest


# --- certainty model ------------------------------------------------------------------------------

# A true cluster as the drawn ones measure: 8 round 0.3 mm specks, about 1.4 mm apart, moderate
# contrast (a certainty well inside 0-100 so that changes show).
TRUE_CLUSTER = classify.ClusterFeatures(
    count=8, extent_mm=6.1, linearity=0.3, median_cnr=9.0, top_cnr=11.0, size_cv=0.15,
    mean_diameter_mm=0.32, elongation=1.25, density_per_cm2=27.0, third_cnr=10.0, alignment=0.0,
    large_near=0, specks_near=1, nearest_mm=1.4, parallel=0.3,
)


def test_certainty_model_has_one_weight_per_input_and_rising_thresholds():
    n = len(classify.CERTAINTY_INPUTS)
    assert len(weights.MEAN) == len(weights.SCALE) == len(weights.WEIGHTS) == n
    assert all(s > 0 for s in weights.SCALE)
    assert np.isfinite(weights.BIAS)
    assert len(weights.OPERATING_THRESHOLDS) == len(classify.OPERATING_POINTS) == 5
    assert all(0.0 <= t <= 100.0 for t in weights.OPERATING_THRESHOLDS)
    assert list(weights.OPERATING_THRESHOLDS) == sorted(weights.OPERATING_THRESHOLDS)
    assert weights.OPERATING_THRESHOLDS[-1] > weights.OPERATING_THRESHOLDS[0]


@pytest.mark.parametrize("features", [
    TRUE_CLUSTER,
    classify.ClusterFeatures(3, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    classify.ClusterFeatures(500, 200.0, 0.0, 1e4, 1e4, 5.0, 9.0, 50.0, 1e4, 1e4, -1.0, 10**6, 10**6, 1e3, 1.0),
])
def test_certainty_inputs_are_finite_and_certainty_within_0_100(features):
    x = classify.certainty_inputs(features)
    assert x.shape == (len(classify.CERTAINTY_INPUTS),)
    assert np.isfinite(x).all()
    assert 0.0 <= classify.certainty(features) <= 100.0


def test_a_true_cluster_is_neither_certain_nor_hopeless():
    assert 1.0 < classify.certainty(TRUE_CLUSTER) < 99.0


@pytest.mark.parametrize("field, value", [("top_cnr", 16.0), ("median_cnr", 10.5), ("third_cnr", 10.9)])
def test_certainty_grows_with_each_contrast_alone(field, value):
    brighter = replace(TRUE_CLUSTER, **{field: value})
    assert classify.certainty(brighter) > classify.certainty(TRUE_CLUSTER)


def test_certainty_grows_with_contrast_all_together():
    levels = [replace(TRUE_CLUSTER, third_cnr=k * 10.0, median_cnr=k * 9.0, top_cnr=k * 11.0)
              for k in (0.6, 0.8, 1.0, 1.5, 2.0)]
    scores = [classify.certainty(f) for f in levels]
    assert scores == sorted(scores) and scores[0] < scores[-1]


def test_a_group_of_coarse_aligned_dashes_is_vascular_and_round_members_are_not():
    vascular = replace(TRUE_CLUSTER, elongation=2.0, alignment=1.0, parallel=1.0, mean_diameter_mm=0.75)
    assert classify.benign_reason(vascular, PARAMS) == "coarse dashes along one axis (vascular)"
    round_members = replace(vascular, elongation=1.1, alignment=0.0, mean_diameter_mm=0.4)
    assert classify.benign_reason(round_members, PARAMS) is None
    fine_casts = replace(vascular, elongation=1.6, mean_diameter_mm=0.45)  # thin fine-linear casts
    assert classify.benign_reason(fine_casts, PARAMS) is None


@pytest.mark.parametrize("change", [
    {"elongation": 1.2}, {"count": 5}, {"mean_diameter_mm": 0.5},
])
def test_three_coarse_dashes_are_a_vessel_fragment_but_not_with_any_sign_missing(change):
    fragment = replace(TRUE_CLUSTER, count=3, elongation=1.4, alignment=0.2, mean_diameter_mm=0.65)
    assert classify.benign_reason(fragment, PARAMS) == "coarse dashes along one axis (vascular)"
    assert classify.benign_reason(replace(fragment, **change), PARAMS) is None


# --- reporting threshold --------------------------------------------------------------------------

def test_reporting_threshold_rises_with_the_operating_point_and_hits_the_fitted_points():
    points = np.linspace(-1.0, 1.0, 81)
    curve = [classify.reporting_threshold(DetectionParams(operating_point=float(p))) for p in points]
    assert all(b >= a for a, b in zip(curve, curve[1:]))
    for p, t in zip(classify.OPERATING_POINTS, weights.OPERATING_THRESHOLDS):
        assert classify.reporting_threshold(DetectionParams(operating_point=p)) == pytest.approx(t)


@pytest.mark.parametrize("point", [-1.0, -0.25, 0.0, 0.7, 1.0])
@pytest.mark.parametrize("floor", [0.0, 5.0, 20.0, 60.0, 100.0])
def test_report_certainty_is_a_floor_under_the_operating_point(point, floor):
    curve = classify.reporting_threshold(DetectionParams(operating_point=point))
    both = classify.reporting_threshold(DetectionParams(operating_point=point, report_certainty=floor))
    assert both == pytest.approx(max(curve, floor))


# --- detection on drawn images --------------------------------------------------------------------

def add_dash(img, row, col, length_px, width_px, angle, amplitude):
    """A bright rectangle length_px x width_px centred at (row, col), long axis at angle
    (radians from the row axis)."""
    yy, xx = np.ogrid[0:img.shape[0], 0:img.shape[1]]
    u = (yy - row) * np.cos(angle) + (xx - col) * np.sin(angle)
    v = -(yy - row) * np.sin(angle) + (xx - col) * np.cos(angle)
    img[(np.abs(u) <= length_px / 2) & (np.abs(v) <= width_px / 2)] += amplitude


def add_tram_track(img, start, angle, length_px=250, gap_px=12, step_px=20, amplitude=120.0, tube=25.0):
    """A calcified vessel: a faint tube with two parallel rows (gap_px apart) of dashes 1.2 x 0.4
    mm along it, every step_px, from start along angle."""
    d = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-np.sin(angle), np.cos(angle)])
    yy, xx = np.ogrid[0:img.shape[0], 0:img.shape[1]]
    u = (yy - start[0]) * d[0] + (xx - start[1]) * d[1]
    v = (yy - start[0]) * normal[0] + (xx - start[1]) * normal[1]
    img[(u >= 0) & (u <= length_px) & (np.abs(v) <= gap_px / 2 + 3)] += tube
    for k in range(int(length_px // step_px) + 1):
        centre = np.asarray(start, float) + d * k * step_px
        for side in (-1, 1):
            r, c = centre + normal * side * gap_px / 2
            add_dash(img, r, c, 12, 4, angle, amplitude)


def drawn_cluster(seed, amplitude=120.0, centre=(300, 340), img=None):
    """8 round 0.3 mm specks, at least 0.6 mm apart, within 3 mm of centre."""
    if img is None:
        img, _ = drawn_breast(seed=seed)
    rng = np.random.default_rng(seed + 1)
    points = []
    while len(points) < 8:
        r, c = centre[0] + rng.uniform(-30, 30), centre[1] + rng.uniform(-30, 30)
        if all(np.hypot(r - pr, c - pc) > 6 for pr, pc in points):
            points.append((r, c))
            add_speck(img, r, c, 3, amplitude)
    return img, points


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_drawn_cluster_is_one_candidate_not_benign_and_reported(seed):
    img, truth = drawn_cluster(seed)
    found = candidates(img, SPACING)
    assert len(found) == 1
    c = found[0]
    assert c.benign is None
    assert len(c.members) == 8
    assert np.hypot(*(np.array([c.members.row.mean(), c.members.col.mean()]) - np.mean(truth, axis=0))) < 3
    reported = detect(img, SPACING)
    assert len(reported) == 1 and reported[0].count == 8
    assert reported[0].certainty == pytest.approx(c.certainty, abs=0.05)


def test_a_second_cluster_elsewhere_does_not_hide_the_first():
    img, _ = drawn_cluster(0)
    alone = detect(img, SPACING)
    drawn_cluster(7, centre=(150, 400), img=img)
    both = detect(img, SPACING)
    assert len(alone) == 1 and len(both) == 2


@pytest.mark.parametrize("angle_deg", [10, 30, 50])
def test_a_25_mm_tram_track_is_not_reported(angle_deg):
    img, _ = drawn_breast(seed=angle_deg)
    add_tram_track(img, (170, 330), np.deg2rad(angle_deg))
    assert detect(img, SPACING) == ()


@pytest.mark.parametrize("angle_deg", [10, 50])
def test_a_short_tram_track_is_rejected_as_vascular_by_its_coarse_aligned_dashes(angle_deg):
    """10 mm of track: too short for the extent rules, caught by the coarse-dash rule."""
    img, _ = drawn_breast(seed=angle_deg)
    add_tram_track(img, (250, 330), np.deg2rad(angle_deg), length_px=100)  # 10 mm
    found = candidates(img, SPACING)
    assert len(found) == 1
    f = found[0].features
    assert f.alignment > 0.8 and f.parallel >= 0.8 and f.elongation > 1.5 and f.extent_mm < 12
    assert found[0].benign == "coarse dashes along one axis (vascular)"
    assert detect(img, SPACING) == ()


@pytest.mark.parametrize("angle_deg, expected", [(30, "along"), (120, "across")])
def test_drawn_dash_directions_agree_with_the_group_axis(angle_deg, expected):
    """The member angle from candidates and the group axis in classify share one convention."""
    img, _ = drawn_breast(seed=3)
    axis = np.deg2rad(30)
    for k in range(5):
        r, c = 230 + 20 * k * np.cos(axis), 320 + 20 * k * np.sin(axis)
        add_dash(img, r, c, 12, 4, np.deg2rad(angle_deg), 150.0)
    found = candidates(img, SPACING)
    assert len(found) == 1 and len(found[0].members) == 5
    alignment = found[0].features.alignment
    assert alignment > 0.8 if expected == "along" else alignment < -0.8


def test_reported_clusters_are_monotone_in_the_operating_point():
    counts = {p: 0 for p in (-1.0, 0.0, 1.0)}
    everything = 0
    # faint to clear: peak contrast-to-noise about 5 to 16
    for seed, amplitude in ((0, 30.0), (0, 40.0), (3, 35.0), (1, 45.0), (2, 120.0)):
        img, _ = drawn_cluster(seed, amplitude)
        scored = [c.certainty for c in candidates(img, SPACING) if c.benign is None]
        assert len(scored) == 1
        for p in counts:
            params = DetectionParams(operating_point=p)
            got = detect(img, SPACING, params)
            assert len(got) == sum(s >= classify.reporting_threshold(params) for s in scored)
            counts[p] += len(got)
        everything += len(detect(img, SPACING, threshold=0.0))
    assert everything == 5
    assert everything >= counts[-1.0] >= counts[0.0] >= counts[1.0] >= 1
    low = classify.reporting_threshold(DetectionParams(operating_point=-1.0))
    assert low < classify.reporting_threshold(DetectionParams(operating_point=1.0))


def test_report_certainty_floor_holds_back_a_cluster_detect_would_report():
    img, _ = drawn_cluster(0)
    (c,) = candidates(img, SPACING)
    below = DetectionParams(operating_point=-1.0, report_certainty=max(c.certainty - 1.0, 0.0))
    above = DetectionParams(operating_point=-1.0, report_certainty=min(c.certainty + 1.0, 100.0))
    assert len(detect(img, SPACING, below)) == 1
    assert detect(img, SPACING, above) == ()


@pytest.mark.parametrize("seed", [0, 4])
def test_round_drawn_specks_give_little_aligned_elongation(seed):
    """Pixelated 0.3 mm discs measure 1.1-1.4 long/wide, so their alignment is noisy; the model's
    input, alignment x (elongation - 1), must stay far below a vessel's (about 1)."""
    img, _ = drawn_cluster(seed)
    (c,) = candidates(img, SPACING)
    aligned = classify.certainty_inputs(c.features)[classify.CERTAINTY_INPUTS.index("aligned elongation")]
    assert abs(aligned) < 0.3


# -- the speed-ups in candidates.py compute exactly what the plain scipy / numpy calls do ------

def test_separable_filters_equal_scipy_nd_filters_to_the_bit():
    from scipy import ndimage as ndi

    from node.detection.candidates import _separable
    rng = np.random.default_rng(5)
    for shape in ((37, 53), (128, 70), (5, 300)):
        img = rng.normal(1000, 50, shape).astype(np.float32)
        columns = np.ascontiguousarray(img.T)
        box = _separable(ndi.uniform_filter1d, columns, 17, mode="nearest")
        assert np.array_equal(box, ndi.uniform_filter(img, size=17, mode="nearest"))
        gauss = _separable(ndi.gaussian_filter1d, columns, 2.0, truncate=3.0, mode="nearest")
        assert np.array_equal(gauss, ndi.gaussian_filter(img, 2.0, truncate=3.0, mode="nearest"))


def test_label_equals_ndimage_label_numbering():
    from scipy import ndimage as ndi

    from node.detection.candidates import _label
    rng = np.random.default_rng(6)
    for trial in range(20):
        mask = rng.random((40, 60)) < 0.3 + 0.02 * trial
        flat = np.flatnonzero(mask)
        labels, count = _label(flat, mask.shape)
        expected, expected_count = ndi.label(mask)
        assert count == expected_count
        assert np.array_equal(labels, expected.ravel()[flat])


def test_ring_levels_equal_nanpercentile_and_nanmedian():
    from node.detection.candidates import _ring_levels
    rng = np.random.default_rng(7)
    ring = rng.normal(0, 1, (200, 48))
    ring[rng.random(ring.shape) < 0.4] = np.nan
    ring[:, 0] = rng.normal(0, 1, 200)  # every row keeps a number
    high, median = _ring_levels(ring)
    assert np.allclose(high, np.nanpercentile(ring, 80, axis=1), rtol=0, atol=1e-12)
    assert np.allclose(median, np.nanmedian(ring, axis=1), rtol=0, atol=1e-12)


def test_one_clear_speck_with_two_noise_specks_is_scattered_not_a_cluster():
    lone = replace(TRUE_CLUSTER, count=3, top_cnr=12.0, median_cnr=4.5, third_cnr=4.3, clear=1,
                   elongation=1.2, mean_diameter_mm=0.3, alignment=0.0)
    assert classify.benign_reason(lone, PARAMS) == "one clear speck among noise (scattered)"
    assert classify.benign_reason(replace(lone, median_cnr=5.5), PARAMS) is None  # two clear
    assert classify.benign_reason(replace(lone, count=4), PARAMS) is None  # four is a group


def test_a_group_whose_vessel_goes_on_beyond_its_ends_is_vascular():
    group = replace(TRUE_CLUSTER, continued=3)
    assert classify.benign_reason(group, PARAMS) == "a vessel going on beyond the group (vascular)"
    assert classify.benign_reason(replace(group, continued=2), PARAMS) is None


def test_continued_counts_elongated_objects_on_the_axis_beyond_the_ends_pointing_along():
    # a group of 4 along the column axis (angle pi/2 in the row, col frame), then objects beyond
    group = np.array([[10.0, 10.0], [10.0, 11.0], [10.0, 12.0], [10.2, 13.0]])
    others = np.array([[10.1, 16.0], [10.0, 18.0], [9.9, 20.0],   # on the axis, pointing along
                       [10.0, 22.0],                               # on the axis, pointing across
                       [13.0, 17.0],                               # off the axis
                       [10.0, 11.5]])                              # inside the group's span
    points = np.vstack([group, others])
    angle = np.array([np.pi / 2] * 7 + [0.0, np.pi / 2, np.pi / 2])
    ratio = np.array([2.0] * 10)
    context = classify.Context(points, np.ones(10, bool), np.zeros(10, bool),
                               cKDTree(points), angle, ratio)
    near = np.arange(4, 10)
    assert classify._continued(group, near, context) == 3
