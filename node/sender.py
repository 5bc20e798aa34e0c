"""The SCU: associate with a destination, C-STORE files, and classify every response.

Every C-STORE response is read: an empty response (timeout, abort) is a transient failure, never a
success. Statuses are classified with ``pynetdicom.status.code_to_category``: Success and Warning
mean the peer has the object; 0xA7xx (out of resources) is transient; every other failure is
permanent for that object. An association that cannot be made (refused connection, timeout,
rejected-transient) fails every file transiently; rejected-permanent (e.g. our AE title is
unknown there) fails them permanently, since retrying changes nothing until someone fixes the
configuration (``calcnode retry`` re-queues them then). So does a TLS failure other than a
dropped connection (a certificate not trusted, ours refused, a peer not speaking TLS): what is
verified is in ``security``.
"""

from __future__ import annotations

import logging
import socket
from typing import Iterator, Sequence

import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, sop_class
from pynetdicom.status import STATUS_FAILURE, STATUS_SUCCESS, STATUS_WARNING, code_to_category

from node import images, security
from node.config import DestinationConfig
from node.errors import ConfigError
from node.model import OutboxJob, StoreOutcome, StoreResult

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _ae(calling_ae: str, timeout_s: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout_s
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    return ae


def _associate(ae: AE, dest: DestinationConfig):
    context = None
    if dest.tls.enabled:
        try:
            context = security.client_context(dest.tls)
        except ConfigError as exc:
            return None, StoreResult(StoreOutcome.PERMANENT, None, str(exc))
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, max_pdu=dest.max_pdu_bytes,
                         tls_args=(context, dest.host) if context else None)
    if assoc.is_established:
        try:  # the C-STORE exchange is request/response; Nagle only adds delay
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass
        return assoc, None
    if assoc.is_rejected:
        outcome = (StoreOutcome.PERMANENT if assoc.acceptor.primitive and
                   assoc.acceptor.primitive.result == 0x01 else StoreOutcome.TRANSIENT)
        reason = getattr(assoc.acceptor.primitive, "reason_str", "") if assoc.acceptor.primitive else ""
        return None, StoreResult(outcome, None, f"association rejected ({reason or 'no reason'})")
    if context is not None and context.tls_error is not None:
        error = context.tls_error
        outcome = (StoreOutcome.PERMANENT if security.is_configuration_problem(error)
                   else StoreOutcome.TRANSIENT)
        return None, StoreResult(outcome, None, f"TLS with {dest.ae_title}@{dest.host}:{dest.port}"
                                 f" failed: {security.describe(error)}")
    return None, StoreResult(StoreOutcome.TRANSIENT, None,
                             f"no association with {dest.ae_title}@{dest.host}:{dest.port}"
                             " (refused, timed out or aborted)")


