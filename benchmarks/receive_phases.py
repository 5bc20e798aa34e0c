#!/usr/bin/env python3
"""Where the time of one C-STORE goes: the receive path's phases per image, in one process.

The receiver (node/receiver.py, with the fast path) runs in this process, as ``calcnode serve``
runs it, and DCMTK ``storescu`` sends it N uncompressed full-field images (the throughput
images of ``benchmarks/receive.py``) in one association, 128 KiB PDUs, TCP_NODELAY. Timers
wrapped around the fast path and the C-STORE handler give, per image (medians over images 2 to
N-1 of each run):

  stream   first to last data set fragment taken by the fast path
  tail     last such fragment to the handler's start (the file's last writes, the final
           fragment through pynetdicom, the hand-over to the association thread)
  handler  the C-STORE handler (header checks, fsync, rename, database commit)
  gap      the handler's end to the next image's first fragment (pynetdicom's response,
           storescu's turn-around and next command)
  period   one image to the next: 1 / images per second

and, summed per image: the fast path's waits for the disk while the data set arrives, and the
handler's parts. Numbers move by 10-20 % between runs on a shared virtual machine: compare
medians of several runs (``--runs``). benchmarks/receive.py gives the figure of record.

Usage: .venv/bin/python benchmarks/receive_phases.py [--images 40] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import receive  # noqa: E402  (benchmarks/receive.py: images, config, storescu command)
from node import fastpath, receiver, spool as spool_module  # noqa: E402
from node.config import load_config  # noqa: E402

PHASES = ("stream", "tail", "handler", "gap", "period")


class Timeline:
    """Timestamps of fast-path fragments and handler calls, and durations of named calls, from
    wrappers put around them (``restore`` takes the wrappers off)."""

    def __init__(self):
        self.marks: list[tuple[str, float, float]] = []
        self.spent: dict[str, list[float]] = defaultdict(list)
        self._wrapped: list[tuple[object, str]] = []

    def mark(self, owner, name: str, kind: str) -> None:
        self._wrap(owner, name, lambda start, end: self.marks.append((kind, start, end)))

    def time(self, owner, name: str, label: str) -> None:
        self._wrap(owner, name, lambda start, end: self.spent[label].append(end - start))

    def _wrap(self, owner, name: str, record) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                record(start, time.perf_counter())
        setattr(owner, name, wrapped)
        self._wrapped.append((owner, name))

    def restore(self) -> None:
        for owner, name in reversed(self._wrapped):
            setattr(owner, name, getattr(owner, name).__wrapped__)
        self._wrapped.clear()

    def phases(self) -> dict[str, float]:
        """Median ms per phase over the images between the first and the last."""
        images, current = [], None
        for kind, start, end in self.marks:
            if kind == "fragment":
                current = current or {"first": start}
                current["last"] = end
            elif current is not None:
                images.append({**current, "h0": start, "h1": end})
                current = None
        rows = [(x["last"] - x["first"], x["h0"] - x["last"], x["h1"] - x["h0"],
                 nxt["first"] - x["h1"], nxt["first"] - x["first"])
                for x, nxt in zip(images[1:-1], images[2:])]
        return {name: 1000 * statistics.median(r[i] for r in rows) for i, name in enumerate(PHASES)}


def one_run(files: list[Path], work: Path) -> float:
    """Seconds storescu took to send ``files`` to a receiver in this process."""
    work.mkdir()
    port = receive.free_port()
    config = load_config(receive.write_config(work / "calcnode.yaml", port, work / "spool",
                                              {"complete_after_s": 600}, 1, {}))
    spool = spool_module.Spool(config.storage.path, config.storage.fsync).open()
    tempfile.tempdir = str(spool.incoming)  # as service.py does
    node = receiver.Receiver(config, spool)
    node.start()
    try:
        return receive.send(files, "CALCNODE", port, work / "storescu.log").seconds
    finally:
        node.stop()
        spool.close()
        tempfile.tempdir = None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the images and spools go (default: temp)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="calcnode-phases-", dir=args.dir) as tmp:
        folder = Path(tmp, "images")
        folder.mkdir()
        files = receive.make_images(folder, args.images)
        for run in range(1, args.runs + 1):
            timeline = Timeline()
            timeline.mark(fastpath._Run, "receive", "fragment")
            timeline.mark(receiver, "handle_store", "handler")
            timeline.time(fastpath._Run, "_wait", "disk waits (fast path)")
            timeline.time(fastpath._Run, "close", "last writes (close)")
            timeline.time(receiver, "read_header", "header checks")
            timeline.time(spool_module, "place_file", "fsync + rename + fsync dir")
            timeline.time(spool_module.Spool, "adopt", "place_file + database commit")
            cpu = time.process_time()
            try:
                seconds = one_run(files, Path(tmp, f"run{run}"))
            finally:
                timeline.restore()
            cpu = 1000 * (time.process_time() - cpu) / len(files)
            phases = timeline.phases()
            print(f"[{run}] {len(files) / seconds:5.1f} images/s; receiver CPU {cpu:4.1f} ms/image; "
                  + ", ".join(f"{name} {value:4.1f}" for name, value in phases.items()) + " ms", flush=True)
            print("    per image: " + ", ".join(f"{label} {1000 * sum(v) / len(files):.2f} ms"
                                                for label, v in timeline.spent.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
