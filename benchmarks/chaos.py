#!/usr/bin/env python3
"""The long fault scenarios of issue 5, with real processes on 127.0.0.1, and their figures.

L. Load. ``--senders`` DCMTK ``storescu`` processes at once (8), each sending
   ``--images-per-sender`` full-field mammograms (50; 4096 x 3328, 16-bit, about 27 MB) in one
   association to one ``calcnode serve`` (2 workers, fsync on, ``max_associations`` 16, one
   destination: a recording C-STORE sink in this process). Studies hold ``--images-per-study``
   images (10); the first study of each pair of senders is interleaved: both senders send half
   of it at the same time. Pixels come from four phantoms (the four views of one seed) written
   once; every image gets its own study, series and SOP Instance UIDs, so nothing is a
   duplicate. Recorded: instances acknowledged (storescu) and kept (state database); studies
   analysed, with how many runs each took (``generation``, 1 expected) and their image counts;
   outputs delivered to the sink and how often each arrived; associations refused (the node's
   log); peak memory (VmHWM of the node and of each worker, and the largest sum of VmRSS over
   the node's process group, sampled every 0.5 s from /proc); wall times and images/s.

K. kill -9 during a transfer. One ``storescu`` sends ``--kill-images`` (100) of the same files
   to a fresh node; once ``--kill-after`` (40) are stored, the node and its workers get SIGKILL.
   The node is started again on the same spool; recorded: instances acknowledged to storescu,
   kept, analysed (every study that holds an acknowledged instance must be ``done`` and cover
   it), outputs delivered to the sink, duplicates at the sink, and "studies lost": studies with
   an acknowledged instance that are not done, or acknowledged instances the node does not have.

Every process is stopped by its PID (tests/nodeproc.NodeProcess kills the node's whole process
group by PID); everything is written under a temporary folder that is removed at the end.

Usage: .venv/bin/python benchmarks/chaos.py [--senders 8] [--images-per-sender 50]
           [--images-per-study 10] [--kill-images 100] [--kill-after 40] [--rows 4096 --cols 3328]
           [--only load|kill|all]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from node.testing.dicomfactory import StudyIdentity  # noqa: E402
from node.testing.phantom import make_phantom  # noqa: E402
from node.testing.study import VIEWS, phantom_dataset, view_spec  # noqa: E402
from nodeproc import (  # noqa: E402
    NodeProcess, RecordingSink, acknowledged_files, group_members, node_config, sink)
from peers import STORESCU, free_port, wait_for  # noqa: E402

SEED = 505000
SPACING_MM = 0.07
PDU = 131072
SAMPLE_S = 0.5
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass(frozen=True)
class Image:
    path: Path
    study_uid: str
    sop_uid: str


# ---------------------------------------------------------------- data

def plan(senders: int, per_sender: int, per_study: int) -> list[list[tuple[int, int]]]:
    """For each sender, its images as (study number, instance number). Sender pairs (0, 1),
    (2, 3) ... share their first study, each sending half of it."""
    result: list[list[tuple[int, int]]] = [[] for _ in range(senders)]
    study = 0
    half = per_study // 2
    for first in range(0, senders - 1, 2):
        for offset, sender in enumerate((first, first + 1)):
            result[sender] += [(study, offset * half + n + 1) for n in range(half)]
        study += 1
    for images in result:
        while len(images) < per_sender:
            count = min(per_study, per_sender - len(images))
            images += [(study, n + 1) for n in range(count)]
            study += 1
    return result


def write_images(folder: Path, layout: list[list[tuple[int, int]]], rows: int,
                 cols: int) -> list[list[Image]]:
    """Write every planned image once; the four phantoms (RCC, LCC, RMLO, LMLO) are reused."""
    phantoms = [make_phantom(view_spec(SEED, index, rows=rows, cols=cols, spacing_mm=SPACING_MM,
                                       density="b", n_clusters=(1, 0, 1, 0)[index]))
                for index in range(len(VIEWS))]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for sender, images in enumerate(layout):
        files = []
        for study, number in images:
            identity = StudyIdentity(SEED + 1 + study)
            ds = phantom_dataset(phantoms[(number - 1) % len(phantoms)], identity, number)
            path = folder / f"s{sender:02d}-study{study:03d}-{number:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(Image(path, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
        written.append(files)
    return written


# ---------------------------------------------------------------- processes

def storescu(node: NodeProcess, files: list[Image], log: Path, calling: str) -> subprocess.Popen:
    cmd = [STORESCU, "-v", "--max-pdu", str(PDU), "--max-send-pdu", str(PDU), "-aet", calling,
           "-aec", node.ae_title, "127.0.0.1", str(node.port), *(str(f.path) for f in files)]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=DCMTK_ENV)


def finish(proc: subprocess.Popen, timeout_s: float) -> int:
    """Wait for a sender; killed (by PID) when it outlives ``timeout_s``."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def memory_kb(pid: int) -> dict[str, int]:
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values


