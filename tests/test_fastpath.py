"""The receive fast path (node/fastpath.py) and the early header read (node/received.py).

End to end on loopback: DCMTK's storescu sends large data sets to an in-process receiver, which
must keep them byte for byte whatever the PDU size, with O_DIRECT or through the page cache; the
header read while a data set arrives must stand in for the handler's own read only when it is
whole. Unit tests cover the header read from a file's first bytes, a filesystem that takes
O_DIRECT at open but refuses the write, the write buffers, and the reactors' wake-ups.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import dul
from pynetdicom.dsutils import split_dataset

from node import fastpath, received
from node.config import parse_config
from node.received import CANNOT_UNDERSTAND
from node.receiver import Receiver
from node.spool import Spool
from node.testing.dicomfactory import StudyIdentity, make_mammo_dataset
from nodeproc import node_config
from peers import STORESCU, require, storescu

MG = "1.2.840.10008.5.1.4.1.1.1.2"


def image(folder: Path, name: str, rows: int, cols: int, seed: int, private_bytes: int = 0) -> Path:
    """An MG file of ``rows`` x ``cols`` noise pixels; optionally a
    private element of ``private_bytes`` before the pixel data, which makes the header long."""
    pixels = np.random.default_rng(seed).integers(0, 4096, (rows, cols), np.uint16)
    ds = make_mammo_dataset(pixels, identity=StudyIdentity(seed), laterality="L", view="CC",
                            window=(2048, 4096))
    if private_bytes:
        block = ds.private_block(0x0029, "CALCNODE TEST", create=True)
        block.add_new(0x10, "OB", bytes(range(256)) * (private_bytes // 256))
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fastpath-images")
    return {
        "full-field": image(folder, "full-field", 4096, 3328, 101),
        "odd-size": image(folder, "odd-size", 2001, 1531, 102),
        # a header longer than the fast path's first write, after which its header is read
        "long-header": image(folder, "long-header", 1000, 800, 103, private_bytes=fastpath._CHUNK + (2 << 20)),
    }


@pytest.fixture
def receiver(tmp_path, monkeypatch):
    """An in-process receiver on a free loopback port; pynetdicom's globals restored after."""
    monkeypatch.setattr(pynetdicom._config, "STORE_RECV_CHUNKED_DATASET", False)
    monkeypatch.setattr(pynetdicom._config, "LOG_HANDLER_LEVEL", pynetdicom._config.LOG_HANDLER_LEVEL)
    monkeypatch.setattr(dul.DULServiceProvider, "_read_pdu_data", dul.DULServiceProvider._read_pdu_data)
    config = parse_config(node_config(tmp_path, study={"complete_after_s": 600}))
    spool = Spool(config.storage.path, config.storage.fsync).open()
    monkeypatch.setattr(tempfile, "tempdir", str(spool.incoming))  # as service.py does
    node = Receiver(config, spool)
    node.start()
    try:
        yield config.listen.port, spool
    finally:
        node.stop()
        spool.close()


@pytest.fixture
def parses(monkeypatch) -> list[tuple[str, int]]:
    """(SOP Instance UID read, or "", bytes read from) of every header parse."""
    seen = []
    original = received._Parsed.__init__

    def recording(self, path, limit):
        try:
            original(self, path, limit)
        finally:
            seen.append((str(getattr(getattr(self, "header", None), "SOPInstanceUID", "")), limit))

    monkeypatch.setattr(received._Parsed, "__init__", recording)
    return seen


