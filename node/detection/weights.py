"""Certainty model of the detector, fitted by benchmarks/fit_certainty.py. Do not edit by hand.

Fitted on tuning seeds 1000..1419 (419 images, 422 candidate groups):
``python benchmarks/fit_certainty.py --first 1000 --images 420 --write``.
Inputs are ``classify.CERTAINTY_INPUTS``; certainty = 100 / (1 + exp(-(((x - MEAN) / SCALE) . WEIGHTS + BIAS))).
``OPERATING_THRESHOLDS`` are the certainties giving 0.1, 0.05, 0.02, 0.01, 0.005 false marks
per tuning image, for operating points -1, -0.5, 0, 0.5, 1.
"""

MEAN = (1.86381, 3.16654, 3.04422, 3.55003, 1.23156, 1.80539, 1.26561, 0.120438, 0.372397, 0.172774, 0.60348, 0.192992, 0.492587, 0.00993847, 1.91396,)
SCALE = (0.467521, 0.634383, 0.564931, 0.541561, 0.441327, 0.323982, 0.103506, 0.155682, 0.0787409, 0.0623724, 0.303115, 0.416457, 0.526454, 0.0442749, 0.49313,)
WEIGHTS = (-0.133004, 0.416365, 0.753816, 1.08372, -0.273635, 0.0369239, 0.0423008, -0.124221, -0.264445, 0.00379465, 0.248116, 0.0796713, -0.0403547, 0.0381824, 1.2974,)
BIAS = 9.28026
OPERATING_THRESHOLDS = (0, 0, 3.10869, 5.92416, 6.99559,)
