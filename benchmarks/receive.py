#!/usr/bin/env python3
"""Network benchmark of the node: C-STORE receive throughput and end-to-end latency.

A. Throughput. N uncompressed full-field mammograms (4096 x 3328, 16-bit, about 27 MB each; one
   phantom reused with new SOP Instance UIDs, one study, Explicit VR Little Endian) are sent in
   one association by DCMTK ``storescu`` to (1) DCMTK ``storescp +B`` writing to disk and (2)
   ``calcnode serve`` (fsync on, analysis held back by ``complete_after_s: 600``). Both receivers
   offer a 128 KiB maximum PDU, which is what limits the sender's PDVs; storescu receives with a
   128 KiB PDU too. Wall clock from storescu's start to its exit gives images/s and MB/s
   (1 MB = 1e6 bytes of file size). The issue's target is calcnode >= 0.7 x storescp. After
   each pair, the same number of files of the same size are written the way the spool writes
   them, without the network ("disk alone", ``disk_run``): the rate the disk allows calcnode.

B. Latency. A four-view full-field study (seed 424242, 424243, ...) is sent in one association to
   a calcnode with ``analyse_when_four_views: true``, ``complete_after_s: 10`` and one destination,
   a ``storescp`` sink. Measured from storescu's exit (last image acknowledged) until the
   Mammography CAD SR, and until the last expected output, has arrived in the sink. The target is
   ``complete_after_s + 5 s``. The expected number of outputs is what the offline pipeline
   (``pipeline.analyse_study``) makes for the same study. The sink runs ``-xcr`` to touch a marker
   file once each object is completely written, and ``+xa`` to accept compressed outputs.

DCMTK tools are called by absolute path under /usr/bin (the venv has pynetdicom scripts of the
same names). Everything runs on 127.0.0.1, in a temporary directory removed at the end (under
``--dir`` when given: the disk whose speed both receivers then write at).

Usage: .venv/bin/python benchmarks/receive.py [--images 40] [--repeats 2] [--latency-runs 2]
                                              [--only throughput|latency|all] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.uid import UID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.testing.dicomfactory import StudyIdentity  # noqa: E402
from node.testing.phantom import make_phantom, random_spec  # noqa: E402
from node.testing.study import phantom_dataset, write_study  # noqa: E402

STORESCU, STORESCP, ECHOSCU = "/usr/bin/storescu", "/usr/bin/storescp", "/usr/bin/echoscu"
HOST = "127.0.0.1"
PDU = 131072
ROWS, COLS, SPACING_MM = 4096, 3328, 0.07
CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
THROUGHPUT_SEED = 777001
LATENCY_SEED = 424242
COMPLETE_AFTER_S = 10
TARGET_RATIO = 0.7
READY_DEADLINE_S, STOP_TIMEOUT_S = 60.0, 30.0
LATENCY_DEADLINE_S, POLL_S = 120.0, 0.05
# Debian's DCMTK leaves Nagle's algorithm on unless TCP_NODELAY is set in the environment.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


class BenchError(Exception):
    """A receiver or sender misbehaved; the message says what, with a log tail."""


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> float:
    """SIGTERM, wait, then SIGKILL; returns the seconds the process took to go."""
    start = time.perf_counter()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return time.perf_counter() - start


@contextlib.contextmanager
def running(cmd: list[str], log: Path, env=None, cwd=None):
    """Start ``cmd`` with stdout+stderr to ``log``; always stopped by PID on leaving."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd)
    try:
        yield proc
    finally:
        proc.stopped_in = stop(proc)


def log_tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(["--- " + log.name + " (tail) ---", *text[-lines:], "---"])


