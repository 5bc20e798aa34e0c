"""pynetdicom's work around each C-STORE, shortened (node/reactor.py).

The C-STORE response and the chunked file's File Meta Information that reactor.py encodes by
hand must be byte for byte what pynetdicom and pydicom encode, and every other message must
still go through pynetdicom. End to end on loopback: a pynetdicom SCU reads the statuses of an
in-process receiver, and storescu's C-STOREs wake the association's reactors. Unit tests cover
the wake-ups themselves.
"""

from __future__ import annotations

import io
import queue
import socket
import threading
import time
import types

import numpy as np
import pydicom
import pytest
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, dul
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta

from node import reactor
from node.received import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS
from node.testing.dicomfactory import StudyIdentity, make_mammo_dataset
from peers import STORESCU, require
from receiving import (  # noqa: F401 (receiver: a fixture)
    MG, image, receiver, running_receiver, send_and_check,
)

UIDS = ["1.2.3", "1.2.34",  # odd and even lengths: a NUL pads the odd one
        "1.2.826.0.1.3680043.8.498." + "1" * 38,  # 64 characters, the longest a UID may be
        "1.2.3\u00e9.4"]  # a byte no UID holds, as a peer may send it (pydicom reads ISO 8859-1)


def pynetdicom_response(message_id: int, sop_instance: str, status: int) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID = message_id, MG
    rsp.AffectedSOPInstanceUID, rsp.Status = sop_instance, status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = message.encode_msg(1, 16384)
    ((_, pdv),) = pdata.presentation_data_value_list
    return pdv


@pytest.mark.parametrize("uid", UIDS)
@pytest.mark.parametrize("status", [SUCCESS, OUT_OF_RESOURCES, 0xA900, 0xB000, 0xC000])
@pytest.mark.parametrize("message_id", [1, 65535])
def test_a_store_response_is_the_bytes_pynetdicom_encodes(uid, status, message_id):
    ours = reactor.store_response(message_id, MG, uid, status)
    assert b"\x03" + ours == pynetdicom_response(message_id, uid, status)


@pytest.mark.parametrize("uid", UIDS)
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"])
def test_file_meta_is_the_bytes_pydicom_writes(uid, syntax):
    fields = {"sop_class_uid": MG, "sop_instance_uid": uid, "transfer_syntax": syntax}
    theirs, ours = io.BytesIO(), io.BytesIO()
    write_file_meta_info(theirs, create_file_meta(**fields))
    reactor.write_file_meta_info(ours, reactor.create_file_meta(**fields))
    assert ours.getvalue() == theirs.getvalue()
    # and the pydicom data set path still works through the replacement
    again = io.BytesIO()
    reactor.write_file_meta_info(again, create_file_meta(**fields))
    assert again.getvalue() == theirs.getvalue()
    read = pydicom.dcmread(io.BytesIO(b"\0" * 128 + b"DICM" + ours.getvalue()))
    assert (read.file_meta.MediaStorageSOPInstanceUID, read.file_meta.TransferSyntaxUID) == (uid, syntax)


class Provider:
    """The parts of a DIMSE provider that reactor.send_msg reads."""

    def __init__(self, handlers=(), maximum_pdu_size=16384):
        self.sent, self.maximum_pdu_size = [], maximum_pdu_size
        self.dul = types.SimpleNamespace(send_pdu=self.sent.append)
        self.assoc = types.SimpleNamespace(get_handlers=lambda event: list(handlers))


def store_rsp(**extra) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID = 3, MG
    rsp.AffectedSOPInstanceUID, rsp.Status = UIDS[1], SUCCESS
    for name, value in extra.items():
        setattr(rsp, name, value)
    return rsp


def test_a_store_response_with_only_a_status_is_sent_as_one_pdu_from_here(monkeypatch):
    monkeypatch.setattr(reactor, "_send_msg", lambda *args: pytest.fail("went to pynetdicom"))
    provider = Provider()
    reactor.send_msg(provider, store_rsp(), 5)
    (pdata,) = provider.sent
    assert pdata.presentation_data_value_list == [(5, pynetdicom_response(3, UIDS[1], SUCCESS))]