class MemorySampler:
    """Every SAMPLE_S: VmHWM of each process in the node's group, and the group's summed VmRSS."""

    def __init__(self, node: NodeProcess):
        self.pgid = node.proc.pid
        self.hwm_kb: dict[int, int] = {}
        self.peak_sum_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in group_members(self.pgid):
                values = memory_kb(pid)
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), values.get("VmHWM", 0))
                total += values.get("VmRSS", 0)
            self.peak_sum_kb = max(self.peak_sum_kb, total)
            self._stop.wait(SAMPLE_S)

    def figures(self) -> tuple[float, float, float]:
        """(node VmHWM, largest other process's VmHWM, largest summed VmRSS), in MB."""
        node = self.hwm_kb.get(self.pgid, 0)
        others = max((v for pid, v in self.hwm_kb.items() if pid != self.pgid), default=0)
        return node * 1024 / 1e6, others * 1024 / 1e6, self.peak_sum_kb * 1024 / 1e6


def start_node(work: Path, name: str, sink_port: int, study: dict, port: int | None = None) -> NodeProcess:
    config = node_config(work, port=port, destinations={"sink": sink(sink_port, timeout_s=60)},
                         study=study, storage={"min_free_mb": 500},
                         listen={"max_pdu_bytes": PDU, "max_associations": 16})
    return NodeProcess(work, config, name).start(timeout_s=120)


def wait_analysed(node: NodeProcess, study_uids: set[str], timeout_s: float) -> None:
    def settled():
        node.check_alive()
        rows = node.query("SELECT study_uid, state FROM studies")
        states = {r["study_uid"]: r["state"] for r in rows}
        return all(states.get(uid) in ("done", "failed") for uid in study_uids)

    wait_for(settled, timeout_s, f"{len(study_uids)} studies analysed", interval_s=1.0)


def wait_delivered(node: NodeProcess, sink_: RecordingSink, timeout_s: float) -> None:
    def settled():
        node.check_alive()
        if node.pending_deliveries():
            return False
        done = {r["output_uid"] for r in node.query("SELECT output_uid FROM deliveries")}
        return done <= set(sink_.uids())

    wait_for(settled, timeout_s, "every delivery at the sink", interval_s=1.0)


def delivery_figures(node: NodeProcess, sink_: RecordingSink) -> dict:
    rows = node.query("SELECT output_uid, state FROM deliveries")
    counts = sink_.counts()
    return dict(outputs=len(node.query("SELECT 1 FROM outputs")), deliveries=len(rows),
                done=sum(r["state"] == "done" for r in rows),
                at_sink=len(counts), duplicates=sum(n - 1 for n in counts.values()))


# ---------------------------------------------------------------- L. load

