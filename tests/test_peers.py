"""peers.py works: Orthanc and DCMTK really start, store, echo, refuse and stop as the tests assume.

The network tests of the node lean on these helpers; a helper that silently did nothing (an
Orthanc that admits every caller, a storescp that never wrote a file) would make them vacuous.
"""

from __future__ import annotations

import socket
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless

from node.testing.dicomfactory import StudyIdentity, make_mammo_dataset
from peers import (
    INSTANCE_KEYS, LOOPBACK, StoreSCP, accepts_tcp, echoscu, free_port, free_ports,
    orthanc_config, running_orthanc, storescu, wait_for,
)


def _sample(tmp_path: Path, seed: int, transfer_syntax: str = ExplicitVRLittleEndian,
            laterality: str = "R", view: str = "CC") -> tuple[Path, pydicom.Dataset]:
    """A small but complete MG image on disk; small so the peers tests stay fast."""
    stored = ((np.arange(64 * 48).reshape(64, 48) * 7) % 4000 + 40).astype(np.uint16)
    identity = StudyIdentity(seed=seed, patient_name="PEERS^TEST")
    ds = make_mammo_dataset(stored, identity=identity, laterality=laterality, view=view,
                            transfer_syntax=transfer_syntax)
    ds.SeriesDescription = "PEERS SERIES"
    path = tmp_path / f"{seed}_{laterality}{view}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds


# -- plain helpers ---------------------------------------------------------------------------

def test_free_ports_are_distinct_and_bindable_on_loopback():
    ports = free_ports(4) + [free_port()]
    assert len(set(ports[:4])) == 4
    for port in ports:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, port))


def test_wait_for_returns_the_value_or_names_what_timed_out():
    calls = []
    assert wait_for(lambda: calls.append(1) or (len(calls) >= 3 and "ready"), 5, "x") == "ready"
    start = time.monotonic()
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for(lambda: False, 0.3, "the impossible")
    assert 0.3 <= time.monotonic() - start < 2


def test_accepts_tcp_tells_a_listener_from_a_closed_port():
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        assert accepts_tcp(listener.getsockname()[1])
    assert not accepts_tcp(free_port())


def test_orthanc_config_admits_only_loopback_modalities(tmp_path):
    config = orthanc_config(tmp_path, 1, 2, "PACS", {"node": ("NODE", LOOPBACK, 3)})
    assert config["DicomModalities"]["node"] == {
        "AET": "NODE", "Host": LOOPBACK, "Port": 3, "AllowEcho": True, "AllowStore": True}
    assert not config["RemoteAccessAllowed"] and config["DicomCheckModalityHost"]
    assert not config["DicomAlwaysAllowStore"] and not config["DicomAlwaysAllowEcho"]
    with pytest.raises(ValueError, match="10.0.0.5"):
        orthanc_config(tmp_path, 1, 2, "PACS", {"far": ("FAR", "10.0.0.5", 104)})


# -- Orthanc ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_orthanc_upload_is_found_with_its_identity_and_returned_intact(tmp_path):
    path, ds = _sample(tmp_path, seed=401)
    with running_orthanc(tmp_path) as orthanc:
        instance = orthanc.upload(path)
        assert orthanc.upload(path.read_bytes()) == instance  # same SOP instance, stored once
        study = orthanc.find_study(ds.StudyInstanceUID)
        assert study and orthanc.studies() == [study]
        assert orthanc.find_study("2.25.1") is None
        [tags] = orthanc.study_instances(study)
        assert tags["OrthancID"] == instance
        for key in INSTANCE_KEYS:
            assert tags[key] == str(ds[key].value), key
        back = pydicom.dcmread(BytesIO(orthanc.instance_file(instance)))
        assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData


@pytest.mark.slow
def test_orthanc_stores_a_study_to_storescp_and_echoes_it(tmp_path):
    path, ds = _sample(tmp_path, seed=402)
    with StoreSCP(tmp_path / "scp", aet="DEST") as scp, running_orthanc(tmp_path, {
            "dest": ("DEST", LOOPBACK, scp.port),
            "gone": ("GONE", LOOPBACK, free_port())}) as orthanc:
        assert orthanc.echo("dest"), orthanc.log_text()
        assert not orthanc.echo("gone", timeout_s=3)
        orthanc.upload(path)
        study = orthanc.find_study(ds.StudyInstanceUID)
        result = orthanc.store_to_modality("dest", [study], timeout_s=30)
        assert result["FailedInstancesCount"] == 0 and result["InstancesCount"] == 1, result
        [received] = scp.files()
        got = pydicom.dcmread(received)
        assert got.SOPInstanceUID == ds.SOPInstanceUID and got.PixelData == ds.PixelData
    assert scp.proc.returncode is not None and orthanc.proc.returncode is not None


@pytest.mark.slow
def test_orthanc_admits_only_its_configured_modality(tmp_path):
    path, ds = _sample(tmp_path, seed=403, transfer_syntax=JPEGLSLossless)
    with running_orthanc(tmp_path, {"mod": ("MODALITY", LOOPBACK, free_port())}) as orthanc:
        refused = storescu(orthanc.aet, orthanc.dicom_port, [path], calling="STRANGER")
        assert refused.returncode != 0, refused.stdout
        assert orthanc.studies() == []
        assert echoscu(orthanc.aet, orthanc.dicom_port, calling="STRANGER").returncode != 0
        assert echoscu(orthanc.aet, orthanc.dicom_port, calling="MODALITY").returncode == 0
        sent = storescu(orthanc.aet, orthanc.dicom_port, [path], calling="MODALITY",
                        propose="-xt")
        assert sent.returncode == 0, sent.stdout + orthanc.log_text()
        study = orthanc.find_study(ds.StudyInstanceUID)
        [tags] = orthanc.study_instances(study)
        assert tags["SOPInstanceUID"] == ds.SOPInstanceUID
        stored = pydicom.dcmread(BytesIO(orthanc.instance_file(tags["OrthancID"])))
        assert stored.file_meta.TransferSyntaxUID == JPEGLSLossless


# -- DCMTK -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_storescu_sends_j2k_that_storescp_keeps_bit_for_bit(tmp_path):
    path, ds = _sample(tmp_path, seed=404, transfer_syntax=JPEG2000Lossless)
    with StoreSCP(tmp_path / "scp", aet="DEST", bit_preserving=True, max_pdu=65536,
                  tcp_nodelay=True) as scp:
        sent = storescu("DEST", scp.port, [path], propose="-xv", max_pdu=65536)
        assert sent.returncode == 0, sent.stdout + scp.log_text()
        assert "Received Store Response (Success)" in sent.stdout, sent.stdout
        [received] = scp.wait_files(1, timeout_s=10)
        got = pydicom.dcmread(received)
        assert got.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert got.SOPInstanceUID == ds.SOPInstanceUID and got.PixelData == ds.PixelData
        assert echoscu("DEST", scp.port).returncode == 0
        port = scp.port
    assert scp.proc.returncode is not None
    assert not accepts_tcp(port)
    assert echoscu("DEST", port, timeout_s=10).returncode != 0
