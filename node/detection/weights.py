"""Certainty model of the detector, fitted by benchmarks/fit_certainty.py. Do not edit by hand.

Fitted on tuning seeds 1000..1419 (419 images, 508 candidate groups):
``python benchmarks/fit_certainty.py --first 1000 --images 420 --write``.
Inputs are ``classify.CERTAINTY_INPUTS``; certainty = 100 / (1 + exp(-(((x - MEAN) / SCALE) . WEIGHTS + BIAS))).
``OPERATING_THRESHOLDS`` are the certainties giving 0.5, 0.2, 0.1, 0.05, 0.02 false marks
per tuning image, for operating points -1, -0.5, 0, 0.5, 1.
"""

MEAN = (1.73484, 2.87202, 2.77843, 3.20138, 1.30056, 1.75413, 1.27055, 0.103324, 0.363291, 0.17961, 0.629988, 0.179654, 0.527416, 0.00891214, 1.59268,)
SCALE = (0.513186, 0.871896, 0.782472, 0.917318, 0.532798, 0.338967, 0.106608, 0.166369, 0.0835135, 0.0741398, 0.293344, 0.399733, 0.535261, 0.0430089, 0.842844,)
WEIGHTS = (0.0822319, 0.536991, 1.13464, 1.84936, -0.219264, 0.227992, -0.308489, -0.0125334, -0.164654, -0.0363523, 0.0370162, 0.300239, 0.0870898, 0.0727873, 2.23955,)
BIAS = 6.8328
OPERATING_THRESHOLDS = (0, 1.00625, 2.04722, 2.71056, 3.32897,)
