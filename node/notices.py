"""Worklist notices: per analysed study, an HL7 v2.5 ORU^R01 over MLLP and/or a JSON webhook.

Design: a notice is one more output of the study, delivered by the existing outbox.

- The worker writes ``notice_<id>.json`` into the study's output folder next to the SR (durably,
  like the DICOM outputs), with the patient and study identity read from a stored instance
  header. ``spool.finish`` records it in ``outputs`` and queues one delivery per worklist
  destination (``worklist.hl7``, ``worklist.webhook``) in the same ``deliveries`` table, keyed
  on (output, destination). So notices survive restarts, are retried with the dispatcher's
  backoff and ``retry.max_age_h``, show in ``calcnode status`` and are requeued by
  ``calcnode retry`` exactly like C-STOREs.
- The dispatcher runs one thread per destination and calls that destination's sender:
  ``sender.send_files`` for DICOM destinations, ``send_hl7`` / ``send_webhook`` here. Each
  returns one StoreResult per job, classified SUCCESS / TRANSIENT / PERMANENT.
- A re-analysis that supersedes a study's result writes a new notice, marked corrected
  (HL7 result status ``C``, JSON ``"result_status": "corrected"``).

HL7: MSH (applications and facilities from ``worklist.hl7``, UTF-8 declared in MSH-18), PID
(PatientID, name), OBR (accession number as filler order number OBR-3, the usual RIS reading,
and in OBR-18 as IHE Radiology does in results), OBX: Study Instance UID (ST, DCM 110180), the
flag (ST, with OBX-8 A/N), the number of clusters (NM) and, when there is one, the highest
certainty (NM, %). Every text value is escaped (``escape``). MSH-10 is derived from the notice,
so a resend after a lost ACK carries the same control ID and the RIS can drop the duplicate.

ACK (MSA-1), as interface engines treat them by default: AA / CA delivered; AE / CE (error while
processing, e.g. the order is not in the RIS yet) transient, retried with backoff; AR / CR (the
message as such is refused: type, version, processing ID) permanent until ``calcnode retry``. No
ACK, a timeout, a garbled ACK or one for another control ID is transient. After a transient
failure the rest of the pass waits, so a corrected result never overtakes the one it corrects.

Webhook: HTTP POST of the same content without patient name and ID. 2xx delivered; 408, 429, 5xx,
refused connections and timeouts transient; other 4xx and 3xx permanent (redirects are not
followed: urllib would turn the POST into a GET that looks delivered).

Privacy: the HL7 message carries PatientID and name because the RIS needs them to match; nothing
here logs them, and failure reasons (logged and kept in the outbox) hold only codes, never the
peer's free text, which may echo patient data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Sequence

import hl7
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.config import Config, HL7Config, WebhookConfig, WorklistConfig
from node.errors import ConfigError
from node.model import OutboxJob, OutputFile, StoreOutcome, StoreResult
from node.reporting.common import SUSPICIOUS, flag_text
from node.spool import place_file, uid_path

KIND = "notice"
HL7_DESTINATION = "worklist.hl7"
WEBHOOK_DESTINATION = "worklist.webhook"

MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"
MAX_ACK_BYTES = 1 << 20
ENCODING_CHARACTERS = "^~\\&"
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
DELIVERED_ACKS = ("AA", "CA")
PERMANENT_ACKS = ("AR", "CR")
TRANSIENT_HTTP = (408, 429)

Deliver = Callable[[Sequence[OutboxJob]], list[StoreResult]]


@dataclass(frozen=True)
class Notice:
    """What one notice says; written as JSON, so it is the same at every attempt."""

    notice_id: str  # a UID: names the file and the outbox entry
    study_instance_uid: str
    accession_number: str
    patient_id: str
    patient_name: str  # DICOM PN, alphabetic group: family^given^middle^prefix^suffix
    flag: str  # SUSPICIOUS / NOT SUSPICIOUS
    clusters: int
    highest_certainty: float | None  # 0-100, None without clusters
    analysed_at: str  # ISO 8601, UTC
    corrected: bool  # supersedes an earlier result of the same study


# -- configuration -------------------------------------------------------------------------

def destinations(worklist: WorklistConfig) -> tuple[str, ...]:
    """The worklist destinations switched on (an empty host or URL is off)."""
    names = [HL7_DESTINATION] if worklist.hl7.host else []
    return tuple(names + ([WEBHOOK_DESTINATION] if worklist.webhook.url else []))


def all_destinations(config: Config) -> list[str]:
    """Every destination of the config by name: the DICOM ones, then the worklist channels on."""
    return [*config.destinations, *destinations(config.worklist)]


def routes(worklist: WorklistConfig) -> list[tuple[str, tuple[str, ...]]]:
    """``spool.finish`` routes: every worklist destination takes the notices."""
    return [(name, (KIND,)) for name in destinations(worklist)]


def senders(worklist: WorklistConfig) -> dict[str, Deliver]:
    """The dispatcher's send function per worklist destination; ConfigError on a bad URL."""
    url = worklist.webhook.url
    if url and not url.lower().startswith(("http://", "https://")):
        raise ConfigError([f"worklist.webhook.url: expected an http:// or https:// URL, got {url!r}"])
    chosen = {HL7_DESTINATION: functools.partial(send_hl7, worklist.hl7),
              WEBHOOK_DESTINATION: functools.partial(send_webhook, worklist.webhook)}
    return {name: chosen[name] for name in destinations(worklist)}


