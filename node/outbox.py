"""The outbox: one row per (output, destination) in the spool's database, and its queries.

A delivery is ``pending`` until it succeeds (``done``: a C-STORE, or for a worklist notice an
HL7 ACK or a 2xx answer) or fails for good (``failed``, with the reason). Jobs of one
destination are sent in order of creation; when one fails for a transient reason the whole
destination waits (``next_at``), and ``due`` never takes a job past one that is not due, so a
PACS that comes back gets results in the order they were made.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.model import DeliveryState, OutboxJob
from node.spool import Spool

PENDING, DONE, FAILED = (s.value for s in DeliveryState)


@dataclass(frozen=True)
class DestinationSummary:
    destination: str
    pending: int
    done: int
    failed: int
    next_attempt_at: float | None
    last_error: str


class Outbox:
    def __init__(self, spool: Spool):
        self.spool = spool

    def due(self, destination: str, now: float, limit: int = 50) -> list[OutboxJob]:
        """The destination's pending jobs from the head of its queue (order of creation), up to
        the first that is not due yet: a job held back never lets a newer one overtake it."""
        rows = self.spool.db().execute(
            "SELECT d.id, d.output_uid, o.sop_class, o.study_uid, d.destination, o.path,"
            " d.attempts, d.created_at, d.next_at FROM deliveries d"
            " JOIN outputs o ON o.sop_uid = d.output_uid"
            " WHERE d.destination = ? AND d.state = ? ORDER BY d.id LIMIT ?",
            (destination, PENDING, limit)).fetchall()
        jobs = []
        for r in rows:
            if r[8] > now:
                break
            jobs.append(OutboxJob(r[0], r[1], r[2], r[3], r[4], str(self.spool.root / r[5]), r[6], r[7]))
        return jobs

    def next_due_at(self, destination: str) -> float | None:
        """When the head of the destination's queue is due (None: nothing pending)."""
        row = self.spool.db().execute(
            "SELECT next_at FROM deliveries WHERE destination = ? AND state = ? ORDER BY id LIMIT 1",
            (destination, PENDING)).fetchone()
        return row[0] if row else None

    def delivered(self, job: OutboxJob, now: float, note: str = "") -> None:
        with self.spool.transaction() as db:
            db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, done_at = ?,"
                       " last_error = ? WHERE id = ?", (DONE, now, note, job.delivery_id))

    def retry_later(self, job: OutboxJob, next_at: float, error: str) -> None:
        """Count the attempt and hold every pending job of the destination until ``next_at``."""
        with self.spool.transaction() as db:
            db.execute("UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_at = ?"
                       " WHERE id = ?", (error, next_at, job.delivery_id))
            db.execute("UPDATE deliveries SET next_at = ? WHERE destination = ? AND state = ?"
                       " AND next_at < ?", (next_at, job.destination, PENDING, next_at))

    def give_up(self, job: OutboxJob, now: float, error: str) -> None:
        with self.spool.transaction() as db:
            db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, done_at = ?,"
                       " last_error = ? WHERE id = ?", (FAILED, now, error, job.delivery_id))

    def requeue_failed(self, now: float, destination: str | None = None) -> int:
        """``calcnode retry``: failed deliveries become pending again, due now, with a fresh age."""
        query = ("UPDATE deliveries SET state = ?, attempts = 0, next_at = ?, created_at = ?,"
                 " done_at = NULL WHERE state = ?")
        args: tuple = (PENDING, now, now, FAILED)
        if destination is not None:
            query += " AND destination = ?"
            args += (destination,)
        with self.spool.transaction() as db:
            return db.execute(query, args).rowcount

    def requeue_delivery(self, delivery_id: int, now: float) -> bool:
        """The dashboard's Retry button: one failed delivery, as ``requeue_failed`` does."""
        with self.spool.transaction() as db:
            return db.execute("UPDATE deliveries SET state = ?, attempts = 0, next_at = ?,"
                              " created_at = ?, done_at = NULL WHERE id = ? AND state = ?",
                              (PENDING, now, now, delivery_id, FAILED)).rowcount == 1

    def summary(self) -> list[DestinationSummary]:
        db = self.spool.db()
        result = []
        names = [r[0] for r in db.execute("SELECT DISTINCT destination FROM deliveries ORDER BY 1")]
        for name in names:
            counts = dict(db.execute("SELECT state, COUNT(*) FROM deliveries WHERE destination = ?"
                                     " GROUP BY state", (name,)).fetchall())
            error = db.execute("SELECT last_error FROM deliveries WHERE destination = ? AND"
                               " last_error != '' AND state != ? ORDER BY id DESC LIMIT 1",
                               (name, DONE)).fetchone()
            result.append(DestinationSummary(name, counts.get(PENDING, 0), counts.get(DONE, 0),
                                             counts.get(FAILED, 0), self.next_due_at(name),
                                             error[0] if error else ""))
        return result
