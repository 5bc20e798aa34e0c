"""The running node under faults: a destination that is down, one that hangs, one that answers
too late, a SIGTERM in the middle of a transfer, a late image, a full disk and a resent study.

Every test runs ``python -m node serve`` as a process of its own (nodeproc.NodeProcess) on free
127.0.0.1 ports, sends with DCMTK's storescu the way a modality would, and receives the node's
results with DCMTK's storescp (``+uf``: a duplicate delivery shows as a second file). Received
files are identified by their headers, never by their names. State is checked in the node's own
database, read-only.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt

from node.testing.study import write_study
from nodeproc import (
    MAMMO_CAD_SR, NodeProcess, ThrottledProxy, acknowledged_files, leftover_files,
    node_config, received_headers, sink, store_responses,
)
from peers import (
    ECHOSCU, LOOPBACK, STORESCP, STORESCU, StoreSCP, echoscu, free_port, require, storescu,
    wait_for,
)

pytestmark = pytest.mark.slow

UNIQUE_FILENAMES = ("+uf",)  # storescp: a second copy of an instance gets a file of its own


@pytest.fixture(autouse=True)
def _dcmtk():
    require(STORESCU, STORESCP, ECHOSCU)


@pytest.fixture
def spool_root(tmp_path):
    return tmp_path


def sink_scp(stack: ExitStack, tmp_path: Path, name: str = "sink") -> StoreSCP:
    return stack.enter_context(StoreSCP(tmp_path / name, aet="SINK", extra_args=UNIQUE_FILENAMES))


def sop_uid(path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def send(node: NodeProcess, files) -> subprocess.CompletedProcess:
    """storescu of ``files`` in one association; asserts that each got Success."""
    sent = storescu(node.ae_title, node.port, files)
    responses = store_responses(sent.stdout)
    assert sent.returncode == 0 and [r for _, r in responses] == ["Success"] * len(files), (
        f"storescu -> {sent.returncode}:\n{sent.stdout}\n{node.log_tail()}")
    return sent


def srs(scp: StoreSCP) -> list:
    return [ds for ds in received_headers(scp) if ds.SOPClassUID == MAMMO_CAD_SR]


def evidence_uids(sr) -> list[str]:
    """Every image the SR's CurrentRequestedProcedureEvidenceSequence references."""
    return [str(sop.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence]


def wait_delivered(node: NodeProcess, scp: StoreSCP, timeout_s: float = 30) -> list:
    """Wait until the outbox holds no pending delivery and every done one is at the sink;
    returns the sink's headers."""
    def settled():
        node.check_alive()
        if node.pending_deliveries():
            return None
        done = node.query("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'done'")[0]["n"]
        headers = received_headers(scp)
        return headers if len(headers) >= done else None

    try:
        return wait_for(settled, timeout_s, "every delivery done and at the sink", interval_s=0.1)
    except AssertionError as exc:
        rows = node.query("SELECT * FROM deliveries")
        raise AssertionError(f"{exc}\n{rows}\n{node.log_tail()}\n{scp.log_text()}") from None


# -- 1 -----------------------------------------------------------------------------------------

STATUS_LINE = re.compile(r"^\s+sink: (\d+) pending, (\d+) delivered, (\d+) failed.*, last error: (.+)$",
                         re.MULTILINE)


def test_destination_down_then_up_gets_every_result_once(tmp_path, spool_root, start_node,
                                                          stack):
    sink_port = free_port()  # reserved for the destination; nothing listens there yet
    node = start_node(node_config(spool_root, destinations={"sink": sink(sink_port)}))
    study_a = write_study(tmp_path / "a", seed=811)
    study_b = write_study(tmp_path / "b", seed=812)
    uid_a, uid_b = study_a.identity.study_instance_uid, study_b.identity.study_instance_uid

    send(node, study_a.paths)
    assert node.wait_study(uid_a, timeout_s=60)["state"] == "done"
    wait_for(lambda: node.query("SELECT 1 FROM deliveries WHERE attempts > 0 AND last_error != ''"),
             30, "a failed delivery attempt to the sink that is down")
    status = node.status()
    assert status.returncode == 0, status.stderr
    match = STATUS_LINE.search(status.stdout)
    assert match, status.stdout
    pending, delivered, _, error = match.groups()
    assert int(pending) > 0 and int(delivered) == 0, status.stdout
    assert "SINK" in error and str(sink_port) in error, status.stdout

    # the node keeps receiving and analysing while the destination is down
    send(node, study_b.paths)
    assert node.wait_study(uid_b, timeout_s=60)["state"] == "done"
    assert node.alive()

    scp = stack.enter_context(StoreSCP(tmp_path / "sink", port=sink_port, aet="SINK",
                                             extra_args=UNIQUE_FILENAMES))
    headers = wait_delivered(node, scp, timeout_s=30)

    outputs = node.query("SELECT sop_uid, study_uid, kind FROM outputs")
    assert {o["study_uid"] for o in outputs} == {uid_a, uid_b}
    received = Counter(str(ds.SOPInstanceUID) for ds in headers)
    assert set(received) == {o["sop_uid"] for o in outputs}, (received, outputs)
    assert all(count == 1 for count in received.values()), f"delivered more than once: {received}"
    deliveries = node.query("SELECT output_uid, destination, state FROM deliveries")
    assert sorted(d["output_uid"] for d in deliveries) == sorted(o["sop_uid"] for o in outputs)
    assert {d["state"] for d in deliveries} == {"done"}, deliveries
    study_of = {o["sop_uid"]: o["study_uid"] for o in outputs}
    reports = [ds for ds in headers if ds.SOPClassUID == MAMMO_CAD_SR]
    assert sorted(str(ds.StudyInstanceUID) for ds in reports) == sorted([uid_a, uid_b])
    for ds in headers:
        assert str(ds.StudyInstanceUID) == study_of[str(ds.SOPInstanceUID)]
    again = node.status()
    assert re.search(r"^\s+sink: 0 pending, \d+ delivered, 0 failed$", again.stdout, re.MULTILINE), (
        again.stdout)


class BlackHole:
    """A destination that hangs: a loopback listener that accepts every connection and reads
    whatever comes, but never answers (no A-ASSOCIATE-AC, no close)."""

    def __init__(self):
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections.append(conn)
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    @staticmethod
    def _swallow(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def close(self) -> None:
        """Close the listener and every connection (shutdown first: a plain close would leave
        the threads blocked in accept and recv holding them open)."""
        for sock in (self.listener, *self.connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


HUNG_TIMEOUT_S = 120  # the hung destination's timeout_s: far longer than the test waits
SLOW_TIMEOUT_S = 2  # the slow destination's timeout_s


def test_a_hung_destination_holds_back_only_its_own_results(tmp_path, spool_root, start_node, stack):
    hung = BlackHole()
    stack.callback(hung.close)
    healthy = sink_scp(stack, tmp_path, "healthy")
    node = start_node(node_config(spool_root, destinations={
        "hung": sink(hung.port, ae_title="HUNG", timeout_s=HUNG_TIMEOUT_S), "healthy": sink(healthy.port)}))
    studies = [write_study(tmp_path / f"s{seed}", seed=seed) for seed in (815, 816)]

    for study in studies:  # the node keeps receiving and analysing while one destination hangs
        send(node, study.paths)
        assert node.wait_study(study.identity.study_instance_uid, timeout_s=60)["state"] == "done"

    def delivered(destination: str) -> bool:
        states = [d["state"] for d in node.query(
            "SELECT state FROM deliveries WHERE destination = ?", (destination,))]
        return bool(states) and set(states) == {"done"}

    outputs = {o["sop_uid"] for o in node.query("SELECT sop_uid FROM outputs")}
    # well within the hung destination's timeout: its association attempt does not hold them up
    wait_for(lambda: delivered("healthy"), HUNG_TIMEOUT_S / 2, "every result at the healthy destination")
    assert Counter(str(ds.SOPInstanceUID) for ds in received_headers(healthy)) == Counter(outputs)
    waiting = node.query("SELECT state FROM deliveries WHERE destination = 'hung'")
    assert hung.connections and len(waiting) == len(outputs), waiting
    assert {d["state"] for d in waiting} == {"pending"}, waiting

    hung.close()  # the attempt in progress fails (transient); the destination comes back
    back = stack.enter_context(StoreSCP(tmp_path / "back", port=hung.port, aet="HUNG",
                                        extra_args=UNIQUE_FILENAMES))
    wait_for(lambda: delivered("hung"), HUNG_TIMEOUT_S / 2, "every result at the destination that hung")
    assert Counter(str(ds.SOPInstanceUID) for ds in received_headers(back)) == Counter(outputs)


def test_a_c_store_left_unanswered_is_sent_again_after_the_timeout(tmp_path, spool_root, start_node,
                                                                    stack):
    """A destination that takes the first object and answers only after the node's timeout: the
    node gives up on that answer (a transient failure), and sends that object again, and the rest
    of the association's objects, in a new association."""
    arrived: list[str] = []

    def store(event):
        arrived.append(str(event.request.AffectedSOPInstanceUID))
        if len(arrived) == 1:
            time.sleep(3 * SLOW_TIMEOUT_S)  # the node stops waiting for this answer
        return 0x0000

    ae = AE(ae_title="SLOW")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server((LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    stack.callback(server.shutdown)
    node = start_node(node_config(spool_root, destinations={
        "slow": sink(port, ae_title="SLOW", timeout_s=SLOW_TIMEOUT_S)}))
    study = write_study(tmp_path / "s", seed=817)
    send(node, study.paths)
    assert node.wait_study(study.identity.study_instance_uid, timeout_s=60)["state"] == "done"
    wait_for(lambda: {d["state"] for d in node.query("SELECT state FROM deliveries")} == {"done"},
             60, "every result delivered")
    outputs = {o["sop_uid"] for o in node.query("SELECT sop_uid FROM outputs")}
    counts = Counter(arrived)
    assert set(counts) == outputs and len(outputs) > 1, counts
    first = arrived[0]
    assert counts[first] == 2 and all(n == 1 for uid, n in counts.items() if uid != first), counts
    attempts = node.query("SELECT outcome, detail FROM delivery_attempts WHERE output_uid = ? ORDER BY id",
                          (first,))
    assert [a["outcome"] for a in attempts] == ["retry", "delivered"], attempts
    assert "no response" in attempts[0]["detail"], attempts


# -- 2 -----------------------------------------------------------------------------------------

GRACE_S = 1.0
EXIT_MARGIN_S = 20.0  # aborting associations, the scheduler and the dispatcher winding down
THROTTLE_BYTES_PER_S = 1.4e6  # ~0.3 s per 430 kB image: the 12 take ~4 s, the grace lets ~3 in


def test_sigterm_mid_transfer_then_restart_delivers_every_acknowledged_instance(
        tmp_path, spool_root, start_node, stack):
    studies = [write_study(tmp_path / f"s{seed}", seed=seed) for seed in (821, 822, 823)]
    # interleaved, so that the cut leaves every study partly received
    files = [study.views[view][0] for view in ("RCC", "LCC", "RMLO", "LMLO") for study in studies]
    uid_of_file = {str(path): sop_uid(path) for path in files}
    study_of_sop = {uid_of_file[str(path)]: study.identity.study_instance_uid
                    for study in studies for path in study.paths}
    scp = sink_scp(stack, tmp_path)
    config = node_config(spool_root, destinations={"sink": sink(scp.port)},
                         listen={"shutdown_grace_s": GRACE_S})
    node = start_node(config, "first")
    proxy = stack.enter_context(ThrottledProxy(node.port, THROTTLE_BYTES_PER_S))

    scu_log = tmp_path / "storescu.log"
    with open(scu_log, "w") as out:
        scu = subprocess.Popen([STORESCU, "-v", "-aet", "MODALITY", "-aec", node.ae_title,
                                LOOPBACK, str(proxy.port), *map(str, files)],
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: node.check_alive() or node.stored_count() >= 5, 60,
                 "5 instances stored", interval_s=0.02)
        node.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        exit_code = node.wait_exit(GRACE_S + EXIT_MARGIN_S)
        took_s = time.monotonic() - signalled
        assert exit_code is not None, (
            f"the node was still running {GRACE_S + EXIT_MARGIN_S} s after SIGTERM\n{node.log_tail()}")
        scu.wait(timeout=60)
    finally:
        if scu.poll() is None:
            scu.kill()
            scu.wait()
    first_log = node.log_text()
    output = scu_log.read_text(errors="replace")
    acknowledged = [uid_of_file[path] for path in acknowledged_files(output)]
    assert 5 <= len(acknowledged) < len(files), (
        f"expected the SIGTERM to cut the transfer after >= 5 instances:\n{output}")
    assert scu.returncode != 0, output

    restarted = start_node({**config, "listen": {**config["listen"], "port": free_port()}},
                           "restart")
    assert not leftover_files(restarted.spool / "incoming"), "a partial receive was left behind"
    rows = restarted.query("SELECT sop_uid, study_uid, path FROM instances")
    kept = {row["sop_uid"]: row["study_uid"] for row in rows}
    assert set(acknowledged) <= set(kept), f"acknowledged but not kept: {set(acknowledged) - set(kept)}"
    for row in rows:
        assert (restarted.spool / row["path"]).is_file(), row
    partly_sent = {study_of_sop[uid] for uid in acknowledged}
    for uid in partly_sent:
        assert restarted.wait_study(uid, timeout_s=60)["state"] == "done"
    headers = wait_delivered(restarted, scp, timeout_s=30)
    reports = {str(ds.SOPInstanceUID): ds for ds in headers if ds.SOPClassUID == MAMMO_CAD_SR}
    for uid in partly_sent:
        row = restarted.study_row(uid)
        assert row["sr_uid"] in reports, f"no SR of study {uid} at the sink: {sorted(reports)}"
        listed = evidence_uids(reports[row["sr_uid"]])
        mine = {sop for sop in acknowledged if study_of_sop[sop] == uid}
        assert mine <= set(listed), f"study {uid}: SR lacks acknowledged {mine - set(listed)}"
        assert sorted(listed) == sorted(s for s, st in kept.items() if st == uid)
    assert not leftover_files(restarted.spool / "incoming")
    # last, so that everything above is checked even though the exit code is wrong
    assert exit_code == 0, (f"the node exited with {exit_code} {took_s:.1f} s after SIGTERM:\n"
                            f"{first_log[-4000:]}")


# -- 3 -----------------------------------------------------------------------------------------

def test_late_image_reanalyses_and_supersedes(tmp_path, spool_root, start_node, stack):
    scp = sink_scp(stack, tmp_path)
    node = start_node(node_config(spool_root, destinations={"sink": sink(scp.port)}))
    study = write_study(tmp_path / "study", seed=831)
    uid = study.identity.study_instance_uid
    first_three = [study.views[v][0] for v in ("RCC", "LCC", "RMLO")]
    late = study.views["LMLO"][0]

    send(node, first_three)
    row = node.wait_study(uid, timeout_s=60)
    assert (row["state"], row["generation"]) == ("done", 1), row
    wait_delivered(node, scp)
    [first] = srs(scp)
    assert sorted(evidence_uids(first)) == sorted(map(sop_uid, first_three))

    send(node, [late])
    wait_for(lambda: node.check_alive() or (node.study_row(uid)["generation"] == 2
                                            and node.study_state(uid) in ("done", "failed")),
             60, "the second analysis", interval_s=0.1)
    assert node.study_state(uid) == "done", node.log_tail()
    wait_delivered(node, scp)
    reports = srs(scp)
    uids = [str(ds.SOPInstanceUID) for ds in reports]
    assert len(reports) == 2 and len(set(uids)) == 2, f"expected a second, new SR; got {uids}"
    [second] = [ds for ds in reports if ds.SOPInstanceUID != first.SOPInstanceUID]
    assert sorted(evidence_uids(second)) == sorted(map(sop_uid, study.paths))
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    row = node.study_row(uid)
    assert row["generation"] == 2 and row["sr_uid"] == second.SOPInstanceUID, row


# -- 4 -----------------------------------------------------------------------------------------

def test_low_disk_answers_out_of_resources_and_keeps_nothing(tmp_path, spool_root, start_node):
    free_mb = shutil.disk_usage(spool_root).free / 1e6
    node = start_node(node_config(spool_root, storage={"min_free_mb": int(free_mb + 1e6)}))
    image = write_study(tmp_path / "study", seed=841).views["RCC"][0]

    sent = storescu(node.ae_title, node.port, [image], extra_args=["-d"])  # -d: the status code
    assert store_responses(sent.stdout) == [(str(image), "0xa700: Refused: Out of resources")], (
        sent.stdout[-3000:])
    assert sent.returncode != 0

    assert node.query("SELECT * FROM instances") == []
    assert node.query("SELECT * FROM studies") == []
    assert not list((node.spool / "instances").rglob("*.dcm"))
    assert not leftover_files(node.spool / "incoming")
    assert echoscu(node.ae_title, node.port).returncode == 0, node.log_tail()
    assert node.alive()


# -- 5 -----------------------------------------------------------------------------------------

def test_resent_instance_is_not_analysed_twice(tmp_path, spool_root, start_node, stack):
    scp = sink_scp(stack, tmp_path)
    config = node_config(spool_root, destinations={"sink": sink(scp.port)})
    node = start_node(config)
    study = write_study(tmp_path / "study", seed=851)
    uid = study.identity.study_instance_uid

    send(node, study.paths)
    row = node.wait_study(uid, timeout_s=60)
    assert (row["state"], row["generation"]) == ("done", 1), row
    before = wait_delivered(node, scp)
    assert len([ds for ds in before if ds.SOPClassUID == MAMMO_CAD_SR]) == 1

    send(node, study.paths)
    resent_at = time.monotonic()
    quiet_s = config["study"]["complete_after_s"] + 2
    while time.monotonic() - resent_at < quiet_s:  # it must stay done at generation 1 throughout
        row = node.study_row(uid)
        assert (row["state"], row["generation"]) == ("done", 1), row
        node.check_alive()
        time.sleep(0.1)
    assert node.log_text().count(f"analysing study={uid}") == 1, node.log_tail()
    assert len(node.query("SELECT * FROM instances WHERE study_uid = ?", (uid,))) == 4
    after = wait_delivered(node, scp)
    assert len([ds for ds in after if ds.SOPClassUID == MAMMO_CAD_SR]) == 1
    assert sorted(str(ds.SOPInstanceUID) for ds in after) == sorted(
        str(ds.SOPInstanceUID) for ds in before)


# -- regressions: bugs these tests found in the first version of the node ---------------------

def test_long_spool_path_still_analyses(tmp_path, start_node):
    """A long spool path is ordinary. The node points Python's temp folder at ``<spool>/incoming``
    (for pynetdicom's chunked receive); multiprocessing's forkserver socket must not follow it
    there, or past the 107-byte AF_UNIX limit no worker ever starts."""
    spool_root = tmp_path / "a-spool-folder-with-an-ordinary-but-longer-name"
    config = node_config(spool_root)
    assert len(config["storage"]["path"]) > 80
    node = start_node(config)
    study = write_study(tmp_path / "study", seed=861)
    uid = study.identity.study_instance_uid
    send(node, study.paths)

    def settled():
        node.check_alive()
        state = node.study_state(uid)
        return state in ("done", "failed") or "scheduler pass failed" in node.log_text()

    wait_for(settled, 60, f"study {uid} analysed or the scheduler failing")
    assert node.study_state(uid) == "done", node.log_tail()


def test_restart_after_sigkill_resumes(tmp_path, spool_root, start_node):
    """kill -9 (OOM killer, power loss) must not stop the node from coming back: the state is in
    the spool, and whatever a killed process left in ``<spool>/incoming`` is cleared at start."""
    config = node_config(spool_root)
    node = start_node(config, "killed")
    first = write_study(tmp_path / "first", seed=871)
    second = write_study(tmp_path / "second", seed=872)
    send(node, first.paths)
    assert node.wait_study(first.identity.study_instance_uid)["state"] == "done"
    send(node, second.paths)
    uid = second.identity.study_instance_uid
    wait_for(lambda: node.check_alive() or f"analysing study={uid}" in node.log_text(), 60,
             "the second analysis to start", interval_s=0.02)
    node.kill()  # SIGKILL, mid-analysis as a rule

    restarted = start_node({**config, "listen": {**config["listen"], "port": free_port()}},
                           "restarted")
    assert restarted.wait_study(uid, timeout_s=60)["state"] == "done"
    assert restarted.study_state(first.identity.study_instance_uid) == "done"


def test_given_up_deliveries_go_out_after_calcnode_retry(tmp_path, spool_root, start_node, stack):
    """A destination down for longer than retry.max_age_h: its deliveries fail for good with the
    reason; ``calcnode retry`` queues them again and they go out once the destination is back."""
    sink_port = free_port()
    node = start_node(node_config(spool_root, destinations={"sink": sink(sink_port)},
                                  retry={"max_age_h": 0.0005}))  # 1.8 s
    study = write_study(tmp_path / "study", seed=881)
    send(node, study.paths)
    assert node.wait_study(study.identity.study_instance_uid)["state"] == "done"
    made = {o["sop_uid"] for o in node.query("SELECT sop_uid FROM outputs")}
    failed = wait_for(lambda: len(node.query("SELECT 1 FROM deliveries WHERE state = 'failed'")) == len(made),
                      30, "every delivery to fail for good")
    assert failed
    assert all("gave up after" in d["last_error"] for d in node.query("SELECT last_error FROM deliveries"))
    assert re.search(r"sink: 0 pending, 0 delivered, \d+ failed", node.status().stdout)

    scp = stack.enter_context(StoreSCP(tmp_path / "sink", port=sink_port, aet="SINK",
                                             extra_args=UNIQUE_FILENAMES))
    retried = node.cli("retry")
    assert retried.returncode == 0 and f"{len(made)} failed deliveries queued again" in retried.stdout
    headers = wait_delivered(node, scp)
    assert Counter(str(ds.SOPInstanceUID) for ds in headers) == Counter(made)


def test_reply_to_sender_destination_gets_only_the_studies_its_ae_sent(tmp_path, spool_root,
                                                                       start_node, stack):
    everything = sink_scp(stack, tmp_path, "all")
    replies = stack.enter_context(StoreSCP(tmp_path / "replies", aet="MODALITY"))
    destinations = {"all": sink(everything.port),
                    "modality": {**sink(replies.port, ae_title="MODALITY"), "reply_to_sender": True}}
    node = start_node(node_config(spool_root, destinations=destinations))
    own = write_study(tmp_path / "own", seed=891)
    other = write_study(tmp_path / "other", seed=892)
    assert storescu(node.ae_title, node.port, own.paths, calling="MODALITY").returncode == 0
    assert storescu(node.ae_title, node.port, other.paths, calling="ELSEWHERE").returncode == 0
    for study in (own, other):
        assert node.wait_study(study.identity.study_instance_uid)["state"] == "done"
    def arrived():
        if node.pending_deliveries():
            return False
        done = {d["destination"]: d["n"] for d in node.query(
            "SELECT destination, COUNT(*) AS n FROM deliveries WHERE state = 'done' GROUP BY 1")}
        return (len(everything.files()), len(replies.files())) == (done["all"], done["modality"])

    wait_for(arrived, 30, "both destinations to have their deliveries")
    studies = {str(ds.StudyInstanceUID) for ds in received_headers(replies)}
    assert studies == {own.identity.study_instance_uid}
    assert {str(ds.StudyInstanceUID) for ds in received_headers(everything)} == {
        own.identity.study_instance_uid, other.identity.study_instance_uid}
