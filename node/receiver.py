"""The SCP: presentation contexts, AE policy, and the C-ECHO / C-STORE handlers.

Every storage SOP class a mammography study may contain is accepted, in every transfer syntax
of ../shared/spec/dicom-outputs.md section 1.2; images are analysed later, the rest (dose SRs,
other CAD SRs, presentation states, our own outputs sent back) is kept and never analysed,
because a refused context can make a modality fail the whole study. Other SOP classes are
refused per presentation context by pynetdicom and never stop the rest of the association.

Received datasets are never decoded here. pynetdicom's chunked receive writes each one to a
temp file in the spool's ``incoming/`` folder as it arrives; the handler reads the header only,
moves the file into the spool (durable, see spool.py) and answers Success only then. The
data set fragments in between reach that file by fastpath.py, and reactor.py shortens
pynetdicom's own work around each C-STORE (its polling, the response, the file's meta). A write
to that file that fails as the data set arrives (a full disk) is answered with a status (Out of
Resources for a full disk or quota), the file removed, and the association goes on.

A connection that never asks for an association is ended as soon as it closes (``_closed``),
and at once when the node stops: the private names a pynetdicom upgrade must re-check are
``assoc.requestor.primitive`` and ``dul.to_user_queue``.
"""

from __future__ import annotations

import errno
import logging
import socket
import sqlite3
import ssl
import time
import uuid
from pathlib import Path
from typing import Callable

import pynetdicom
from pydicom import uid as tsuid
from pydicom.dataset import Dataset
from pynetdicom import AE, evt, sop_class

from node import fastpath, images, reactor, security
from node.config import Config
from node.errors import SpoolError
from node.metrics import record_refused
from node.model import InstanceRecord, Role, View
from node.received import (
    OUT_OF_RESOURCES, PROCESSING_FAILURE, SUCCESS, EarlyHeaders, Rejected, failure, read_header,
    shown,
)
from node.reporting.uids import is_valid_uid
from node.spool import CONNECTION_CLOSED, Spool

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ result, source and diagnostic (PS3.8 9.3.4)
REJECTED_PERMANENT, SERVICE_USER, NO_REASON_GIVEN = 0x01, 0x01, 0x01

IMAGE_CLASSES = (
    sop_class.DigitalMammographyXRayImageStorageForPresentation,
    sop_class.DigitalMammographyXRayImageStorageForProcessing,
    sop_class.BreastTomosynthesisImageStorage,
    sop_class.BreastProjectionXRayImageStorageForPresentation,
    sop_class.BreastProjectionXRayImageStorageForProcessing,
    sop_class.DigitalXRayImageStorageForPresentation,
    sop_class.DigitalXRayImageStorageForProcessing,
    sop_class.ComputedRadiographyImageStorage,
)
KEPT_CLASSES = (
    sop_class.XRayRadiationDoseSRStorage,
    sop_class.MammographyCADSRStorage,
    sop_class.GrayscaleSoftcopyPresentationStateStorage,
    sop_class.KeyObjectSelectionDocumentStorage,
    sop_class.SecondaryCaptureImageStorage,
)
TRANSFER_SYNTAXES = (
    tsuid.ExplicitVRLittleEndian, tsuid.ImplicitVRLittleEndian,
    tsuid.DeflatedExplicitVRLittleEndian, tsuid.ExplicitVRBigEndian,
    tsuid.JPEGLosslessSV1, tsuid.JPEGLossless, tsuid.JPEGLSLossless, tsuid.JPEGLSNearLossless,
    tsuid.JPEG2000Lossless, tsuid.JPEG2000, tsuid.HTJ2KLossless, tsuid.HTJ2KLosslessRPCL,
    tsuid.HTJ2K, tsuid.RLELossless, tsuid.JPEGBaseline8Bit, tsuid.JPEGExtended12Bit,
)
# Headers of large data sets read while the rest arrives (fastpath's hook); one per process,
# as the fast path is.
EARLY_HEADERS = EarlyHeaders()


