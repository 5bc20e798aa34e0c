"""The faults of issue 5 that test_node_faults.py and test_node.py leave open, on the real node.

- kill -9 while a worker is analysing (the state database says ``analysing``) and while a
  delivery is on the wire (the destination sits behind a slow relay): after a restart every
  study is analysed and every output is ``done`` exactly once per destination;
- a destination that is down, then back: every result arrives, in the order the results were
  made, and the backoff shows in ``calcnode status`` meanwhile;
- the disk below ``storage.min_free_mb`` and then above it again: Out of Resources, nothing
  kept, then Success with no restart and no command;
- senders that abort mid data set, close mid P-DATA PDU or stall: their slots come back within
  the timeouts and well-behaved senders are served meanwhile and after; connections that never
  ask for an association (port probes) hold no slot, nor hold up a stopping node;
- a spool damaged between runs: an instance file deleted or truncated (that study fails with
  the reason, the others are analysed), the state database truncated, overwritten or deleted
  (moved aside, rebuilt from the instance files' headers, every study analysed again).

Each test runs ``python -m node serve`` (nodeproc.NodeProcess) on free 127.0.0.1 ports and counts
deliveries with nodeproc.RecordingSink, which records every C-STORE it answered, so a resend
shows as a second entry. What "exactly once" can mean: the node marks each (output, destination)
``done`` once; an output is resent only when the node did not get to record its Success (the
kill fell between the destination's answer and the commit), and such a resend carries the same
SOP Instance UID, which a PACS stores once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.dimse_primitives import C_STORE

from node.testing.study import write_study
from nodeproc import NodeProcess, RecordingSink, ThrottledProxy, node_config, sink, store_responses
from peers import ECHOSCU, STORESCU, echoscu, free_port, require, storescu, wait_for
from receiving import MG, hand_driven

pytestmark = pytest.mark.slow

A_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # PS3.8 9.3.8, source service user


@pytest.fixture(autouse=True)
def _dcmtk():
    require(STORESCU, ECHOSCU)


def on_new_port(config: dict) -> dict:
    """The same node (same spool) on another port: the killed one's port may linger."""
    return {**config, "listen": {**config["listen"], "port": free_port()}}


def send(node: NodeProcess, files, calling: str = "STORESCU") -> None:
    sent = storescu(node.ae_title, node.port, files, calling=calling)
    responses = [r for _, r in store_responses(sent.stdout)]
    assert sent.returncode == 0 and responses == ["Success"] * len(files), (
        f"storescu -> {sent.returncode}:\n{sent.stdout[-3000:]}\n{node.log_tail()}")


def deliveries(node: NodeProcess) -> list[dict]:
    return node.query("SELECT d.id, d.output_uid, d.destination, d.state, d.attempts, o.study_uid"
                      " FROM deliveries d JOIN outputs o ON o.sop_uid = d.output_uid ORDER BY d.id")