def load(args, work: Path, images: list[list[Image]]) -> dict:
    total = sum(len(files) for files in images)
    studies = Counter(image.study_uid for files in images for image in files)
    print(f"\n== L. load: {len(images)} storescu at once, {total} images in {len(studies)} studies",
          flush=True)
    with RecordingSink() as sink_:
        node = start_node(work, "load", sink_.port,
                          {"complete_after_s": 120, "max_wait_s": 1800, "analyse_when_four_views": True})
        try:
            with MemorySampler(node) as memory:
                start = time.perf_counter()
                senders = [storescu(node, files, work / f"storescu-{n}.log", f"MODALITY{n}")
                           for n, files in enumerate(images)]
                codes = [finish(proc, 300 + 10 * args.images_per_sender) for proc in senders]
                received_s = time.perf_counter() - start
                wait_analysed(node, set(studies), args.timeout_s)
                analysed_s = time.perf_counter() - start
                wait_delivered(node, sink_, 600)
                delivered_s = time.perf_counter() - start
            logs = [(work / f"storescu-{n}.log").read_text(errors="replace") for n in range(len(images))]
            acknowledged = sum(len(acknowledged_files(text)) for text in logs)
            rows = node.query("SELECT study_uid, state, generation, images FROM studies")
            kept = len(node.query("SELECT 1 FROM instances"))
            refused = node.log_text().count("rejected association")
            deliveries = delivery_figures(node, sink_)
            node.stop(signal.SIGTERM, timeout_s=120)
        finally:
            node.close()
    wrong = [r for r in rows if r["state"] != "done" or r["generation"] != 1
             or r["images"] != studies.get(r["study_uid"])]
    result = dict(senders=len(images), images=total, studies=len(studies),
                  storescu_failed=sum(c != 0 for c in codes),
                  acknowledged=acknowledged, kept=kept, studies_done=sum(r["state"] == "done" for r in rows),
                  analysed_once=sum(r["generation"] == 1 for r in rows), wrong=wrong,
                  lost=len(set(studies) - {r["study_uid"] for r in rows if r["state"] == "done"}),
                  refused=refused, received_s=received_s, analysed_s=analysed_s,
                  delivered_s=delivered_s, memory=memory.figures(), **deliveries)
    print(f"  {result}", flush=True)
    return result


# ---------------------------------------------------------------- K. kill -9 mid transfer

def kill_mid_transfer(args, work: Path, files: list[Image]) -> dict:
    print(f"\n== K. kill -9 after {args.kill_after} of {len(files)} images, then restart", flush=True)
    study_of = {f.sop_uid: f.study_uid for f in files}
    by_path = {str(f.path): f for f in files}
    study = {"complete_after_s": 20, "max_wait_s": 1800, "analyse_when_four_views": True}
    with RecordingSink() as sink_:
        node = start_node(work, "killed", sink_.port, study)
        log = work / "storescu-kill.log"
        try:
            sender = storescu(node, files, log, "MODALITY")
            wait_for(lambda: node.check_alive() or node.stored_count() >= args.kill_after, 600,
                     f"{args.kill_after} images stored", interval_s=0.05)
            node.kill()
            killed_at = node.stored_count()
            finish(sender, 120)
        finally:
            node.close()
        acknowledged = [by_path[p].sop_uid for p in acknowledged_files(log.read_text(errors="replace"))]
        restarted = start_node(work, "restarted", sink_.port, study, port=free_port())
        try:
            start = time.perf_counter()
            kept = {r["sop_uid"]: r["study_uid"] for r in restarted.query(
                "SELECT sop_uid, study_uid FROM instances")}
            touched = {study_of[uid] for uid in kept}
            wait_analysed(restarted, touched, args.timeout_s)
            wait_delivered(restarted, sink_, 600)
            recovered_s = time.perf_counter() - start
            rows = {r["study_uid"]: r for r in restarted.query("SELECT * FROM studies")}
            deliveries = delivery_figures(restarted, sink_)
            leftovers = list((restarted.spool / "incoming").iterdir())
            restarted.stop(signal.SIGTERM, timeout_s=120)
        finally:
            restarted.close()
    missing = [uid for uid in acknowledged if uid not in kept]
    counted = Counter(kept.values())
    not_done = [uid for uid in {study_of[a] for a in acknowledged}
                if rows.get(uid, {}).get("state") != "done" or rows[uid]["images"] != counted[uid]]
    result = dict(sent=len(files), stored_at_kill=killed_at, acknowledged=len(acknowledged), kept=len(kept),
                  acknowledged_missing=len(missing), studies=len(touched), studies_not_done=len(not_done),
                  lost=len(missing) + len(not_done), incoming_leftovers=len(leftovers),
                  recovered_s=recovered_s, **deliveries)
    print(f"  {result}", flush=True)
    return result