@pytest.mark.parametrize("case", ["error comment", "offending element", "echo response", "store request",
                                  "someone watches", "tiny peer PDU"])
def test_every_other_message_goes_through_pynetdicom(case, monkeypatch):
    passed = []
    monkeypatch.setattr(reactor, "_send_msg", lambda provider, primitive, cx: passed.append(primitive))
    provider, primitive = Provider(), store_rsp()
    if case == "error comment":
        primitive = store_rsp(Status=0xC000, ErrorComment="unreadable")
    elif case == "offending element":
        primitive = store_rsp(Status=0xA900, OffendingElement=[0x00080016])
    elif case == "echo response":
        primitive = C_ECHO()
        primitive.MessageIDBeingRespondedTo, primitive.Status = 3, SUCCESS
    elif case == "store request":
        primitive = C_STORE()
        primitive.MessageID, primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID = 3, MG, UIDS[1]
    elif case == "someone watches":
        provider = Provider(handlers=[(print, None)])
    elif case == "tiny peer PDU":
        provider = Provider(maximum_pdu_size=64)
    reactor.send_msg(provider, primitive, 1)
    assert passed == [primitive] and not provider.sent


def test_a_pynetdicom_peer_reads_a_success_made_here_and_a_refusal_with_its_reason(tmp_path, monkeypatch):
    """Success is encoded here; a refusal carries an Error Comment, so pynetdicom encodes it."""
    made = []
    encode = reactor.store_response
    monkeypatch.setattr(reactor, "store_response", lambda *args: made.append(args) or encode(*args))
    ds = make_mammo_dataset(np.zeros((64, 48), np.uint16), identity=StudyIdentity(7),
                            laterality="R", view="MLO", window=(2048, 4096))
    ae = AE(ae_title="PEER")
    ae.add_requested_context(MG, ds.file_meta.TransferSyntaxUID)
    with running_receiver(tmp_path, monkeypatch, storage={"min_free_mb": 100}) as (_, port, spool):
        monkeypatch.setattr(spool, "free_mb", lambda: 150.0)
        assoc = ae.associate("127.0.0.1", port, ae_title="CALCNODE")
        try:
            assert assoc.is_established
            stored = assoc.send_c_store(ds)
            monkeypatch.setattr(spool, "free_mb", lambda: 50.0)  # below storage.min_free_mb from now on
            refused = assoc.send_c_store(ds)
        finally:
            assoc.release()
    assert stored.Status == SUCCESS and refused.Status == OUT_OF_RESOURCES
    assert refused.ErrorComment == "less than 100 MB free" and "ErrorComment" not in stored
    assert [args[2:] for args in made] == [(str(ds.SOPInstanceUID), SUCCESS)]


def test_a_request_whose_uid_is_not_ascii_is_refused_and_the_association_goes_on(receiver, monkeypatch):
    """The hand encoders wrote UIDs as ASCII: a request whose SOP Instance UID held another byte
    raised in pynetdicom's reader thread as the file meta was written, the thread died and the
    association with it (the sender waited out its DIMSE timeout; later objects were lost)."""
    port, spool = receiver
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.WARN)
    sent = [make_mammo_dataset(np.zeros((64, 48), np.uint16), identity=StudyIdentity(20 + n),
                               laterality="R", view="CC", window=(2048, 4096)) for n in range(3)]
    sent[1].SOPInstanceUID = "1.2.3\u00e9.4"
    ae = AE(ae_title="PEER")
    ae.add_requested_context(MG, sent[0].file_meta.TransferSyntaxUID)
    ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="CALCNODE")
    try:
        assert assoc.is_established
        answers = [assoc.send_c_store(ds).get("Status") for ds in sent]
    finally:
        assoc.release()
    assert answers == [SUCCESS, CANNOT_UNDERSTAND, SUCCESS]
    kept_uids = {r[0] for r in spool.db().execute("SELECT sop_uid FROM instances")}
    assert kept_uids == {str(sent[0].SOPInstanceUID), str(sent[2].SOPInstanceUID)}


