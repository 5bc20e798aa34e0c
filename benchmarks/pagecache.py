"""What writing a received image into the page cache costs, kept cached or dropped after fsync.

Writes ``--files`` files of 27.3 MB each in 128 KiB writes (one C-STORE data set at a 128 KiB
PDU), fsyncs each, and prints the CPU seconds the writes took (thread CPU time, so other load
on the machine changes it little), per group of files. Mode ``keep`` leaves every file in the
page cache, as DCMTK storescp does; mode ``drop`` drops each file from it after its fsync
(POSIX_FADV_DONTNEED), as calcnode's receiver did before its O_DIRECT fast path (spool.place_file
still drops the few pages that go through the cache).

On a virtual machine whose memory is backed lazily by the host, a page the guest has never
used before costs far more to write into than a page it reuses; a page cache that grows by
every received byte keeps reaching into such memory. Run it in a folder on the spool's
filesystem::

    .venv/bin/python benchmarks/pagecache.py --files 60 --dir var
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

FILE_BYTES = 27_300_000
WRITE_BYTES = 128 << 10
GROUP = 10


def write_file(path: Path, chunk: memoryview, drop: bool) -> float:
    """Thread CPU seconds spent in write() for one file."""
    cpu = 0.0
    with open(path, "wb") as handle:
        for _ in range(0, FILE_BYTES, WRITE_BYTES):
            start = time.thread_time()
            handle.write(chunk)
            cpu += time.thread_time() - start
        handle.flush()
        os.fsync(handle.fileno())
        if drop:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return cpu


def run(folder: Path, files: int, drop: bool) -> list[float]:
    chunk = memoryview(os.urandom(WRITE_BYTES))
    work = Path(tempfile.mkdtemp(prefix="pagecache-", dir=folder))
    try:
        return [write_file(work / f"{n:04d}.dcm", chunk, drop) for n in range(files)]
    finally:
        shutil.rmtree(work)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=60, help="files written per mode")
    parser.add_argument("--dir", type=Path, default=Path("var"), help="folder to write in")
    parser.add_argument("--modes", nargs="+", default=["drop", "keep"], choices=["drop", "keep"])
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"{args.files} files of {FILE_BYTES / 1e6:.1f} MB in {WRITE_BYTES >> 10} KiB writes, "
          f"fsync each; write() CPU ms per file, median per group of {GROUP} files")
    for mode in args.modes:
        os.sync()
        cpu = run(args.dir, args.files, drop=mode == "drop")
        groups = [statistics.median(cpu[i:i + GROUP]) * 1000 for i in range(0, len(cpu), GROUP)]
        print(f"  {mode:<5} " + "  ".join(f"{ms:6.1f}" for ms in groups)
              + f"   (median {statistics.median(cpu) * 1000:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
