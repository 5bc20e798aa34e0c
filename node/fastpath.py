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
TLS connection (no MSG_PEEK there), takes pynetdicom's path unchanged.

The fragments go from the socket into page-aligned buffers, and from there to the file with
O_DIRECT, by a writer thread while the next buffer fills. Through the page cache, ext4 spent
more CPU per byte than the copy itself (a page, buffer heads and a delayed-allocation
reservation per 4 KiB, then the writeback and freeing of each page), on the same thread that
reads the socket, while the peer waits: see docs/benchmarks.md. Where O_DIRECT is not available
(a filesystem may refuse it) the same buffers are written through the page cache.

``install`` puts it in place of ``DULServiceProvider._read_pdu_data`` (pynetdicom 3.0); it falls
back to the original for every PDU it does not handle. A pynetdicom upgrade must re-check the
private names read here (``_recv_pdu``, ``_decode_pdu``, ``dimse.message._data_set_file``,
``state_machine.current_state``); the tests comparing received with sent bytes guard it.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import socket
import ssl
import struct
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable

from pynetdicom import dul, evt

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
    if target is None or target.closed:
        return None
    if provider.assoc.get_handlers(evt.EVT_PDU_RECV) or provider.assoc.get_handlers(evt.EVT_DATA_RECV):
        return None  # someone wants to see every PDU
    return target


def _read_pdu_fast(provider) -> None:
    """pynetdicom's ``_read_pdu_data``, except that data set fragments go straight to the file.

    While such fragments keep arriving (the peer is mid data set), they are read here in a loop:
    returning to pynetdicom's reactor with no event queued would make it sleep 1 ms per PDU.
    Every byte read is in the file, and the file positioned after it, before this returns.
    """
    target = _fragment_file(provider)
    sock = provider.socket.socket if target is not None else None
    length = _fragment_length(sock) if sock is not None else None
    if length is None:
        return _read_pdu_data(provider)
    run = _Run(provider, target)
    try:
        # Nothing else runs on this thread meanwhile, so the checks of _fragment_file still
        # hold, until a PDU is cut short (then pynetdicom takes over with Evt17 queued).
        while length is not None:
            if provider._kill_thread:
                return
            if not run.receive(sock, length):
                provider.event_queue.put("Evt17")  # transport closed mid-PDU
                return
            if run.last_context is not None:
                break
            length = _fragment_length(sock, wait=False)
            if length is None:
                if not select.select([sock], [], [], _WAIT_FOR_MORE_S)[0]:
                    return  # the peer paused: back to pynetdicom's reactor
                length = _fragment_length(sock)
    finally:
        run.close()
    if run.last_context is not None:
        _complete(provider, run.last_context)
    else:  # another kind of PDU is waiting: read it now, as pynetdicom's reactor would only
        _read_pdu_data(provider)  # after a sleep (it sleeps when a read queued no event)


def _complete(provider, context_id: int) -> None:
    """The data set's last fragment is in the file: queue for pynetdicom an empty last fragment
    in its place, as its reactor queues a PDU it read, to complete the message the usual way."""
    empty = struct.pack(">BBLLBB", _P_DATA_TF, 0, 6, 2, context_id, _LAST)
    pdu, event = provider._decode_pdu(empty)
    provider.event_queue.put(event)
    provider._recv_pdu.put(pdu)


def _fragment_length(sock, wait: bool = True) -> int | None:
    """The fragment length of the next PDU if it is a lone data set fragment; None if it is not
    or (``wait`` False) its header has not fully arrived. Nothing is consumed."""
    try:
        # A socket with a timeout polls before every recv, for up to that timeout, whatever
        # the flags: MSG_DONTWAIT alone would wait for the next PDU instead of returning.
        if not wait and not select.select([sock], [], [], 0)[0]:
            return None
        head = sock.recv(_HEADER_BYTES, socket.MSG_PEEK | (0 if wait else socket.MSG_DONTWAIT))
    except (OSError, ValueError):
        return None
    if len(head) < _HEADER_BYTES:
        return None
    pdu_type, _, pdu_length, pdv_length, _, control = struct.unpack(">BBLLBB", head)
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

    def receive(self, sock, length: int) -> bool:
        """Read one PDU (its header was peeked) and keep its fragment; False if the connection
        ended first."""
        if not _recv_exactly(sock, memoryview(self.header)):
            return False
        if self.header[-1] & _LAST:
            self.last_context = self.header[-2]
        while length:
            if self.head:  # only at the start of a run
                part = bytearray(min(self.head, length))
                if not _recv_exactly(sock, memoryview(part)):
                    return False
                _pwrite(self.target.fileno(), memoryview(part), self.offset - self.head)
                self.head -= len(part)
                length -= len(part)
                continue
            take = min(_CHUNK - self.fill, length)
            if not _recv_exactly(sock, self.buffers[self.index][self.fill:self.fill + take]):
                return False
            self.fill += take
            length -= take
            if self.fill == _CHUNK:
                self._submit(_CHUNK)
                self._wait(self.index)  # until the next buffer is free
        return True

    def _submit(self, size: int) -> None:
        """Write the first ``size`` bytes of the current buffer (a multiple of _ALIGN, but for
        the page cache) from a writer thread, and move on to the next buffer."""
        view, offset = self.buffers[self.index][:size], self.offset
        if self.direct is None:
            write = _writers.submit(_pwrite, self.target.fileno(), view, offset)
        else:
            write = _writers.submit(_pwrite_direct, self.direct, self.target.fileno(), view, offset)
        self.writes[self.index] = write
        self.offset += size
        self.fill -= size
        self.index = (self.index + 1) % _BUFFERS
        if self.announce:  # the file's first ``settled`` bytes are final once this write is done
            self.announce, self.target.calcnode_announced = False, True
            name, settled = self.target.name, self.offset
            write.add_done_callback(lambda done: done.exception() is None and _started(name, settled))

    def _wait(self, index: int) -> None:
        """Wait for the write from buffer ``index``; raise what it raised, as the target's own
        write would have."""
        write, self.writes[index] = self.writes[index], None
        if write is not None:
            write.result()

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
                _pwrite(self.target.fileno(), tail[aligned:rest], self.offset)
                self.offset += rest - aligned
        finally:
            done = [write for write in self.writes if write is not None]
            wait(done)  # even after a failure: no write may outlive its descriptor
            if self.direct is not None:
                os.close(self.direct)
            self.target.seek(self.offset)
        for write in done:
            write.result()


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


def _recv_exactly(sock, view: memoryview) -> bool:
    received, size = 0, len(view)
    try:
        while received < size:
            got = sock.recv_into(view[received:])
            if not got:
                return False
            received += got
    except OSError:
        return False
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


def install(started: Callable[[str, int], None] | None = None) -> None:
    """Put the fast path in place. ``started(path, size)`` is called once per data set file that
    takes the fast path, when its first ``size`` bytes (a few MiB) are final; on a writer
    thread, so it must not block."""
    global _started
    _started = started
    dul.DULServiceProvider._read_pdu_data = _read_pdu_fast