def build_ae(config: Config) -> AE:
    """The application entity with the node's contexts, AE policy, limits and timeouts."""
    listen = config.listen
    # pynetdicom's standard log handlers run on every PDU (about 210 per mammogram); our own
    # log has a line per association and per instance. Measured: about 8 % more images/s.
    pynetdicom._config.LOG_HANDLER_LEVEL = "none"
    fastpath.install(started=EARLY_HEADERS.start)
    reactor.install()
    # Received datasets go to a temp file as they arrive instead of being held in memory.
    pynetdicom._config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=listen.ae_title)
    ae.add_supported_context(sop_class.Verification)
    for abstract in IMAGE_CLASSES + KEPT_CLASSES:
        ae.add_supported_context(abstract, list(TRANSFER_SYNTAXES))
    ae.require_called_aet = True
    ae.require_calling_aet = list(listen.allowed_calling_ae_titles)
    ae.maximum_associations = listen.max_associations
    ae.maximum_pdu_size = listen.max_pdu_bytes
    ae.acse_timeout = listen.acse_timeout_s
    ae.dimse_timeout = listen.dimse_timeout_s
    ae.network_timeout = listen.network_timeout_s
    return ae


def handlers(spool: Spool, config: Config, clock: Callable[[], float],
             notify: Callable[[], None]) -> list:
    """The event handlers, with their collaborators bound (pynetdicom's handler-args form).

    ``notify`` is called after an instance was stored and after an association ended: both can
    make a study complete.
    """
    networks = security.allowed_networks(config.listen.allowed_hosts)
    return [
        (evt.EVT_CONN_OPEN, _tune_socket, [config.listen.network_timeout_s, spool, clock]),
        (evt.EVT_REQUESTED, _check_host, [networks]),
        (evt.EVT_REJECTED, _rejected, [spool, clock]),
        (evt.EVT_ACCEPTED, _opened, [spool, clock]),
        (evt.EVT_RELEASED, _closed, [spool, clock, notify, "released"]),
        (evt.EVT_ABORTED, _closed, [spool, clock, notify, "aborted"]),
        (evt.EVT_CONN_CLOSE, _closed, [spool, clock, notify, CONNECTION_CLOSED]),
        (evt.EVT_C_ECHO, _echo),
        (evt.EVT_C_STORE, handle_store, [spool, config, clock, notify]),
    ]


def _tune_socket(event, timeout_s: float, spool: Spool, clock) -> None:
    """TCP_NODELAY, because Nagle's algorithm delays the small PDUs of each C-STORE exchange;
    and a timeout on every receive, because pynetdicom's network timeout only runs between
    PDUs and an accepted socket is blocking: a peer that stalls in the middle of a PDU would
    otherwise hold its association (and its slot) for ever. Then, with TLS, the handshake.
    First, the association's reactors are set to wake when work arrives (reactor.watch)."""
    reactor.watch(event.assoc)
    try:
        sock = event.assoc.dul.socket.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout_s)
    except (AttributeError, OSError):
        return
    if isinstance(sock, ssl.SSLSocket):
        _handshake(event, sock, spool, clock)


def _handshake(event, sock: ssl.SSLSocket, spool: Spool, clock) -> None:
    """The TLS handshake, in this association's thread (see security._ServerContext). A
    caller that fails it (no certificate, one we do not trust, not speaking TLS) is logged,
    recorded and disconnected; it never gets to send an A-ASSOCIATE-RQ."""
    try:
        sock.do_handshake()
        return
    except OSError as exc:  # ssl.SSLError, a reset or a timeout
        why = security.describe(exc)
    host, port = event.address[:2]
    log.warning("refused a TLS connection from %s:%s: handshake failed (%s)", host, port, why)
    spool.association_refused(association_id(event.assoc), "", "", f"{host}:{port}", clock(),
                              f"rejected: TLS handshake failed ({why})")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    # no A-ASSOCIATE-RQ can come now: end at once rather than hold an association slot
    # for acse_timeout_s (pynetdicom's reactor waits that long for the request)
    event.assoc.acse_timeout = 0


