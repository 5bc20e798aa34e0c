"""A damaged spool at start: the state database moved aside and rebuilt, damaged studies failed.

Before the spool opens, a database SQLite calls corrupt is renamed with its ``-wal`` and
``-shm`` to ``state.sqlite3.corrupt-<time>``. When the (new or deleted) database has no record
of the instance files in the spool, each ``instances/<study>/<sop>.dcm`` is recorded again from
its header and its study analysed again (the outputs get the same UIDs, so a resend is
idempotent at a PACS); the calling AE, the association and delivery history and which studies
were done went with the old database. After that, a study waiting for analysis whose instance
files are missing or shorter than received fails with the reason, and the rest carry on.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from node.model import InstanceRecord, Role, StudyState
from node.received import HEADER_TAGS
from node.receiver import record_from_header
from node.spool import DB_NAME, Spool

log = logging.getLogger(__name__)

REBUILT = "rebuilt"  # the association id of records rebuilt from files


def open_spool(spool: Spool) -> None:
    """Open the spool, moving a damaged database aside and recording again what it lost."""
    moved = move_aside_if_damaged(spool.root / DB_NAME)
    if moved:
        log.error("the state database was damaged (%s); moved aside to %s", *moved)
    lost = not _has_records(spool.root / DB_NAME)
    spool.open()
    if not lost or next(spool.instance_files(), None) is None:
        return
    records, unusable = reread_instances(spool)
    spool.readopt(records)
    for line in unusable:
        log.error("spool file not recovered: %s", line)
    log.error("the state database had no record of the spool's files: %d instances of %d"
              " studies recorded again from their headers, to be analysed again",
              len(records), len({r.study_instance_uid for r in records}))


def move_aside_if_damaged(path: Path) -> tuple[str, Path] | None:
    """Rename a database SQLite calls corrupt (with its -wal and -shm) to
    ``<name>.corrupt-<time>``; returns (SQLite's complaint, new path) or None."""
    if not path.exists():
        return None
    try:
        connection = sqlite3.connect(path, timeout=30)
        try:
            problem = connection.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise  # busy, locked, unreadable: not damage, and nothing to repair here
        problem = str(exc)
    if problem == "ok":
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, path.with_name(f"{path.name}{suffix}.corrupt-{stamp}"))
    return problem, path.with_name(f"{path.name}.corrupt-{stamp}")


def _has_records(path: Path) -> bool:
    if not path.exists():
        return False
    with closing(sqlite3.connect(path, timeout=30)) as connection:
        return connection.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'instances'").fetchone() is not None


def reread_instances(spool: Spool) -> tuple[list[InstanceRecord], list[str]]:
    """Records of the spool's instance files read from their headers, for a database that lost
    them; and the files that could not be used, with why. The sender is not known any more."""
    records, unusable = [], []
    for path in spool.instance_files():
        try:
            header = dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
            study, sop = str(header.StudyInstanceUID), str(header.SOPInstanceUID)
            if (path.parent.name, path.stem) != (study, sop):
                raise ValueError("its UIDs differ from its place in the spool")
            stat = path.stat()
            records.append(record_from_header(header, stat.st_size, stat.st_mtime, "", REBUILT,
                                              str(path.relative_to(spool.root))))
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            unusable.append(f"{path.relative_to(spool.root)}: {type(exc).__name__}: {exc}")
    return records, unusable


def fail_damaged(spool: Spool) -> list[tuple[str, str]]:
    """Fail every study waiting for analysis whose instance files are missing or shorter
    than received, with the reason; their records are dropped, so that a resend of those
    instances makes the study whole and analysed again. Returns (study, reason) pairs."""
    damaged: dict[str, list[tuple[str, str]]] = {}  # study -> (sop, problem)
    rows = spool.db().execute(
        "SELECT i.study_uid, i.sop_uid, i.path, i.size FROM instances i JOIN studies s"
        " ON s.study_uid = i.study_uid WHERE s.state = ? AND i.role = ?",
        (StudyState.RECEIVING.value, Role.IMAGE.value)).fetchall()
    for row in rows:
        try:
            size = (spool.root / row["path"]).stat().st_size
        except FileNotFoundError:
            size = None
        if size is None or size < row["size"]:
            problem = (f"instance file missing: {row['sop_uid']}" if size is None else
                       f"instance file truncated: {row['sop_uid']} ({size} of {row['size']} bytes)")
            damaged.setdefault(row["study_uid"], []).append((row["sop_uid"], problem))
    result = []
    for study_uid, problems in damaged.items():
        reason = "; ".join(problem for _, problem in problems)
        with spool.transaction() as db:
            db.executemany("DELETE FROM instances WHERE sop_uid = ?", [(sop,) for sop, _ in problems])
            db.execute("UPDATE studies SET state = ?, reason = ? WHERE study_uid = ?",
                       (StudyState.FAILED.value, reason, study_uid))
        log.error("study=%s failed: %s", study_uid, reason)
        result.append((study_uid, reason))
    return result
