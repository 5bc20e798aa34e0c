#!/usr/bin/env python3
"""Detector benchmark on generator images: sensitivity, false marks, FROC, decode and analysis times.

Each image is drawn by ``node.testing.phantom.random_spec(seed)`` and written in memory as one
input variant (``variant(seed)``, from an RNG stream of its own): half uncompressed For
Presentation MONOCHROME2, the rest For Presentation MONOCHROME1, For Processing MONOCHROME2 or
MONOCHROME1, JPEG-LS lossless or JPEG 2000 lossless (drawn per image, so a set of 30 holds
about, not exactly, 15 plain images). The pixels depend only on the seed. Each
image is then read and analysed the way the node does it, timed in two parts: reading +
decoding (``dcmread`` + ``images.decode``), and the rest (``images.to_mammogram``'s
normalisation + ``detection.detect``). Times are CPU seconds of the process (what one core
spends, whatever else a shared machine runs), with wall seconds beside them where it matters.

Seed sets (never mix them): tests use seeds below 1000; ``tune`` (1000+) is the only set used to
choose parameters; ``bench-a`` (500000+) and ``bench-b`` (900000+) are the measured sets.

A truth cluster is found when a reported cluster's centre lies within its radius + 3 mm. A
reported cluster that finds no truth is a false positive, charged to the nearest distractor
within its extent + 5 mm, else to "texture".

The speed section (run after the sets unless --no-speed; alone with --speed) runs in a child
process pinned to one CPU, one thread per maths library: seconds per uncompressed 3328 x 4096
image read from a file, decode times of the same images as JPEG-LS and JPEG 2000, seconds per
megapixel of breast area at three image sizes, and the peak RSS of a fresh process doing what a
node worker does with one image.

Usage: python benchmarks/detect.py [--set bench-a] [--images 30] [--size full|small] [--jobs 2]
                                   [--no-speed | --speed [--speed-images 5] [--cpu 0]]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acr import acr_report  # noqa: E402  (benchmarks/acr.py, beside this script)
from bench_common import ONE_THREAD, SIZES, matches  # noqa: E402
from node.detection.classify import reporting_threshold  # noqa: E402
from node.detection.detector import detect  # noqa: E402
from node.detection.params import DetectionParams  # noqa: E402
from node.images import decode, decoding_plugin, read_file, to_mammogram  # noqa: E402
from node.pixels import display_pixels  # noqa: E402
from node.testing.dicomfactory import StudyIdentity  # noqa: E402
from node.testing.phantom import DISTRACTOR_KINDS, make_phantom, random_spec  # noqa: E402
from node.testing.study import phantom_dataset  # noqa: E402

SETS = {"tune": 1000, "bench-a": 500000, "bench-b": 900000}
# name: (transfer syntax, MONOCHROME1, For Processing, share of the images)
VARIANTS = {
    "plain": (ExplicitVRLittleEndian, False, False, 0.5),
    "mono1": (ExplicitVRLittleEndian, True, False, 0.1),
    "proc": (ExplicitVRLittleEndian, False, True, 0.1),
    "proc-mono1": (ExplicitVRLittleEndian, True, True, 0.1),
    "jpeg-ls": (JPEGLSLossless, False, False, 0.1),
    "j2k": (JPEG2000Lossless, False, False, 0.1),
}
DECODE_ONLY = {"rle": (RLELossless, False, False, 0.0)}  # in the speed section's decoder table
BLAME_MARGIN_MM = 5.0
FROC_FP_RATES = (0.05, 0.1, 0.2, 0.5)
SPEED_SHAPE = (4096, 3328, 0.07)  # rows, cols, spacing: 3328 x 4096 at 0.07 mm
SCALING_SHAPES = ((2294, 1914), (3328, 2560), (4096, 3328))  # at 0.07 mm: breast areas ~2.3 : 4.5 : 7.3 MP
TARGET_S, TARGET_MB = 1.0, 1024


def variant(seed: int) -> str:
    """The input variant of image ``seed`` (independent of random_spec's RNG stream)."""
    names = list(VARIANTS)
    shares = np.array([VARIANTS[n][3] for n in names])
    return names[int(np.random.default_rng([seed, 2000]).choice(len(names), p=shares / shares.sum()))]


def image_case(seed: int, size: str, kind: str | None = None):
    """(phantom, DICOM file bytes) of image ``seed`` in its variant (or ``kind``)."""
    rows, cols, spacing = SIZES[size][seed % len(SIZES[size])]
    phantom = make_phantom(random_spec(seed, rows=rows, cols=cols, spacing_mm=spacing))
    return phantom, encode(phantom, seed, kind or variant(seed))


def encode(phantom, seed: int, kind: str) -> bytes:
    syntax, monochrome1, for_processing, _ = {**VARIANTS, **DECODE_ONLY}[kind]
    ds = phantom_dataset(phantom, StudyIdentity(seed), 1, transfer_syntax=syntax,
                         monochrome1=monochrome1, for_processing=for_processing)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def evaluate(phantom, clusters, spacing_mm: float):
    """(per truth cluster, the highest certainty of the marks that find it, or None;
    [(certainty, blamed kind or None)] per reported cluster)."""
    hits: list[float | None] = [None] * len(phantom.clusters)
    reported = []
    for cluster in clusters:
        matched = False
        for i, truth in enumerate(phantom.clusters):
            if matches(cluster.centre_rc, truth, spacing_mm):
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


def analyse(seed: int, size: str, params: DetectionParams) -> dict:
    """One image drawn, encoded, read, decoded and analysed: the record of its results."""
    phantom, blob = image_case(seed, size)
    clock = _Clock()
    ds = pydicom.dcmread(io.BytesIO(blob))
    decode(ds)
    decoded = clock.lap()
    mammogram = to_mammogram(ds)  # reuses the decoded array
    clusters = detect(mammogram.pixels, mammogram.spacing_mm, params, mammogram.valid, threshold=0.0)
    rest = clock.lap()
    hits, reported = evaluate(phantom, clusters, phantom.spec.spacing_mm)
    return dict(seed=seed, spec=phantom.spec, variant=variant(seed), hits=hits, reported=reported,
                decode_s=decoded[0], analyse_s=rest[0], seconds=decoded[0] + rest[0],
                wall_s=decoded[1] + rest[1], megapixels=ds.Rows * ds.Columns / 1e6,
                kinds=set(phantom.spec.distractors))


class _Clock:
    """CPU seconds of this process (what one core spends, whatever else the machine runs) and
    wall seconds, since the last lap."""

    def __init__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def lap(self) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        out = (cpu - self.cpu, wall - self.wall)
        self.cpu, self.wall = cpu, wall
        return out


def run(seeds, size: str, params: DetectionParams, jobs: int = 1):
    """Analyse every image (in ``jobs`` processes); returns per-image records in seed order."""
    work = partial(analyse, size=size, params=params)
    if jobs > 1:
        os.environ.update(ONE_THREAD)  # read by the spawned workers' numpy
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            records = [_show(r) for r in pool.imap(work, seeds)]
    else:
        records = [_show(work(seed)) for seed in seeds]
    return records


def _show(r: dict) -> dict:
    spec = r["spec"]
    print(f"  seed {r['seed']}: {spec.rows}x{spec.cols} {spec.view} density {spec.density} "
          f"{r['variant']:<10} truth {len(r['hits'])} found {sum(h is not None for h in r['hits'])} "
          f"marks {len(r['reported'])} decode {1000 * r['decode_s']:.0f} ms, rest {r['analyse_s']:.2f} s",
          file=sys.stderr, flush=True)
    return r


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


def report(name: str, records, params: DetectionParams, jobs: int = 1) -> None:
    threshold = reporting_threshold(params)
    s = summarise(records, threshold)
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
    note = "" if jobs == 1 else f"; {jobs} processes at once: NOT single-core figures"
    print(f"by input variant (read + decode, CPU ms: median, and per megapixel{note}):")
    for kind, (syntax, *_) in VARIANTS.items():
        rs = [r for r in records if r["variant"] == kind]
        if not rs:
            print(f"  {kind:<11} no images")
            continue
        v = summarise(rs, threshold)
        decode_ms = statistics.median(1000 * r["decode_s"] for r in rs)
        per_mp = statistics.median(1000 * r["decode_s"] / r["megapixels"] for r in rs)
        plugin = decoding_plugin(syntax) or "native"
        print(f"  {kind:<11} {len(rs):2d} images  sensitivity {v['sensitivity']:.2f} ({v['found']}/{v['truth']})"
              f"  FP {v['fp_per_image']:.2f}/image ({sum(v['fp_by_kind'].values())})"
              f"  decode {decode_ms:5.0f} ms, {per_mp:4.0f} ms/MP [{plugin}]")
    seconds = [r["seconds"] for r in records]
    print(f"CPU seconds per image    median {statistics.median(seconds):.2f}, max {max(seconds):.2f}, "
          f"{statistics.median(r['seconds'] / r['megapixels'] for r in records):.3f} per megapixel "
          f"(read + decode + to_mammogram + detect; to_mammogram + detect alone median "
          f"{statistics.median(r['analyse_s'] for r in records):.2f}; wall median "
          f"{statistics.median(r['wall_s'] for r in records):.2f}){note}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), action="append", help="seed set(s); default bench-a and bench-b")
    parser.add_argument("--images", type=int, default=100, help="images per set")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for the sets (quality only)")
    parser.add_argument("--speed", action="store_true", help="run the speed section only")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed section")
    parser.add_argument("--speed-images", type=int, default=5, help="full-size images timed")
    parser.add_argument("--no-acr", action="store_true", help="skip the ACR-style phantom section")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU the speed section is pinned to")
    parser.add_argument("--speed-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-rss", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_rss:
        return worker_rss(args.worker_rss)
    base = SETS[(args.set or ["bench-a"])[0]]
    if args.speed_child:
        return speed(range(base, base + args.speed_images))
    params = DetectionParams()
    started = time.perf_counter()
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}; detector params {params}", flush=True)
    if not args.speed:
        for name in args.set or ["bench-a", "bench-b"]:
            base_seed = SETS[name]
            report(name, run(range(base_seed, base_seed + args.images), args.size, params, args.jobs),
                   params, args.jobs)
        who = "this process" if args.jobs == 1 else f"the largest of {args.jobs} worker processes"
        usage = resource.getrusage(resource.RUSAGE_SELF if args.jobs == 1 else resource.RUSAGE_CHILDREN)
        print(f"\npeak RSS of {who}: {usage.ru_maxrss / 1024:.0f} MB (phantom drawing included)", flush=True)
        if not args.no_acr:
            print("\n" + "\n".join(acr_report(params)), flush=True)
    if args.speed or not args.no_speed:
        child = [sys.executable, __file__, "--speed-child", "--speed-images", str(args.speed_images),
                 "--set", (args.set or ["bench-a"])[0]]
        subprocess.run(child, env={**os.environ, **ONE_THREAD}, check=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, {args.cpu}))
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    return 0


def speed(seeds) -> int:
    """The speed section; run in a process pinned to one CPU (see main)."""
    cpus = sorted(os.sched_getaffinity(0))
    print(f"\n== speed: seeds {seeds.start}-{seeds.stop - 1} drawn at {SPEED_SHAPE[1]} x {SPEED_SHAPE[0]}, "
          f"{SPEED_SHAPE[2]} mm, For Presentation 12 bit; one process pinned to CPU {cpus}, one thread", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        _timed(*_files(Path(folder), seeds[0], (512, 416, 0.1), ("plain",))[0])  # warm-up
        rows = {shape: [] for shape in SCALING_SHAPES}
        decodes = {"jpeg-ls": [], "j2k": []}
        rss_files = None
        for seed in seeds:
            files = _files(Path(folder), seed, SPEED_SHAPE, ("plain", "jpeg-ls", "j2k"))
            rows[SPEED_SHAPE[:2]].append(_timed(*files[0]))
            for kind, path, _ in files[1:]:
                decodes[kind].append(_timed(kind, path, None)[1])
            rss_files = rss_files or {kind: path for kind, path, _ in files}
            for shape in SCALING_SHAPES[:-1]:
                rows[shape].append(_timed(*_files(Path(folder), seed, (*shape, 0.07), ("plain",))[0]))
        _speed_report(rows, decodes)
        _decoder_table(Path(folder), seeds[0])
        peaks = {kind: _peak_rss(path) for kind, path in rss_files.items()}
    worst = max(peaks.values(), key=lambda peak: peak["peak_mb"])
    print("peak RSS of a fresh process reading one 3328 x 4096 file, to_mammogram, detect, display_pixels: "
          + ", ".join(f"{k} {v['peak_mb']:.0f} MB" for k, v in peaks.items())
          + f" (after imports {worst['imports_mb']:.0f} MB); target <= {TARGET_MB} MB per worker: "
          + ("met" if worst["peak_mb"] <= TARGET_MB else "NOT met"))
    return 0


def _files(folder: Path, seed: int, shape, kinds):
    """[(kind, path, breast area in MP)] of one phantom written in each of ``kinds``."""
    rows, cols, spacing = shape
    phantom = make_phantom(random_spec(seed, rows=rows, cols=cols, spacing_mm=spacing))
    out = []
    for kind in kinds:
        path = folder / f"{seed}-{rows}x{cols}-{kind}.dcm"
        path.write_bytes(encode(phantom, seed, kind))
        out.append((kind, path, float(phantom.breast_mask.sum()) / 1e6))
    return out


SPEED_REPEATS = 3  # one run of a full-size image swings by up to 50 % on this VM: take the median


def _timed(kind, path, breast_mp):
    """((CPU s, wall s) in all, (CPU s, wall s) of read_file + decode, breast MP): reading and
    decoding, then to_mammogram + detect unless ``breast_mp`` is None; each the median of
    ``SPEED_REPEATS`` runs."""
    runs = [_timed_once(path, breast_mp is not None) for _ in range(SPEED_REPEATS)]
    total, decoded = (tuple(statistics.median(r[i][j] for r in runs) for j in (0, 1)) for i in (0, 1))
    return total, decoded, breast_mp


def _timed_once(path, analyse: bool):
    clock = _Clock()
    ds = read_file(path)
    decode(ds)
    decoded = clock.lap()
    rest = (0.0, 0.0)
    if analyse:
        mammogram = to_mammogram(ds)
        detect(mammogram.pixels, mammogram.spacing_mm, DetectionParams(), mammogram.valid)
        rest = clock.lap()
    return (decoded[0] + rest[0], decoded[1] + rest[1]), decoded


def _speed_report(rows, decodes) -> None:
    full = rows[SPEED_SHAPE[:2]]
    cpu = statistics.median(t[0] for t, *_ in full)
    print(f"uncompressed 3328 x 4096, read_file (file in the page cache) + decode + to_mammogram + detect: "
          f"median {cpu:.2f} CPU s per image (each image the median of {SPEED_REPEATS} runs; "
          f"max {max(t[0] for t, *_ in full):.2f}, wall median "
          f"{statistics.median(t[1] for t, *_ in full):.2f}); read + decode "
          f"{1000 * statistics.median(d[0] for _, d, _ in full):.0f} ms of it; "
          f"target <= {TARGET_S:.1f} s: {'met' if cpu <= TARGET_S else 'NOT met'}")
    for kind, times in decodes.items():
        plugin = decoding_plugin(VARIANTS[kind][0])
        print(f"  {kind:<8} read_file + decode median {1000 * statistics.median(c for c, _ in times):.0f} "
              f"CPU ms (wall {1000 * statistics.median(w for _, w in times):.0f}) [{plugin}]")
    print("time against breast area (0.07 mm, uncompressed, read + decode + to_mammogram + detect; medians):")
    per_mp = []
    for (r, c), measured in rows.items():
        per_mp.append(statistics.median(t[0] / b for t, _, b in measured))
        print(f"  {c} x {r} ({r * c / 1e6:4.1f} MP image): breast {statistics.median(b for *_, b in measured):4.1f} MP, "
              f"{statistics.median(t[0] for t, *_ in measured):.2f} CPU s per image, {per_mp[-1]:.3f} per breast MP")
    growth = per_mp[-1] / per_mp[0]
    print(f"  CPU s per breast MP, largest / smallest size: {growth:.2f} "
          f"({'no faster than linear' if growth <= 1.1 else 'FASTER than linear'}, 10 % allowed)")
    # Every image of every size, not three medians: time ~ area ** k, k from a least-squares line
    # in log-log (k = 1 is linear; fixed costs per image make it less).
    points = [(b, t[0]) for measured in rows.values() for t, _, b in measured]
    k = float(np.polyfit(np.log([b for b, _ in points]), np.log([t for _, t in points]), 1)[0])
    print(f"  fitted over all {len(points)} images: CPU s ~ breast area ** {k:.2f} "
          f"({'no faster than linear' if k <= 1.1 else 'FASTER than linear'}, 1.1 allowed)", flush=True)


def _decoder_table(folder: Path, seed: int, repeats: int = 3) -> None:
    """CPU ms to decode one 3328 x 4096 image with every installed plugin (PREFERRED_DECODER's
    figures in node/images.py)."""
    print(f"decoders, seed {seed} at 3328 x 4096 (decode only, CPU ms, median of {repeats}; * = used):")
    for kind, path, _ in _files(folder, seed, SPEED_SHAPE, ("jpeg-ls", "j2k", "rle")):
        syntax = {**VARIANTS, **DECODE_ONLY}[kind][0]
        cells, first = [], None
        for plugin in get_decoder(syntax).available_plugins:
            times = []
            for _ in range(repeats):
                ds = read_file(path)
                ds.pixel_array_options(decoding_plugin=plugin)
                clock = _Clock()
                pixels = ds.pixel_array
                times.append(clock.lap()[0])
            first = pixels if first is None else first
            cells.append(f"{plugin}{'*' if plugin == decoding_plugin(syntax) else ''} "
                         f"{1000 * statistics.median(times):.0f}"
                         + ("" if np.array_equal(pixels, first) else " (DIFFERENT pixels)"))
        print(f"  {kind:<8} " + ", ".join(cells), flush=True)


def _peak_rss(path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker-rss", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def worker_rss(path: str) -> int:
    """What one node worker does with one image, then its peak RSS (VmHWM) as JSON."""
    imports_mb = _vm_hwm_mb()
    ds = read_file(path)
    mammogram = to_mammogram(ds)
    detect(mammogram.pixels, mammogram.spacing_mm, DetectionParams(), mammogram.valid)
    display_pixels(ds, ds.pixel_array)  # as pipeline.py does
    print(json.dumps({"peak_mb": _vm_hwm_mb(), "imports_mb": imports_mb}))
    return 0


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