def wait_all_delivered(node: NodeProcess, sink_: RecordingSink, timeout_s: float = 60) -> list[dict]:
    """Wait until no delivery is pending and the sink has every output; returns the rows."""
    def settled():
        node.check_alive()
        rows = deliveries(node)
        if not rows or any(r["state"] == "pending" for r in rows):
            return None
        return rows if {r["output_uid"] for r in rows} <= set(sink_.uids()) else None

    try:
        return wait_for(settled, timeout_s, "every delivery done and at the sink", interval_s=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{deliveries(node)}\n{node.log_tail()}") from None


def assert_done_once_each(node: NodeProcess, sink_: RecordingSink) -> list[dict]:
    """Every output has exactly one delivery row per destination, ``done``, and is at the sink."""
    rows = deliveries(node)
    outputs = {o["sop_uid"] for o in node.query("SELECT sop_uid FROM outputs")}
    assert outputs, node.log_tail()
    assert Counter((r["output_uid"], r["destination"]) for r in rows) == Counter(
        (uid, "sink") for uid in outputs), rows
    assert {r["state"] for r in rows} == {"done"}, rows
    assert outputs <= set(sink_.uids()), (outputs - set(sink_.uids()), sink_.received)
    return rows


# -- 1. kill -9 during analysis and during dispatch ---------------------------------------------

def test_kill_9_while_analysing_then_restart_analyses_and_delivers_once(tmp_path, start_node,
                                                                        stack):
    sink_ = stack.enter_context(RecordingSink())
    config = node_config(tmp_path, destinations={"sink": sink(sink_.port)},
                         study={"complete_after_s": 1}, workers=1)
    node = start_node(config, "killed")
    # big enough that the analysis takes a second or more: the kill lands inside it
    study = write_study(tmp_path / "study", seed=911, rows=2048, cols=1664, spacing_mm=0.07)
    uid = study.identity.study_instance_uid
    send(node, study.paths)

    wait_for(lambda: node.check_alive() or node.study_state(uid) == "analysing", 60,
             "the analysis to start", interval_s=0.01)
    node.kill()
    row = node.study_row(uid)
    assert (row["state"], row["generation"]) == ("analysing", 1), row
    assert node.query("SELECT * FROM outputs") == [] and node.query("SELECT * FROM deliveries") == []

    restarted = start_node(on_new_port(config), "restarted")
    row = restarted.wait_study(uid, timeout_s=90)
    assert (row["state"], row["generation"], row["images"]) == ("done", 2, 4), row
    assert f"study={uid}: analysis was interrupted; queued again" in restarted.log_text()
    wait_all_delivered(restarted, sink_)
    assert_done_once_each(restarted, sink_)
    assert set(sink_.counts().values()) == {1}, sink_.counts()  # nothing had gone out before


THROTTLE_BYTES_PER_S = 150_000  # an overlay of this study takes a few seconds on the wire


def test_kill_9_mid_delivery_then_restart_delivers_each_output_once(tmp_path, start_node, stack):
    sink_ = stack.enter_context(RecordingSink())
    proxy = stack.enter_context(ThrottledProxy(sink_.port, THROTTLE_BYTES_PER_S))
    config = node_config(tmp_path, destinations={"sink": sink(proxy.port, timeout_s=30)},
                         study={"complete_after_s": 1})
    node = start_node(config, "killed")
    first = write_study(tmp_path / "first", seed=921)
    second = write_study(tmp_path / "second", seed=922)
    send(node, first.paths)
    assert node.wait_study(first.identity.study_instance_uid)["state"] == "done"
    wait_all_delivered(node, sink_, timeout_s=90)
    committed = {r["output_uid"] for r in deliveries(node)}

    send(node, second.paths)
    second_uid = second.identity.study_instance_uid

    def on_the_wire():  # the sink answered one of the second study's objects, others pending
        node.check_alive()
        arrived = {study for _, study, _ in sink_.received}
        return second_uid in arrived and node.pending_deliveries() > 0

    wait_for(on_the_wire, 90, "a delivery of the second study under way", interval_s=0.02)
    node.kill()
    in_flight = {r["output_uid"] for r in deliveries(node) if r["state"] == "pending"}
    done_at_kill = {r["output_uid"] for r in deliveries(node) if r["state"] == "done"}
    assert in_flight, deliveries(node)

    restarted = start_node(on_new_port(config), "restarted")
    wait_all_delivered(restarted, sink_, timeout_s=120)
    assert_done_once_each(restarted, sink_)
    counts = sink_.counts()
    # recorded as delivered when the kill came (each result is recorded as it arrives, so this
    # includes the second study's first objects): never sent again
    assert committed <= done_at_kill
    assert {uid: counts[uid] for uid in done_at_kill} == {uid: 1 for uid in done_at_kill}, counts
    # pending: each at least once; a second copy (same UID) only of the one object whose
    # answer the kill cut off before the node recorded it
    assert all(1 <= counts[uid] <= 2 for uid in in_flight), counts
    assert sum(counts[uid] == 2 for uid in in_flight) <= 1, counts
    assert set(counts) == done_at_kill | in_flight


# -- 2. the destination down, then back ---------------------------------------------------------

NEXT_ATTEMPT = re.compile(r"^\s+sink: (\d+) pending, 0 delivered, 0 failed, next attempt in (\d+) s,"
                          r" last error: (.+)$", re.MULTILINE)


def results_waiting_for_a_dead_destination(tmp_path, start_node):
    """A node whose one destination does not listen, holding the results of three studies
    made one after the other; returns (node, studies, the destination's port)."""
    sink_port = free_port()  # reserved for the destination; nothing listens there yet
    config = node_config(tmp_path, destinations={"sink": sink(sink_port)},
                         study={"complete_after_s": 1},
                         retry={"initial_delay_s": 1, "max_delay_s": 4, "max_age_h": 1})
    node = start_node(config)
    studies = [write_study(tmp_path / f"s{seed}", seed=seed) for seed in (931, 932, 933)]
    for study in studies:  # one after the other: their results are made in this order
        send(node, study.paths)
        assert node.wait_study(study.identity.study_instance_uid)["state"] == "done"
    return node, studies, sink_port


def test_destination_down_then_back_gets_every_result_once(tmp_path, start_node, stack):
    node, studies, sink_port = results_waiting_for_a_dead_destination(tmp_path, start_node)

    def backing_off():
        if deliveries(node)[0]["attempts"] < 3:
            return None
        return NEXT_ATTEMPT.search(node.status().stdout)

    status = wait_for(backing_off, 60, "a third attempt and the next one announced", interval_s=0.2)
    pending, delay_s, error = status.groups()
    assert int(pending) == len(deliveries(node)) and 0 < int(delay_s) <= 5, status.group(0)
    assert "SINK" in error and str(sink_port) in error, status.group(0)
    assert node.query("SELECT COUNT(*) AS n FROM deliveries WHERE state != 'pending'")[0]["n"] == 0

    sink_ = stack.enter_context(RecordingSink(port=sink_port))
    wait_all_delivered(node, sink_)
    assert_done_once_each(node, sink_)
    assert set(sink_.counts().values()) == {1}, sink_.counts()
    assert {study for _, study, _ in sink_.received} == {
        s.identity.study_instance_uid for s in studies}
    assert re.search(r"^\s+sink: 0 pending, \d+ delivered, 0 failed$", node.status().stdout,
                     re.MULTILINE)


def test_destination_back_gets_results_in_the_order_they_were_made(tmp_path, start_node, stack):
    node, studies, sink_port = results_waiting_for_a_dead_destination(tmp_path, start_node)

    def newest_due_first():  # the moment the bug shows: bring the destination back now
        rows = node.query("SELECT next_at FROM deliveries WHERE state = 'pending' ORDER BY id")
        return rows[-1]["next_at"] < rows[0]["next_at"] and rows[-1]["next_at"] > time.time() + 0.3

    wait_for(newest_due_first, 30, "the backoff of the newest result ending first", interval_s=0.05)
    sink_ = stack.enter_context(RecordingSink(port=sink_port))
    rows = wait_all_delivered(node, sink_)
    assert sink_.uids() == [r["output_uid"] for r in rows], "not in the order they were made"
    arrived = [study for _, study, _ in sink_.received]
    assert sorted(set(arrived), key=arrived.index) == [s.identity.study_instance_uid for s in studies]


# -- 3. the disk below storage.min_free_mb, then above it again ---------------------------------

FILLER_MB = 4000
MARGIN_MB = 2000  # other writers on this disk would have to write this much during the test


def readyz(node: NodeProcess) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(node.web_url + "/readyz", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_low_disk_refuses_then_recovers_by_itself_when_space_returns(tmp_path, start_node):
    free_mb = shutil.disk_usage(tmp_path).free / 1e6
    if free_mb < FILLER_MB + 4 * MARGIN_MB:
        pytest.skip(f"needs {FILLER_MB + 4 * MARGIN_MB} MB free here, has {free_mb:.0f}")
    filler = tmp_path / "filler"
    with open(filler, "wb") as handle:  # blocks allocated at once, nothing written
        os.posix_fallocate(handle.fileno(), 0, FILLER_MB * 1_000_000)
    try:
        filled_mb = shutil.disk_usage(tmp_path).free / 1e6
        assert filled_mb < free_mb - FILLER_MB / 2, "the filler took no space on this filesystem"
        min_free_mb = int(filled_mb + MARGIN_MB)  # below it now, above it once the filler goes
        node = start_node(node_config(tmp_path, storage={"min_free_mb": min_free_mb},
                                      study={"complete_after_s": 1}))
        study = write_study(tmp_path / "study", seed=941)
        refused = storescu(node.ae_title, node.port, study.paths[:1], extra_args=["-d"])
        assert [r for _, r in store_responses(refused.stdout)] == [
            "0xa700: Refused: Out of resources"], refused.stdout[-3000:]
        assert node.query("SELECT * FROM instances") == [] and node.query("SELECT * FROM studies") == []
        assert not list((node.spool / "instances").rglob("*")), "something partial was kept"
        assert not list((node.spool / "incoming").rglob("*"))
        code, text = readyz(node)
        assert code == 503 and "storage.min_free_mb" in text, (code, text)
    finally:
        filler.unlink(missing_ok=True)

    wait_for(lambda: readyz(node)[0] == 200, 30, "/readyz to say ready again")
    send(node, study.paths)  # the same node: no restart, no command
    assert node.wait_study(study.identity.study_instance_uid)["state"] == "done"
    assert node.alive()


# -- 4. senders that abort, cut a PDU short or stall ---------------------------------------------

NETWORK_TIMEOUT_S = 3


class RawSender:
    """An association made by pynetdicom whose socket the test then drives by hand: it sends a
    real C-STORE request and as much of its data set as a scenario wants, then misbehaves."""

    def __init__(self, port: int, calling: str):
        self.assoc = hand_driven(port, calling)
        self.sock = self.assoc.dul.socket.socket

    def store_pdus(self, path: Path) -> list[bytes]:
        """The encoded P-DATA-TF PDUs of a C-STORE of ``path``: command first, then data set."""
        header = dcmread(path, stop_before_pixels=True)
        raw = path.read_bytes()
        _, offset = split_dataset(path)
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = header.SOPClassUID
        request.AffectedSOPInstanceUID = header.SOPInstanceUID
        request.Priority = 2
        request.DataSet = BytesIO(raw[offset:])
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        context_id = self.assoc.accepted_contexts[0].context_id
        pdus = []
        for primitive in message.encode_msg(context_id, 16384):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            pdus.append(pdu.encode())
        return pdus

    def send_part(self, path: Path, mid_pdu: bool = True) -> None:
        """The command and the first half of the data set's PDUs; with ``mid_pdu`` also the
        first half of the next PDU."""
        pdus = self.store_pdus(path)
        half = len(pdus) // 2
        assert half >= 3, f"{len(pdus)} PDUs: the image is too small to be cut in the middle"
        for pdu in pdus[:half]:
            self.sock.sendall(pdu)
        if mid_pdu:
            self.sock.sendall(pdus[half][:len(pdus[half]) // 2])

    def close(self) -> None:
        self.sock.close()


def ended(node: NodeProcess, calling: str) -> list[dict]:
    return node.query("SELECT outcome FROM associations WHERE calling_ae = ? AND ended_at IS NOT NULL",
                      (calling,))


def test_misbehaving_senders_free_their_slots_and_others_are_served(tmp_path, start_node):
    config = node_config(tmp_path, study={"complete_after_s": 1},
                         listen={"max_associations": 2, "network_timeout_s": NETWORK_TIMEOUT_S,
                                 "dimse_timeout_s": NETWORK_TIMEOUT_S})
    node = start_node(config)
    image = write_study(tmp_path / "bad", seed=951).views["RCC"][0]
    good = write_study(tmp_path / "good", seed=952)
    later = [write_study(tmp_path / f"later{seed}", seed=seed) for seed in (953, 954)]

    # 1. stalls mid PDU and keeps its socket open: holds one of the two slots until the timeout
    staller = RawSender(node.port, "STALLER")
    staller.send_part(image)
    stalled_at = time.monotonic()
    try:
        # 2. aborts mid data set (A-ABORT), 3. closes the connection mid P-DATA PDU
        aborter = RawSender(node.port, "ABORTER")
        aborter.send_part(image, mid_pdu=False)
        aborter.sock.sendall(A_ABORT)
        aborter.close()
        wait_for(lambda: ended(node, "ABORTER"), 5, "the aborted association to end")
        cutter = RawSender(node.port, "CUTTER")
        cutter.send_part(image)
        cutter.sock.shutdown(socket.SHUT_WR)
        cutter.close()
        wait_for(lambda: ended(node, "CUTTER"), 5, "the cut association to end")
        # the other slot serves a well-behaved sender while the staller still holds its own
        send(node, good.paths, calling="MODALITY")
        assert not ended(node, "STALLER"), "the staller was dropped before its timeout"
        wait_for(lambda: ended(node, "STALLER"), NETWORK_TIMEOUT_S + 10,
                 "the stalled association to end")
        assert time.monotonic() - stalled_at < NETWORK_TIMEOUT_S + 10
    finally:
        staller.close()

    # Every slot is free again: two associations at once, each sending a study, within the
    # bound of the staller's end (docs/reliability.md, bug 4: once two network timeouts).
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(MG, [ExplicitVRLittleEndian])

    def two_at_once():
        assocs = [ae.associate("127.0.0.1", node.port, ae_title="CALCNODE") for _ in range(2)]
        if all(assoc.is_established for assoc in assocs):
            return assocs
        for assoc in assocs:
            if assoc.is_established:
                assoc.release()
        return None

    assocs = wait_for(two_at_once, NETWORK_TIMEOUT_S + 10, "two slots free", interval_s=0.2)
    assert time.monotonic() - stalled_at < NETWORK_TIMEOUT_S + 10
    try:
        statuses = [[assoc.send_c_store(path).Status for path in study.paths]
                    for assoc, study in zip(assocs, later)]
    finally:
        for assoc in assocs:
            assoc.release()
    assert statuses == [[0x0000] * 4] * 2, statuses
    outcomes = {row["calling_ae"]: row["outcome"] for row in node.query(
        "SELECT calling_ae, outcome FROM associations WHERE calling_ae IN"
        " ('STALLER', 'ABORTER', 'CUTTER')")}
    # none of them counts as a clean release (an A-ABORT followed at once by the close of the
    # connection may be recorded as either)
    assert set(outcomes) == {"STALLER", "ABORTER", "CUTTER"}, outcomes
    assert "released" not in outcomes.values() and "open" not in outcomes.values(), outcomes
    wait_for(lambda: not node.query("SELECT 1 FROM associations WHERE ended_at IS NULL"), 10,
             "every association recorded as ended")
    kept = {r["sop_uid"] for r in node.query("SELECT sop_uid FROM instances")}
    bad_uid = str(dcmread(image, stop_before_pixels=True).SOPInstanceUID)
    assert bad_uid not in kept and len(kept) == 12, kept
    for study in (good, *later):
        assert node.wait_study(study.identity.study_instance_uid)["state"] == "done"
    assert echoscu(node.ae_title, node.port).returncode == 0


def test_a_transfer_cut_short_leaves_no_partial_file_behind(tmp_path, start_node):
    node = start_node(node_config(tmp_path))
    image = write_study(tmp_path / "bad", seed=955).views["RCC"][0]
    aborter = RawSender(node.port, "ABORTER")
    aborter.send_part(image, mid_pdu=False)
    aborter.sock.sendall(A_ABORT)
    aborter.close()
    wait_for(lambda: ended(node, "ABORTER"), 5, "the aborted association to end")
    assert echoscu(node.ae_title, node.port).returncode == 0  # the node is up and past the abort
    assert node.query("SELECT * FROM instances") == []
    assert not list((node.spool / "incoming").iterdir()), "a partial data set was left behind"


def test_connections_that_never_ask_for_an_association_hold_no_slot(tmp_path, start_node):
    """Port probes and TCP health checks connect and close without an A-ASSOCIATE-RQ (some send
    a byte first). pynetdicom waits for the request for the whole ACSE timeout: each held one of
    the two slots for a minute, refusing senders, and a stopping node waited its grace period
    for them. Now their slots are free at once, and a connection still waiting for its request
    when the node stops is closed without waiting."""
    config = node_config(tmp_path, listen={"max_associations": 2, "acse_timeout_s": 60,
                                           "shutdown_grace_s": 30})
    node = start_node(config)
    for payload in (b"", b"\n", b"", b"GET / HTTP/1.0\r\n"):
        with socket.create_connection(("127.0.0.1", node.port)) as probe:
            probe.sendall(payload)
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(MG, [ExplicitVRLittleEndian])

    def two_at_once():
        assocs = [ae.associate("127.0.0.1", node.port, ae_title="CALCNODE") for _ in range(2)]
        established = [assoc.is_established for assoc in assocs]
        for assoc in assocs:
            if assoc.is_established:
                assoc.release()
        return all(established)

    wait_for(two_at_once, 5, "both slots free after the probes", interval_s=0.2)
    held = socket.create_connection(("127.0.0.1", node.port))
    try:
        time.sleep(0.5)  # accepted, waiting for its request
        start = time.monotonic()
        assert node.stop(signal.SIGTERM, timeout_s=25) == 0, node.log_tail()
        assert time.monotonic() - start < 10, "the node waited for a connection that asked for nothing"
        held.settimeout(5)
        assert held.recv(1) == b""  # closed by the node
    finally:
        held.close()
    log = node.log_text()
    assert "aborted" not in log and "Traceback" not in log, node.log_tail()


# -- 6. the spool damaged between runs ----------------------------------------------------------

def received_not_analysed(tmp_path, start_node, seeds, **sections):
    """A first run that receives studies and is stopped before analysing them."""
    config = node_config(tmp_path, study={"complete_after_s": 600, "analyse_when_four_views": False},
                         **sections)
    node = start_node(config, "first")
    studies = [write_study(tmp_path / f"s{seed}", seed=seed) for seed in seeds]
    for study in studies:
        send(node, study.paths)
    assert node.stop(signal.SIGTERM) == 0, node.log_tail()
    return node, studies


def test_instance_file_missing_or_truncated_fails_that_study_only(tmp_path, start_node):
    first, (missing, truncated, intact) = received_not_analysed(tmp_path, start_node, (961, 962, 963))
    rows = {r["sop_uid"]: r for r in first.query("SELECT sop_uid, path, size FROM instances")}
    gone = str(dcmread(missing.views["LCC"][0], stop_before_pixels=True).SOPInstanceUID)
    (first.spool / rows[gone]["path"]).unlink()
    cut = str(dcmread(truncated.views["RMLO"][0], stop_before_pixels=True).SOPInstanceUID)
    cut_path = first.spool / rows[cut]["path"]
    os.truncate(cut_path, rows[cut]["size"] // 3)

    config = on_new_port(node_config(tmp_path, study={"complete_after_s": 1}))
    node = start_node(config, "second")
    row = node.wait_study(missing.identity.study_instance_uid)
    assert (row["state"], row["reason"]) == ("failed", f"instance file missing: {gone}"), row
    row = node.wait_study(truncated.identity.study_instance_uid)
    assert row["state"] == "failed", row
    assert row["reason"] == (f"instance file truncated: {cut} ({rows[cut]['size'] // 3} of"
                             f" {rows[cut]['size']} bytes)"), row
    row = node.wait_study(intact.identity.study_instance_uid)
    assert (row["state"], row["images"]) == ("done", 4), row
    log = node.log_text()
    assert f"study={missing.identity.study_instance_uid} failed: instance file missing: {gone}" in log
    assert f"instance file missing: {gone}" in node.status().stdout

    # the sender resends the lost image: the study is whole again and analysed
    send(node, [missing.views["LCC"][0]])
    row = node.wait_study(missing.identity.study_instance_uid, states=("done",))
    assert (row["images"], row["reason"]) == (4, ""), row


def corrupt(db: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(db, db.stat().st_size // 2)
    elif how == "overwritten":
        with open(db, "r+b") as handle:
            handle.write(b"\xa5" * 4096)
    else:
        db.unlink()


@pytest.mark.parametrize("how", ["truncated", "overwritten", "deleted"])
def test_damaged_state_database_is_moved_aside_and_rebuilt_from_the_spool(tmp_path, start_node,
                                                                          stack, how):
    sink_ = stack.enter_context(RecordingSink())
    config = node_config(tmp_path, destinations={"sink": sink(sink_.port)},
                         study={"complete_after_s": 1})
    first = start_node(config, "first")
    studies = [write_study(tmp_path / f"s{seed}", seed=seed) for seed in (971, 972)]
    for study in studies:
        send(first, study.paths)
        assert first.wait_study(study.identity.study_instance_uid)["state"] == "done"
    wait_all_delivered(first, sink_)
    made = {o["sop_uid"] for o in first.query("SELECT sop_uid FROM outputs")}
    assert first.stop(signal.SIGTERM) == 0, first.log_tail()
    assert not Path(f"{first.db_path}-wal").exists()  # a clean stop leaves one file
    corrupt(first.db_path, how)

    node = start_node(on_new_port(config), "second")
    log = node.log_text()
    aside = list(node.spool.glob("state.sqlite3.corrupt-*"))
    if how == "deleted":
        assert aside == [] and "moved aside" not in log
    else:
        assert len(aside) == 1 and f"moved aside to {aside[0]}" in log, log
    assert "8 instances of 2 studies recorded again from their headers" in log, log
    for study in studies:
        row = node.wait_study(study.identity.study_instance_uid)
        assert (row["state"], row["images"]) == ("done", 4), row
    wait_all_delivered(node, sink_)
    assert {o["sop_uid"] for o in node.query("SELECT sop_uid FROM outputs")} == made, (
        "the re-analysis made other UIDs: a PACS would keep duplicates")
    assert set(sink_.counts()) == made
    # later studies are received and analysed as usual
    later = write_study(tmp_path / "later", seed=973)
    send(node, later.paths)
    assert node.wait_study(later.identity.study_instance_uid)["state"] == "done"
