#!/usr/bin/env python3
"""Fit the detector's certainty model on the tuning seeds and write node/detection/weights.py.

Every candidate group of specks the detector finds on generator images of the ``tune`` seed set
(benchmarks/detect.py: 1000 and up; never a benchmark or test seed) is labelled suspicious when
its centre lies within a drawn cluster's radius + 3 mm (the benchmark's matching rule), else not.
A logistic regression with an L2 penalty on the standardised inputs of
``classify.certainty_inputs`` is fitted to those labels, and the certainty thresholds that give
0.1, 0.05, 0.02, 0.01 and 0.005 false marks per tuning image become the operating points -1,
-0.5, 0, 0.5 and 1 of ``detection.operating_point`` (the benign-pattern rules leave fewer than
0.1 false candidates per image, so higher rates would all mean "report everything").

Usage: python benchmarks/fit_certainty.py [--first 1000] [--images 420] [--jobs 2] [--write]
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # benchmarks/ too when loaded by the tests

from bench_common import SIZES, matches  # noqa: E402
from node.detection import classify  # noqa: E402
from node.detection.detector import candidates  # noqa: E402
from node.detection.params import DetectionParams  # noqa: E402
from node.testing.phantom import PlacementError, make_phantom, random_spec  # noqa: E402

L2 = 1.0
OPERATING_FP_RATES = (0.1, 0.05, 0.02, 0.01, 0.005)  # operating_point -1, -0.5, 0, 0.5, 1
TUNE_FIRST = 1000
TUNE_LAST = 499999  # the bench-a set starts at 500000


def image_rows(seed: int):
    """(inputs, label, truth index or -1) of every non-benign candidate of one tuning image,
    and the number of drawn clusters; None when the generator cannot place what it drew."""
    sizes = SIZES["full"]  # as benchmarks/detect.py --size full
    rows, cols, spacing = sizes[seed % len(sizes)]
    try:
        phantom = make_phantom(random_spec(seed, rows=rows, cols=cols, spacing_mm=spacing))
    except PlacementError:
        return None
    params = DetectionParams()
    found = []
    for candidate in candidates(phantom.presentation.astype(np.float32), (spacing, spacing), params):
        if candidate.benign is not None:
            continue
        centre = np.array([candidate.members.row.mean(), candidate.members.col.mean()])
        truth = -1
        for i, drawn in enumerate(phantom.clusters):
            if matches(centre, drawn, spacing):
                truth = i
        found.append((classify.certainty_inputs(candidate.features), truth >= 0, truth))
    return seed, found, len(phantom.clusters)


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Standardisation (mean, scale) and logistic weights, bias."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / scale
    sign = np.where(y, 1.0, -1.0)

    def loss(theta):
        w, b = theta[:-1], theta[-1]
        margin = sign * (z @ w + b)
        value = np.logaddexp(0.0, -margin).sum() + 0.5 * L2 * w @ w
        p = 1.0 / (1.0 + np.exp(margin))
        grad = -(sign * p)
        return value, np.concatenate([z.T @ grad + L2 * w, [grad.sum()]])

    theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B").x
    return mean, scale, theta[:-1], float(theta[-1])


def thresholds(images, certainty_of) -> list[float]:
    """Certainty threshold per OPERATING_FP_RATES: the lowest with at most that many false marks
    per image (a truth found twice is one finding, not a false mark)."""
    scored = [(certainty_of(inputs), label) for _, found, _ in images for inputs, label, _ in found]
    negatives = np.sort([c for c, label in scored if not label])[::-1]
    out = []
    for rate in OPERATING_FP_RATES:
        allowed = int(np.floor(rate * len(images)))
        out.append(float(negatives[allowed]) + 0.05 if allowed < len(negatives) else 0.0)
    return out


def sensitivity(images, certainty_of, threshold: float) -> float:
    found = truth = 0
    for _, rows, n_truth in images:
        truth += n_truth
        found += len({t for inputs, label, t in rows if label and certainty_of(inputs) >= threshold})
    return found / max(truth, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=TUNE_FIRST)
    parser.add_argument("--images", type=int, default=420)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write node/detection/weights.py")
    args = parser.parse_args(argv)
    if not TUNE_FIRST <= args.first <= args.first + args.images - 1 <= TUNE_LAST:
        parser.error(f"tuning seeds must lie in {TUNE_FIRST}..{TUNE_LAST}")
    seeds = range(args.first, args.first + args.images)
    with Pool(args.jobs) as pool:
        images = [r for r in pool.imap(image_rows, seeds, chunksize=2) if r is not None]
    x = np.array([inputs for _, rows, _ in images for inputs, _, _ in rows])
    y = np.array([label for _, rows, _ in images for _, label, _ in rows])
    mean, scale, weights, bias = fit(x, y)

    def certainty_of(inputs):
        return 100.0 / (1.0 + np.exp(-(((inputs - mean) / scale) @ weights + bias)))

    cuts = thresholds(images, certainty_of)
    print(f"{len(images)} tuning images, {len(y)} candidates ({int(y.sum())} on drawn clusters)")
    for name, w in zip(classify.CERTAINTY_INPUTS, weights):
        print(f"  {name:<24} {w:+.3f}")
    for rate, cut in zip(OPERATING_FP_RATES, cuts):
        print(f"  {rate:4} FP/image: certainty >= {cut:5.1f}, sensitivity "
              f"{sensitivity(images, certainty_of, cut):.3f}")
    if args.write:
        _write(mean, scale, weights, bias, cuts, seeds, len(images), len(y))
    return 0


def _write(mean, scale, weights, bias, cuts, seeds, n_images, n_candidates) -> None:
    def vec(v):
        return "(" + ", ".join(f"{float(a):.6g}" for a in v) + ",)"

    text = f'''"""Certainty model of the detector, fitted by benchmarks/fit_certainty.py. Do not edit by hand.

Fitted on tuning seeds {seeds.start}..{seeds.stop - 1} ({n_images} images, {n_candidates} candidate groups):
``python benchmarks/fit_certainty.py --first {seeds.start} --images {len(seeds)} --write``.
Inputs are ``classify.CERTAINTY_INPUTS``; certainty = 100 / (1 + exp(-(((x - MEAN) / SCALE) . WEIGHTS + BIAS))).
``OPERATING_THRESHOLDS`` are the certainties giving {", ".join(map(str, OPERATING_FP_RATES))} false marks
per tuning image, for operating points -1, -0.5, 0, 0.5, 1.
"""

MEAN = {vec(mean)}
SCALE = {vec(scale)}
WEIGHTS = {vec(weights)}
BIAS = {bias:.6g}
OPERATING_THRESHOLDS = {vec(cuts)}
'''
    (ROOT / "node" / "detection" / "weights.py").write_text(text)
    print("wrote node/detection/weights.py")


if __name__ == "__main__":
    sys.exit(main())