def test_the_reactors_of_a_receiving_association_are_woken_by_their_work(receiver, tmp_path, monkeypatch):
    require(STORESCU)
    port, spool = receiver
    woken = []
    clear = reactor.Wake.clear

    def counting(self):
        woken.append(self.is_set())
        clear(self)

    monkeypatch.setattr(reactor.Wake, "clear", counting)
    send_and_check(port, spool, [image(tmp_path, "a", 1000, 800, 11), image(tmp_path, "b", 1200, 900, 12)])
    # each C-STORE wakes the association (message complete) and the DUL (response queued)
    assert sum(woken) >= 4, f"{sum(woken)} of {len(woken)} polls ended by a wake"


def sleeping(target, seconds: float, watched: bool, dul_socket=None) -> tuple[threading.Thread, list]:
    """A thread (a DUL's when ``dul_socket`` is given) that sleeps through reactor.sleep."""
    took = []

    def run():
        thread = threading.current_thread()
        if watched:
            thread.calcnode_wake = target
        start = time.monotonic()
        reactor.sleep(seconds)
        took.append(time.monotonic() - start)

    if dul_socket is None:
        thread = threading.Thread(target=run)
    else:
        thread = dul.DULServiceProvider.__new__(dul.DULServiceProvider)
        threading.Thread.__init__(thread, target=run)
        thread.socket = types.SimpleNamespace(socket=dul_socket)
    thread.start()
    return thread, took


def test_a_watched_poll_ends_when_its_queue_gets_an_item(monkeypatch):
    monkeypatch.setattr(reactor, "_POLL_S", 10.0)  # a poll long enough to see it cut short
    monkeypatch.setattr(reactor, "_IDLE_S", 10.0)
    wake, items = reactor.Wake(), queue.Queue()
    reactor._wake_on_put(items, wake)
    thread, took = sleeping(wake, 10.0, watched=True)
    time.sleep(0.05)
    items.put_nowait("work")
    thread.join(5)
    assert took and took[0] < 5 and items.get_nowait() == "work" and not wake.is_set()


def test_a_dul_poll_ends_when_its_socket_has_data(monkeypatch):
    monkeypatch.setattr(reactor, "_POLL_S", 10.0)
    ours, peer = socket.socketpair()
    try:
        thread, took = sleeping(reactor.Wake(), 10.0, watched=True, dul_socket=ours)
        time.sleep(0.05)
        peer.send(b"x")
        thread.join(5)
        assert took and took[0] < 5
    finally:
        ours.close()
        peer.close()


def test_with_nothing_to_do_the_association_polls_less_often_than_the_dul(monkeypatch):
    """The association's loop waits up to _IDLE_S for work; the DUL's keeps pynetdicom's poll."""
    monkeypatch.setattr(reactor, "_IDLE_S", 0.3)
    ours, peer = socket.socketpair()
    try:
        association, took_association = sleeping(reactor.Wake(), reactor._POLL_S, watched=True)
        dul_thread, took_dul = sleeping(reactor.Wake(), reactor._POLL_S, watched=True, dul_socket=ours)
        association.join(5)
        dul_thread.join(5)
    finally:
        ours.close()
        peer.close()
    assert took_association[0] >= 0.29 and took_dul[0] < 0.1


def test_other_threads_and_longer_sleeps_sleep_in_full(monkeypatch):
    monkeypatch.setattr(reactor, "_POLL_S", 0.05)
    wake = reactor.Wake()
    wake.set()
    longer, took_longer = sleeping(wake, 0.2, watched=True)  # longer than a reactor's poll
    other, took_other = sleeping(wake, 0.04, watched=False)  # a thread nobody watches
    longer.join(5)
    other.join(5)
    assert took_longer[0] >= 0.19 and took_other[0] >= 0.035
