"""The receive fast path (node/fastpath.py) and the early header read (node/received.py).

End to end on loopback: DCMTK's storescu sends large data sets to an in-process receiver, which
must keep them byte for byte whatever the PDU size, with O_DIRECT or through the page cache; the
header read while a data set arrives must stand in for the handler's own read only when it is
whole. Unit tests cover the header read from a file's first bytes, a filesystem that takes
O_DIRECT at open but refuses the write, and the write buffers.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node import fastpath, received
from node.received import CANNOT_UNDERSTAND
from peers import STORESCU, require
from receiving import image, receiver, send_and_check  # noqa: F401 (receiver: a fixture)

MG = "1.2.840.10008.5.1.4.1.1.1.2"


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


@pytest.mark.parametrize("max_send_pdu", [None, 20000], ids=["pdu-128k", "pdu-20000"])
def test_large_data_sets_are_kept_byte_for_byte_with_o_direct(receiver, images, parses, monkeypatch,
                                                               max_send_pdu):
    require(STORESCU)
    port, spool = receiver
    opened, completed = [], []
    original = fastpath._open_direct
    monkeypatch.setattr(fastpath, "_open_direct", lambda path: opened.append(original(path)) or opened[-1])
    complete = fastpath._complete
    monkeypatch.setattr(fastpath, "_complete", lambda *args: completed.append(args) or complete(*args))
    send_and_check(port, spool, list(images.values()), max_send_pdu)
    # every data set's last fragment took the fast path too
    assert len(completed) == len(images)
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


def test_a_data_set_in_a_single_pdu_is_kept_byte_for_byte(receiver, tmp_path, monkeypatch):
    require(STORESCU)
    port, spool = receiver
    completed = []
    complete = fastpath._complete
    monkeypatch.setattr(fastpath, "_complete", lambda *args: completed.append(args) or complete(*args))
    small = [image(tmp_path, "tiny", 64, 48, 21), image(tmp_path, "small", 200, 150, 22)]
    assert all(path.stat().st_size < 100_000 for path in small)  # one 128 KiB PDU each
    send_and_check(port, spool, small)
    assert len(completed) == 2


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_the_write_buffers_are_aligned_to_huge_pages_and_do_not_overlap():
    buffers = fastpath._buffers()
    assert len(buffers) == fastpath._BUFFERS and all(len(b) == fastpath._CHUNK for b in buffers)
    first = np.frombuffer(buffers[0], np.uint8)
    assert first.ctypes.data % fastpath._HUGE_PAGE == 0
    buffers[0][:] = b"\x01" * fastpath._CHUNK
    buffers[1][:] = b"\x02" * fastpath._CHUNK
    assert bytes(buffers[0][-1:]) == b"\x01" and bytes(buffers[1][:1]) == b"\x02"


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


def test_an_early_read_leaves_the_handler_only_checks(tmp_path):
    """Values are converted (and checked for damage) while the data set still arrives, but only
    in a read that stands for the whole header."""
    path, ds = small_file(tmp_path)
    whole, cut = received._read_early(path, 64 << 10), received._read_early(path, 600)
    assert vars(whole)["uids"]["StudyInstanceUID"] == ds.StudyInstanceUID and "uids" not in vars(cut)
    assert received.read_header(path, MG, ds.SOPInstanceUID, whole) is whole.header


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
