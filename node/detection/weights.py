"""Certainty model of the detector, fitted by benchmarks/fit_certainty.py. Do not edit by hand.

Fitted on tuning seeds 1000..1419 (419 images, 423 candidate groups):
``python benchmarks/fit_certainty.py --first 1000 --images 420 --write``.
Inputs are ``classify.CERTAINTY_INPUTS``; certainty = 100 / (1 + exp(-(((x - MEAN) / SCALE) . WEIGHTS + BIAS))).
``OPERATING_THRESHOLDS`` are the certainties giving 0.1, 0.05, 0.02, 0.01, 0.005 false marks
per tuning image, for operating points -1, -0.5, 0, 0.5, 1.
"""

MEAN = (1.86268, 3.1626, 3.04058, 3.54536, 1.23307, 1.80595, 1.26527, 0.120402, 0.372493, 0.172553, 0.604363, 0.192536, 0.491422, 0.00991497, 1.90944,)
SCALE = (0.467544, 0.638788, 0.569214, 0.549363, 0.441896, 0.323801, 0.103617, 0.1555, 0.0786724, 0.0624647, 0.3033, 0.41607, 0.526376, 0.0442252, 0.50124,)
WEIGHTS = (-0.13557, 0.423499, 0.767918, 1.10134, -0.279689, 0.00662716, 0.0807288, -0.122525, -0.291778, 0.0355844, 0.214479, 0.0929064, -0.0154253, 0.0386407, 1.32336,)
BIAS = 9.20444
OPERATING_THRESHOLDS = (0, 0, 3.19363, 5.56023, 6.56058,)
