"""An in-process receiver on loopback and the files sent to it, for the tests of the receive path
(tests/test_fastpath.py, tests/test_reactor.py), and an association driven by hand (also
tests/test_node_survives.py)."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian
from pynetdicom import AE, association, dimse, dimse_messages, dul
from pynetdicom.dsutils import split_dataset

from node.config import parse_config
from node.receiver import Receiver
from node.spool import Spool
from node.testing.dicomfactory import StudyIdentity, make_mammo_dataset
from nodeproc import node_config
from peers import storescu, wait_for

MG = DigitalMammographyXRayImageStorageForPresentation


def image(folder: Path, name: str, rows: int, cols: int, seed: int, private_bytes: int = 0) -> Path:
    """An MG file of ``rows`` x ``cols`` noise pixels; optionally a
    private element of ``private_bytes`` before the pixel data, which makes the header long."""
    pixels = np.random.default_rng(seed).integers(0, 4096, (rows, cols), np.uint16)
    ds = make_mammo_dataset(pixels, identity=StudyIdentity(seed), laterality="L", view="CC",
                            window=(2048, 4096))
    if private_bytes:
        block = ds.private_block(0x0029, "CALCNODE TEST", create=True)
        block.add_new(0x10, "OB", bytes(range(256)) * (private_bytes // 256))
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def restore_pynetdicom(monkeypatch) -> None:
    """Have what fastpath.install and reactor.install replace in pynetdicom put back after."""
    monkeypatch.setattr(dul.DULServiceProvider, "_read_pdu_data", dul.DULServiceProvider._read_pdu_data)
    monkeypatch.setattr(dimse.DIMSEServiceProvider, "send_msg", dimse.DIMSEServiceProvider.send_msg)
    for module, names in ((dul, ["time"]), (association, ["time"]),
                          (dimse_messages, ["create_file_meta", "write_file_meta_info",
                                            "NamedTemporaryFile"])):
        for name in names:
            monkeypatch.setattr(module, name, getattr(module, name))


@contextmanager
def running_receiver(tmp_path, monkeypatch, storage: dict | None = None, **listen):
    """(the Receiver, its port, its spool): an in-process receiver on a free loopback port, with
    ``storage`` and ``listen`` settings; stopped after, and pynetdicom's globals restored."""
    monkeypatch.setattr(pynetdicom._config, "STORE_RECV_CHUNKED_DATASET", False)
    monkeypatch.setattr(pynetdicom._config, "LOG_HANDLER_LEVEL", pynetdicom._config.LOG_HANDLER_LEVEL)
    restore_pynetdicom(monkeypatch)
    config = parse_config(node_config(tmp_path, study={"complete_after_s": 600}, listen=listen,
                                      storage=storage or {}))
    spool = Spool(config.storage.path, config.storage.fsync).open()
    monkeypatch.setattr(tempfile, "tempdir", str(spool.incoming))  # as service.py does
    node = Receiver(config, spool)
    node.start()
    try:
        yield node, config.listen.port, spool
    finally:
        node.stop()
        spool.close()


@pytest.fixture
def receiver(tmp_path, monkeypatch):
    """(port, spool) of an in-process receiver (running_receiver)."""
    with running_receiver(tmp_path, monkeypatch) as (_, port, spool):
        yield port, spool


def dataset_bytes(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def kept(spool: Spool, sent: Path) -> Path:
    ds = pydicom.dcmread(sent, stop_before_pixels=True)
    return spool.root / "instances" / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def send_and_check(port: int, spool: Spool, files: list[Path], max_send_pdu: int | None = None) -> None:
    extra = ["--max-send-pdu", str(max_send_pdu)] if max_send_pdu else []
    result = storescu("CALCNODE", port, files, extra_args=extra, tcp_nodelay=True)
    assert result.returncode == 0, result.stdout[-3000:]
    for path in files:
        assert dataset_bytes(kept(spool, path)) == dataset_bytes(path), path.name
    assert not list(spool.incoming.iterdir())


def hand_driven(port: int, calling: str, timeout_s: float = 20):
    """A pynetdicom association to CALCNODE on ``port`` (MG, explicit VR little endian) whose DUL
    has stopped reading: its socket is the test's, to send what a scenario wants. Retried while
    a slot may still be held by an association winding down."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(MG, [ExplicitVRLittleEndian])

    def associated():
        assoc = ae.associate("127.0.0.1", port, ae_title="CALCNODE")
        return assoc if assoc.is_established else None

    assoc = wait_for(associated, timeout_s, f"an association for {calling}", interval_s=0.2)
    assoc.dul._kill_thread = True  # pynetdicom stops reading: the socket is the test's
    assoc.dul.join(timeout=5)
    return assoc