def dataset_bytes(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def kept(spool: Spool, sent: Path) -> Path:
    ds = pydicom.dcmread(sent, stop_before_pixels=True)
    return spool.root / "instances" / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def send_and_check(port: int, spool: Spool, files: list[Path], max_send_pdu: int | None = None) -> None:
    extra = ["--max-send-pdu", str(max_send_pdu)] if max_send_pdu else []
    result = storescu("CALCNODE", port, files, extra_args=extra, tcp_nodelay=True)
    assert result.returncode == 0, result.stdout[-3000:]
    for path in files:
        assert dataset_bytes(kept(spool, path)) == dataset_bytes(path), path.name
    assert not list(spool.incoming.iterdir())


@pytest.mark.parametrize("max_send_pdu", [None, 20000], ids=["pdu-128k", "pdu-20000"])
def test_large_data_sets_are_kept_byte_for_byte_with_o_direct(receiver, images, parses, monkeypatch,
                                                               max_send_pdu):
    require(STORESCU)
    port, spool = receiver
    opened = []
    original = fastpath._open_direct
    monkeypatch.setattr(fastpath, "_open_direct", lambda path: opened.append(original(path)) or opened[-1])
    send_and_check(port, spool, list(images.values()), max_send_pdu)
    probe = spool.incoming / "probe"
    probe.write_bytes(b"")
    direct = original(str(probe))
    if direct is not None:
        os.close(direct)
    # every run wrote with O_DIRECT where the test's filesystem takes it (tmpfs before Linux 6.6
    # and older overlayfs refuse it: then every run went through the page cache)
    assert opened and all((fd is not None) == (direct is not None) for fd in opened)
    limits = {path.name: [limit for uid, limit in parses if uid == uid_of(path)] for path in images.values()}
    # the full-field header was read once, early, from its first few MiB, and that read was used
    assert len(limits["full-field.dcm"]) == 1 and limits["full-field.dcm"][0] <= 2 * fastpath._CHUNK
    # the long header did not fit in the early read: the handler read it again, in full
    early, full = limits["long-header.dcm"]
    assert early < images["long-header"].stat().st_size - (1 << 20) < full


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_the_reactors_of_a_receiving_association_are_woken_by_their_work(receiver, images, monkeypatch):
    require(STORESCU)
    port, spool = receiver
    woken = []
    clear = fastpath.Wake.clear

    def counting(self):
        woken.append(self.is_set())
        clear(self)

    monkeypatch.setattr(fastpath.Wake, "clear", counting)
    send_and_check(port, spool, [images["odd-size"], images["full-field"]])
    # each C-STORE wakes the association (message complete) and the DUL (response queued)
    assert sum(woken) >= 4, f"{sum(woken)} of {len(woken)} polls ended by a wake"


def test_the_write_buffers_are_aligned_to_huge_pages_and_do_not_overlap():
    buffers = fastpath._buffers()
    assert len(buffers) == fastpath._BUFFERS and all(len(b) == fastpath._CHUNK for b in buffers)
    first = np.frombuffer(buffers[0], np.uint8)
    assert first.ctypes.data % fastpath._HUGE_PAGE == 0
    buffers[0][:] = b"\x01" * fastpath._CHUNK
    buffers[1][:] = b"\x02" * fastpath._CHUNK
    assert bytes(buffers[0][-1:]) == b"\x01" and bytes(buffers[1][:1]) == b"\x02"


def sleeping(target, seconds: float, watched: bool, dul_socket=None) -> tuple[threading.Thread, list]:
    """A thread (a DUL's when ``dul_socket`` is given) that sleeps through fastpath.sleep."""
    took = []

    def run():
        thread = threading.current_thread()
        if watched:
            thread.calcnode_wake = target
        start = time.monotonic()
        fastpath.sleep(seconds)
        took.append(time.monotonic() - start)

    if dul_socket is None:
        thread = threading.Thread(target=run)
    else:
        thread = dul.DULServiceProvider.__new__(dul.DULServiceProvider)
        threading.Thread.__init__(thread, target=run)
        thread.socket = types.SimpleNamespace(socket=dul_socket)
    thread.start()
    return thread, took


def test_a_watched_poll_ends_when_its_queue_gets_an_item(monkeypatch):
    monkeypatch.setattr(fastpath, "_POLL_S", 10.0)  # a poll long enough to see it cut short
    wake, items = fastpath.Wake(), queue.Queue()
    fastpath._wake_on_put(items, wake)
    thread, took = sleeping(wake, 10.0, watched=True)
    time.sleep(0.05)
    items.put_nowait("work")
    thread.join(5)
    assert took and took[0] < 5 and items.get_nowait() == "work" and not wake.is_set()


def test_a_dul_poll_ends_when_its_socket_has_data(monkeypatch):
    monkeypatch.setattr(fastpath, "_POLL_S", 10.0)
    ours, peer = socket.socketpair()
    try:
        thread, took = sleeping(fastpath.Wake(), 10.0, watched=True, dul_socket=ours)
        time.sleep(0.05)
        peer.send(b"x")
        thread.join(5)
        assert took and took[0] < 5
    finally:
        ours.close()
        peer.close()


def test_other_threads_and_longer_sleeps_sleep_in_full(monkeypatch):
    monkeypatch.setattr(fastpath, "_POLL_S", 0.05)
    wake = fastpath.Wake()
    wake.set()
    longer, took_longer = sleeping(wake, 0.2, watched=True)  # longer than a reactor's poll
    other, took_other = sleeping(wake, 0.04, watched=False)  # a thread nobody watches
    longer.join(5)
    other.join(5)
    assert took_longer[0] >= 0.19 and took_other[0] >= 0.035


def test_without_o_direct_the_same_bytes_go_through_the_page_cache(receiver, images, monkeypatch):
    require(STORESCU)
    port, spool = receiver
    monkeypatch.setattr(fastpath, "_open_direct", lambda path: None)
    send_and_check(port, spool, list(images.values()))


def test_a_refused_direct_write_is_made_through_the_page_cache(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"")
    direct = os.open(path, os.O_WRONLY)
    cached = os.open(path, os.O_WRONLY)
    real = os.pwrite

    def refusing(fd, data, offset):
        if fd == direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing)
    try:
        fastpath._pwrite_direct(direct, cached, memoryview(b"abcd" * 1024), 4096)
        with pytest.raises(OSError):
            fastpath._pwrite_direct(direct, -1, memoryview(b"x"), 0)  # other errors are raised
    finally:
        os.close(direct)
        os.close(cached)
    assert path.read_bytes() == bytes(4096) + b"abcd" * 1024


