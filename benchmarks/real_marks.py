#!/usr/bin/env python3
"""Marks the detector makes on real mammograms (``../shared/data/real/mg``), which have no ground truth.

The generator's benchmark sets measure sensitivity and false marks against known answers
(``benchmarks/detect.py``); real images can only show how many marks the detector makes and
how certain it is of them. Screening images hold suspicious calcification clusters rarely, so
many marks per image means false marks. For each file: the image, the clusters reported at the
configured operating point (with their certainties), and the candidate groups the benign rules
held back, by rule. Files the pipeline refuses are listed with the reason.

Usage: .venv/bin/python benchmarks/real_marks.py [--folder ../shared/data/real/mg]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.detection.classify import reporting_threshold  # noqa: E402
from node.detection.detector import candidates  # noqa: E402
from node.detection.params import DetectionParams  # noqa: E402
from node.errors import CalcnodeError  # noqa: E402
from node.images import read_file, to_mammogram  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(ROOT.parent / "shared" / "data" / "real" / "mg"))
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"no folder {folder}: nothing to measure")
        return 0
    params = DetectionParams()
    threshold = reporting_threshold(params)
    print(f"operating point {params.operating_point}: clusters of certainty >= {threshold:.1f} are marked")
    marks = []
    for path in sorted(folder.glob("*.dcm")):
        try:
            mammogram = to_mammogram(read_file(path))
        except CalcnodeError as exc:
            print(f"{path.name}: not analysed ({exc})")
            continue
        start = time.process_time()
        found = candidates(mammogram.pixels, mammogram.spacing_mm, params, mammogram.valid)
        marked = sorted((c.certainty for c in found if c.benign is None and c.certainty >= threshold),
                        reverse=True)
        held = Counter(c.benign for c in found if c.benign is not None)
        marks.append(len(marked))
        rows, cols = mammogram.pixels.shape
        print(f"{path.name}: {cols} x {rows} at {mammogram.spacing_mm[0]:.3f} mm; {len(marked)} marks "
              f"(certainty {', '.join(f'{v:.0f}' for v in marked) or '-'}); {len(found)} candidate "
              f"groups, held back: {dict(held) or '-'}; {time.process_time() - start:.1f} CPU s", flush=True)
    if marks:
        print(f"marks per analysed image: mean {statistics.mean(marks):.1f}, median "
              f"{statistics.median(marks):.1f}, {len(marks)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
