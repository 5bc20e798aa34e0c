"""pynetdicom's work around each C-STORE of an accepted association, made shorter.

Between the last fragment of one data set and the first of the next, the peer waits for us:
our answer, then its next command. Three costs of pynetdicom 3.0 lay on that path (measured in
docs/benchmarks.md), and this module takes them off; the data set fragments themselves are
fastpath.py's.

Wake-ups: an accepted association runs two loops that sleep a millisecond whenever they find
nothing to do, the association's (it runs the C-STORE handler once the DUL has assembled a
message) and the DUL's (it sends what the association queued, such as the C-STORE response,
and reads the socket). Each such sleep lasts 1.1-1.2 ms here, and several lie on the path of
every C-STORE. ``watch`` makes the queues these loops read set a ``Wake`` when an item is put,
and ``install`` gives pynetdicom's ``dul`` and ``association`` modules a copy of ``time`` whose
millisecond sleep, in a watched thread, ends as soon as its ``Wake`` is set or (the DUL) its
socket has data. Otherwise the DUL's ends after the same millisecond, and the association's
after 10 ms: everything it acts on (a message, the peer's release or abort) comes through the
queues that wake it, and the rest it checks (its kill flag, the DUL's end, the network timeout)
can wait that long, as pynetdicom's own ``kill`` polls every 10 ms; waking a thousand times a
second cost 3.3 ms of CPU per image (docs/benchmarks.md, session 9). Other threads (our own
requestor associations too) and longer sleeps sleep as before.

The C-STORE response: pynetdicom builds a pydicom data set from the response primitive and
encodes it, about 1 ms of Python per image. ``send_msg`` writes the same bytes directly (the
command set of PS3.7 9.3.1.2, implicit VR little endian) for a C-STORE response that carries
only a status, and leaves every other message to pynetdicom.

The chunked file's meta: for each C-STORE request pynetdicom writes File Meta Information at
the head of the file the data set will go to, through a pydicom data set and pydicom's writer,
about 0.5 ms. ``create_file_meta`` and ``write_file_meta_info``, as pynetdicom's message decoder
sees them, write the same bytes directly (PS3.10 7.1, explicit VR little endian).

The tests compare both encodings byte for byte with pynetdicom's and pydicom's own. Private
names a pynetdicom upgrade must re-check: the modules' ``time``; ``dimse.msg_queue``,
``dul.to_provider_queue``, ``dul.to_user_queue``, ``dul.socket``, and that the association and
its DUL are the threads running the two loops; ``DIMSEServiceProvider.send_msg`` and
``dimse_messages``' imported names ``create_file_meta`` and ``write_file_meta_info``.
"""

from __future__ import annotations

import os
import queue
import select
import struct
import threading
import time
import types
import weakref

from pydicom.charset import default_encoding
from pydicom.filewriter import write_file_meta_info as _pydicom_write_file_meta_info
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, association, dimse,
    dimse_messages, dul, evt)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_POLL_S = 0.001  # pynetdicom's reactors' sleep (3.0); longer sleeps are left alone
_IDLE_S = 0.01  # the association's loop, with nothing to do: pynetdicom's kill() polls as often
_LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment (PS3.8 E.2)
_C_STORE_RSP, _NO_DATA_SET = 0x8001, 0x0101
_send_msg = dimse.DIMSEServiceProvider.send_msg


class Wake(threading.Event):
    """An event that, where Linux has eventfd, also makes ``fd`` readable while set."""

    def __init__(self):
        super().__init__()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if hasattr(os, "eventfd") else None
        if self.fd is not None:
            weakref.finalize(self, os.close, self.fd)

    def set(self) -> None:
        super().set()
        if self.fd is not None:
            os.eventfd_write(self.fd, 1)

    def clear(self) -> None:
        super().clear()
        if self.fd is not None:
            try:
                os.eventfd_read(self.fd)
            except BlockingIOError:
                pass


def sleep(seconds: float) -> None:
    """``time.sleep``, but a watched reactor's poll ends when work arrives for it."""
    thread = threading.current_thread()
    wake = getattr(thread, "calcnode_wake", None)
    if wake is None or seconds > _POLL_S:
        time.sleep(seconds)
        return
    sock = getattr(thread.socket, "socket", None) if isinstance(thread, dul.DULServiceProvider) else None
    if wake.fd is not None and sock is not None:
        try:
            select.select([sock, wake.fd], [], [], seconds)
        except (OSError, ValueError):  # the socket closed meanwhile
            wake.wait(seconds)
    else:  # the association's loop: its work all comes through a watched queue
        wake.wait(_IDLE_S if sock is None and seconds == _POLL_S else seconds)
    wake.clear()  # before the loop looks at its queues: a later put sets it again