# -- the header read early, from a file's first bytes -------------------------------------------

def small_file(tmp_path: Path, truncate_pixels: int = 0) -> tuple[Path, Dataset]:
    path = image(tmp_path, "small", 300, 200, 104)
    if truncate_pixels:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) - truncate_pixels])
    return path, pydicom.dcmread(path, stop_before_pixels=True)


def test_an_early_read_holding_the_whole_header_is_used(tmp_path, parses):
    path, ds = small_file(tmp_path)
    early = received._Parsed(path, 64 << 10)
    header = received.read_header(path, MG, ds.SOPInstanceUID, early)
    assert header.StudyInstanceUID == ds.StudyInstanceUID
    assert [limit for _, limit in parses] == [64 << 10]  # the early read only


def test_an_early_read_cut_short_is_replaced_by_a_full_read(tmp_path, parses):
    path, ds = small_file(tmp_path)
    early = received._Parsed(path, 600)  # within the header
    assert early.cut_short or early.end + 12 > early.limit
    header = received.read_header(path, MG, ds.SOPInstanceUID, early)
    assert header.SOPInstanceUID == ds.SOPInstanceUID
    assert [limit for _, limit in parses] == [600, path.stat().st_size]


def test_an_early_read_does_not_hide_a_truncated_data_set(tmp_path):
    path, ds = small_file(tmp_path, truncate_pixels=1000)
    early = received._Parsed(path, 64 << 10)
    with pytest.raises(received.Rejected) as refused:
        received.read_header(path, MG, ds.SOPInstanceUID, early)
    assert refused.value.status == CANNOT_UNDERSTAND and "truncated" in str(refused.value)


def test_early_headers_are_taken_once_and_failures_forgotten(tmp_path):
    path, _ = small_file(tmp_path)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a DICOM file " * 200)
    early = received.EarlyHeaders(keep=3)
    early.start(str(path), 64 << 10)
    early.start(str(garbage), 4000)
    assert early.take(path).header.SOPClassUID == MG
    assert early.take(path) is None  # taken already
    assert early.take(garbage) is None  # unreadable: the handler reads it and says why
    for n in range(5):
        early.start(str(tmp_path / f"never-completed-{n}"), 10)
    assert len(early._parsing) == 3
