"""Worklist notices (node/notices.py): the HL7 ORU^R01 and its escaping, ACK and HTTP
classification, the webhook JSON; then on loopback against a real MLLP listener and HTTP server:
the senders alone, and a real node process that receives a study by DCMTK storescu.

The MLLP listener is a socketserver that parses each message with the ``hl7`` package and
answers with that package's ``create_ack``; the webhook receiver is ``http.server`` in a thread.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socketserver
import threading
from dataclasses import replace
from pathlib import Path

import hl7
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from node import notices
from node.config import HL7Config, WebhookConfig, WorklistConfig, parse_config
from node.dispatcher import Dispatcher
from node.errors import ConfigError
from node.model import AnalysisTask, OutboxJob, SourceRef, StoreOutcome
from node.notices import Notice
from node.reporting.common import result_description
from node.testing.study import write_study
from node.worker import run_analysis
from peers import ECHOSCU, LOOPBACK, STORESCU, free_port, require, storescu, wait_for
from nodeproc import NodeProcess, node_config, store_responses

NOW = dt.datetime(2026, 1, 2, 10, 30, tzinfo=dt.timezone.utc)
NASTY_NAME = "O'Brien|Smith&Co~X\\Y^Anne\nMarie"  # every delimiter, a backslash and a newline
HL7 = HL7Config(host=LOOPBACK, port=2575, sending_application="CALC|NODE",
                sending_facility="SITE&1", receiving_application="RIS",
                receiving_facility="MAMMO^DEPT", timeout_s=2)
NOTICE = Notice(notice_id="2.25.1234", study_instance_uid="1.2.3.4.5", accession_number="ACC~7|8",
                patient_id="PID^42\\9", patient_name=NASTY_NAME, flag="SUSPICIOUS", clusters=2,
                highest_certainty=85.5, analysed_at="2026-01-02T10:29:00+00:00", corrected=False)


def parse(message: str) -> hl7.Message:
    return hl7.parse(message)


def observations(message: hl7.Message) -> dict[str, hl7.Segment]:
    return {str(obx(3)(1)(1)): obx for obx in message.segments("OBX")}


# -- building and escaping ---------------------------------------------------------------------

def test_escape_replaces_delimiters_escape_character_and_line_breaks():
    assert notices.escape("a|b^c&d~e\\f\rg\nh") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D\\g\\X0A\\h"
    assert notices.escape("plain text 1.2.3") == "plain text 1.2.3"


def test_oru_message_carries_header_patient_order_and_results():
    text = notices.oru_message(NOTICE, HL7, NOW)
    assert text.endswith("\r") and "\n" not in text
    message = parse(text)
    assert [str(s[0]) for s in message] == ["MSH", "PID", "OBR", "OBX", "OBX", "OBX", "OBX"]
    assert str(message.segment("MSH")(2)) == "^~\\&"
    # the hl7 accessor unescapes: a delimiter comes back inside a value only if it was escaped
    assert [message[f"MSH.F{n}"] for n in (3, 4, 5, 6)] == \
        ["CALC|NODE", "SITE&1", "RIS", "MAMMO^DEPT"]
    assert message["MSH.F7"] == "20260102103000+0000"
    assert (message["MSH.F9.R1.C1"], message["MSH.F9.R1.C2"], message["MSH.F9.R1.C3"]) == \
        ("ORU", "R01", "ORU_R01")
    assert message["MSH.F10"] == notices.control_id(NOTICE) and len(message["MSH.F10"]) <= 20
    assert (message["MSH.F11"], message["MSH.F12"], message["MSH.F18"]) == ("P", "2.5", "UNICODE UTF-8")
    assert message["PID.F3"] == "PID^42\\9"
    # DICOM family^given -> XPN family^given; the escapes keep the delimiters inside components
    assert message["PID.F5.R1.C1"] == "O'Brien|Smith&Co~X\\Y"
    assert message["PID.F5.R1.C2"] == "Anne\nMarie"
    assert message["OBR.F3"] == message["OBR.F18"] == "ACC~7|8"
    assert (message["OBR.F7"], message["OBR.F25"]) == ("20260102102900+0000", "F")
    obx = observations(message)
    assert str(obx["110180"](5)) == "1.2.3.4.5" and str(obx["110180"](2)) == "ST"
    flag = obx["CALCFLAG"]
    assert (str(flag(2)), str(flag(5)), str(flag(8)), str(flag(11))) == ("ST", "SUSPICIOUS", "A", "F")
    assert (str(obx["CALCCLUSTERS"](2)), str(obx["CALCCLUSTERS"](5))) == ("NM", "2")
    assert (str(obx["CALCCERTAINTY"](2)), str(obx["CALCCERTAINTY"](5))) == ("NM", "85.5")


def test_corrected_notice_without_clusters():
    notice = replace(NOTICE, flag="NOT SUSPICIOUS", clusters=0, highest_certainty=None,
                     corrected=True)
    message = parse(notices.oru_message(notice, HL7, NOW))
    obx = observations(message)
    assert set(obx) == {"110180", "CALCFLAG", "CALCCLUSTERS"}  # no certainty without a cluster
    assert (str(obx["CALCFLAG"](5)), str(obx["CALCFLAG"](8))) == ("NOT SUSPICIOUS", "N")
    assert message["OBR.F25"] == "C" and {str(o(11)) for o in obx.values()} == {"C"}


def test_control_id_is_stable_per_notice_and_differs_between_notices():
    assert notices.control_id(NOTICE) == notices.control_id(replace(NOTICE, clusters=3))
    assert notices.control_id(NOTICE) != notices.control_id(replace(NOTICE, notice_id="2.25.1235"))


def header(**values) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3.4.5"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_notice_from_header_written_and_read_back(tmp_path):
    ds = header(PatientName="Yamada^Tarou=山田^太郎", PatientID="P1", AccessionNumber="A1")
    notice = notices.make_notice(ds, 1, 84.96, NOW, corrected=True)
    assert (notice.patient_name, notice.patient_id, notice.accession_number) == \
        ("Yamada^Tarou", "P1", "A1")
    assert (notice.flag, notice.clusters, notice.highest_certainty, notice.corrected) == \
        ("SUSPICIOUS", 1, 85.0, True)
    assert notice.analysed_at == "2026-01-02T10:30:00+00:00"
    output = notices.write_notice(notice, tmp_path / "study", fsync=False)
    assert (output.kind, output.sop_instance_uid) == ("notice", notice.notice_id)
    assert Path(output.path).name == f"notice_{notice.notice_id}.json"
    assert notices.read_notice(output.path) == notice
    bare = notices.make_notice(header(), 0, None, NOW, corrected=False)
    assert (bare.flag, bare.patient_id, bare.accession_number, bare.highest_certainty) == \
        ("NOT SUSPICIOUS", "", "", None)
    assert bare.notice_id != notice.notice_id


def test_series_description_flag_text():
    assert result_description("calcnode", 2) == "calcnode CAD: SUSPICIOUS, 2 clusters"
    assert result_description("calcnode", 1) == "calcnode CAD: SUSPICIOUS, 1 cluster"
    assert result_description("calcnode", 0) == "calcnode CAD: NOT SUSPICIOUS"
    assert len(result_description("x" * 64, 12)) == 64


def test_webhook_body_has_the_result_and_no_patient_identity():
    body = notices.webhook_body(replace(NOTICE, corrected=True))
    assert body == {"notice_id": "2.25.1234", "study_instance_uid": "1.2.3.4.5",
                    "accession_number": "ACC~7|8", "flag": "SUSPICIOUS", "clusters": 2,
                    "highest_certainty": 85.5, "analysed_at": "2026-01-02T10:29:00+00:00",
                    "result_status": "corrected"}
    assert json.loads(json.dumps(body)) == body


# -- classification ----------------------------------------------------------------------------

def ack(code: str, control_id: str = "CTRL1", extra: str = "") -> str:
    return f"MSH|^~\\&|RIS||CALCNODE||20260102||ACK^R01^ACK|99|P|2.5\rMSA|{code}|{control_id}{extra}\r"


@pytest.mark.parametrize("code, outcome", [
    ("AA", StoreOutcome.SUCCESS), ("CA", StoreOutcome.SUCCESS),
    ("AE", StoreOutcome.TRANSIENT), ("CE", StoreOutcome.TRANSIENT),
    ("AR", StoreOutcome.PERMANENT), ("CR", StoreOutcome.PERMANENT),
])
def test_ack_codes(code, outcome):
    assert notices.classify_ack(ack(code), "CTRL1").outcome is outcome


def test_ack_for_another_message_or_garbled_is_transient():
    assert notices.classify_ack(ack("AA", "OTHER"), "CTRL1").outcome is StoreOutcome.TRANSIENT
    assert notices.classify_ack("not hl7 at all", "CTRL1").outcome is StoreOutcome.TRANSIENT
    assert notices.classify_ack("MSH|^~\\&|RIS\r", "CTRL1").outcome is StoreOutcome.TRANSIENT


def test_ack_reason_keeps_the_error_code_and_drops_free_text():
    result = notices.classify_ack(
        ack("AE", extra="|Patient SMITH 12345 unknown\rERR|||204^Unknown key identifier^HL70357|E"),
        "CTRL1")
    assert result.outcome is StoreOutcome.TRANSIENT
    assert "204" in result.reason and "SMITH" not in result.reason and "12345" not in result.reason


@pytest.mark.parametrize("status, outcome", [
    (200, StoreOutcome.SUCCESS), (204, StoreOutcome.SUCCESS),
    (500, StoreOutcome.TRANSIENT), (503, StoreOutcome.TRANSIENT),
    (408, StoreOutcome.TRANSIENT), (429, StoreOutcome.TRANSIENT),
    (400, StoreOutcome.PERMANENT), (404, StoreOutcome.PERMANENT), (302, StoreOutcome.PERMANENT),
])
def test_http_status(status, outcome):
    assert notices.classify_http(status).outcome is outcome


def test_webhook_url_must_be_http():
    worklist = WorklistConfig(webhook=WebhookConfig(url="ftp://ris/notices"))
    with pytest.raises(ConfigError, match="worklist.webhook.url"):
        notices.senders(worklist)
    on = WorklistConfig(hl7=HL7, webhook=WebhookConfig(url="http://127.0.0.1:1/x"))
    assert set(notices.senders(on)) == {"worklist.hl7", "worklist.webhook"}
    assert notices.senders(WorklistConfig()) == {}


# -- loopback peers ----------------------------------------------------------------------------

class ServerThread:
    """A socketserver answering on a daemon thread; ``stop`` shuts it down."""

    _server: socketserver.BaseServer | None = None

    def _serve(self, server: socketserver.BaseServer):
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class MLLPListener(ServerThread):
    """An HL7 receiver on 127.0.0.1:port: keeps each parsed message and answers ``ack_code``
    (None: read the message and close without an answer)."""

    def __init__(self, port: int, ack_code: str | None = "AA"):
        self.port = port
        self.ack_code = ack_code
        self.messages: list[hl7.Message] = []
        self.lock = threading.Lock()

    def received(self) -> list[hl7.Message]:
        with self.lock:
            return list(self.messages)

    def start(self) -> MLLPListener:
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(10)
                buffer = b""
                while True:
                    while notices.MLLP_END not in buffer:
                        chunk = self.request.recv(65536)
                        if not chunk:
                            return
                        buffer += chunk
                    block, buffer = buffer.split(notices.MLLP_END, 1)
                    message = hl7.parse(block.lstrip(notices.MLLP_START).decode("utf-8"))
                    with listener.lock:
                        listener.messages.append(message)
                        code = listener.ack_code
                    if code is None:
                        return
                    answer = str(message.create_ack(code)).encode("utf-8")
                    self.request.sendall(notices.MLLP_START + answer + notices.MLLP_END)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        return self._serve(Server((LOOPBACK, self.port), Handler))


class WebhookReceiver(ServerThread):
    """http.server on 127.0.0.1:port recording each POST (path, headers, JSON body)."""

    def __init__(self, port: int, status: int = 200):
        self.port = port
        self.status = status
        self.posts: list[tuple[str, str, dict]] = []

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((self.path, self.headers.get("Content-Type", ""),
                                       json.loads(body)))
                self.send_response(receiver.status)
                if receiver.status == 302:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        return self._serve(http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler))


@pytest.fixture
def peers_started():
    """``peers_started(peer)`` starts a peer and stops it at teardown."""
    started = []

    def start(peer):
        started.append(peer)
        return peer.start()

    yield start
    for peer in reversed(started):
        peer.stop()


def notice_job(tmp_path: Path, notice: Notice = NOTICE, number: int = 1) -> OutboxJob:
    output = notices.write_notice(notice, tmp_path, fsync=False)
    return OutboxJob(number, output.sop_instance_uid, "", notice.study_instance_uid, "x",
                     output.path, 0, 0.0)


def test_send_hl7_reads_each_ack(tmp_path, peers_started):
    listener = peers_started(MLLPListener(free_port(), "AA"))
    config = replace(HL7, port=listener.port)
    first, second = notice_job(tmp_path), notice_job(tmp_path, replace(NOTICE, notice_id="2.25.99"), 2)
    results = notices.send_hl7(config, [first, second])
    assert [r.outcome for r in results] == [StoreOutcome.SUCCESS] * 2
    assert [m["MSH.F10"] for m in listener.received()] == \
        [notices.control_id(NOTICE), notices.control_id(replace(NOTICE, notice_id="2.25.99"))]
    listener.ack_code = "AR"
    assert notices.send_hl7(config, [first])[0].outcome is StoreOutcome.PERMANENT


def test_send_hl7_without_ack_or_listener_is_transient_and_holds_later_notices(tmp_path,
                                                                                peers_started):
    jobs = [notice_job(tmp_path), notice_job(tmp_path, replace(NOTICE, notice_id="2.25.99"), 2)]
    nobody = replace(HL7, port=free_port())
    assert [r.outcome for r in notices.send_hl7(nobody, jobs)] == [StoreOutcome.TRANSIENT] * 2
    mute = peers_started(MLLPListener(free_port(), ack_code=None))
    results = notices.send_hl7(replace(HL7, port=mute.port), jobs)
    assert [r.outcome for r in results] == [StoreOutcome.TRANSIENT] * 2
    assert len(mute.received()) == 1  # the second waits behind the first, in order


def test_send_webhook_posts_json_and_classifies_the_answer(tmp_path, peers_started):
    receiver = peers_started(WebhookReceiver(free_port(), 200))
    config = WebhookConfig(url=f"http://{LOOPBACK}:{receiver.port}/calcnode", timeout_s=5)
    job = notice_job(tmp_path)
    assert notices.send_webhook(config, [job])[0].outcome is StoreOutcome.SUCCESS
    assert receiver.posts == [("/calcnode", "application/json", notices.webhook_body(NOTICE))]
    for status, outcome in ((503, StoreOutcome.TRANSIENT), (404, StoreOutcome.PERMANENT),
                            (302, StoreOutcome.PERMANENT)):
        receiver.status = status
        assert notices.send_webhook(config, [job])[0].outcome is outcome
    assert [p[0] for p in receiver.posts] == ["/calcnode"] * 4  # the redirect was not followed
    down = WebhookConfig(url=f"http://{LOOPBACK}:{free_port()}/x", timeout_s=2)
    assert notices.send_webhook(down, [job])[0].outcome is StoreOutcome.TRANSIENT


# -- end to end: a node process, storescu, the listener and the webhook ------------------------

PATIENT_NAME = "NOTICE|TEST&X~Y^ANNE"
PATIENT_ID = "PID|77^&"


def worklist(hl7_port: int, webhook_port: int | None = None) -> dict:
    section = {"hl7": {"host": LOOPBACK, "port": hl7_port, "receiving_application": "RIS",
                       "timeout_s": 5}}
    if webhook_port is not None:
        section["webhook"] = {"url": f"http://{LOOPBACK}:{webhook_port}/notices", "timeout_s": 5}
    return section


def send_study(node: NodeProcess, tmp_path: Path, seed: int):
    """A synthetic study (clusters on RCC and RMLO) with delimiters in the patient's name and
    ID, C-STOREd by storescu; returns its identity."""
    study = write_study(tmp_path / f"study{seed}", seed=seed)
    for path in study.paths:
        ds = dcmread(path)
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.save_as(path, enforce_file_format=True)
    sent = storescu(node.ae_title, node.port, study.paths)
    assert [r for _, r in store_responses(sent.stdout)] == ["Success"] * 4, sent.stdout
    return study.identity


def deliveries(node: NodeProcess, destination: str) -> list[dict]:
    return node.query("SELECT * FROM deliveries WHERE destination = ?", (destination,))


def wait_state(node: NodeProcess, destination: str, state: str, timeout_s: float = 60) -> dict:
    def reached():
        node.check_alive()
        rows = deliveries(node, destination)
        return rows[0] if rows and all(r["state"] == state for r in rows) else None

    try:
        return wait_for(reached, timeout_s, f"{destination} deliveries {state}", interval_s=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{deliveries(node, destination)}\n{node.log_tail()}") from None


def check_oru(message: hl7.Message, identity, row: dict) -> None:
    assert (message["MSH.F9.R1.C1"], message["MSH.F9.R1.C2"]) == ("ORU", "R01")
    assert message["PID.F3"] == PATIENT_ID
    assert (message["PID.F5.R1.C1"], message["PID.F5.R1.C2"]) == \
        ("NOTICE|TEST&X~Y", "ANNE")
    assert message["OBR.F3"] == identity.accession and message["OBR.F25"] == "F"
    obx = observations(message)
    assert str(obx["110180"](5)) == identity.study_instance_uid
    assert str(obx["CALCFLAG"](5)) == "SUSPICIOUS"
    assert int(str(obx["CALCCLUSTERS"](5))) == row["clusters"] > 0
    assert float(str(obx["CALCCERTAINTY"](5))) == pytest.approx(row["highest_certainty"], abs=0.05)


@pytest.mark.slow
def test_node_sends_one_oru_and_one_webhook_per_study(tmp_path, start_node, peers_started):
    require(STORESCU, ECHOSCU)
    listener = peers_started(MLLPListener(free_port()))
    receiver = peers_started(WebhookReceiver(free_port()))
    node = start_node(node_config(tmp_path, worklist=worklist(listener.port, receiver.port)))
    identity = send_study(node, tmp_path, seed=931)
    row = node.wait_study(identity.study_instance_uid)
    assert row["state"] == "done"
    wait_state(node, "worklist.hl7", "done")
    wait_state(node, "worklist.webhook", "done")

    [message] = listener.received()
    check_oru(message, identity, row)
    [(path, content_type, body)] = receiver.posts
    assert (path, content_type) == ("/notices", "application/json")
    obx = observations(message)
    assert body["study_instance_uid"] == identity.study_instance_uid
    assert body["accession_number"] == identity.accession
    assert (body["flag"], body["clusters"], body["result_status"]) == \
        ("SUSPICIOUS", row["clusters"], "final")
    assert body["highest_certainty"] == float(str(obx["CALCCERTAINTY"](5)))
    assert "patient_id" not in body and "patient_name" not in body
    status = node.status().stdout
    assert "worklist.hl7: 0 pending, 1 delivered, 0 failed" in status
    assert "worklist.webhook: 0 pending, 1 delivered, 0 failed" in status
    log = node.log_text()
    assert "delivered study=" in log
    for secret in ("NOTICE|TEST", PATIENT_ID, identity.accession):
        assert secret not in log


@pytest.mark.slow
def test_listeners_down_at_first_get_the_notice_once_when_they_come_up(tmp_path, start_node,
                                                                       peers_started):
    require(STORESCU, ECHOSCU)
    hl7_port, webhook_port = free_port(), free_port()  # nothing listens there yet
    node = start_node(node_config(tmp_path, worklist=worklist(hl7_port, webhook_port)))
    identity = send_study(node, tmp_path, seed=932)
    node.wait_study(identity.study_instance_uid)
    for destination in ("worklist.hl7", "worklist.webhook"):
        wait_for(lambda d=destination: any(r["attempts"] > 0 and r["last_error"]
                                           for r in deliveries(node, d)),
                 60, f"a failed attempt to {destination}")
        assert deliveries(node, destination)[0]["state"] == "pending"
    listener = peers_started(MLLPListener(hl7_port))
    receiver = peers_started(WebhookReceiver(webhook_port))
    wait_state(node, "worklist.hl7", "done")
    wait_state(node, "worklist.webhook", "done")
    [message] = listener.received()
    check_oru(message, identity, node.study_row(identity.study_instance_uid))
    assert [body["study_instance_uid"] for _, _, body in receiver.posts] == \
        [identity.study_instance_uid]


@pytest.mark.slow
def test_rejected_notice_fails_and_calcnode_retry_requeues_it(tmp_path, start_node,
                                                               peers_started):
    require(STORESCU, ECHOSCU)
    listener = peers_started(MLLPListener(free_port(), ack_code="AR"))
    node = start_node(node_config(tmp_path, worklist=worklist(listener.port)))
    identity = send_study(node, tmp_path, seed=933)
    node.wait_study(identity.study_instance_uid)
    failed = wait_state(node, "worklist.hl7", "failed")
    assert failed["attempts"] == 1 and "ACK AR" in failed["last_error"]
    status = node.status().stdout
    assert "worklist.hl7: 0 pending, 0 delivered, 1 failed, last error: notice rejected: ACK AR" \
        in status, status

    listener.ack_code = "AA"
    retried = node.cli("retry")
    assert retried.returncode == 0 and "1 failed delivery queued again" in retried.stdout
    wait_state(node, "worklist.hl7", "done")
    first, second = listener.received()
    assert first["MSH.F10"] == second["MSH.F10"]  # the same message, sent again
    check_oru(second, identity, node.study_row(identity.study_instance_uid))


# -- wiring: the worker writes the notice, the dispatcher keeps names apart ---------------------

def test_worker_writes_a_corrected_notice_only_when_the_worklist_is_on(tmp_path):
    study = write_study(tmp_path / "study", seed=934)
    uid = study.identity.study_instance_uid
    earlier_sr = SourceRef("1.2.840.10008.5.1.4.1.1.88.50", "2.25.5", "2.25.6", uid)
    task = AnalysisTask(uid, 2, tuple(map(str, study.paths)), "STORESCU", earlier_sr)
    on = parse_config({"worklist": {"webhook": {"url": "http://127.0.0.1:9/x"}}})
    outcome = run_analysis(task, on, str(tmp_path / "out"), False)
    [output] = [o for o in outcome.outputs if o.kind == "notice"]
    notice = notices.read_notice(output.path)
    assert (notice.study_instance_uid, notice.accession_number, notice.patient_id) == \
        (uid, study.identity.accession, study.identity.pid)
    assert (notice.clusters, notice.flag, notice.corrected) == \
        (outcome.clusters, "SUSPICIOUS", True)
    assert notice.highest_certainty == pytest.approx(outcome.highest_certainty, abs=0.05)
    off = run_analysis(task, parse_config({}), str(tmp_path / "off"), False)
    assert "notice" not in {o.kind for o in off.outputs}


def test_dispatcher_refuses_a_destination_named_like_a_worklist_channel(tmp_path):
    config = parse_config({"destinations": {"worklist.hl7": {
        "ae_title": "PACS", "host": LOOPBACK, "port": 104}}, "worklist": {"hl7": {"host": LOOPBACK}}})
    with pytest.raises(ConfigError, match="destinations.worklist.hl7"):
        Dispatcher(config, None, lambda *args: [], channels=notices.senders(config.worklist))
