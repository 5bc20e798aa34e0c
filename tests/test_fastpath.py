"""The receive fast path (node/fastpath.py) and the early header read (node/received.py).

End to end on loopback: DCMTK's storescu sends large data sets to an in-process receiver, which
must keep them byte for byte whatever the PDU size, with O_DIRECT or through the page cache; the
header read while a data set arrives must stand in for the handler's own read only when it is
whole. A sender driven by hand sends what storescu never does: several PDVs in one PDU, fragments
of 1-3 bytes, pauses between and inside PDUs, a pause while the node stops, and a data set cut
by an A-RELEASE-RQ or a malformed PDU. A disk that fills while a data set arrives, or as its
record is committed, costs that object a status and nothing else. Unit tests cover the header
read from a file's first bytes, a filesystem that takes O_DIRECT at open but refuses the write,
and the write buffers.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode

from node import fastpath, received
from node import spool as spool_module
from node.received import CANNOT_UNDERSTAND
from nodeproc import store_responses
from peers import STORESCU, require, storescu, wait_for
from receiving import (  # noqa: F401
    MG, dataset_bytes, hand_driven, image, kept, receiver, running_receiver, send_and_check,
)

_LAST = 0x02  # message control header: last fragment (PS3.8 E.2)


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


# -- a sender driven by hand: what storescu never sends --------------------------------------------

def p_data(context_id: int, *pdvs: tuple[int, bytes]) -> bytes:
    """A P-DATA-TF PDU holding ``pdvs``, each (message control header, fragment) (PS3.8 9.3.5)."""
    items = b"".join(struct.pack(">LBB", len(data) + 2, context_id, control) + data
                     for control, data in pdvs)
    return struct.pack(">BBL", 0x04, 0, len(items)) + items


class HandSender:
    """An association made by pynetdicom whose socket the test then drives by hand."""

    def __init__(self, port: int):
        assoc = hand_driven(port, "HANDMADE")
        self.sock = assoc.dul.socket.socket
        self.context_id = assoc.accepted_contexts[0].context_id

    def send_command(self, path: Path, message_id: int) -> bytes:
        """Send the C-STORE-RQ command of ``path``; returns its data set's bytes."""
        data = dataset_bytes(path)
        request = C_STORE()
        request.MessageID, request.AffectedSOPClassUID = message_id, MG
        request.AffectedSOPInstanceUID, request.Priority = uid_of(path), 2
        request.DataSet = io.BytesIO(data)
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        for primitive in message.encode_msg(self.context_id, 1 << 20):
            for _, pdv in primitive.presentation_data_value_list:
                if pdv[0] & 0x01:  # the command's fragments (the data set's are sent by hand)
                    self.sock.sendall(p_data(self.context_id, (pdv[0], pdv[1:])))
        return data

    def send(self, *pdvs: tuple[int, bytes]) -> None:
        self.sock.sendall(p_data(self.context_id, *pdvs))

    def read_pdu(self) -> bytes:
        head = self.recv_exactly(6)
        return head + self.recv_exactly(struct.unpack(">L", head[2:])[0])

    def recv_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = self.sock.recv(size - len(data))
            assert more, "the receiver closed the connection"
            data += more
        return data


