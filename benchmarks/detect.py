#!/usr/bin/env python3
"""Detector benchmark on generator images: sensitivity, false marks, FROC, seconds per image.

Each image is drawn by ``node.testing.phantom.random_spec(seed)``, written as an uncompressed
For Presentation DICOM in memory, then read and analysed the way the node does it
(``images.to_mammogram`` + ``detection.detect``), timed per image.

Seed sets (never mix them): tests use seeds below 1000; ``tune`` (1000+) is the only set used to
choose parameters; ``bench-a`` (500000+) and ``bench-b`` (900000+) are the measured sets.

A truth cluster is found when a reported cluster's centre lies within its radius + 3 mm. A
reported cluster that finds no truth is a false positive, charged to the nearest distractor
within its extent + 5 mm, else to "texture".

Usage: python benchmarks/detect.py [--set bench-a] [--images 40] [--size full|small]
"""

from __future__ import annotations

import argparse
import io
import platform
import resource
import statistics
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.detection.detector import detect  # noqa: E402
from node.detection.params import DetectionParams  # noqa: E402
from node.images import to_mammogram  # noqa: E402
from node.testing.dicomfactory import StudyIdentity  # noqa: E402
from node.testing.phantom import DISTRACTOR_KINDS, make_phantom, random_spec  # noqa: E402
from node.testing.study import phantom_dataset  # noqa: E402

SETS = {"tune": 1000, "bench-a": 500000, "bench-b": 900000}
SIZES = {  # (rows, cols, spacing_mm): the two common full-field detector formats
    "full": ((4096, 3328, 0.07), (2294, 1914, 0.1)),
    "small": ((1024, 832, 0.1),),
}
MATCH_MARGIN_MM = 3.0
BLAME_MARGIN_MM = 5.0
FROC_FP_RATES = (0.05, 0.1, 0.2, 0.5)


def image_case(seed: int, size: str):
    rows, cols, spacing = SIZES[size][seed % len(SIZES[size])]
    phantom = make_phantom(random_spec(seed, rows=rows, cols=cols, spacing_mm=spacing))
    ds = phantom_dataset(phantom, StudyIdentity(seed), 1)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return phantom, buffer.getvalue()


def evaluate(phantom, clusters, spacing_mm: float):
    """(per truth cluster, the highest certainty of the marks that find it, or None;
    [(certainty, blamed kind or None)] per reported cluster)."""
    hits: list[float | None] = [None] * len(phantom.clusters)
    reported = []
    for cluster in clusters:
        matched = False
        for i, truth in enumerate(phantom.clusters):
            distance = np.hypot(*np.subtract(cluster.centre_rc, truth.centre_rc)) * spacing_mm
            if distance <= truth.radius_mm + MATCH_MARGIN_MM:
                hits[i] = max(hits[i] or 0.0, cluster.certainty)
                matched = True
        reported.append((cluster.certainty, None if matched else _blame(phantom, cluster, spacing_mm)))
    return hits, reported


def _blame(phantom, cluster, spacing_mm: float) -> str:
    """The distractor kind nearest the false mark (within 5 mm of one of its parts), else texture."""
    best, kind = np.inf, "texture"
    centre = np.asarray(cluster.centre_rc)
    for distractor in phantom.distractors:
        if distractor.points:
            points, reach = np.asarray(distractor.points), BLAME_MARGIN_MM
        else:
            points, reach = np.asarray([distractor.centre_rc]), distractor.extent_mm / 2 + BLAME_MARGIN_MM
        distance = float(np.min(np.hypot(*(points - centre).T))) * spacing_mm
        if distance <= reach and distance < best:
            best, kind = distance, distractor.kind
    return kind


