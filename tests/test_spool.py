"""spool.Spool: durable adoption of received files, study states, analysis bookkeeping, recovery."""

import sqlite3
import stat

import pytest

from node import spool as spool_module
from node.errors import SpoolError
from node.model import AnalysisOutcome, InstanceRecord, OutputFile, Role
from node.outbox import Outbox
from node.spool import Spool

STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def spool(tmp_path):
    spool = Spool(tmp_path / "spool").open()
    spool.association_opened("a1", "MODALITY", "CALCNODE", "127.0.0.1:1", 0.0)
    yield spool
    spool.close()


def receive(spool, sop, at, study=STUDY, role=Role.IMAGE, view=("R", "CC"), content=b"DICM"):
    tmp = spool.incoming / f"tmp{abs(hash((sop, at)))}"
    tmp.write_bytes(content)
    record = InstanceRecord(sop, "1.2.840.10008.5.1.4.1.1.1.2", study, study + ".1", "", len(content),
                            at, "MODALITY", "a1", role, *view)
    return spool.adopt(tmp, record)


def outcome(spool, generation, kinds=("sr", "sc")):
    outputs = []
    for n, kind in enumerate(kinds):
        path = spool.output_folder(STUDY) / f"{kind}_{generation}.{n}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        outputs.append(OutputFile(kind, f"2.25.{generation}{n}", "1.2", f"2.25.9{generation}", str(path)))
    return AnalysisOutcome(STUDY, generation, tuple(outputs), 1, 0, 1, 90.0, 1.5)


def state(spool):
    return spool.db().execute("SELECT * FROM studies WHERE study_uid = ?", (STUDY,)).fetchone()


def test_adopt_moves_the_file_and_commits_the_record(spool):
    record = receive(spool, "1.2.3.4", 10.0, content=b"bytes as received")
    path = spool.root / record.path
    assert path.read_bytes() == b"bytes as received"
    assert not any(spool.incoming.iterdir())
    assert stat.S_IMODE(spool.root.stat().st_mode) == 0o700
    assert state(spool)["state"] == "receiving"
    row = spool.db().execute("SELECT objects FROM associations WHERE id = 'a1'").fetchone()
    assert row["objects"] == 1


@pytest.mark.parametrize("bad", ["../../etc", "1.2.3/../4", "1.02.3", "", "1." + "2" * 70])
def test_uids_that_are_not_uids_never_become_paths(spool, bad):
    with pytest.raises(SpoolError):
        receive(spool, bad, 1.0)
    with pytest.raises(SpoolError):
        receive(spool, "1.2.3", 1.0, study=bad)
    assert not list(spool.instances.rglob("*.dcm"))


def test_same_instance_again_replaces_the_copy(spool):
    receive(spool, "1.2.3.4", 1.0, content=b"first")
    record = receive(spool, "1.2.3.4", 2.0, content=b"second")
    assert (spool.root / record.path).read_bytes() == b"second"
    assert spool.db().execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1


@pytest.fixture
def fill_database(monkeypatch):
    """Call it to have the records of instances received next fail to commit, as on a full disk."""
    def full(*_):
        raise sqlite3.OperationalError("database or disk is full")
    return lambda: monkeypatch.setattr(spool_module, "_upsert_instance", full)


def test_a_record_that_cannot_be_committed_leaves_no_file_behind(spool, fill_database):
    fill_database()
    with pytest.raises(sqlite3.OperationalError):
        receive(spool, "1.2.3.4", 1.0)
    assert not list(spool.instances.rglob("*.dcm")) and not any(spool.incoming.iterdir())


def test_a_copy_that_cannot_be_committed_leaves_the_recorded_file(spool, fill_database):
    record = receive(spool, "1.2.3.4", 1.0, content=b"first")
    fill_database()
    with pytest.raises(sqlite3.OperationalError):
        receive(spool, "1.2.3.4", 2.0, content=b"second")
    # the record still names the file, where the rename put the new copy of the same instance
    assert (spool.root / record.path).read_bytes() == b"second"