# -- the notice file -----------------------------------------------------------------------

def make_notice(header: Dataset, clusters: int, highest_certainty: float | None,
                analysed_at: datetime, corrected: bool, uid_root: str | None = None) -> Notice:
    """A notice for one analysed study; identity is copied from a stored instance header."""
    name = str(header.get("PatientName", "") or "").split("=")[0]
    return Notice(
        notice_id=generate_uid(prefix=uid_root),
        study_instance_uid=str(header.StudyInstanceUID),
        accession_number=str(header.get("AccessionNumber", "") or ""),
        patient_id=str(header.get("PatientID", "") or ""),
        patient_name=name,
        flag=flag_text(clusters),
        clusters=int(clusters),
        highest_certainty=None if highest_certainty is None else round(float(highest_certainty), 1),
        analysed_at=analysed_at.astimezone(timezone.utc).isoformat(timespec="seconds"),
        corrected=corrected)


def write_notice(notice: Notice, folder: Path, fsync: bool) -> OutputFile:
    """Write ``<folder>/notice_<id>.json`` durably; returns it as an output of the study."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{KIND}_{uid_path(notice.notice_id)}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(notice), indent=2), encoding="utf-8")
    place_file(tmp, path, fsync)
    return OutputFile(KIND, notice.notice_id, "", "", str(path))


def read_notice(path: str | Path) -> Notice:
    return Notice(**json.loads(Path(path).read_text(encoding="utf-8")))


# -- HL7 v2.5 ORU^R01 -----------------------------------------------------------------------

def escape(text: str) -> str:
    """HL7 escaping of one text value: the delimiters and control characters (CR, LF ...)."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\X{ord(ch):02X}\\")  # hexadecimal data, e.g. CR -> \X0D\
        else:
            out.append(ch)
    return "".join(out)


