"""The audit trail, as ``calcnode status --audit`` prints it: newest first, one line per record.

Two kinds of record, both in the spool's database: an association (the ``associations`` table:
caller and called AE titles, address, start and end, objects stored, how it ended, refused ones
included as ``rejected: <why>``), and a delivery attempt (the append-only ``delivery_attempts``
table: destination, object, attempt number, delivered / retry / failed and why). Records carry
AE titles, addresses and UIDs, never patient data.
"""

from __future__ import annotations

from datetime import datetime

from node.spool import Spool


def lines(spool: Spool, limit: int) -> list[str]:
    """The ``limit`` most recent records, newest first."""
    db = spool.db()
    associations = db.execute(
        "SELECT * FROM associations ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
    attempts = db.execute(
        "SELECT a.*, o.study_uid FROM delivery_attempts a LEFT JOIN outputs o"
        " ON o.sop_uid = a.output_uid ORDER BY a.id DESC LIMIT ?", (limit,)).fetchall()
    records = ([(r["started_at"], _association(r)) for r in associations]
               + [(r["at"], _attempt(r)) for r in attempts])
    records.sort(key=lambda record: record[0], reverse=True)
    return [text for _, text in records[:limit]]


def _association(row) -> str:
    started = _when(row["started_at"])
    ended = "" if row["ended_at"] is None else f" until {_when(row['ended_at'], since=started)}"
    objects = row["objects"]
    return (f"{started} association {row['calling_ae'] or '-'} -> {row['called_ae'] or '-'}"
            f" from {row['address']}{ended}: {objects} object{'' if objects == 1 else 's'},"
            f" {row['outcome']}")


def _attempt(row) -> str:
    detail = f": {row['detail']}" if row["detail"] else ""
    return (f"{_when(row['at'])} delivery to {row['destination']}: sop={row['output_uid']}"
            f" study={row['study_uid'] or '?'} attempt {row['attempt']} {row['outcome']}{detail}")


def _when(timestamp: float, since: str = "") -> str:
    """Local date and time; the time only when ``since`` (an earlier stamp) has the same date."""
    text = datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
    return text[11:] if since[:10] == text[:10] else text
