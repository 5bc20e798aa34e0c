"""The receive fast path: data set fragments written straight to the chunked-receive file.

pynetdicom passes every P-DATA-TF PDU through its state machine (event queues, PDU objects, a
primitive, the DIMSE decoder) before the data set fragment reaches the chunked-receive file.
About 210 PDUs make one 27 MB mammogram at a 128 KiB PDU, and that per-PDU Python work was
what limited the receive rate, not the network or the disk. For the one case that carries
nearly all the bytes - a PDU holding a single PDV with a data set fragment, while a C-STORE
data set is being written to its file and nothing else is queued - the fragment is written
straight to that file, exactly as pynetdicom's own decoder would (state Sta6 stays Sta6 for
P-DATA). After the data set's last fragment, pynetdicom is handed an empty last fragment in
its place, which completes the message as the real one would have. Every other PDU, and any
TLS connection (its bytes must go through the TLS layer), takes pynetdicom's path unchanged;
one whose header the fast path has read is completed and handed to pynetdicom, decoded by its
own ``_decode_pdu``.

The fragments go from the socket into page-aligned buffers, and from there to the file with
O_DIRECT, by a writer thread while the next buffer fills. Through the page cache, ext4 spent
more CPU per byte than the copy itself (a page, buffer heads and a delayed-allocation
reservation per 4 KiB, then the writeback and freeing of each page), on the same thread that
reads the socket, while the peer waits: see docs/benchmarks.md. Where O_DIRECT is not available
(a filesystem may refuse it) the same buffers are written through the page cache.

A write that fails (a full disk) must not end the association: pynetdicom's reader thread
dies on it, the A-ABORT leaves the file behind, and every later object of the association is
lost to the sender. The file pynetdicom writes to is made here (``_data_set_file``), unbuffered,
and neither its making nor its writes nor the fast path's raise: the first failure is kept on
the file, the rest of the data set is read and dropped, and the C-STORE handler answers with a
status (``write_error``).

``install`` puts it in place of ``DULServiceProvider._read_pdu_data`` (pynetdicom 3.0); it falls
back to the original for every PDU it does not handle. A pynetdicom upgrade must re-check the
private names read here (``_recv_pdu``, ``_decode_pdu``, ``dimse.message._data_set_file``,
``state_machine.current_state``, the C-STORE request's ``_dataset_file``, ``dimse_messages``'
imported ``NamedTemporaryFile``); the tests comparing received with sent bytes guard it.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import ssl
import struct
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from tempfile import NamedTemporaryFile, gettempdir
from typing import Callable

from pynetdicom import dimse_messages, dul, evt

_HEADER_BYTES = 12  # PDU type, reserved, PDU length; PDV item length, context ID, control header
_P_DATA_TF = 0x04
_COMMAND, _LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)
_WAIT_FOR_MORE_S = 0.01  # how long to wait for the next fragment before handing back to pynetdicom
_ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses: a multiple of the page size
_CHUNK = 4 << 20  # bytes per write, a multiple of _ALIGN (4 MiB measured faster than 2 here)
_HUGE_PAGE = 2 << 20  # a transparent huge page on x86-64 and most arm64 kernels
_BUFFERS = 2  # per association: one filling while the other is written (ext4 runs one at a time)
_read_pdu_data = dul.DULServiceProvider._read_pdu_data
_writers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="calcnode-write")
_started: Callable[[str, int], None] | None = None  # see install


def _fragment_file(provider):
    """The chunked-receive file of the C-STORE data set in progress, when the fast path applies."""
    if provider.state_machine.current_state != "Sta6" or not provider.event_queue.empty():
        return None
    if not provider._recv_pdu.empty() or isinstance(provider.socket.socket, ssl.SSLSocket):
        return None
    message = getattr(provider.assoc.dimse, "message", None)
    target = getattr(message, "_data_set_file", None)
    if target is None or target.closed or _error_of(target) is not None:
        return None  # none, or its writes are dropped: pynetdicom's path drops them
    if provider.assoc.get_handlers(evt.EVT_PDU_RECV) or provider.assoc.get_handlers(evt.EVT_DATA_RECV):
        return None  # someone wants to see every PDU
    return target


def _read_pdu_fast(provider) -> None:
    """pynetdicom's ``_read_pdu_data``, except that data set fragments go straight to the file.

    While such fragments keep arriving (the peer is mid data set), they are read here in a loop:
    returning to pynetdicom's reactor with no event queued would make it sleep 1 ms per PDU.
    Each read takes the rest of a fragment and the next PDU's header together, so a PDU whose
    bytes have arrived costs one system call, not the three of a peek, a header read and a data
    read (plus the poll Python makes before each read on a socket with a timeout). A header read
    that does not start a lone data set fragment is completed and queued for pynetdicom as its
    own read would have (``_hand_over``). Every byte read is in the file, and the file
    positioned after it, before this returns.
    """
    target = _fragment_file(provider)
    sock = provider.socket.socket if target is not None else None
    if sock is None:
        return _read_pdu_data(provider)
    fd, timeout = sock.fileno(), sock.gettimeout()
    first = memoryview(bytearray(_HEADER_BYTES))
    got = _next_header(fd, timeout, first, 0)
    if got is None:
        provider.event_queue.put("Evt17")  # transport closed mid-PDU
        return
    if got < _HEADER_BYTES or _fragment_size(first) is None:
        return _hand_over(provider, fd, timeout, bytes(first[:got]))
    run = _Run(provider, target)
    head = memoryview(run.header)
    head[:] = first
    ahead = b""  # the start of a PDU read ahead that pynetdicom is to have
    try:
        # Nothing else runs on this thread meanwhile, so the checks of _fragment_file still
        # hold, until a PDU read is not a lone data set fragment (pynetdicom takes that one).
        while not provider._kill_thread:  # killed: the association is going, unread bytes too
            got = run.receive(fd, timeout)
            if got is None:
                provider.event_queue.put("Evt17")
                return
            if run.last_context is not None:
                break
            if not got and not select.select([fd], [], [], _WAIT_FOR_MORE_S)[0]:
                return  # the peer paused: back to pynetdicom's reactor, nothing read ahead
            got = _next_header(fd, timeout, head, got)
            if got is None:
                provider.event_queue.put("Evt17")
                return
            if got < _HEADER_BYTES or _fragment_size(head) is None:
                ahead = bytes(head[:got])
                break
    finally:
        run.close()
    if run.last_context is not None:
        _complete(provider, run.last_context)
    elif ahead:
        _hand_over(provider, fd, timeout, ahead)


def _next_header(fd: int, timeout: float | None, head: memoryview, got: int) -> int | None:
    """Complete the next PDU's header in ``head``, of which ``got`` bytes are in: its 6 bytes,
    then the PDV header too when it is a P-DATA-TF (every PDU is at least 10 bytes, a P-DATA-TF
    at least 12, so these reads take nothing past this PDU). How many bytes of ``head`` hold
    the header, or None if the connection ended first."""
    for need in (6, _HEADER_BYTES):
        if got < need:
            if not _read_exactly(fd, head[got:need], timeout):
                return None
            got = need
        if head[0] != _P_DATA_TF or struct.unpack_from(">L", head, 2)[0] < 6:
            break
    return got


def _complete(provider, context_id: int) -> None:
    """The data set's last fragment is in the file: queue for pynetdicom an empty last fragment
    in its place, as its reactor queues a PDU it read, to complete the message the usual way."""
    empty = struct.pack(">BBLLBB", _P_DATA_TF, 0, 6, 2, context_id, _LAST)
    pdu, event = provider._decode_pdu(empty)
    provider.event_queue.put(event)
    provider._recv_pdu.put(pdu)


def _hand_over(provider, fd: int, timeout: float | None, ahead: bytes) -> None:
    """Read the rest of the PDU that ``ahead`` begins and queue it for pynetdicom, as its own
    ``_read_pdu_data`` would have: Evt17 if the connection ends first, Evt19 for an unknown PDU
    type or one that does not decode (pynetdicom then aborts), else the PDU and its event. A
    10-byte PDU (A-RELEASE, A-ABORT) may be followed in ``ahead`` by the start of the next: that
    one is read and queued after it."""
    data = bytearray(ahead)
    while data:
        if len(data) < 6 and not _read_more(fd, timeout, data, 6 - len(data)):
            provider.event_queue.put("Evt17")
            return
        pdu_type, _, pdu_length = struct.unpack_from(">BBL", data)
        if pdu_type not in range(0x01, 0x08):
            provider.event_queue.put("Evt19")
            return
        if not _read_more(fd, timeout, data, 6 + pdu_length - len(data)):
            provider.event_queue.put("Evt17")
            return
        pdu_bytes, data = data[:6 + pdu_length], data[6 + pdu_length:]
        try:
            pdu, event = provider._decode_pdu(pdu_bytes)
        except Exception:  # as pynetdicom's reader: an undecodable PDU is Evt19
            provider.event_queue.put("Evt19")
            return
        provider.event_queue.put(event)
        provider._recv_pdu.put(pdu)


def _fragment_size(head) -> int | None:
    """From a PDU's first 12 bytes: its fragment's length if it is a P-DATA-TF holding one data
    set fragment (PS3.8 9.3.5, E.2), else None."""
    pdu_type, _, pdu_length, pdv_length, _, control = struct.unpack_from(">BBLLBB", head)
    if pdu_type != _P_DATA_TF or pdv_length + 4 != pdu_length or control & _COMMAND:
        return None
    return pdu_length + 6 - _HEADER_BYTES


class _Run:
    """Consecutive fragments of one file, from the socket to the file through aligned buffers.

    Buffer ``index`` holds the file's bytes from ``offset`` on. A full buffer is written by a
    writer thread (O_DIRECT) and the next one fills meanwhile; ``close`` writes the rest."""

    def __init__(self, provider, target):
        self.target = target
        self.buffers = getattr(provider, "calcnode_buffers", None)
        if self.buffers is None:
            self.buffers = provider.calcnode_buffers = _buffers()
        self.writes: list[Future | None] = [None] * _BUFFERS
        self.header = bytearray(_HEADER_BYTES)
        target.flush()
        start = target.tell()
        self.direct = _open_direct(target.name)
        # The bytes up to the next aligned offset go through the page cache (one partial page).
        self.head = (-start) % _ALIGN if self.direct is not None else 0
        self.offset = start + self.head
        self.index = self.fill = 0
        self.announce = _started is not None and not getattr(target, "calcnode_announced", False)
        self.last_context: int | None = None  # the presentation context, once the last fragment is in

    def receive(self, fd: int, timeout: float | None) -> int | None:
        """Keep the fragment of the PDU whose 12-byte header is in ``self.header``; unless it is
        the data set's last, read the next PDU's header with its end, into ``self.header``, as
        far as it has arrived. Returns how many bytes of that header were read, or None if the
        connection ended first."""
        length = _fragment_size(self.header)
        if self.header[-1] & _LAST:
            self.last_context = self.header[-2]
        ahead = memoryview(self.header) if self.last_context is None else None
        got = 0
        while length:
            if self.head:  # only at the start of a run
                part = bytearray(min(self.head, length))
                if not _read_exactly(fd, memoryview(part), timeout):
                    return None
                self._write_cached(memoryview(part), self.offset - self.head)
                self.head -= len(part)
                length -= len(part)
                continue
            take = min(_CHUNK - self.fill, length)
            views = [self.buffers[self.index][self.fill:self.fill + take]]
            if take == length and ahead is not None:
                views.append(ahead)
            done = _readv(fd, views, timeout)
            if not done:
                return None
            got = max(done - take, 0)
            self.fill += done - got
            length -= done - got
            if self.fill == _CHUNK:
                self._submit(_CHUNK)
                self._wait(self.index)  # until the next buffer is free
        return got

    def _submit(self, size: int) -> None:
        """Write the first ``size`` bytes of the current buffer (a multiple of _ALIGN, but for
        the page cache) from a writer thread, and move on to the next buffer. After a failed
        write, the bytes are dropped."""
        view, offset = self.buffers[self.index][:size], self.offset
        if _error_of(self.target) is not None:
            write = None
        elif self.direct is None:
            write = _writers.submit(_pwrite, self.target.fileno(), view, offset)
        else:
            write = _writers.submit(_pwrite_direct, self.direct, self.target.fileno(), view, offset)
        self.writes[self.index] = write
        self.offset += size
        self.fill -= size
        self.index = (self.index + 1) % _BUFFERS
        if self.announce and write is not None:  # the first ``settled`` bytes are final once written
            self.announce, self.target.calcnode_announced = False, True
            name, settled = self.target.name, self.offset
            write.add_done_callback(lambda done: done.exception() is None and _started(name, settled))

    def _wait(self, index: int) -> None:
        """Wait for the write from buffer ``index``; a failure is kept on the file."""
        write, self.writes[index] = self.writes[index], None
        if write is not None:
            self._kept(write)

    def _write_cached(self, view: memoryview, offset: int) -> None:
        """Write through the page cache (the partial pages at a run's ends), unless a write failed."""
        if _error_of(self.target) is None:
            try:
                _pwrite(self.target.fileno(), view, offset)
            except OSError as exc:
                _failed(self.target, exc)

    def _kept(self, write: Future) -> None:
        try:
            write.result()
        except OSError as exc:
            _failed(self.target, exc)

    def close(self) -> None:
        """Write what is buffered, wait for every write, and leave the file positioned after it."""
        self.announce = False  # the whole data set is in: the handler reads its header itself
        try:
            rest = self.fill
            aligned = rest - rest % _ALIGN if self.direct is not None else rest
            if aligned:
                self._submit(aligned)
            if rest > aligned:  # the last partial page, through the page cache
                tail = self.buffers[self.index - 1 if aligned else self.index]
                self._write_cached(tail[aligned:rest], self.offset)
                self.offset += rest - aligned
        finally:
            done = [write for write in self.writes if write is not None]
            wait(done)  # even after a failure: no write may outlive its descriptor
            if self.direct is not None:
                os.close(self.direct)
            self.target.seek(self.offset)
        for write in done:
            self._kept(write)


def _buffers() -> list[memoryview]:
    """``_BUFFERS`` write buffers of ``_CHUNK`` bytes, on huge-page boundaries, in private memory
    the kernel may back with transparent huge pages. Page-aligned, as O_DIRECT needs; and an
    O_DIRECT write from a huge page is a few large segments instead of one per 4 KiB page, which
    the virtual disk here wrote 25-35 % faster (docs/benchmarks.md)."""
    size = _BUFFERS * _CHUNK
    memory = mmap.mmap(-1, size + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    skip = -ctypes.addressof(ctypes.c_char.from_buffer(memory)) % _HUGE_PAGE
    view = memoryview(memory)[skip:skip + size]
    return [view[start:start + _CHUNK] for start in range(0, size, _CHUNK)]


def _open_direct(path: str) -> int | None:
    """A descriptor of ``path`` opened for O_DIRECT writes; None where the filesystem refuses."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except (OSError, AttributeError):
        return None


def _readv(fd: int, views: list[memoryview], timeout: float | None) -> int:
    """Read into ``views`` in turn what has arrived, waiting up to ``timeout`` for the first
    byte; 0 if the connection ended or stayed silent that long. The socket is non-blocking (it
    has a timeout), so a read costs no poll unless nothing has arrived."""
    while True:
        try:
            return os.readv(fd, views)
        except BlockingIOError:
            try:
                if not select.select([fd], [], [], timeout)[0]:
                    return 0
            except (OSError, ValueError):
                return 0
        except OSError:
            return 0


def _read_exactly(fd: int, view: memoryview, timeout: float | None) -> bool:
    """Fill ``view``; False if the connection ended or a wait for more lasted ``timeout``."""
    while view:
        done = _readv(fd, [view], timeout)
        if not done:
            return False
        view = view[done:]
    return True


def _read_more(fd: int, timeout: float | None, data: bytearray, size: int) -> bool:
    """Append ``size`` more bytes to ``data``, a MiB at most at a time (a PDU length a peer
    claims is not allocated before its bytes arrive)."""
    while size > 0:
        part = bytearray(min(size, 1 << 20))
        if not _read_exactly(fd, memoryview(part), timeout):
            return False
        data += part
        size -= len(part)
    return True


def _pwrite(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _pwrite_direct(direct: int, cached: int, view: memoryview, offset: int) -> None:
    """An O_DIRECT write; through the page cache (``cached``) where the filesystem accepted
    O_DIRECT at open but refuses the write itself (EINVAL: it needs other alignments)."""
    try:
        _pwrite(direct, view, offset)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        _pwrite(cached, view, offset)


def _data_set_file(*args, **kwargs):
    """pynetdicom's chunked-receive file (its ``NamedTemporaryFile``), unbuffered (each write
    reaches the file, so a failure shows in the write), whose ``write`` does not raise: the
    first failure is kept (``_error_of``) and every later write dropped. A file that cannot be
    made at all (no inode left, ``incoming/`` gone) is an ``_Unmade`` one."""
    try:
        target = NamedTemporaryFile(*args, **{**kwargs, "buffering": 0})
    except OSError as exc:
        return _Unmade(exc)
    target.calcnode_write_error = None
    raw = target.file

    def write(data) -> int:
        if target.calcnode_write_error is None:
            view = memoryview(data).cast("B")
            try:
                while view:  # an unbuffered write may take part of it
                    view = view[raw.write(view):]
            except OSError as exc:
                _failed(target, exc)
        return len(data)

    target.write = write
    return target


class _Unmade:
    """Stands in for a data set file that could not be made: what pynetdicom writes to it is
    dropped, as after a failed write. Its name is a path in the same folder that nothing has."""

    closed = False

    def __init__(self, exc: OSError):
        self.calcnode_write_error = exc
        self.name = os.path.join(gettempdir(), f"calcnode-unmade-{uuid.uuid4().hex}.dcm")
        self.file = self  # pynetdicom flushes ``file`` after each write

    def write(self, data) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _failed(target, exc: OSError) -> None:
    if _error_of(target) is None:
        target.calcnode_write_error = exc


def _error_of(target) -> OSError | None:
    """The first write to a data set file that failed, or None."""
    return getattr(target, "calcnode_write_error", None)


def write_error(request) -> OSError | None:
    """The first write that failed to a C-STORE request's data set file, or None."""
    return _error_of(getattr(request, "_dataset_file", None))


def install(started: Callable[[str, int], None] | None = None) -> None:
    """Put the fast path in place. ``started(path, size)`` is called once per data set file that
    takes the fast path, when its first ``size`` bytes (a few MiB) are final; on a writer
    thread, so it must not block."""
    global _started
    _started = started
    dul.DULServiceProvider._read_pdu_data = _read_pdu_fast
    dimse_messages.NamedTemporaryFile = _data_set_file
