"""The header of a received data set, read and checked, and the C-STORE status it earns.

Only the header is parsed, plus the 12 bytes that open the pixel data element: enough to refuse
a data set cut short without reading, let alone decoding, its pixels. For a large data set the
header is read while the rest still arrives (``EarlyHeaders``, fed by fastpath.py once the
first megabytes are in the file), so that the handler has only the checks left to do when the
last fragment is in: the peer waits for its answer meanwhile.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from node import images
from node.reporting.uids import is_valid_uid

# C-STORE response statuses (PS3.4 Annex B.2.3, PS3.7 Annex C)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

HEADER_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
               "ImageLaterality", "Laterality", "ViewPosition", "ViewCodeSequence")
UID_KEYWORDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# (7FE0,0008) Float, (7FE0,0009) Double Float and (7FE0,0010) Pixel Data, little and big endian
PIXEL_DATA_TAGS = {b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00", b"\xe0\x7f\x10\x00",
                   b"\x7f\xe0\x00\x08", b"\x7f\xe0\x00\x09", b"\x7f\xe0\x00\x10"}


class Rejected(Exception):
    """A C-STORE that gets a failure status; ``status`` is one of the constants above."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class _Parsed:
    """A header as parsed from the first ``limit`` bytes of a file: where it ends, and the 12
    bytes after it (the pixel data element's tag and length, when there is one)."""

    def __init__(self, path: Path, limit: int):
        with images.open_bounded(path, limit) as fp:
            self.header = dcmread(fp, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
            self.end = fp.tell()
            self.after = fp.read(12)
        self.limit = limit

    @cached_property
    def uids(self) -> dict[str, str]:
        """The SOP Class UID and UID_KEYWORDS' values, as strings. pydicom converts values when
        first read, which is where damaged ones raise: the laterality and view that
        record_from_header reads are converted here too."""
        header = self.header
        images.laterality(header), images.view(header)
        return {keyword: str(header.get(keyword, "")) for keyword in ("SOPClassUID",) + UID_KEYWORDS}

    @cached_property
    def cut_short(self) -> bool:
        """Whether the header reaches past ``limit`` (pydicom reads a data set cut short without
        complaint: it seeks past the end over skipped values, and reads short values short)."""
        return self.end > self.limit or any(
            isinstance(e, RawDataElement) and e.length != 0xFFFFFFFF and e.value is not None
            and len(e.value) < e.length for e in self.header.elements())


def read_header(path: Path, context_class: str, affected_uid: str, early: _Parsed | None = None):
    """The header of a received file, checked against its request; raises Rejected.

    ``early`` is the same header read while the file was still arriving (EarlyHeaders), used
    when it is complete within the bytes it was read from.
    """
    try:
        size = path.stat().st_size
        parsed = early if early is not None and _whole(early) else _Parsed(path, size)
        _check_complete(parsed, size)
        uids = parsed.uids
    except Rejected:
        raise
    except Exception as exc:  # pydicom converts values lazily and raises many types on damaged data
        raise Rejected(CANNOT_UNDERSTAND, f"unreadable dataset ({type(exc).__name__}: "
                                          f"{shown(str(exc), 200)})") from None
    found_class, found_uid = uids["SOPClassUID"], uids["SOPInstanceUID"]
    if not found_class:
        raise Rejected(CANNOT_UNDERSTAND, "the dataset has no SOP Class UID")
    if found_class != context_class:
        raise Rejected(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       f"dataset SOP Class {shown(found_class)} is not the requested {context_class}")
    if found_uid != affected_uid:
        raise Rejected(CANNOT_UNDERSTAND, "dataset SOP Instance UID differs from the request's")
    for keyword in UID_KEYWORDS:
        if not is_valid_uid(uids[keyword]):
            raise Rejected(CANNOT_UNDERSTAND, f"missing or invalid {keyword} {shown(uids[keyword])}")
    return parsed.header


def _read_early(path: Path, settled: int) -> _Parsed:
    """A header parsed from a file's first ``settled`` bytes while the rest arrives, with its
    values converted when it stands for the whole file: the handler has only checks left."""
    parsed = _Parsed(path, settled)
    if _whole(parsed):
        parsed.uids  # noqa: B018 (converts them; a damaged value fails this early parse)
    return parsed


def _whole(early: _Parsed) -> bool:
    """An early parse stands for the file when the header and the 12 bytes after it lie within
    what it read (any other answer needs the whole file: a parse then)."""
    return early.end + 12 <= early.limit and not early.cut_short


def _check_complete(parsed: _Parsed, size: int) -> None:
    """Refuse a data set cut short: in its header, or in its pixel data."""
    if parsed.cut_short:
        raise Rejected(CANNOT_UNDERSTAND, "dataset is truncated: its header ends in the middle "
                                          "of an element")
    head, end = parsed.after, parsed.end
    implicit, little = parsed.header.original_encoding
    if len(head) < 8 or head[:4] not in PIXEL_DATA_TAGS or implicit is None:
        return  # no pixel data element follows (an SR, or a data set without pixels)
    order = "little" if little else "big"
    if implicit:
        start, length = end + 8, int.from_bytes(head[4:8], order)
    elif head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN"):
        start, length = end + 12, int.from_bytes(head[8:12], order)
    else:
        start, length = end + 8, int.from_bytes(head[6:8], order)
    if length != 0xFFFFFFFF and start + length > size:
        raise Rejected(CANNOT_UNDERSTAND, f"dataset is truncated: its pixel data has "
                                          f"{max(size - start, 0)} of {length} bytes")


def failure(status: int, reason: str) -> Dataset:
    """A C-STORE response with a failure ``status`` and ``reason`` as its Error Comment
    (0000,0902; PS3.7 C.4.2.1.4), which the sender's log can show: an LO value, so printable
    ASCII without backslashes (the command set has no character set of its own), at most 64
    characters."""
    response = Dataset()
    response.Status = status
    text = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in reason).strip()
    response.ErrorComment = text if len(text) <= 64 else text[:61] + "..."
    return response


def shown(value: str, limit: int = 80) -> str:
    """A received value as a log line may show it: quoted, escaped, cut (never a line break)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class EarlyHeaders:
    """Headers read from files still arriving, by path, until the handler takes them.

    ``start`` is fastpath's hook (called on a writer thread); a parse that fails is forgotten:
    the handler then reads the header itself and says what is wrong with it. Entries of data
    sets never completed (an abort) are dropped beyond ``keep``."""

    def __init__(self, keep: int = 64):
        self._parsing: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._keep = keep
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calcnode-header")

    def start(self, path: str, settled: int) -> None:
        """Read the header of ``path`` from its first ``settled`` bytes, which are final."""
        with self._lock:
            self._parsing[path] = self._pool.submit(_read_early, Path(path), settled)
            while len(self._parsing) > self._keep:
                self._parsing.pop(next(iter(self._parsing)))

    def take(self, path: Path) -> _Parsed | None:
        with self._lock:
            parsing = self._parsing.pop(str(path), None)
        try:
            return parsing.result() if parsing is not None else None
        except Exception:  # damaged, or cut by ``settled``: read again, in full, by read_header
            return None