def _wake_on_put(items: queue.Queue, wake: Wake) -> None:
    put = items.put

    def put_and_wake(item, block=True, timeout=None):
        put(item, block, timeout)
        wake.set()

    items.put = put_and_wake  # put_nowait calls self.put: it wakes too


def watch(assoc) -> None:
    """Prepare an accepted association, before its threads start."""
    assoc.calcnode_wake = Wake()
    _wake_on_put(assoc.dimse.msg_queue, assoc.calcnode_wake)
    _wake_on_put(assoc.dul.to_user_queue, assoc.calcnode_wake)
    assoc.dul.calcnode_wake = Wake()
    _wake_on_put(assoc.dul.to_provider_queue, assoc.dul.calcnode_wake)


def _implicit(element: int, value: bytes) -> bytes:
    """A command element (group 0000), implicit VR little endian."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    """A file meta element (group 0002), explicit VR little endian."""
    if vr in (b"OB", b"UN"):  # 2 reserved bytes and a 4-byte length
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    """A UI value as pydicom writes it: in its default encoding, the one it read the request's
    UIDs with (a peer may send bytes no UID has; they must not stop the association here)."""
    raw = str(uid).encode(default_encoding)
    return raw + b"\0" * (len(raw) % 2)  # UI pads with a NUL (PS3.5 6.2)


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def store_response(message_id: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    """The command set of a C-STORE response carrying only a status (PS3.7 table 9.3-2)."""
    body = b"".join((
        _implicit(0x0002, _ui(sop_class)),  # Affected SOP Class UID
        _implicit(0x0100, _us(_C_STORE_RSP)),  # Command Field
        _implicit(0x0120, _us(message_id)),  # Message ID Being Responded To
        _implicit(0x0800, _us(_NO_DATA_SET)),  # Command Data Set Type
        _implicit(0x0900, _us(status)),  # Status
        _implicit(0x1000, _ui(sop_instance)),  # Affected SOP Instance UID
    ))
    return _implicit(0x0000, struct.pack("<I", len(body))) + body  # Command Group Length first


def send_msg(provider, primitive, context_id: int) -> None:
    """pynetdicom's ``DIMSEServiceProvider.send_msg``, with a C-STORE response that carries only
    a status encoded here: the same bytes, in one P-DATA, without a pydicom data set."""
    if (type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None
            or not isinstance(primitive.Status, int) or primitive.ErrorComment is not None
            or primitive.OffendingElement is not None
            or provider.assoc.get_handlers(evt.EVT_DIMSE_SENT)):  # someone wants the message
        _send_msg(provider, primitive, context_id)
        return
    command = store_response(primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID,
                             primitive.AffectedSOPInstanceUID, primitive.Status)
    if provider.maximum_pdu_size and len(command) + 6 > provider.maximum_pdu_size:
        _send_msg(provider, primitive, context_id)  # the peer takes only smaller PDUs: fragment it
        return
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
    provider.dul.send_pdu(pdata)


class FileMeta(bytes):
    """File Meta Information, encoded (``create_file_meta``'s answer)."""


def create_file_meta(*, sop_class_uid, sop_instance_uid, transfer_syntax) -> FileMeta:
    """What pynetdicom's ``dsutils.create_file_meta`` makes, written as pydicom writes it."""
    name = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join((
        _explicit(0x0001, b"OB", b"\x00\x01"),  # File Meta Information Version
        _explicit(0x0002, b"UI", _ui(sop_class_uid)),  # Media Storage SOP Class UID
        _explicit(0x0003, b"UI", _ui(sop_instance_uid)),  # Media Storage SOP Instance UID
        _explicit(0x0010, b"UI", _ui(transfer_syntax)),  # Transfer Syntax UID
        _explicit(0x0012, b"UI", _ui(PYNETDICOM_IMPLEMENTATION_UID)),  # Implementation Class UID
        _explicit(0x0013, b"SH", name + b" " * (len(name) % 2)),  # Implementation Version Name
    ))
    return FileMeta(_explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body)


def write_file_meta_info(fp, file_meta, *args, **kwargs) -> None:
    """pydicom's ``write_file_meta_info``; File Meta already encoded is written as it is."""
    if isinstance(file_meta, FileMeta):
        fp.write(file_meta)
        return
    _pydicom_write_file_meta_info(fp, file_meta, *args, **kwargs)


def install() -> None:
    """Put the wake-ups, the C-STORE response and the file meta writer in place."""
    clock = types.ModuleType("time")
    clock.__dict__.update({name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    clock.sleep = sleep
    dul.time = association.time = clock
    dimse.DIMSEServiceProvider.send_msg = send_msg
    dimse_messages.create_file_meta = create_file_meta
    dimse_messages.write_file_meta_info = write_file_meta_info
