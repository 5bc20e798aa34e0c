"""What the generator benchmarks share: image sizes, the rule matching a reported cluster to a
drawn one, and the environment of single-threaded timed processes.

Imported by the scripts beside it (``from bench_common import ...``, as ``detect.py`` imports
``acr.py``). It imports nothing of the node, so ``profile_detect.py --tree`` still times the
tree it is given.
"""

from __future__ import annotations

import numpy as np

SIZES = {  # (rows, cols, spacing_mm): the two common full-field detector formats
    "full": ((4096, 3328, 0.07), (2294, 1914, 0.1)),
    "small": ((1024, 832, 0.1),),
}
MATCH_MARGIN_MM = 3.0
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def matches(centre_rc, truth, spacing_mm: float) -> bool:
    """Whether a reported cluster centred at ``centre_rc`` (pixels) finds ``truth`` (a drawn
    cluster or ACR group: ``centre_rc`` in pixels, ``radius_mm``): its centre lies within the
    truth's radius + ``MATCH_MARGIN_MM``."""
    distance_mm = np.hypot(*np.subtract(centre_rc, truth.centre_rc)) * spacing_mm
    return distance_mm <= truth.radius_mm + MATCH_MARGIN_MM