def test_fragments_in_odd_shapes_and_with_pauses_are_kept_byte_for_byte(receiver, tmp_path, monkeypatch):
    """A data set whose PDUs switch between the fast path and pynetdicom's: several PDVs in one
    PDU (twice, the last fragment in one of them), fragments of 1-3 bytes, odd sizes, a pause
    longer than the fast path waits for the next fragment, and a pause in the middle of a PDU."""
    port, spool = receiver
    runs = []
    original = fastpath._Run.__init__
    monkeypatch.setattr(fastpath._Run, "__init__",
                        lambda self, provider, target: runs.append(target.tell()) or original(self, provider, target))
    path = image(tmp_path, "odd-shapes", 1200, 900, 105)
    sender = HandSender(port)
    try:
        data = sender.send_command(path, message_id=7)
        sizes = [3, 1, 100_000, 99_999, 65_536, 2, 100_000]
        pieces, at = [], 0
        for size in sizes + [100_000] * ((len(data) - sum(sizes)) // 100_000):
            pieces.append(data[at:at + size])
            at += size
        rest = data[at:]
        sender.sock.sendall(b"".join(p_data(sender.context_id, (0, piece)) for piece in pieces[:3]))
        sender.send((0, pieces[3][:50_000]), (0, pieces[3][50_000:]))
        for piece in pieces[4:7]:
            sender.send((0, piece))
        time.sleep(5 * fastpath._WAIT_FOR_MORE_S)  # the fast path gives the socket back meanwhile
        pdu = p_data(sender.context_id, (0, pieces[7]))
        sender.sock.sendall(pdu[:70_001])
        time.sleep(0.05)  # mid PDU
        sender.sock.sendall(pdu[70_001:])
        for piece in pieces[8:]:
            sender.send((0, piece))
        sender.send((0, rest[:-5]), (_LAST, rest[-5:]))
        response = sender.read_pdu()
        assert response[0] == 0x04 and response[11] == 0x03  # one PDV: the last command fragment
        command = decode(io.BytesIO(response[12:]), True, True)
        assert (command.MessageIDBeingRespondedTo, command.Status) == (7, 0x0000)
        sender.sock.sendall(b"\x05\x00" + struct.pack(">L", 4) + bytes(4))  # A-RELEASE-RQ
        assert sender.read_pdu()[0] == 0x06  # A-RELEASE-RP
    finally:
        sender.sock.close()
    assert dataset_bytes(kept(spool, path)) == data
    # the fast path took the data set in three runs, each resuming where pynetdicom had written
    # (after the 2-byte fragment pynetdicom wrote, the PDU of two PDVs, and the pause)
    assert len(runs) == 3 and runs == sorted(runs), runs


A_RELEASE_RQ = b"\x05\x00" + struct.pack(">L", 4) + bytes(4)
A_ABORT = b"\x07\x00" + struct.pack(">L", 4) + bytes([0, 0, 0, 0])  # by the service user
# a P-DATA-TF whose one PDV claims 5000 bytes in a PDU of 106
MALFORMED = struct.pack(">BBLLBB", 0x04, 0, 106, 5000, 1, 0) + bytes(100)
UNKNOWN_TYPE = b"\x0a\x00" + struct.pack(">L", 4) + bytes(4)


@pytest.mark.parametrize("cut, answer", [(A_RELEASE_RQ, 0x06), (MALFORMED, 0x07), (UNKNOWN_TYPE, 0x07)],
                         ids=["release-request", "malformed-pdu", "unknown-pdu-type"])
@pytest.mark.parametrize("glued", [True, False], ids=["read-ahead", "after-a-pause"])
def test_a_data_set_cut_by_another_pdu_leaves_nothing_behind(receiver, tmp_path, monkeypatch, cut, answer,
                                                             glued):
    """Half a data set taken by the fast path, then an A-RELEASE-RQ (answered with an
    A-RELEASE-RP, as pynetdicom does), a malformed PDU or one of an unknown type (an A-ABORT):
    nothing is kept, and the partial file is gone. Sent right behind a fragment, the PDU's start
    is read with it; after a pause, the fast path reads its header when pynetdicom's reactor
    finds the socket readable (the data set's file is still open). Either way the fast path
    hands that one PDU to pynetdicom, whole."""
    port, spool = receiver
    handed = []
    hand_over = fastpath._hand_over
    monkeypatch.setattr(fastpath, "_hand_over", lambda *args: handed.append(args[-1]) or hand_over(*args))
    sender = HandSender(port)
    try:
        data = sender.send_command(image(tmp_path, "cut", 1200, 900, 107), message_id=1)
        for at in range(0, 400_000, 100_000):
            sender.send((0, data[at:at + 100_000]))
        last = p_data(sender.context_id, (0, data[400_000:500_000]))
        if glued:  # the fragment's last byte and the PDU in one segment, the fast path mid-PDU
            sender.sock.sendall(last[:-1])
            time.sleep(0.05)
            sender.sock.sendall(last[-1:] + cut)
        else:
            sender.sock.sendall(last)
            time.sleep(50 * fastpath._WAIT_FOR_MORE_S)
            sender.sock.sendall(cut)
        assert sender.read_pdu()[0] == answer
    finally:
        sender.sock.close()
    wait_for(lambda: not list(spool.incoming.iterdir()), 10, "the partial file to be removed")
    assert not list((spool.root / "instances").rglob("*.dcm"))
    assert [cut.startswith(ahead) for ahead in handed] == [True]


def test_a_short_pdu_read_ahead_with_the_start_of_the_next_hands_over_both(receiver, tmp_path, monkeypatch):
    """An A-RELEASE-RQ (10 bytes) and an A-ABORT right behind a fragment: the fast path reads the
    12-byte header ahead, which holds the request and the abort's first 2 bytes. pynetdicom gets
    both PDUs whole: the peer's abort ends the association, and the node sends no A-ABORT of its
    own (it would, for an unrecognised PDU, had the abort's bytes been cut)."""
    port, spool = receiver
    handed = []
    hand_over = fastpath._hand_over
    monkeypatch.setattr(fastpath, "_hand_over", lambda *args: handed.append(args[-1]) or hand_over(*args))
    sender = HandSender(port)
    pdus = []
    try:
        data = sender.send_command(image(tmp_path, "cut", 1200, 900, 108), message_id=1)
        for at in range(0, 400_000, 100_000):
            sender.send((0, data[at:at + 100_000]))
        last = p_data(sender.context_id, (0, data[400_000:500_000]))
        sender.sock.sendall(last[:-1])
        time.sleep(0.05)  # the fast path waits mid-PDU, then reads the last byte and 12 more at once
        sender.sock.sendall(last[-1:] + A_RELEASE_RQ + A_ABORT)
        sender.sock.settimeout(10)
        while sender.sock.recv(1, socket.MSG_PEEK):  # until the node closes the connection
            pdus.append(sender.read_pdu()[0])
    finally:
        sender.sock.close()
    assert handed == [(A_RELEASE_RQ + A_ABORT)[:12]]
    assert 0x07 not in pdus, pdus
    wait_for(lambda: not list(spool.incoming.iterdir()), 10, "the partial file to be removed")
    assert not list((spool.root / "instances").rglob("*.dcm"))


def test_a_sender_pausing_mid_data_set_is_sent_an_abort_when_the_node_stops(tmp_path, monkeypatch):
    """While a data set's fragments keep coming the fast path reads them in a loop, but a pause
    hands the socket back to pynetdicom's reactor, which then sends the A-ABORT of a stopping
    node (a fast path still waiting on the socket left the peer a bare close instead)."""
    path = image(tmp_path, "paused", 1200, 900, 106)
    with running_receiver(tmp_path, monkeypatch, network_timeout_s=30, shutdown_grace_s=0.2) as (node, port, _):
        sender = HandSender(port)
        try:
            data = sender.send_command(path, message_id=1)
            for at in range(0, 500_000, 100_000):
                sender.send((0, data[at:at + 100_000]))
            time.sleep(0.3)  # taken by the fast path, which then waits for more
            start = time.monotonic()
            aborted = node.stop()
            took = time.monotonic() - start
            assert aborted == 1
            assert took < 5, f"stopping took {took:.1f} s"
            assert sender.read_pdu()[0] == 0x07  # A-ABORT
        finally:
            sender.sock.close()


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


# -- a full disk: while a data set arrives, as its record is committed; min_free_mb -----------

SUCCESS, OUT_OF_RESOURCES = "0x0000: Success", "0xa700: Refused: Out of resources"


def assert_answers(sent, files: list[Path], answers: list[str]) -> None:
    """storescu (``-d``) got ``answers`` to ``files``, in order."""
    assert store_responses(sent.stdout) == list(zip(map(str, files), answers)), sent.stdout[-3000:]


def send_second_refused(port: int, spool, files: list[Path], caplog, answer: str, reason: str):
    """storescu sends three ``files`` in one association, going on after a failure: the second
    is answered ``answer`` and logged once as not kept for ``reason``, nothing of it stays, the
    others are kept. Returns storescu's run."""
    caplog.set_level(logging.INFO, logger="node.receiver")
    sent = storescu("CALCNODE", port, files, extra_args=["-d", "--no-halt"], tcp_nodelay=True)
    assert_answers(sent, files, [SUCCESS, answer, SUCCESS])
    assert [kept(spool, f).exists() for f in files] == [True, False, True]
    wait_for(lambda: not list(spool.incoming.iterdir()), 5, "the partial file removed")
    refused = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert refused == [f"could not keep instance {uid_of(files[1])}: {reason}"]
    return sent


class FullDisk:
    """Writes to the second data set file of a test fail with ``error`` from its ``at``-th write
    on ("first", "second", or "last": as many as the first file took), as on a disk that fills
    then; the other files' writes succeed. ``count(path)`` is called for each write."""

    def __init__(self, error: int, at: str):
        self.error, self.at = error, at
        self.writes: dict[str, int] = {}  # data set file -> writes so far, in order of first write
        self.failed: list[str] = []
        self._lock = threading.Lock()

    def count(self, path: str) -> None:
        with self._lock:
            self.writes[path] = self.writes.get(path, 0) + 1
            files = list(self.writes)
            if files.index(path) != 1:
                return
            at = {"first": 1, "second": 2, "last": self.writes[files[0]]}[self.at]
            if self.writes[path] < at:
                return
            self.failed.append(path)
        raise OSError(self.error, os.strerror(self.error))


class CountedFile(io.FileIO):
    """The raw file under pynetdicom's data set file, each write counted by ``disk`` first."""

    disk: FullDisk
    path: str

    def write(self, data):
        self.disk.count(self.path)
        return super().write(data)


@pytest.mark.parametrize("path, at, error, answer", [
    ("fast", "first", errno.ENOSPC, OUT_OF_RESOURCES),  # the partial first page
    ("fast", "second", errno.ENOSPC, OUT_OF_RESOURCES),  # a 4 MiB buffer, O_DIRECT
    ("fast", "last", errno.EDQUOT, OUT_OF_RESOURCES),  # in close(): the last page
    ("fast", "second", errno.EIO, "0x0110: Failure"),
    ("pynetdicom", "first", errno.ENOSPC, OUT_OF_RESOURCES),  # the preamble
    ("pynetdicom", "last", errno.ENOSPC, OUT_OF_RESOURCES),  # the last fragment
])
def test_a_write_failing_mid_data_set_is_answered_and_the_association_goes_on(
        receiver, tmp_path, monkeypatch, caplog, path, at, error, answer):
    """A disk that fills while a data set arrives: that C-STORE is answered with a status and
    the Error Comment, its file removed, and the association goes on. pynetdicom's reader thread
    died on the write's exception (the fast path's, or its own), aborting the association: the
    later objects were lost to the sender and the partial file stayed in incoming/."""
    require(STORESCU)
    port, spool = receiver
    files = [image(tmp_path, f"i{n}", 2000, 1700, 40 + n) for n in range(3)]  # 6.8 MB: 2 buffers
    disk = FullDisk(error, at)
    incoming = str(spool.incoming)
    if path == "fast":
        real = os.pwrite

        def pwrite(fd, data, offset):
            name = os.readlink(f"/proc/self/fd/{fd}")
            if name.startswith(incoming):
                disk.count(name)
            return real(fd, data, offset)

        monkeypatch.setattr(os, "pwrite", pwrite)
    else:
        monkeypatch.setattr(fastpath, "_fragment_file", lambda provider: None)  # pynetdicom's path
        made = fastpath.NamedTemporaryFile

        def counted(*args, **kwargs):
            target = made(*args, **kwargs)
            target.file = CountedFile(target.file.fileno(), "wb", closefd=False)
            target.file.disk, target.file.path = disk, target.name
            return target

        monkeypatch.setattr(fastpath, "NamedTemporaryFile", counted)

    sent = send_second_refused(port, spool, files, caplog, answer, f"[Errno {error}] {os.strerror(error)}")

    assert disk.failed, disk.writes
    assert "ErrorComment" in sent.stdout
    for kept_file in (files[0], files[2]):
        assert dataset_bytes(kept(spool, kept_file)) == dataset_bytes(kept_file)
    assert len(spool.db().execute("SELECT * FROM instances").fetchall()) == 2


@pytest.mark.parametrize("error, answer", [
    (errno.ENOSPC, OUT_OF_RESOURCES),  # no inode or directory block left
    (errno.ENOENT, "0x0110: Failure"),  # incoming/ removed under the running node
])
def test_a_data_set_file_that_cannot_be_made_is_answered_and_the_association_goes_on(
        receiver, tmp_path, monkeypatch, caplog, error, answer):
    """pynetdicom's reader thread died when the second data set's file could not be created:
    the association ended there, the later objects unanswered."""
    require(STORESCU)
    port, spool = receiver
    files = [image(tmp_path, f"i{n}", 600, 500, 60 + n) for n in range(3)]
    made, calls = fastpath.NamedTemporaryFile, []

    def second_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(error, os.strerror(error))
        return made(*args, **kwargs)

    monkeypatch.setattr(fastpath, "NamedTemporaryFile", second_fails)
    send_second_refused(port, spool, files, caplog, answer, f"[Errno {error}] {os.strerror(error)}")


def test_storage_min_free_mb_is_what_is_left_with_the_instance_kept(tmp_path, monkeypatch):
    """The instance's file is already on the spool's disk (incoming/) when the handler checks the
    free space, so its size is not taken off a second time: the node refused an image whenever
    less than ``min_free_mb`` plus that image's size was free (on a disk with 12 MB free and
    ``min_free_mb: 0``, every 10.9 MB image), unlike /readyz and the conformance statement."""
    require(STORESCU)
    files = [image(tmp_path, f"i{n}", 2600, 2100, 80 + n) for n in range(2)]  # 10.9 MB each
    with running_receiver(tmp_path, monkeypatch, storage={"min_free_mb": 100}) as (_, port, spool):
        free = iter([105.0, 99.0])  # as measured with each file in incoming/
        monkeypatch.setattr(spool, "free_mb", lambda: next(free))
        sent = storescu("CALCNODE", port, files, extra_args=["-d", "--no-halt"], tcp_nodelay=True)
        assert_answers(sent, files, [SUCCESS, OUT_OF_RESOURCES])
        assert [kept(spool, f).exists() for f in files] == [True, False]


def test_a_record_that_cannot_be_committed_is_answered_out_of_resources(receiver, tmp_path, monkeypatch,
                                                                       caplog):
    """SQLite's "database or disk is full" as the second image's record is committed: A700 and
    nothing of it kept, and the association goes on. It was pynetdicom's C211 (Cannot
    understand: the data set's fault, which a sender does not retry), with its file left in the
    spool under no record."""
    require(STORESCU)
    port, spool = receiver
    files = [image(tmp_path, f"i{n}", 600, 500, 50 + n) for n in range(3)]
    upsert, calls = spool_module._upsert_instance, []
    spool.db().execute("CREATE TABLE filler (b BLOB)")

    def second_fails(db, record):
        calls.append(record.sop_instance_uid)
        if len(calls) == 2:  # SQLite's own SQLITE_FULL, in the record's transaction
            limit = db.execute("PRAGMA max_page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
            try:
                db.execute("INSERT INTO filler VALUES (zeroblob(1 << 20))")
            finally:
                db.execute(f"PRAGMA max_page_count = {limit}")
        upsert(db, record)

    monkeypatch.setattr(spool_module, "_upsert_instance", second_fails)
    send_second_refused(port, spool, files, caplog, OUT_OF_RESOURCES, "database or disk is full")


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