def send_files(dest: DestinationConfig, jobs: Sequence[OutboxJob], calling_ae: str) -> Iterator[StoreResult]:
    """C-STORE each job's file in one association, yielding one result per job in order as its
    response arrives: the dispatcher records each before the next is sent, so a crash mid
    association resends at most the object in flight. The association is released when the
    iteration ends."""
    ae = _ae(calling_ae, dest.timeout_s)
    syntaxes: dict[str, list[str]] = {}
    metas = []
    for job in jobs:
        try:
            meta = read_file_meta_info(job.path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            metas.append(exc)
            continue
        metas.append(meta)
        wanted = syntaxes.setdefault(job.sop_class_uid, [])
        for ts in (str(meta.TransferSyntaxUID), *UNCOMPRESSED):
            if ts not in wanted:
                wanted.append(ts)
    if not syntaxes:
        yield from (_unreadable(m) for m in metas)
        return
    for abstract, transfer in syntaxes.items():
        ae.add_requested_context(abstract, transfer)
    assoc, failure = _associate(ae, dest)
    if assoc is None:
        yield from (_unreadable(m) if isinstance(m, Exception) else failure for m in metas)
        return
    try:
        for job, meta in zip(jobs, metas):
            yield _unreadable(meta) if isinstance(meta, Exception) else _store(assoc, job, meta)
    finally:
        if assoc.is_established:
            assoc.release()


def _unreadable(exc: Exception) -> StoreResult:
    return StoreResult(StoreOutcome.PERMANENT, None, f"output file unreadable: {exc}")


def _store(assoc, job: OutboxJob, meta) -> StoreResult:
    if not assoc.is_established:
        return StoreResult(StoreOutcome.TRANSIENT, None, "association ended before this object")
    accepted = [cx.transfer_syntax[0] for cx in assoc.accepted_contexts
                if cx.abstract_syntax == job.sop_class_uid]
    if not accepted:
        name = getattr(sop_class.uid_to_sop_class(job.sop_class_uid), "__name__", job.sop_class_uid)
        return StoreResult(StoreOutcome.PERMANENT, None, f"destination does not accept {name}")
    dataset = job.path
    if str(meta.TransferSyntaxUID) not in accepted:
        # the peer took another syntax for this SOP class: hand pynetdicom a dataset it can
        # re-encode (Explicit -> Implicit VR), decoded first when compressed; lossless, so it is
        # the same instance and keeps its UID. The decoder is the fastest one (images.py): this
        # runs in the serving process, and pydicom's default for JPEG-LS took 3.3 s per overlay
        # where pyjpegls takes 0.55
        try:
            dataset = pydicom.dcmread(job.path)
            syntax = dataset.file_meta.TransferSyntaxUID
            if syntax.is_compressed:
                dataset.decompress(generate_instance_uid=False,
                                   decoding_plugin=images.decoding_plugin(syntax))
        except (OSError, ValueError, AttributeError, RuntimeError,
                pydicom.errors.InvalidDicomError) as exc:
            return StoreResult(StoreOutcome.PERMANENT, None, f"cannot convert for this destination: {exc}")
    try:
        status = assoc.send_c_store(dataset)
    except (OSError, ValueError, AttributeError, RuntimeError) as exc:
        return StoreResult(StoreOutcome.TRANSIENT, None, f"C-STORE failed: {exc}")
    return classify(status)


def classify(status) -> StoreResult:
    """A C-STORE response dataset (possibly empty) as a StoreResult."""
    code = getattr(status, "Status", None) if status is not None else None
    if code is None:
        return StoreResult(StoreOutcome.TRANSIENT, None, "no response (timeout or abort)")
    category = code_to_category(code)
    if category in (STATUS_SUCCESS, STATUS_WARNING):
        note = "" if category == STATUS_SUCCESS else f"warning status 0x{code:04X}"
        return StoreResult(StoreOutcome.SUCCESS, code, note)
    comment = str(status.get("ErrorComment", "")).strip()
    detail = f"status 0x{code:04X} ({category}{': ' + comment if comment else ''})"
    if category == STATUS_FAILURE and 0xA700 <= code <= 0xA7FF:
        return StoreResult(StoreOutcome.TRANSIENT, code, detail)
    return StoreResult(StoreOutcome.PERMANENT, code, detail)


def echo(ae_title: str, host: str, port: int, calling_ae: str = "CALCNODE",
         timeout_s: float = 10.0) -> tuple[int | None, str]:
    """C-ECHO; returns (status, description). Status None when no association was made."""
    ae = _ae(calling_ae, timeout_s)
    ae.add_requested_context(sop_class.Verification)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        return None, "association rejected" if assoc.is_rejected else "no association (refused or timed out)"
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = getattr(status, "Status", None)
    return code, "no response" if code is None else code_to_category(code)


def send_paths(dest: DestinationConfig, paths: Sequence[str], calling_ae: str) -> list[StoreResult]:
    """C-STORE DICOM files that are not in the outbox (``calcnode demo``)."""
    jobs = []
    for number, path in enumerate(paths):
        meta = read_file_meta_info(path)
        jobs.append(OutboxJob(number, str(meta.MediaStorageSOPInstanceUID),
                              str(meta.MediaStorageSOPClassUID), "", dest.ae_title, str(path), 0, 0.0))
    return list(send_files(dest, jobs, calling_ae))
