"""The certainty fit (benchmarks/fit_certainty.py) on made-up data with known answers."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_fit_certainty():
    spec = importlib.util.spec_from_file_location("fit_certainty", ROOT / "benchmarks" / "fit_certainty.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fc = _load_fit_certainty()


def _synthetic(n=400, seed=0):
    """Column 0 decides the label (with some label noise), column 1 is noise on another scale,
    column 2 is constant."""
    rng = np.random.default_rng(seed)
    informative = rng.normal(3.0, 2.0, n)
    noise = rng.normal(-10.0, 50.0, n)
    y = informative + rng.normal(0.0, 0.5, n) > 3.0
    return np.column_stack([informative, noise, np.full(n, 7.0)]), y


def test_fit_weighs_the_informative_input_and_not_the_noise():
    x, y = _synthetic()
    mean, scale, w, bias = fc.fit(x, y)
    assert mean == pytest.approx(x.mean(axis=0))
    assert scale[:2] == pytest.approx(x[:, :2].std(axis=0))
    assert w[0] > 3.0
    assert abs(w[1]) < 0.5 and abs(w[1]) < w[0] / 10
    assert w[2] == pytest.approx(0.0, abs=1e-6)  # a constant input carries nothing
    predicted = ((x - mean) / scale) @ w + bias > 0
    assert (predicted == y).mean() > 0.9


def test_fit_weight_sign_follows_the_label():
    x, y = _synthetic(seed=1)
    _, _, w, _ = fc.fit(x, ~y)
    assert w[0] < -3.0


def _images(rng, n_images=50):
    """(seed, [(inputs, label, truth)], n_truth) per image; the 'inputs' is the certainty itself."""
    images = []
    for seed in range(n_images):
        found = [(float(rng.uniform(0, 100)), False, -1) for _ in range(rng.integers(0, 5))]
        found += [(float(rng.uniform(40, 100)), True, 0)]
        images.append((seed, found, 1))
    return images


def _negatives_at_or_above(images, cut):
    return sum(1 for _, found, _ in images for c, label, _ in found if not label and c >= cut)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_leave_at_most_the_allowed_false_marks(seed):
    images = _images(np.random.default_rng(seed))
    cuts = fc.thresholds(images, lambda c: c)
    assert len(cuts) == len(fc.OPERATING_FP_RATES)
    assert cuts == sorted(cuts)
    n_negatives = _negatives_at_or_above(images, -1.0)
    for rate, cut in zip(fc.OPERATING_FP_RATES, cuts):
        allowed = int(np.floor(rate * len(images)))
        assert _negatives_at_or_above(images, cut) <= allowed
        if allowed < n_negatives:  # and the cut is the lowest such, to within its 0.05 margin
            assert _negatives_at_or_above(images, cut - 0.06) > allowed


def test_thresholds_ignore_true_findings_and_are_zero_when_few_negatives():
    images = [(0, [(90.0, True, 0), (95.0, True, 0), (30.0, False, -1)], 1)]
    images += [(k, [], 0) for k in range(1, 20)]
    cuts = fc.thresholds(images, lambda c: c)
    for rate, cut in zip(fc.OPERATING_FP_RATES, cuts):
        # one false mark in 20 images: allowed at any threshold when the rate allows one
        expected = 0.0 if np.floor(rate * len(images)) >= 1 else pytest.approx(30.05)
        assert cut == expected
    assert cuts[0] == 0.0 and cuts[-1] == pytest.approx(30.05)


def test_sensitivity_counts_a_truth_found_twice_once():
    images = [
        (0, [(80.0, True, 0), (70.0, True, 0), (10.0, True, 1), (99.0, False, -1)], 2),
        (1, [(60.0, True, 0)], 1),
        (2, [], 1),
    ]
    assert fc.sensitivity(images, lambda c: c, 50.0) == pytest.approx(2 / 4)
    assert fc.sensitivity(images, lambda c: c, 0.0) == pytest.approx(3 / 4)
    assert fc.sensitivity(images, lambda c: c, 100.0) == 0.0
    assert fc.sensitivity([], lambda c: c, 0.0) == 0.0