def run(seeds, size: str, params: DetectionParams):
    """Analyse every image; returns per-image records."""
    records = []
    low = replace(params, report_certainty=0.0, operating_point=0.0)
    for seed in seeds:
        phantom, blob = image_case(seed, size)
        start = time.perf_counter()
        ds = pydicom.dcmread(io.BytesIO(blob))
        mammogram = to_mammogram(ds)
        clusters = detect(mammogram.pixels, mammogram.spacing_mm, low, mammogram.valid)
        seconds = time.perf_counter() - start
        hits, reported = evaluate(phantom, clusters, phantom.spec.spacing_mm)
        records.append(dict(seed=seed, spec=phantom.spec, hits=hits, reported=reported, seconds=seconds,
                            megapixels=ds.Rows * ds.Columns / 1e6, kinds=set(phantom.spec.distractors)))
        print(f"  seed {seed}: {phantom.spec.rows}x{phantom.spec.cols} {phantom.spec.view} density "
              f"{phantom.spec.density} truth {len(hits)} found {sum(h is not None for h in hits)} "
              f"marks {len(reported)} "
              f"{seconds:.2f}s", file=sys.stderr)
    return records


def summarise(records, threshold: float) -> dict:
    n_images = len(records)
    truth = sum(len(r["hits"]) for r in records)
    found, by_kind, flagged = 0, Counter(), Counter()
    for r in records:
        for i, _ in enumerate(r["hits"]):
            found += _found_at(r, i, threshold)
        blamed = {kind for certainty, kind in r["reported"] if kind and certainty >= threshold}
        for certainty, kind in r["reported"]:
            if kind and certainty >= threshold:
                by_kind[kind] += 1
        for kind in blamed & r["kinds"]:
            flagged[kind] += 1
    return dict(images=n_images, truth=truth, found=found, sensitivity=found / max(truth, 1),
                fp_per_image=sum(by_kind.values()) / max(n_images, 1), fp_by_kind=by_kind, flagged=flagged)


def _found_at(record, index: int, threshold: float) -> bool:
    """Whether truth cluster ``index`` is found by one of its own marks at or above ``threshold``."""
    best = record["hits"][index]
    return best is not None and best >= threshold


def froc(records) -> list[tuple[float, float, float]]:
    """(target FP rate, sensitivity, certainty threshold) along the certainty sweep."""
    thresholds = sorted({c for r in records for c, _ in r["reported"]} | {0.0, 100.0}, reverse=True)
    points = []
    for rate in FROC_FP_RATES:
        best = (0.0, 100.0)
        for t in thresholds:
            s = summarise(records, t)
            if s["fp_per_image"] <= rate:
                best = (s["sensitivity"], t)
        points.append((rate, *best))
    return points


def report(name: str, records, params: DetectionParams) -> None:
    threshold = float(np.clip(params.report_certainty + 30.0 * params.operating_point, 0, 99))
    s = summarise(records, threshold)
    seconds = [r["seconds"] for r in records]
    per_mp = [r["seconds"] / r["megapixels"] for r in records]
    kinds_present = Counter(k for r in records for k in r["kinds"])
    print(f"\n== {name}: {s['images']} images, {s['truth']} truth clusters, threshold {threshold:.0f}")
    print(f"cluster sensitivity      {s['sensitivity']:.3f} ({s['found']}/{s['truth']})")
    print(f"false-positive clusters  {s['fp_per_image']:.3f} per image")
    for kind in (*DISTRACTOR_KINDS, "texture"):
        present = kinds_present.get(kind, s["images"] if kind == "texture" else 0)
        print(f"  {kind:<12} {s['fp_by_kind'].get(kind, 0):3d} marks; flagged on "
              f"{s['flagged'].get(kind, 0)}/{present} images containing it")
    print("FROC (FP/image -> sensitivity @ certainty):",
          ", ".join(f"{rate}: {sens:.3f} @ {t:.0f}" for rate, sens, t in froc(records)))
    print(f"seconds per image        median {statistics.median(seconds):.2f}, max {max(seconds):.2f} "
          f"(read + decode + detect); {statistics.median(per_mp):.3f} s per megapixel")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), action="append", help="seed set(s); default bench-a and bench-b")
    parser.add_argument("--images", type=int, default=30, help="images per set")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    args = parser.parse_args(argv)
    params = DetectionParams()
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}; "
          f"detector params {params}")
    for name in args.set or ["bench-a", "bench-b"]:
        base = SETS[name]
        report(name, run(range(base, base + args.images), args.size, params), params)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