def _components(*values: str) -> str:
    """Components of one field, each escaped; trailing empty components dropped."""
    return "^".join(escape(str(v)) for v in values).rstrip("^")


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: already escaped value}."""
    values = [name] + [""] * max(fields)
    for number, value in fields.items():
        values[number] = value
    return "|".join(values)


def _hl7_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S%z")


def control_id(notice: Notice) -> str:
    """MSH-10 (at most 20 characters): the same for every attempt of one notice."""
    return hashlib.sha256(notice.notice_id.encode()).hexdigest()[:20].upper()


def patient_name_xpn(name: str) -> str:
    """DICOM PN family^given^middle^prefix^suffix -> HL7 XPN family^given^middle^suffix^prefix."""
    family, given, middle, prefix, suffix = (name.split("^") + [""] * 5)[:5]
    return _components(family, given, middle, suffix, prefix)


def oru_message(notice: Notice, config: HL7Config, now: datetime) -> str:
    """The ORU^R01 for one notice: segments separated by CR, as HL7 wants."""
    status = "C" if notice.corrected else "F"
    analysed = _hl7_time(datetime.fromisoformat(notice.analysed_at))
    # MSH-1 is the field separator itself, so MSH-n sits at index n - 1 of the joined list
    msh = {2: config.sending_application, 3: config.sending_facility,
           4: config.receiving_application, 5: config.receiving_facility}
    msh = {n: escape(v) for n, v in msh.items()}
    msh |= {1: ENCODING_CHARACTERS, 6: _hl7_time(now), 8: "ORU^R01^ORU_R01",
            9: control_id(notice), 10: "P", 11: "2.5", 17: "UNICODE UTF-8"}
    accession = _components(notice.accession_number)
    segments = [
        _segment("MSH", msh),
        _segment("PID", {1: "1", 3: _components(notice.patient_id),
                         5: patient_name_xpn(notice.patient_name)}),
        _segment("OBR", {1: "1", 3: accession, 4: "CALCCAD^Calcification CAD^L", 7: analysed,
                         18: accession, 22: analysed, 25: status}),
        _observation(1, "ST", "110180^Study Instance UID^DCM", notice.study_instance_uid,
                     status, analysed),
        _observation(2, "ST", "CALCFLAG^Calcification CAD result^L", notice.flag, status,
                     analysed, abnormal="A" if notice.flag == SUSPICIOUS else "N"),
        _observation(3, "NM", "CALCCLUSTERS^Calcification clusters^L", str(notice.clusters),
                     status, analysed),
    ]
    if notice.highest_certainty is not None:
        segments.append(_observation(4, "NM", "CALCCERTAINTY^Highest cluster certainty^L",
                                     f"{notice.highest_certainty:g}", status, analysed,
                                     units="%^percent^UCUM"))
    return "\r".join(segments) + "\r"


def _observation(number: int, value_type: str, code: str, value: str, status: str, when: str,
                 units: str = "", abnormal: str = "") -> str:
    return _segment("OBX", {1: str(number), 2: value_type, 3: code, 5: _components(value),
                            6: units, 8: abnormal, 11: status, 14: when})


def classify_ack(text: str, expected_control_id: str) -> StoreResult:
    """An ACK (HL7 text without MLLP framing) as a StoreResult; see the module docstring."""
    try:
        message = hl7.parse(text.strip("\r\n") + "\r")
        code, acked = message["MSA.F1"].strip().upper(), message["MSA.F2"].strip()
    except (hl7.HL7Exception, KeyError, IndexError, ValueError, TypeError):
        return StoreResult(StoreOutcome.TRANSIENT, None, "unreadable ACK (no MSA segment)")
    if acked != expected_control_id:
        return StoreResult(StoreOutcome.TRANSIENT, None, "ACK for another message control ID")
    reason = f"ACK {code}{_error_code(message)}"
    if code in DELIVERED_ACKS:
        return StoreResult(StoreOutcome.SUCCESS, None, "" if code == "AA" else reason)
    if code in PERMANENT_ACKS:
        return StoreResult(StoreOutcome.PERMANENT, None, f"notice rejected: {reason}")
    if code in ("AE", "CE"):
        return StoreResult(StoreOutcome.TRANSIENT, None, f"receiver error: {reason}")
    return StoreResult(StoreOutcome.TRANSIENT, None, f"unknown acknowledgment code {code[:8]!r}")


def _error_code(message) -> str:
    """ERR-3.1, the HL7 error code (table 0357): a number, never free text."""
    try:
        code = message["ERR.F3.R1.C1"].strip()
    except (KeyError, IndexError, TypeError):
        return ""
    return f" (HL7 error {code})" if code.isdigit() else ""


def send_hl7(config: HL7Config, jobs: Sequence[OutboxJob]) -> list[StoreResult]:
    """Send each job's notice over one MLLP connection, waiting for each ACK in turn."""
    results: list[StoreResult] = []
    try:
        connection = socket.create_connection((config.host, config.port), timeout=config.timeout_s)
    except OSError as exc:
        failure = StoreResult(StoreOutcome.TRANSIENT, None,
                              f"no connection to {config.host}:{config.port} ({exc.strerror or exc})")
        return [failure] * len(jobs)
    with connection:
        for job in jobs:
            if results and results[-1].outcome is StoreOutcome.TRANSIENT:
                results.append(StoreResult(StoreOutcome.TRANSIENT, None, "waiting for an earlier notice"))
                continue
            try:
                notice = read_notice(job.path)
            except (OSError, ValueError, TypeError) as exc:
                results.append(StoreResult(StoreOutcome.PERMANENT, None, f"notice file unreadable: {exc}"))
                continue
            message = oru_message(notice, config, datetime.now(timezone.utc))
            try:
                ack = _exchange(connection, message.encode("utf-8"), config.timeout_s)
            except OSError as exc:  # timeout, reset, closed
                results.append(StoreResult(StoreOutcome.TRANSIENT, None, f"no ACK ({exc})"))
                continue
            results.append(classify_ack(ack.decode("utf-8", errors="replace"), control_id(notice)))
    return results