def _check_host(event, networks) -> None:
    """Reject a caller whose address is not in ``listen.allowed_hosts``: rejected-permanent,
    service-user, "no-reason-given" (PS3.8 has no diagnostic for hosts), exactly the way
    pynetdicom rejects a calling AE title it does not know (acse._negotiate_as_acceptor)."""
    assoc = event.assoc
    if security.host_allowed(assoc.requestor.address, networks):
        return
    assoc.calcnode_refusal = "host not in listen.allowed_hosts"
    assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, NO_REASON_GIVEN)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _rejected(event, spool: Spool, clock) -> None:
    """Every association we reject (host, calling or called AE title, too many associations):
    a log line and its audit record."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    why = getattr(assoc, "calcnode_refusal", "") or assoc.acceptor.primitive.reason_str
    address = f"{assoc.requestor.address}:{assoc.requestor.port}"
    calling, called = request.calling_ae_title, request.called_ae_title
    spool.association_refused(association_id(assoc), calling, called, address, clock(),
                              f"rejected: {why}")
    log.warning("rejected association %s from %s at %s (called %s): %s",
                association_id(assoc), calling, address, called, why)


def association_id(assoc) -> str:
    if not hasattr(assoc, "calcnode_id"):
        assoc.calcnode_id = uuid.uuid4().hex
    return assoc.calcnode_id


def _opened(event, spool: Spool, clock) -> None:
    assoc = event.assoc
    requestor = assoc.requestor
    address = f"{requestor.address}:{requestor.port}"
    spool.association_opened(association_id(assoc), requestor.ae_title,
                             assoc.acceptor.ae_title, address, clock())
    log.info("association %s opened by %s from %s", association_id(assoc), requestor.ae_title, address)


def _closed(event, spool: Spool, clock, notify, outcome: str) -> None:
    if outcome == CONNECTION_CLOSED and _awaiting_request(event.assoc):
        # A connection closed before its A-ASSOCIATE-RQ (a port probe, a TCP health check):
        # pynetdicom would wait for the request for the whole ACSE timeout, holding one of the
        # max_associations slots (refusing senders when probes come often) and making a
        # stopping node wait. The wait returns what it returns when it times out: nothing.
        event.assoc.dul.to_user_queue.put(None)
        return
    if outcome != "released":
        _drop_partial(event.assoc)
    if hasattr(event.assoc, "calcnode_id"):
        spool.association_closed(event.assoc.calcnode_id, outcome, clock())
        if outcome != CONNECTION_CLOSED:
            log.info("association %s %s", event.assoc.calcnode_id, outcome)
        notify()


def _awaiting_request(assoc) -> bool:
    """An accepted connection whose A-ASSOCIATE-RQ has not been taken yet (state Sta2)."""
    return (assoc.is_acceptor and assoc.requestor.primitive is None and not assoc.is_established
            and not assoc.is_rejected and not assoc.is_aborted and not assoc.is_released)


def _hang_up(assoc) -> None:
    """Close a connection that never asked for an association, as if its peer had: pynetdicom
    then ends it (an A-ABORT is not a thing that state can send)."""
    try:
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError):
        pass


def _drop_partial(assoc) -> None:
    """Remove the file of a data set cut short by an abort or a lost connection: pynetdicom
    leaves its chunked-receive file behind (it was never acknowledged, so nothing is lost)."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    target = getattr(message, "_data_set_file", None)
    if target is None:
        return
    try:
        target.close()
        Path(target.name).unlink(missing_ok=True)
    except OSError:
        pass


def _echo(event) -> int:
    return SUCCESS