def test_a_transaction_sqlite_ended_itself_raises_sqlites_error(spool):
    """SQLite rolls a transaction back itself on SQLITE_FULL: the ROLLBACK after it raised
    "cannot rollback - no transaction is active" in place of the error that says "disk full"."""
    db = spool.db()
    db.execute("CREATE TABLE filler (b BLOB)")
    limit = db.execute("PRAGMA max_page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(sqlite3.OperationalError) as raised:
        with spool.transaction() as db:
            db.execute("INSERT INTO filler VALUES (zeroblob(1 << 20))")
    assert raised.value.sqlite_errorcode == sqlite3.SQLITE_FULL
    db.execute(f"PRAGMA max_page_count = {limit}")
    receive(spool, "1.2.3.4", 1.0)  # and the spool goes on


def test_claim_finish_and_queue_deliveries(spool):
    receive(spool, "1.2.3.4", 1.0)
    task = spool.claim(STUDY)
    assert task.generation == 1 and len(task.paths) == 1 and task.predecessor is None
    assert spool.claim(STUDY) is None  # already analysing
    assert spool.finish(outcome(spool, 1), [("pacs", ("sr",)), ("viewer", ("sr", "sc"))], 5.0)
    assert state(spool)["state"] == "done"
    assert [j.output_uid for j in Outbox(spool).due("viewer", 5.0)] == ["2.25.10", "2.25.11"]
    assert [j.output_uid for j in Outbox(spool).due("pacs", 5.0)] == ["2.25.10"]


def test_resent_image_of_a_done_study_is_not_analysed_again(spool):
    receive(spool, "1.2.3.4", 1.0)
    spool.finish(outcome(spool, spool.claim(STUDY).generation), [], 5.0)
    receive(spool, "1.2.3.4", 9.0)
    assert state(spool)["state"] == "done"


def test_late_image_reopens_the_study_and_names_the_previous_sr(spool):
    receive(spool, "1.2.3.4", 1.0)
    spool.finish(outcome(spool, spool.claim(STUDY).generation), [], 5.0)
    receive(spool, "1.2.3.5", 9.0, view=("L", "CC"))
    assert state(spool)["state"] == "receiving"
    task = spool.claim(STUDY)
    assert task.generation == 2 and len(task.paths) == 2
    assert task.predecessor.sop_instance_uid == "2.25.10"
    assert task.predecessor.series_instance_uid == "2.25.91"


def test_image_arriving_during_analysis_discards_that_run(spool):
    receive(spool, "1.2.3.4", 1.0)
    task = spool.claim(STUDY)
    receive(spool, "1.2.3.5", 2.0)
    assert not spool.finish(outcome(spool, task.generation), [("pacs", ("sr",))], 5.0)
    assert state(spool)["state"] == "receiving"
    assert Outbox(spool).due("pacs", 5.0) == []


def test_kept_objects_do_not_make_studies(spool):
    receive(spool, "1.2.3.4", 1.0, role=Role.KEPT)
    assert state(spool) is None


def test_recover_requeues_interrupted_and_fails_after_max_attempts(spool):
    receive(spool, "1.2.3.4", 1.0)
    (spool.incoming / "partial.dcm").write_bytes(b"half")
    spool.claim(STUDY)
    assert spool.recover(10.0, max_attempts=2) == [STUDY]
    assert state(spool)["state"] == "receiving"
    assert not any(spool.incoming.iterdir())
    assert spool.db().execute("SELECT outcome FROM associations").fetchone()[0] == "interrupted"
    spool.claim(STUDY)
    spool.recover(11.0, max_attempts=2)
    assert state(spool)["state"] == "failed"
    assert "interrupted" in state(spool)["reason"]


def test_retry_requeues_failed_deliveries(spool):
    receive(spool, "1.2.3.4", 1.0)
    spool.finish(outcome(spool, spool.claim(STUDY).generation), [("pacs", ("sr", "sc"))], 5.0)
    outbox = Outbox(spool)
    first, second = outbox.due("pacs", 5.0)
    outbox.give_up(first, 6.0, "status 0xA900")
    outbox.retry_later(second, 100.0, "refused")
    assert outbox.due("pacs", 50.0) == []  # the whole destination waits
    assert outbox.requeue_failed(60.0) == 1
    assert [j.output_uid for j in outbox.due("pacs", 60.0)] == [first.output_uid]
    summary = outbox.summary()[0]
    assert (summary.pending, summary.failed) == (2, 0)


@pytest.mark.parametrize("first, second, kept", [
    ("connection closed", "released", "released"),  # the reader thread saw the close first
    ("released", "connection closed", "released"),
    ("aborted", "connection closed", "aborted"),
    ("connection closed", "connection closed", "connection closed"),
])
def test_an_association_keeps_its_first_outcome_but_a_release_explains_a_close(spool, first, second,
                                                                               kept):
    spool.association_opened("a2", "MODALITY", "CALCNODE", "127.0.0.1:2", 1.0)
    spool.association_closed("a2", first, 2.0)
    spool.association_closed("a2", second, 3.0)
    row = spool.db().execute("SELECT ended_at, outcome FROM associations WHERE id = 'a2'").fetchone()
    assert (row["ended_at"], row["outcome"]) == (2.0, kept)