def wait_ready(proc: subprocess.Popen, ae: str, port: int, log: Path) -> float:
    """Poll with echoscu until the receiver answers; returns seconds waited."""
    start = time.perf_counter()
    deadline = start + READY_DEADLINE_S
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{log.stem} exited with status {proc.returncode} before it was ready\n"
                             + log_tail(log))
        with contextlib.suppress(subprocess.TimeoutExpired):  # run() kills echoscu on timeout
            echo = subprocess.run([ECHOSCU, "-to", "2", "-ta", "5", "-aec", ae, HOST, str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15)
            if echo.returncode == 0:
                return time.perf_counter() - start
        time.sleep(0.2)
    raise BenchError(f"{log.stem} did not answer C-ECHO within {READY_DEADLINE_S:.0f} s\n"
                     + log_tail(log))


@dataclass(frozen=True)
class Sent:
    seconds: float      # storescu's start to its exit
    sender_cpu_s: float  # storescu's own CPU seconds (user + system)
    busy_cpu_s: float    # CPU seconds the whole machine was busy meanwhile (all cores, kernel too)
    steal_cpu_s: float   # CPU seconds the hypervisor took from this machine meanwhile


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU seconds since boot, all cores (/proc/stat): busy (not idle, iowait or steal), and
    stolen by the hypervisor (a virtual CPU that was ready to run but not given a real one)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def send(files: list[Path], ae: str, port: int, log: Path) -> Sent:
    """storescu all ``files`` in one association; wall clock and CPU figures."""
    cmd = [STORESCU, "--max-pdu", str(PDU), "--max-send-pdu", str(PDU), "-aec", ae, HOST, str(port),
           *map(str, files)]
    deadline = 120 + 10 * len(files)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, steal = machine_cpu_seconds()
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=DCMTK_ENV)
    try:
        status = proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        raise BenchError(f"storescu did not finish within {deadline} s\n" + log_tail(log)) from None
    finally:
        seconds = time.perf_counter() - start
        stop(proc, timeout=5)
    if status != 0:
        raise BenchError(f"storescu exited with status {status}\n" + log_tail(log))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # storescu is the only child reaped
    sender_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    busy_after, steal_after = machine_cpu_seconds()
    return Sent(seconds, sender_cpu, busy_after - busy, steal_after - steal)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM of ``pid``, summed VmHWM of its descendants) in MB (1e6 bytes), from /proc."""
    def hwm(p: int) -> float:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
        except OSError:
            pass
        return 0.0

    def children(p: int) -> list[int]:
        kids = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids += [int(c) for c in (task / "children").read_text().split()]
        return kids

    total, todo = 0.0, children(pid)
    while todo:
        child = todo.pop()
        total += hwm(child)
        todo += children(child)
    return hwm(pid), total


# ---------------------------------------------------------------- receivers

def storescp_cmd(out_dir: Path, port: int, ae: str = "STORESCP", marks: Path | None = None) -> list[str]:
    cmd = [STORESCP, "+B", "-aet", ae, "-od", str(out_dir)]
    if marks is None:
        cmd += ["--max-pdu", str(PDU)]
    else:  # the sink: accept compressed outputs too (plain storescp takes uncompressed only), and
        # make a marker per object once its file is complete
        cmd += ["+xa", "-xcr", f"/usr/bin/touch '{marks}/#f'"]
    return cmd + [str(port)]


def write_config(path: Path, port: int, spool: Path, study: dict, workers: int,
                 destinations: dict) -> Path:
    """The YAML config of one calcnode run (written by hand: no dependency on yaml's dumper)."""
    def flow(mapping: dict) -> str:
        return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"

    lines = [
        f"listen: {flow(dict(ae_title='CALCNODE', host=HOST, port=port, max_pdu_bytes=PDU))}",
        f"storage: {flow(dict(path=str(spool), fsync='true', min_free_mb=100))}",
        f"study: {flow(study)}",
        f"workers: {workers}",
        "web: {enabled: false}",
        "destinations: {}" if not destinations else "destinations:",
    ]
    for name, dest in destinations.items():
        lines.append(f"  {name}: {flow(dest)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def calcnode_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "node", "serve", "--config", str(config)]


def count_dcm(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.dcm"))


def storescp_run(files: list[Path], work: Path) -> dict:
    out = work / "storescp-out"
    out.mkdir()
    port = free_port()
    log = work / "storescp.log"
    os.sync()  # start with no dirty pages from earlier runs
    with running(storescp_cmd(out, port), log, env=DCMTK_ENV) as proc:
        wait_ready(proc, "STORESCP", port, log)
        sent = send(files, "STORESCP", port, work / "storescu-storescp.log")
        received = sum(1 for p in out.iterdir() if p.is_file())
        start = time.perf_counter()
        os.sync()  # storescp does not fsync: how long until its files are on disk too
        sync_s = time.perf_counter() - start
    shutil.rmtree(out)
    if received != len(files):
        raise BenchError(f"storescp stored {received} of {len(files)} files\n" + log_tail(log))
    return dict(seconds=sent.seconds, sender_cpu_s=sent.sender_cpu_s, busy_cpu_s=sent.busy_cpu_s,
                steal_cpu_s=sent.steal_cpu_s,
                received=received, sync_s=sync_s)


def calcnode_run(files: list[Path], work: Path) -> dict:
    spool, port, log = work / "spool", free_port(), work / "calcnode.log"
    study = dict(complete_after_s=600, max_wait_s=3600, analyse_when_four_views="false")
    config = write_config(work / "throughput.yaml", port, spool, study, 1, {})
    os.sync()
    with running(calcnode_cmd(config), log, cwd=ROOT) as proc:
        ready_s = wait_ready(proc, "CALCNODE", port, log)
        cpu = cpu_seconds(proc.pid)
        sent = send(files, "CALCNODE", port, work / "storescu-calcnode.log")
        cpu = cpu_seconds(proc.pid) - cpu
        at_exit = count_dcm(spool / "instances")
        final, deadline = at_exit, time.perf_counter() + 10
        while final < len(files) and time.perf_counter() < deadline:
            time.sleep(0.2)
            final = count_dcm(spool / "instances")
        rss, rss_children = peak_rss_mb(proc.pid)
    shutil.rmtree(spool, ignore_errors=True)
    if final != len(files):
        raise BenchError(f"calcnode spooled {final} of {len(files)} files\n" + log_tail(log))
    return dict(seconds=sent.seconds, sender_cpu_s=sent.sender_cpu_s, busy_cpu_s=sent.busy_cpu_s,
                steal_cpu_s=sent.steal_cpu_s,
                received=final, at_exit=at_exit, ready_s=ready_s, rss_mb=rss,
                rss_children_mb=rss_children, stop_s=proc.stopped_in, status=proc.returncode, cpu_s=cpu)


def disk_run(n: int, size: int, work: Path) -> float:
    """Seconds to write ``n`` files of ``size`` bytes the way the spool keeps a received image,
    without the network: 4 MiB O_DIRECT writes from fastpath's huge-page buffers by writer
    threads (two buffers, so at most two writes in flight), then the spool's ``place_file``
    (fsync, rename into place, fsync of the folder). What this disk allows calcnode at most."""
    from node import fastpath
    from node.spool import place_file

    folder = work / "disk-alone"
    (folder / "incoming").mkdir(parents=True)
    (folder / "instances").mkdir()
    buffers = fastpath._buffers()
    for buffer in buffers:
        buffer[:] = os.urandom(len(buffer))
    size += -size % fastpath._ALIGN  # O_DIRECT lengths: whole pages (at most 4 KiB more)
    os.sync()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(buffers)) as writers:
        for number in range(n):
            path = folder / "incoming" / f"{number}.dcm"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
            try:
                writes = [None] * len(buffers)
                for index, offset in enumerate(range(0, size, fastpath._CHUNK)):
                    slot = index % len(buffers)
                    if writes[slot] is not None:
                        writes[slot].result()
                    part = buffers[slot][:min(fastpath._CHUNK, size - offset)]
                    writes[slot] = writers.submit(os.pwrite, fd, part, offset)
                for write in writes:
                    if write is not None:
                        write.result()
            finally:
                os.close(fd)
            place_file(path, folder / "instances" / path.name, fsync=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(folder)
    return seconds


# ---------------------------------------------------------------- A. throughput

def make_images(folder: Path, n: int) -> list[Path]:
    """N files of one study: one full-field phantom, new SOP Instance UID per instance number."""
    phantom = make_phantom(random_spec(THROUGHPUT_SEED, rows=ROWS, cols=COLS, spacing_mm=SPACING_MM))
    identity = StudyIdentity(THROUGHPUT_SEED)
    paths = []
    for number in range(1, n + 1):
        ds = phantom_dataset(phantom, identity, number)
        path = folder / f"img{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def rates(seconds: float, n: int, total_bytes: int) -> str:
    return f"{n / seconds:6.2f} images/s  {total_bytes / 1e6 / seconds:7.1f} MB/s  ({seconds:6.2f} s)"


def throughput(args, work: Path) -> dict:
    data = work / "images"
    data.mkdir()
    start = time.perf_counter()
    files = make_images(data, args.images)
    total = sum(p.stat().st_size for p in files)
    print(f"\n== A. receive throughput: {len(files)} images of {ROWS}x{COLS} 16-bit, "
          f"{total / 1e6:.0f} MB ({total / len(files) / 1e6:.1f} MB each), generated in "
          f"{time.perf_counter() - start:.1f} s; storescu PDU {PDU} both ways", flush=True)
    results = {"storescp": [], "storescp+sync": [], "calcnode": [], "disk": [], "rss": [], "cpu": {}}
    for repeat in range(1, args.repeats + 1):
        run = storescp_run(files, work)
        results["storescp"].append(run["seconds"])
        results["storescp+sync"].append(run["seconds"] + run["sync_s"])
        results["cpu"].setdefault("storescp", []).append(cpu_per_image(run, len(files)))
        print(f"  [{repeat}] storescp +B  {rates(run['seconds'], len(files), total)}  then sync "
              f"{run['sync_s']:.2f} s: {len(files) / (run['seconds'] + run['sync_s']):.2f} images/s "
              f"incl. sync; {cpu_text(run, len(files))}", flush=True)
        run = calcnode_run(files, work)
        results["calcnode"].append(run["seconds"])
        results["rss"].append(run["rss_mb"])
        results["cpu"].setdefault("calcnode", []).append(cpu_per_image(run, len(files)))
        print(f"  [{repeat}] calcnode     {rates(run['seconds'], len(files), total)}  ready in "
              f"{run['ready_s']:.1f} s, {run['at_exit']}/{len(files)} spooled at storescu exit, "
              f"peak RSS {run['rss_mb']:.0f} MB (+{run['rss_children_mb']:.0f} MB children), "
              f"CPU {run['cpu_s']:.1f} s while sending; {cpu_text(run, len(files))}; SIGTERM: exit "
              f"status {run['status']} in {run['stop_s']:.1f} s", flush=True)
        seconds = disk_run(len(files), total // len(files), work)
        results["disk"].append(seconds)
        print(f"  [{repeat}] disk alone   {rates(seconds, len(files), total)}  the spool's writes of "
              f"as many files, no network", flush=True)
    shutil.rmtree(data)
    return dict(n=len(files), bytes=total, **results)


def cpu_per_image(run: dict, n: int) -> tuple[float, float, float]:
    """Milliseconds of CPU per image: storescu's, the rest of the machine's, and the share of
    both cores the machine was busy while storescu ran."""
    sender, busy = run["sender_cpu_s"] / n * 1000, run["busy_cpu_s"] / n * 1000
    return sender, busy - sender, run["busy_cpu_s"] / (run["seconds"] * (os.cpu_count() or 1))


def cpu_text(run: dict, n: int) -> str:
    sender, rest, share = cpu_per_image(run, n)
    return (f"CPU per image: storescu {sender:.0f} ms, the rest {rest:.0f} ms, stolen by the "
            f"hypervisor {run['steal_cpu_s'] / n * 1000:.0f} ms; machine {share:.0%} busy")


def throughput_lines(res: dict) -> list[str]:
    n, total = res["n"], res["bytes"]
    rows, stats = [], {}
    for name in ("storescp", "calcnode"):
        best, median = min(res[name]), statistics.median(res[name])
        stats[name] = (best, median)
        rows.append(f"| {name} receive, {n} x {total / n / 1e6:.1f} MB | "
                    f"best {n / best:.2f} images/s, {total / 1e6 / best:.0f} MB/s | "
                    f"median {n / median:.2f} images/s, {total / 1e6 / median:.0f} MB/s |")
    ratio_best = stats["storescp"][0] / stats["calcnode"][0]
    ratio_median = stats["storescp"][1] / stats["calcnode"][1]
    rows.append(f"| calcnode / storescp (target >= {TARGET_RATIO}) | best {ratio_best:.2f} | "
                f"median {ratio_median:.2f} |")
    for key, label in (("storescp+sync", "storescp then sync (calcnode fsyncs, storescp does not)"),
                       ("disk", "disk alone: the spool's writes of as many files, no network "
                                "(what the disk allows)")):
        best, median = min(res[key]), statistics.median(res[key])
        rows.append(f"| {label} | best {n / best:.2f} images/s, calcnode / it "
                    f"{best / stats['calcnode'][0]:.2f} | median {n / median:.2f} images/s, "
                    f"calcnode / it {median / stats['calcnode'][1]:.2f} |")
    for name, runs in res["cpu"].items():
        sender, rest, share = (statistics.median(v) for v in zip(*runs))
        rows.append(f"| CPU per image while receiving: storescu / everything else (the {name} side, "
                    f"kernel included) | {sender:.0f} ms / {rest:.0f} ms | machine busy "
                    f"{share:.0%} of {os.cpu_count()} cores (median) |")
    rows.append(f"| calcnode peak RSS (VmHWM) while receiving, serve process | max {max(res['rss']):.0f} MB | "
                f"median {statistics.median(res['rss']):.0f} MB |")
    return rows


# ---------------------------------------------------------------- B. latency

def expected_outputs(paths: list[Path]) -> int | None:
    """How many objects the node should send for this study: the offline pipeline's count."""
    try:
        from node.config import Config
        from node.pipeline import analyse_study

        result = analyse_study([pydicom.dcmread(p) for p in paths], Config(), datetime.now())
        return len(result.outputs)
    except Exception as exc:  # the pipeline is not what this script knows: fall back to quiet time
        print(f"  (cannot predict the output count offline: {exc!r}; waiting for 5 s of quiet)")
        return None


def arrived(sink: Path, marks: Path, seen: set[str], study_uid: str) -> list[tuple[str, str]]:
    """New (name, SOP Class UID) objects of ``study_uid`` whose marker exists."""
    new = []
    for mark in marks.iterdir():
        if mark.name in seen:
            continue
        seen.add(mark.name)
        ds = pydicom.dcmread(sink / mark.name, stop_before_pixels=True)
        if str(ds.get("StudyInstanceUID", "")) == study_uid:
            new.append((mark.name, str(ds.SOPClassUID)))
    return new


def wait_outputs(sink: Path, marks: Path, study_uid: str, expected: int | None, sent_at: float) -> dict:
    """Poll the sink every 50 ms until the SR and every expected object arrived (120 s deadline)."""
    seen = {m.name for m in marks.iterdir()}
    got, sr_s, last_s = [], None, None
    deadline = sent_at + LATENCY_DEADLINE_S
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        new = arrived(sink, marks, seen, study_uid)
        if new:
            got += new
            last_s = now - sent_at
            if sr_s is None and any(cls == CAD_SR for _, cls in new):
                sr_s = now - sent_at
        if sr_s is not None and expected is not None and len(got) >= expected:
            break
        if sr_s is not None and expected is None and now - sent_at - last_s > 5.0:
            break
        time.sleep(POLL_S)
    kinds = Counter(UID(cls).name.removesuffix(" Storage") for _, cls in got)
    return dict(sr_s=sr_s, last_s=last_s, count=len(got), expected=expected,
                kinds=", ".join(f"{n} {name}" for name, n in sorted(kinds.items())))


def latency_node(work: Path):
    """(sink dir, marker dir, sink command, node config, (sink port, node port))."""
    sink, marks = work / "sink", work / "sink-marks"
    sink.mkdir()
    marks.mkdir()
    sink_port, node_port = free_port(), free_port()
    study = dict(complete_after_s=COMPLETE_AFTER_S, max_wait_s=600, analyse_when_four_views="true")
    dest = {"sink": dict(ae_title="SINK", host=HOST, port=sink_port, outputs="[sr, sc, gsps]")}
    config = write_config(work / "latency.yaml", node_port, work / "spool", study, 2, dest)
    return sink, marks, storescp_cmd(sink, sink_port, "SINK", marks), config, (sink_port, node_port)


def latency(args, work: Path) -> tuple[list[dict], tuple[float, float]]:
    """Per-run results and the node's peak RSS (serve, workers summed)."""
    print(f"\n== B. end-to-end latency: four-view {ROWS}x{COLS} studies, complete_after_s "
          f"{COMPLETE_AFTER_S}, analyse_when_four_views true, workers 2; target "
          f"<= {COMPLETE_AFTER_S + 5} s", flush=True)
    studies = []
    for run in range(args.latency_runs):
        seed = LATENCY_SEED + run
        start = time.perf_counter()
        out = write_study(work / f"study-{seed}", seed, rows=ROWS, cols=COLS, spacing_mm=SPACING_MM,
                          clusters_per_view=(1, 0, 1, 0))
        expected = expected_outputs(out.paths)
        studies.append((seed, out, expected))
        print(f"  study seed {seed}: written in {time.perf_counter() - start:.1f} s (with the offline "
              f"analysis); {expected} outputs expected", flush=True)
    sink, marks, sink_cmd, config, (sink_port, node_port) = latency_node(work)
    results = []
    with running(sink_cmd, work / "sink.log", env=DCMTK_ENV) as sink_proc, \
            running(calcnode_cmd(config), work / "calcnode-latency.log", cwd=ROOT) as node:
        wait_ready(sink_proc, "SINK", sink_port, work / "sink.log")
        wait_ready(node, "CALCNODE", node_port, work / "calcnode-latency.log")
        for seed, out, expected in studies:
            send_s = send(out.paths, "CALCNODE", node_port, work / f"storescu-{seed}.log").seconds
            res = wait_outputs(sink, marks, out.identity.study_instance_uid, expected, time.perf_counter())
            results.append(dict(seed=seed, send_s=send_s, **res))
            print_latency(results[-1], work / "calcnode-latency.log")
            time.sleep(2.0)
        rss, rss_children = peak_rss_mb(node.pid)
    print(f"  calcnode peak RSS (VmHWM) {rss:.0f} MB (+{rss_children:.0f} MB children); SIGTERM: exit "
          f"status {node.returncode} in {node.stopped_in:.1f} s")
    return results, (rss, rss_children)


def print_latency(res: dict, log: Path) -> None:
    sr = "NOT within 120 s" if res["sr_s"] is None else f"{res['sr_s']:.2f} s"
    last = "-" if res["last_s"] is None else f"{res['last_s']:.2f} s"
    if res["expected"] is not None and res["count"] < res["expected"]:
        last += f" (INCOMPLETE after {LATENCY_DEADLINE_S:.0f} s)"
    print(f"  seed {res['seed']}: sent 4 images in {res['send_s']:.2f} s; after storescu exit: CAD SR "
          f"{sr}, last of {res['count']}/{res['expected']} outputs {last} "
          f"({res['kinds'] or 'nothing'})", flush=True)
    if res["sr_s"] is None:
        print(log_tail(log))


def latency_lines(results: list[dict], rss: tuple[float, float]) -> list[str]:
    target = COMPLETE_AFTER_S + 5
    srs = [r["sr_s"] for r in results if r["sr_s"] is not None]
    lasts = [r["last_s"] for r in results if r["last_s"] is not None and r["count"] == r["expected"]]
    each = ", ".join("-" if r["sr_s"] is None else f"{r['sr_s']:.1f}" for r in results)
    rows = [f"| last image acknowledged -> CAD SR in the sink (target <= {target} s) | "
            f"median {statistics.median(srs):.1f} s | each: {each} s |" if srs else
            f"| last image acknowledged -> CAD SR in the sink (target <= {target} s) | no SR arrived | |"]
    if lasts:
        each = ", ".join(f"{v:.1f}" for v in lasts)
        rows.append(f"| last image acknowledged -> last output in the sink | "
                    f"median {statistics.median(lasts):.1f} s | each: {each} s |")
    rows.append(f"| calcnode peak RSS (VmHWM) over the latency runs, workers 2 | serve {rss[0]:.0f} MB | "
                f"workers {rss[1]:.0f} MB (sum) |")
    return rows


# ---------------------------------------------------------------- main

def machine() -> str:
    version = subprocess.run([STORESCU, "--version"], capture_output=True, text=True, timeout=10)
    dcmtk = next((line.strip("$ ") for line in version.stdout.splitlines() if "dcmtk" in line), "?")
    info = {}
    for name in ("/proc/cpuinfo", "/proc/meminfo"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines():
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    memory = int(info.get("MemTotal", "0 kB").split()[0]) / 2**20
    return (f"machine: {platform.machine()} {info.get('model name', platform.processor())}, "
            f"{os.cpu_count()} CPUs, {memory:.0f} GiB, {platform.system()} {platform.release()}, "
            f"python {platform.python_version()}, pydicom {pydicom.__version__}, {dcmtk}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="images sent per throughput run")
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs per receiver")
    parser.add_argument("--latency-runs", type=int, default=2, help="four-view studies for latency")
    parser.add_argument("--only", choices=("throughput", "latency", "all"), default="all")
    parser.add_argument("--dir", default=None,
                        help="where the images, both receivers' files and the spool go (default: "
                             "the system's temporary folder): e.g. a disk to measure")
    args = parser.parse_args(argv)
    if min(args.images, args.repeats, args.latency_runs) < 1:
        parser.error("--images, --repeats and --latency-runs must be at least 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every child is still stopped
    print(machine(), flush=True)
    summary = []
    try:
        with tempfile.TemporaryDirectory(prefix="calcnode-bench-", dir=args.dir) as tmp:
            if args.only in ("throughput", "all"):
                work = Path(tmp, "throughput")
                work.mkdir()
                summary += throughput_lines(throughput(args, work))
            if args.only in ("latency", "all"):
                work = Path(tmp, "latency")
                work.mkdir()
                summary += latency_lines(*latency(args, work))
    except BenchError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    print("\n== summary\n| figure | value | |\n|---|---|---|")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
