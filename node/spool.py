"""The durable spool: received files, outputs, and the state database.

Layout under ``storage.path`` (directories 0700, files 0600)::

    state.sqlite3                       SQLite in WAL mode: the tables of SCHEMA below
    incoming/                           pynetdicom's chunked-receive temp files (same filesystem)
    instances/<StudyUID>/<SOPUID>.dcm   received instances, bytes exactly as they came
    outputs/<StudyUID>/<kind>_<SOPUID>.dcm   CAD SR, overlay SCs, GSPS

A file is durable before its record is committed: write (or move) into place, fsync the file,
``os.replace``, fsync the directory, then commit. Only then does the receiver answer Success.
Every path component derived from a UID is checked against the UID grammar first, so a UID
like ``../../etc`` never becomes a path.

The connection is per thread (sqlite3 objects must not cross threads); writes from this process
are serialised by one lock, and other processes (``calcnode status``, ``retry``) wait on the
database's busy timeout.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from pydicom.uid import MammographyCADSRStorage

from node.errors import SpoolError
from node.model import (
    AnalysisOutcome, AnalysisTask, InstanceRecord, Role, SourceRef, StudyProgress, StudyState,
)
from node.reporting.uids import is_valid_uid

DB_NAME = "state.sqlite3"
CONNECTION_CLOSED = "connection closed"  # an association's outcome when its transport closed

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    first_at REAL NOT NULL,           -- first instance of the current round
    last_at REAL NOT NULL,            -- latest instance
    generation INTEGER NOT NULL DEFAULT 0,   -- analysis runs started
    attempts INTEGER NOT NULL DEFAULT 0,     -- runs of the current round (worker crashes)
    stale INTEGER NOT NULL DEFAULT 0,        -- new images arrived while analysing
    reason TEXT NOT NULL DEFAULT '',
    images INTEGER, failed_images INTEGER, clusters INTEGER, highest_certainty REAL,
    analysis_s REAL, analysed_at REAL,
    sr_uid TEXT, sr_series_uid TEXT          -- the latest SR, which a re-analysis supersedes
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);
CREATE INDEX IF NOT EXISTS studies_recent ON studies(last_at);  -- the dashboard's pages
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL,
    association_id TEXT NOT NULL,
    role TEXT NOT NULL,
    laterality TEXT NOT NULL DEFAULT '',
    view TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL, called_ae TEXT NOT NULL, address TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL,
    objects INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT 'open'
);
CREATE TABLE IF NOT EXISTS outputs (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    path TEXT NOT NULL,
    generation INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    output_uid TEXT NOT NULL REFERENCES outputs(sop_uid),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    done_at REAL,
    last_error TEXT NOT NULL DEFAULT '',
    UNIQUE (output_uid, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(destination, state, next_at);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state);
CREATE INDEX IF NOT EXISTS outputs_study ON outputs(study_uid);
CREATE INDEX IF NOT EXISTS associations_recent ON associations(started_at);  -- the audit
-- The audit trail of deliveries, append-only: a row per attempt (delivered, retry, failed),
-- written by the trigger below whenever a delivery's attempt count goes up, whoever counts it.
-- (Associations, refused ones included, are the rows of the associations table.)
CREATE TABLE IF NOT EXISTS delivery_attempts (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    delivery_id INTEGER NOT NULL,
    output_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS deliveries_attempted AFTER UPDATE OF attempts ON deliveries
WHEN NEW.attempts > OLD.attempts BEGIN
    INSERT INTO delivery_attempts (at, delivery_id, output_uid, destination, attempt, outcome, detail)
    VALUES (COALESCE(NEW.done_at, (julianday('now') - 2440587.5) * 86400.0), NEW.id,
            NEW.output_uid, NEW.destination, NEW.attempts,
            CASE NEW.state WHEN 'done' THEN 'delivered' WHEN 'failed' THEN 'failed' ELSE 'retry' END,
            NEW.last_error);
END;
"""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place_file(source: Path, target: Path, fsync: bool) -> None:
    """Move ``source`` to ``target`` durably; copy when they are on different filesystems."""
    if fsync:
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
            # Clean now, and read once by a worker later: drop it from the page cache, so
            # received images do not grow it by gigabytes (most of a large image never
            # entered it: fastpath writes it with O_DIRECT).
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partial = target.with_suffix(".partial")
        shutil.copyfile(source, partial)
        if fsync:
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(partial, target)
        os.unlink(source)
    if fsync:
        fsync_dir(target.parent)


