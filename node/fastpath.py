"""The receive fast path: data set fragments written straight to the chunked-receive file.

pynetdicom passes every P-DATA-TF PDU through its state machine (event queues, PDU objects, a
primitive, the DIMSE decoder) before the data set fragment reaches the chunked-receive file.
About 210 PDUs make one 27 MB mammogram at a 128 KiB PDU, and that per-PDU Python work was
what limited the receive rate, not the network or the disk. For the one case that carries
nearly all the bytes - a PDU holding a single PDV with a data set fragment that is not the
last, while a C-STORE data set is being written to its file and nothing else is queued - the
fragment is written straight to that file, exactly as pynetdicom's own decoder would (state
Sta6 stays Sta6 for P-DATA). Every other PDU, and any TLS connection (no MSG_PEEK there), takes
pynetdicom's path unchanged.

``install`` puts it in place of ``DULServiceProvider._read_pdu_data`` (pynetdicom 3.0); it falls
back to the original for every PDU it does not handle. A pynetdicom upgrade must re-check the
private names read here (``_recv_pdu``, ``dimse.message._data_set_file``,
``state_machine.current_state``); the tests comparing received with sent bytes guard it.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct

from pynetdicom import dul, evt

_PEEK_BYTES = 12  # PDU type, reserved, PDU length; PDV item length, context ID, control header
_P_DATA_TF = 0x04
_WAIT_FOR_MORE_S = 0.01  # how long to wait for the next fragment before handing back to pynetdicom
_WRITEBACK_BYTES = 4 << 20  # start writing the file to disk every 4 MiB received
_read_pdu_data = dul.DULServiceProvider._read_pdu_data


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
    """
    target = _fragment_file(provider)
    if target is None or not _write_fragment(provider, target):
        return _read_pdu_data(provider)
    sock = provider.socket.socket
    # Nothing else runs on this thread meanwhile, so the checks of _fragment_file still hold,
    # until _write_fragment queues an event (a PDU cut short): then pynetdicom takes over.
    while not provider._kill_thread and provider.event_queue.empty():
        if _write_fragment(provider, target, wait=False):
            continue
        ready, _, _ = select.select([sock], [], [], _WAIT_FOR_MORE_S)
        if not ready or not _write_fragment(provider, target):
            return


def _write_fragment(provider, target, wait: bool = True) -> bool:
    """Read one PDU and write it to ``target`` if it is a lone, non-final data set fragment;
    False if it is not or (``wait`` False) its header has not fully arrived: nothing is read
    then. A transport failure mid-PDU queues Evt17 as pynetdicom would."""
    sock = provider.socket.socket
    try:
        head = sock.recv(_PEEK_BYTES, socket.MSG_PEEK | (0 if wait else socket.MSG_DONTWAIT))
    except (OSError, ValueError):
        return False
    if len(head) < _PEEK_BYTES:
        return False
    pdu_type, _, pdu_length, pdv_length, _, control = struct.unpack(">BBLLBB", head)
    if pdu_type != _P_DATA_TF or pdv_length + 4 != pdu_length or control & 0x03:
        return False
    size = 6 + pdu_length
    buffer = getattr(provider, "calcnode_buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = provider.calcnode_buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    try:
        while received < size:
            got = sock.recv_into(view[received:size])
            if not got:
                break
            received += got
    except OSError:
        pass
    if received < size:
        provider.event_queue.put("Evt17")  # transport closed mid-PDU
        return True
    target.write(view[_PEEK_BYTES:size])
    _start_writeback(target)
    return True


def _start_writeback(target) -> None:
    """Every ``_WRITEBACK_BYTES``, start writing what arrived since to disk, so that the fsync
    before Success waits for the tail only (Linux starts asynchronous writeback of a range on
    POSIX_FADV_DONTNEED), and drop the range before it from the page cache: it was written
    back meanwhile. The page cache then stays a few MiB per association and its pages are
    reused, instead of growing by every byte received (new pages cost far more to write into
    on this kind of virtual machine; see docs/benchmarks.md). The first MiB stays cached: the
    handler reads the header from it."""
    end = target.tell()
    started = max(getattr(target, "calcnode_started", 0), 1 << 20)
    if end - started >= _WRITEBACK_BYTES:
        target.flush()
        fd = target.fileno()
        os.posix_fadvise(fd, started, end - started, os.POSIX_FADV_DONTNEED)
        dropped = max(getattr(target, "calcnode_dropped", 0), 1 << 20)
        if started > dropped:
            os.posix_fadvise(fd, dropped, started - dropped, os.POSIX_FADV_DONTNEED)
        target.calcnode_dropped = started
        target.calcnode_started = end


def install() -> None:
    dul.DULServiceProvider._read_pdu_data = _read_pdu_fast