# ---------------------------------------------------------------- main

def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"machine: {platform.machine()} {model}, {os.cpu_count()} CPUs, python {platform.python_version()}"


def summary(load_res: dict | None, kill_res: dict | None) -> list[str]:
    rows = []
    if load_res:
        r = load_res
        node_mb, worker_mb, sum_mb = r["memory"]
        rows += [
            f"| L. images acknowledged / kept / sent | {r['acknowledged']} / {r['kept']} / {r['images']} "
            f"({r['senders']} senders at once, {r['storescu_failed']} storescu failed) |",
            f"| L. studies done / analysed in one run / total | {r['studies_done']} / {r['analysed_once']} / "
            f"{r['studies']} (not as expected: {len(r['wrong'])}) |",
            f"| L. associations refused (max_associations 16) | {r['refused']} |",
            f"| L. outputs / delivered done / at sink / duplicates | {r['outputs']} / {r['done']} / "
            f"{r['at_sink']} / {r['duplicates']} |",
            f"| L. receive wall time, rate | {r['received_s']:.1f} s, "
            f"{r['images'] / r['received_s']:.2f} images/s |",
            f"| L. until all analysed / all delivered | {r['analysed_s']:.1f} s / {r['delivered_s']:.1f} s |",
            f"| L. peak memory: node VmHWM / largest worker VmHWM / largest group VmRSS sum | "
            f"{node_mb:.0f} MB / {worker_mb:.0f} MB / {sum_mb:.0f} MB |",
            f"| L. studies lost | {r['lost']} |",
        ]
    if kill_res:
        r = kill_res
        rows += [
            f"| K. sent / stored at kill / acknowledged / kept after restart | {r['sent']} / "
            f"{r['stored_at_kill']} / {r['acknowledged']} / {r['kept']} |",
            f"| K. acknowledged but missing / studies not analysed | {r['acknowledged_missing']} / "
            f"{r['studies_not_done']} of {r['studies']} |",
            f"| K. outputs / delivered done / at sink / duplicates | {r['outputs']} / {r['done']} / "
            f"{r['at_sink']} / {r['duplicates']} |",
            f"| K. restart until all analysed and delivered | {r['recovered_s']:.1f} s |",
            f"| K. studies lost | {r['lost']} |",
        ]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--images-per-sender", type=int, default=50)
    parser.add_argument("--images-per-study", type=int, default=10)
    parser.add_argument("--kill-images", type=int, default=100)
    parser.add_argument("--kill-after", type=int, default=40)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=3328)
    parser.add_argument("--timeout-s", type=float, default=1800, help="bound on each analysis wait")
    parser.add_argument("--only", choices=("load", "kill", "all"), default="all")
    args = parser.parse_args(argv)
    if args.senders < 2 or args.images_per_study < 2 or args.images_per_sender < args.images_per_study // 2:
        parser.error("need at least 2 senders, 2 images per study and half a study per sender")
    if not 0 < args.kill_after < args.kill_images <= args.senders * args.images_per_sender:
        parser.error("need 0 < --kill-after < --kill-images <= senders x images per sender")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that every child is still stopped
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="calcnode-chaos-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        layout = plan(args.senders, args.images_per_sender, args.images_per_study)
        images = write_images(work / "images", layout, args.rows, args.cols)
        size = sum(f.path.stat().st_size for files in images for f in files)
        print(f"wrote {sum(map(len, images))} images of {args.rows}x{args.cols} ({size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        load_res = kill_res = None
        if args.only in ("load", "all"):
            load_res = load(args, work / "load", images)
        if args.only in ("kill", "all"):
            flat = [f for files in images for f in files][:args.kill_images]
            kill_res = kill_mid_transfer(args, work / "kill", flat)
    print("\n== summary\n| figure | value |\n|---|---|")
    print("\n".join(summary(load_res, kill_res)))
    lost = (load_res or {}).get("lost", 0) + (kill_res or {}).get("lost", 0)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
