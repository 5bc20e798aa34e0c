#!/usr/bin/env python3
"""CPU time of ``detect`` per stage, on one core, and seconds per breast megapixel by image size.

Runs itself again in a child pinned to one CPU with one thread per maths library (as the speed
section of ``benchmarks/detect.py`` does), then times each stage of ``detection.detector`` with
``time.process_time`` within one ``detect`` call: breast segmentation, the contrast-to-noise
map, object finding, and the rest (classification, grouping, features). Images are generator
phantoms of ``bench-a`` seeds (500000+), For Presentation pixels as float32; ``--cache DIR``
keeps them as .npz between runs. On a shared machine CPU seconds vary with what the other cores
run: compare two versions of the tree (``--tree``) in alternating runs.

Usage: python benchmarks/profile_detect.py [--images 5] [--repeats 3] [--cpu 0] [--cache DIR]
                                           [--tree DIR] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_common import ONE_THREAD  # benchmarks/bench_common.py, beside this script

SHAPES = ((2294, 1914, 0.07), (3328, 2560, 0.07), (4096, 3328, 0.07), (2294, 1914, 0.1))
FIRST_SEED = 500000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timings per image (the median is kept)")
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--cache", metavar="DIR", help="directory for drawn phantoms (.npz)")
    parser.add_argument("--tree", metavar="DIR", default=str(Path(__file__).resolve().parents[1]),
                        help="the source tree whose node package is timed (default: this one)")
    parser.add_argument("--profile", action="store_true", help="cProfile one full-size image")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child:
        child = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
        return subprocess.run(child, env={**os.environ, **ONE_THREAD},
                              preexec_fn=lambda: os.sched_setaffinity(0, {args.cpu})).returncode
    return run(args)


def run(args) -> int:
    import numpy as np  # after the thread limits are set

    sys.path.insert(0, args.tree)
    from node.detection.detector import detect

    print(f"node from {Path(sys.modules['node'].__file__).parents[1]}; one process pinned to CPU "
          f"{sorted(os.sched_getaffinity(0))}, one thread; median of {args.repeats} runs per image",
          flush=True)
    detect(np.random.default_rng(0).normal(100, 1, (512, 416)).astype(np.float32), (0.1, 0.1))  # warm-up
    if args.profile:
        return _profile(_image(FIRST_SEED, SHAPES[2], args.cache))
    per_mp = {}
    for shape in SHAPES:
        rows = []
        for seed in range(FIRST_SEED, FIRST_SEED + args.images):
            pixels, breast_mp = _image(seed, shape, args.cache)
            runs = [_stages(pixels, (shape[2], shape[2])) for _ in range(args.repeats)]
            rows.append(({k: statistics.median(r[k] for r in runs) for k in runs[0]}, breast_mp))
        stages = {k: statistics.median(r[k] for r, _ in rows) for k in rows[0][0]}
        per_mp[shape] = statistics.median(r["total"] / b for r, b in rows)
        breast_mp = statistics.median(b for _, b in rows)
        print(f"{shape[1]} x {shape[0]} at {shape[2]} mm: breast {breast_mp:.1f} MP, "
              + ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
              + f" CPU s; {per_mp[shape]:.3f} s per breast MP", flush=True)
    first, last = per_mp[SHAPES[0]], per_mp[SHAPES[2]]
    print(f"CPU s per breast MP at 0.07 mm, largest / smallest size: {last / first:.2f}")
    return 0


def _image(seed, shape, cache):
    import numpy as np

    rows, cols, spacing = shape
    path = Path(cache) / f"{seed}_{rows}x{cols}_{spacing}.npz" if cache else None
    if path is not None and path.exists():
        data = np.load(path)
        return data["pixels"], float(data["breast"]) / 1e6
    from node.testing.phantom import make_phantom, random_spec

    phantom = make_phantom(random_spec(seed, rows=rows, cols=cols, spacing_mm=spacing))
    pixels, breast = phantom.presentation.astype(np.float32), float(phantom.breast_mask.sum())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, pixels=pixels, breast=np.array(breast))
    return pixels, breast / 1e6


def _stages(pixels, spacing_mm) -> dict[str, float]:
    """CPU seconds of each stage of one ``detect`` call, and of the whole call: the stage
    functions the detector calls are wrapped in timers for the call."""
    import time

    from node.detection import detector

    spent = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - started
        return wrapper

    stages = {"breast": "segment_breast", "cnr": "contrast_to_noise", "objects": "find_objects"}
    originals = {attr: getattr(detector, attr) for attr in stages.values()}
    try:
        for name, attr in stages.items():
            setattr(detector, attr, timed(name, originals[attr]))
        started = time.process_time()
        detector.detect(pixels, spacing_mm)
        total = time.process_time() - started
    finally:
        for attr, function in originals.items():
            setattr(detector, attr, function)
    return {**{name: spent.get(name, 0.0) for name in stages},
            "rest": total - sum(spent.values()), "total": total}


def _profile(image) -> int:
    import cProfile
    import pstats

    from node.detection.detector import detect

    pixels, _ = image
    profiler = cProfile.Profile(__import__("time").process_time)
    profiler.enable()
    detect(pixels, (0.07, 0.07))
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