def _exchange(connection: socket.socket, message: bytes, timeout_s: float) -> bytes:
    """Send one MLLP block and return the next block received (bounded in time and size)."""
    deadline = time.monotonic() + timeout_s
    connection.sendall(MLLP_START + message + MLLP_END)
    buffer = b""
    while MLLP_END not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or len(buffer) > MAX_ACK_BYTES:
            raise TimeoutError(f"no complete ACK within {timeout_s:g} s")
        connection.settimeout(remaining)
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the ACK")
        buffer += chunk
    block = buffer[:buffer.index(MLLP_END)]
    return block[block.find(MLLP_START) + 1:]


# -- the JSON webhook -----------------------------------------------------------------------

def webhook_body(notice: Notice) -> dict:
    """The webhook's JSON: the notice without patient name and ID."""
    return {
        "notice_id": notice.notice_id,
        "study_instance_uid": notice.study_instance_uid,
        "accession_number": notice.accession_number,
        "flag": notice.flag,
        "clusters": notice.clusters,
        "highest_certainty": notice.highest_certainty,
        "analysed_at": notice.analysed_at,
        "result_status": "corrected" if notice.corrected else "final",
    }


def classify_http(status: int) -> StoreResult:
    if 200 <= status < 300:
        return StoreResult(StoreOutcome.SUCCESS, None, "")
    if status >= 500 or status in TRANSIENT_HTTP:
        return StoreResult(StoreOutcome.TRANSIENT, None, f"HTTP {status}")
    return StoreResult(StoreOutcome.PERMANENT, None, f"HTTP {status}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirect)


def send_webhook(config: WebhookConfig, jobs: Sequence[OutboxJob]) -> list[StoreResult]:
    """POST each job's notice as JSON, one request each, in order."""
    results: list[StoreResult] = []
    for job in jobs:
        if results and results[-1].outcome is StoreOutcome.TRANSIENT:
            results.append(StoreResult(StoreOutcome.TRANSIENT, None, "waiting for an earlier notice"))
            continue
        try:
            body = json.dumps(webhook_body(read_notice(job.path))).encode("utf-8")
        except (OSError, ValueError, TypeError) as exc:
            results.append(StoreResult(StoreOutcome.PERMANENT, None, f"notice file unreadable: {exc}"))
            continue
        results.append(_post(config, body))
    return results


def _post(config: WebhookConfig, body: bytes) -> StoreResult:
    request = urllib.request.Request(config.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=config.timeout_s) as response:
            response.read(MAX_ACK_BYTES)
            return classify_http(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return classify_http(exc.code)
    except urllib.error.URLError as exc:
        return StoreResult(StoreOutcome.TRANSIENT, None, f"no connection ({exc.reason})")
    except (OSError, HTTPException) as exc:  # timeouts, resets, a garbled response
        return StoreResult(StoreOutcome.TRANSIENT, None, f"no response ({type(exc).__name__})")
    except ValueError as exc:  # a URL urllib cannot use
        return StoreResult(StoreOutcome.PERMANENT, None, f"bad webhook URL ({exc})")