def uid_path(*uids: str) -> Path:
    """A relative path from UIDs, refusing anything that is not a valid UID."""
    for uid in uids:
        if not is_valid_uid(uid):
            raise SpoolError(f"{uid!r} is not a valid UID; it cannot name a file")
    return Path(*uids)


class Spool:
    """Files and state of one node. ``open()`` before use, ``close()`` at the end."""

    def __init__(self, root: str | Path, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self.incoming = self.root / "incoming"
        self.instances = self.root / "instances"
        self.outputs = self.root / "outputs"
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []

    # --- connections ---

    def open(self) -> "Spool":
        """Create the folders and tables (repair.py deals with a damaged database first)."""
        for folder in (self.root, self.incoming, self.instances, self.outputs):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._write_lock:
            self.db().executescript(SCHEMA)
        for suffix in ("", "-wal", "-shm"):  # made before the node's umask 077 (`calcnode status`)
            path = self.root / f"{DB_NAME}{suffix}"
            if path.exists():
                path.chmod(0o600)  # SQLite gives a new -wal / -shm the database file's mode
        return self

    def instance_files(self):
        """Every ``instances/<StudyUID>/<SOPUID>.dcm`` file in the spool (a generator)."""
        return (p for p in self.instances.glob("*/*.dcm") if p.is_file())

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        self._connections.clear()
        self._local = threading.local()

    def db(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.root / DB_NAME, timeout=30, isolation_level=None,
                                         check_same_thread=False)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            self._local.connection = connection
            self._connections.append(connection)
        return connection

    @contextmanager
    def transaction(self):
        db = self.db()
        with self._write_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite ends it itself on some errors (SQLITE_FULL)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- receiving ---

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 1e6

    def adopt(self, received: Path, record: InstanceRecord) -> InstanceRecord:
        """Make a received file durable under the spool and commit its record.

        ``record.path`` is ignored and set here. Returns the record as stored.
        """
        folder = uid_path(record.study_instance_uid)
        relative = Path("instances") / folder / f"{uid_path(record.sop_instance_uid)}.dcm"
        target = self.root / relative
        if not target.parent.exists():
            # exist_ok: two associations may bring a study's first instances at once
            target.parent.mkdir(mode=0o700, exist_ok=True)
            if self.fsync:
                fsync_dir(target.parent.parent)
        named = self.db().execute("SELECT 1 FROM instances WHERE sop_uid = ? AND path = ?",
                                  (record.sop_instance_uid, str(relative))).fetchone()
        place_file(received, target, self.fsync)
        record = replace(record, path=str(relative))
        try:
            with self.transaction() as db:
                before = db.execute("SELECT study_uid, path FROM instances WHERE sop_uid = ?",
                                    (record.sop_instance_uid,)).fetchone()
                _upsert_instance(db, record)
                db.execute("UPDATE associations SET objects = objects + 1 WHERE id = ?",
                           (record.association_id,))
                new_here = before is None or before["study_uid"] != record.study_instance_uid
                if record.role is Role.IMAGE:
                    _touch_study(db, record, new_image=new_here)
        except BaseException:
            if named is None:  # no record names the file (a full database): none is left behind
                target.unlink(missing_ok=True)
            raise
        if before is not None and before["path"] != record.path:
            (self.root / before["path"]).unlink(missing_ok=True)
        return record

    def association_opened(self, association_id: str, calling_ae: str, called_ae: str,
                           address: str, now: float) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO associations (id, calling_ae, called_ae, address,"
                       " started_at) VALUES (?, ?, ?, ?, ?)",
                       (association_id, calling_ae, called_ae, address, now))

    def association_closed(self, association_id: str, outcome: str, now: float) -> None:
        """The first outcome stays, except "connection closed": the peer closes the connection
        as soon as it has the A-RELEASE response, and pynetdicom's reader thread may report
        that before the association's own thread reports the release."""
        with self.transaction() as db:
            db.execute("UPDATE associations SET ended_at = COALESCE(ended_at, ?), outcome = ?"
                       " WHERE id = ? AND (ended_at IS NULL OR outcome = ?)",
                       (now, outcome, association_id, CONNECTION_CLOSED))

    def association_refused(self, association_id: str, calling_ae: str, called_ae: str,
                            address: str, now: float, outcome: str) -> None:
        """An association that never opened (rejected, failed TLS handshake): its audit record."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO associations (id, calling_ae, called_ae, address,"
                       " started_at, ended_at, outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (association_id, calling_ae, called_ae, address, now, now, outcome))

    def study_counts(self) -> dict[str, int]:
        rows = self.db().execute("SELECT state, COUNT(*) FROM studies GROUP BY state")
        return {state.value: 0 for state in StudyState} | {r[0]: r[1] for r in rows}

    # --- assembly and analysis ---

    def receiving(self) -> list[StudyProgress]:
        db = self.db()
        studies = []
        for row in db.execute("SELECT study_uid, first_at, last_at FROM studies WHERE state = ?",
                              (StudyState.RECEIVING.value,)).fetchall():
            uid = row["study_uid"]
            views = {r[0] for r in db.execute(
                "SELECT laterality || view FROM instances WHERE study_uid = ? AND role = ?",
                (uid, Role.IMAGE.value))}
            open_ = db.execute(
                "SELECT 1 FROM instances i JOIN associations a ON a.id = i.association_id"
                " WHERE i.study_uid = ? AND a.ended_at IS NULL LIMIT 1", (uid,)).fetchone()
            studies.append(StudyProgress(uid, row["first_at"], row["last_at"], frozenset(views),
                                         open_ is not None))
        return studies

    def claim(self, study_uid: str) -> AnalysisTask | None:
        """Mark a receiving study as analysing and return its task (None if it moved on)."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE studies SET state = ?, attempts = attempts + 1, generation = generation + 1,"
                " stale = 0 WHERE study_uid = ? AND state = ?",
                (StudyState.ANALYSING.value, study_uid, StudyState.RECEIVING.value)).rowcount
            if not changed:
                return None
            study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            paths = tuple(str(self.root / r[0]) for r in db.execute(
                "SELECT path FROM instances WHERE study_uid = ? AND role = ? ORDER BY received_at",
                (study_uid, Role.IMAGE.value)))
        previous = None
        if study["sr_uid"]:
            previous = SourceRef(MammographyCADSRStorage, study["sr_uid"], study["sr_series_uid"], study_uid)
        return AnalysisTask(study_uid, study["generation"], paths, study["calling_ae"], previous)

    def output_folder(self, study_uid: str) -> Path:
        return self.outputs / uid_path(study_uid)

    def finish(self, outcome: AnalysisOutcome, routes: list[tuple[str, tuple[str, ...]]],
               now: float) -> bool:
        """Record a finished analysis and queue its outputs; False when it went stale.

        ``routes`` are (destination, output kinds it takes). An output that was queued before
        (same derived UID, e.g. an unchanged overlay after a re-analysis) is not queued again.
        """
        uid = outcome.study_instance_uid
        with self.transaction() as db:
            study = db.execute("SELECT stale, generation FROM studies WHERE study_uid = ?",
                               (uid,)).fetchone()
            if study is None or study["generation"] != outcome.generation:
                return False
            if study["stale"]:  # images came in meanwhile: analyse again, deliver nothing yet
                db.execute("UPDATE studies SET state = ?, stale = 0, attempts = 0 WHERE study_uid = ?",
                           (StudyState.RECEIVING.value, uid))
                return False
            for out in outcome.outputs:
                db.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (out.sop_instance_uid, uid, out.kind, out.sop_class_uid,
                            str(Path(out.path).relative_to(self.root)), outcome.generation, now))
                for destination, kinds in routes:
                    if out.kind in kinds:
                        db.execute("INSERT OR IGNORE INTO deliveries (output_uid, destination, state,"
                                   " created_at, next_at) VALUES (?, ?, 'pending', ?, ?)",
                                   (out.sop_instance_uid, destination, now, now))
            sr = next((o for o in outcome.outputs if o.kind == "sr"), None)
            db.execute(
                "UPDATE studies SET state = ?, reason = ?, images = ?, failed_images = ?,"
                " clusters = ?, highest_certainty = ?, analysis_s = ?, analysed_at = ?,"
                " sr_uid = COALESCE(?, sr_uid), sr_series_uid = COALESCE(?, sr_series_uid)"
                " WHERE study_uid = ?",
                (StudyState.DONE.value, "; ".join(outcome.notes), outcome.images,
                 outcome.failed_images, outcome.clusters, outcome.highest_certainty,
                 outcome.seconds, now, sr and sr.sop_instance_uid, sr and sr.series_instance_uid,
                 uid))
        return True

    def fail(self, study_uid: str, reason: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE studies SET state = ?, reason = ? WHERE study_uid = ?",
                       (StudyState.FAILED.value, reason, study_uid))

    def release(self, study_uid: str, max_attempts: int, reason: str) -> bool:
        """Put an interrupted analysis back in the queue; False (and failed) after max_attempts."""
        with self.transaction() as db:
            row = db.execute("SELECT attempts FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None:
                return False
            retry = row["attempts"] < max_attempts
            state = StudyState.RECEIVING if retry else StudyState.FAILED
            db.execute("UPDATE studies SET state = ?, reason = ? WHERE study_uid = ?",
                       (state.value, reason, study_uid))
        return retry

    def recover(self, now: float, max_attempts: int) -> list[str]:
        """After a stop or crash: requeue interrupted analyses, close dangling associations,
        drop partial receives. Returns the interrupted studies."""
        for leftover in self.incoming.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        with self.transaction() as db:
            db.execute("UPDATE associations SET ended_at = ?, outcome = 'interrupted'"
                       " WHERE ended_at IS NULL", (now,))
            interrupted = [r[0] for r in db.execute(
                "SELECT study_uid FROM studies WHERE state = ?", (StudyState.ANALYSING.value,))]
        for uid in interrupted:
            self.release(uid, max_attempts, "analysis interrupted by a stop")
        return interrupted

    def readopt(self, records: list[InstanceRecord]) -> None:
        """Record instance files that are already in place (repair.py, after the database was
        lost): their studies are analysed again, since what became of them went with it."""
        with self.transaction() as db:
            for record in records:
                _upsert_instance(db, record)
                if record.role is Role.IMAGE:
                    _touch_study(db, record, new_image=True)


def _upsert_instance(db: sqlite3.Connection, r: InstanceRecord) -> None:
    db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (r.sop_instance_uid, r.study_instance_uid, r.series_instance_uid, r.sop_class_uid,
                r.path, r.size_bytes, r.received_at, r.calling_ae, r.association_id, r.role.value,
                r.laterality, r.view))


def _touch_study(db: sqlite3.Connection, r: InstanceRecord, new_image: bool) -> None:
    """A study's state after one of its images arrived: a new image re-opens a finished study."""
    row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (r.study_instance_uid,)).fetchone()
    now = r.received_at
    if row is None:
        db.execute("INSERT INTO studies (study_uid, state, calling_ae, first_at, last_at)"
                   " VALUES (?, ?, ?, ?, ?)",
                   (r.study_instance_uid, StudyState.RECEIVING.value, r.calling_ae, now, now))
    elif row["state"] == StudyState.RECEIVING.value:
        db.execute("UPDATE studies SET last_at = ? WHERE study_uid = ?", (now, r.study_instance_uid))
    elif not new_image:
        return  # a resent copy of an image already analysed: replaced, not analysed again
    elif row["state"] == StudyState.ANALYSING.value:
        db.execute("UPDATE studies SET stale = 1, last_at = ?, first_at = ? WHERE study_uid = ?",
                   (now, now, r.study_instance_uid))
    else:
        db.execute("UPDATE studies SET state = ?, first_at = ?, last_at = ?, attempts = 0,"
                   " reason = '' WHERE study_uid = ?",
                   (StudyState.RECEIVING.value, now, now, r.study_instance_uid))