def handle_store(event, spool: Spool, config: Config, clock, notify) -> int | Dataset:
    """Keep one received instance durably, then answer; every failure has a named status and
    says why in its Error Comment."""
    assoc = event.assoc
    path = Path(event.dataset_path)
    try:
        early = EARLY_HEADERS.take(path)
        failed = fastpath.write_error(event.request)
        if failed is not None:  # the data set could not be written as it arrived (disk full)
            raise failed
        header = read_header(path, str(event.request.AffectedSOPClassUID),
                             str(event.request.AffectedSOPInstanceUID), early)
        size = path.stat().st_size
        if spool.free_mb() < config.storage.min_free_mb:  # the file's bytes already count: in incoming/
            raise Rejected(OUT_OF_RESOURCES, f"less than {config.storage.min_free_mb} MB free")
        record = spool.adopt(path, record_from_header(header, size, clock(), assoc.requestor.ae_title,
                                                      association_id(assoc)))
    except Rejected as exc:
        log.warning("refused instance %s from %s: status 0x%04X %s",
                    _request_uid(event), assoc.requestor.ae_title, exc.status, exc)
        record_refused(spool, str(event.request.AffectedSOPClassUID), exc.status)
        return failure(exc.status, str(exc))
    except (SpoolError, OSError, sqlite3.Error) as exc:
        log.error("could not keep instance %s: %s", _request_uid(event), exc)
        full = _disk_full(exc)
        status = OUT_OF_RESOURCES if full else PROCESSING_FAILURE
        record_refused(spool, str(event.request.AffectedSOPClassUID), status)
        # the reason stays in the node's log: it names paths of this machine
        return failure(status, "disk full" if full else "the instance could not be kept")
    kind = "image" if record.role is Role.IMAGE else "kept, not analysed"
    log.info("stored study=%s sop=%s class=%s from=%s bytes=%d (%s)", record.study_instance_uid,
             record.sop_instance_uid, record.sop_class_uid, record.calling_ae, size, kind)
    notify()
    return SUCCESS


def record_from_header(header, size: int, received_at: float, calling_ae: str,
                       association: str, path: str = "") -> InstanceRecord:
    """The spool record of an instance, from its header (read_header's, or repair.py's)."""
    sop_class_uid = str(header.SOPClassUID)
    role = Role.IMAGE if sop_class_uid in IMAGE_CLASSES else Role.KEPT
    side = images.laterality(header)
    view = images.view(header)
    return InstanceRecord(
        sop_instance_uid=str(header.SOPInstanceUID), sop_class_uid=sop_class_uid,
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=str(header.SeriesInstanceUID), path=path, size_bytes=size,
        received_at=received_at, calling_ae=calling_ae, association_id=association, role=role,
        laterality=side.value if side else "", view=view.value if view is not View.OTHER else "")


def _request_uid(event) -> str:
    """The request's SOP Instance UID for a log line; quoted when it is not a valid UID."""
    uid = str(event.request.AffectedSOPInstanceUID)
    return uid if is_valid_uid(uid) else shown(uid)


def _disk_full(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Receiver:
    """The running SCP. ``start`` listens; ``stop`` stops accepting, lets open associations
    finish for ``listen.shutdown_grace_s``, then aborts what is left."""

    def __init__(self, config: Config, spool: Spool, clock: Callable[[], float] = time.time,
                 notify: Callable[[], None] = lambda: None):
        self.config = config
        self.ae = build_ae(config)
        self._handlers = handlers(spool, config, clock, notify)  # checks listen.allowed_hosts
        listen_tls = config.listen.tls
        self.ssl_context = security.server_context(listen_tls) if listen_tls.enabled else None
        self.server = None

    def start(self) -> tuple[str, int]:
        listen = self.config.listen
        self.server = self.ae.start_server((listen.host, listen.port), block=False,
                                           evt_handlers=self._handlers,
                                           ssl_context=self.ssl_context)
        if self.ssl_context is not None:
            log.info("DICOM TLS on; client certificates %s", "required"
                     if listen.tls.require_client_certificate else "not required")
        return self.server.server_address[:2]

    def stop(self, clock: Callable[[], float] = time.monotonic) -> int:
        """Returns how many associations had to be aborted."""
        if self.server is None:
            return 0
        server, self.server = self.server, None
        server.shutdown()
        for assoc in server.active_associations:
            if _awaiting_request(assoc):  # nothing in flight: no grace
                _hang_up(assoc)
        deadline = clock() + self.config.listen.shutdown_grace_s
        while server.active_associations and clock() < deadline:
            time.sleep(0.05)
        leftover = server.active_associations
        for assoc in leftover:
            if not _awaiting_request(assoc):  # those were hung up above
                assoc.abort()
        for assoc in leftover:
            assoc.join(timeout=5)
        return len(leftover)
