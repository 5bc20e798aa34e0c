"""The network node end to end on loopback: a real Orthanc PACS, DCMTK's storescu and echoscu.

These are the acceptance tests of the node: a study goes PACS -> calcnode -> PACS and comes back
with its CAD SR, overlays and GSPS in the same study; full-field images arrive in compressed
transfer syntaxes; the AE policy holds; objects of other SOP classes never spoil an association.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless
from pynetdicom import AE, sop_class
from pynetdicom.dsutils import split_dataset

from nodeproc import NodeProcess, node_config
from node.testing.study import write_study
from peers import (
    ECHOSCU, ORTHANC, STORESCU, StoreSCP, echoscu, free_port, require, running_orthanc, storescu, wait_for,
)

pytestmark = pytest.mark.slow

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.50"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
COMPLETE_AFTER_S = 5


def config(tmp_path, port=None, **sections) -> dict:
    return node_config(tmp_path / "node", port=port, study={"complete_after_s": COMPLETE_AFTER_S}, **sections)


def test_study_sent_by_orthanc_comes_back_into_the_same_study(tmp_path):
    require(ORTHANC)
    study = write_study(tmp_path / "study", 4101, rows=2294, cols=1914, spacing_mm=0.1)
    node_port = free_port()
    with running_orthanc(tmp_path, {"calcnode": ("CALCNODE", "127.0.0.1", node_port)}) as pacs:
        destination = {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}}
        with NodeProcess(tmp_path, config(tmp_path, node_port, destinations=destination)) as node:
            for path in study.paths:
                pacs.upload(path)
            uid = study.identity.study_instance_uid
            orthanc_study = pacs.find_study(uid)
            pacs.store_to_modality("calcnode", [orthanc_study])
            sent_at = time.monotonic()

            def outputs_arrived():
                made = len(node.query("SELECT 1 FROM outputs WHERE study_uid = ?", (uid,)))
                instances = pacs.study_instances(orthanc_study)
                classes = [i["SOPClassUID"] for i in instances]
                done = made and len(instances) == 4 + made and SR_CLASS in classes
                return instances if done else None

            instances = wait_for(outputs_arrived, COMPLETE_AFTER_S + 10, "the outputs in Orthanc's study")
            assert time.monotonic() - sent_at <= COMPLETE_AFTER_S + 10
    images = [i for i in instances if i["SOPClassUID"] == study_class(study)]
    outputs = [i for i in instances if i["SOPClassUID"] != study_class(study)]
    classes = sorted(i["SOPClassUID"] for i in outputs)
    assert classes.count(SR_CLASS) == 1
    assert classes.count(SC_CLASS) >= 1 and classes.count(GSPS_CLASS) >= 1
    assert len(images) == 4
    for output in outputs:
        for key in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
            assert output[key] == images[0][key], key


def study_class(study) -> str:
    return str(pydicom.dcmread(study.paths[0], stop_before_pixels=True).SOPClassUID)


@pytest.mark.parametrize("syntax, propose", [(JPEG2000Lossless, "-xv"), (JPEGLSLossless, "-xt")],
                         ids=["jpeg2000-lossless", "jpeg-ls-lossless"])
def test_storescu_sends_full_field_compressed_images(tmp_path, syntax, propose):
    require(STORESCU)
    study = write_study(tmp_path / "study", 4202, rows=4096, cols=3328, spacing_mm=0.07,
                        transfer_syntax=syntax)
    files = study.paths[:2]
    with NodeProcess(tmp_path, config(tmp_path)) as node:
        result = storescu("CALCNODE", node.port, files, propose=propose)
        assert result.returncode == 0, result.stdout
        assert result.stdout.count("Received Store Response (Success)") == 2, result.stdout
        row = node.wait_study(study.identity.study_instance_uid, timeout_s=COMPLETE_AFTER_S + 60)
        assert row["state"] == "done", node.log_text()
        for path in files:
            sent = pydicom.dcmread(path)
            kept = pydicom.dcmread(node.spool / "instances" / sent.StudyInstanceUID / f"{sent.SOPInstanceUID}.dcm")
            assert kept.file_meta.TransferSyntaxUID == syntax  # bytes kept as received, not re-encoded
            assert kept.PixelData == sent.PixelData
        assert (row["images"], row["failed_images"]) == (2, 0)


def test_echo_and_calling_ae_allow_list(tmp_path):
    require(ECHOSCU, STORESCU)
    study = write_study(tmp_path / "study", 4303)
    settings = config(tmp_path)
    settings["listen"]["allowed_calling_ae_titles"] = ["PACS"]
    with NodeProcess(tmp_path, settings) as node:
        assert echoscu("CALCNODE", node.port, calling="PACS").returncode == 0
        refused = echoscu("CALCNODE", node.port, calling="INTRUDER")
        assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stdout
        refused = storescu("CALCNODE", node.port, study.paths, calling="INTRUDER")
        assert "Calling AE Title Not Recognized" in refused.stdout
        wrong_called = echoscu("OTHERNODE", node.port, calling="PACS")
        assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stdout
        assert len(node.query("SELECT 1 FROM instances")) == 0
        assert storescu("CALCNODE", node.port, study.paths, calling="PACS").returncode == 0
        assert len(node.query("SELECT 1 FROM instances")) == 4


def test_other_sop_classes_are_refused_per_context_and_the_rest_is_kept(tmp_path):
    study = write_study(tmp_path / "study", 4404)
    mammo = pydicom.dcmread(study.paths[0])
    ct = pydicom.dcmread(study.paths[1])
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = sop_class.CTImageStorage
    with NodeProcess(tmp_path, config(tmp_path)) as node:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(sop_class.DigitalMammographyXRayImageStorageForPresentation)
        ae.add_requested_context(sop_class.CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CALCNODE")
        assert assoc.is_established
        try:
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            assert sop_class.CTImageStorage not in accepted
            with pytest.raises(ValueError):
                assoc.send_c_store(ct)  # no accepted context: the SCU cannot even offer it
            assert assoc.send_c_store(mammo).Status == 0x0000
        finally:
            assoc.release()
        rows = node.query("SELECT sop_uid, role FROM instances")
        assert [(r["sop_uid"], r["role"]) for r in rows] == [(mammo.SOPInstanceUID, "image")]


def test_demo_reports_what_the_node_made(tmp_path):
    with NodeProcess(tmp_path, config(tmp_path)) as node:
        result = node.cli("demo", timeout_s=180)
        assert result.returncode == 0, result.stdout + result.stderr
        paths = [Path(line.split()[-1]) for line in result.stdout.splitlines()
                 if line.strip().startswith(("sr ", "sc ", "gsps "))]
        assert any(p.name.startswith("sr_") for p in paths), result.stdout
        assert all(p.is_file() for p in paths)
        status = node.status()
        assert "1 received" in status.stdout and "1 done" in status.stdout, status.stdout


SYNTAXES = {
    "implicit": "1.2.840.10008.1.2", "explicit": "1.2.840.10008.1.2.1",
    "deflated": "1.2.840.10008.1.2.1.99", "big-endian": "1.2.840.10008.1.2.2",
    "rle": "1.2.840.10008.1.2.5", "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90", "jpeg-lossless-sv1": "1.2.840.10008.1.2.4.70",
}


def encoded_view(folder: Path, seed: int, syntax: str) -> Path:
    """The RCC view of a small study in ``syntax``; JPEG lossless SV1 by DCMTK's dcmcjpeg."""
    if syntax != SYNTAXES["jpeg-lossless-sv1"]:
        return write_study(folder, seed, transfer_syntax=syntax).views["RCC"][0]
    require("/usr/bin/dcmcjpeg")
    source = write_study(folder, seed).views["RCC"][0]
    target = folder / "RCC-sv1.dcm"
    subprocess.run(["/usr/bin/dcmcjpeg", "+e1", str(source), str(target)], check=True)
    return target


def test_every_transfer_syntax_is_kept_as_sent_and_analysed(tmp_path, monkeypatch):
    files = {name: encoded_view(tmp_path / name, 4500 + n, uid)
             for n, (name, uid) in enumerate(SYNTAXES.items())}
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # bytes as in the file
    with NodeProcess(tmp_path, config(tmp_path)) as node:
        ae = AE(ae_title="MODALITY")
        for uid in SYNTAXES.values():
            ae.add_requested_context(sop_class.DigitalMammographyXRayImageStorageForPresentation, uid)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CALCNODE")
        assert assoc.is_established
        try:
            assert {cx.transfer_syntax[0] for cx in assoc.accepted_contexts} == set(SYNTAXES.values())
            statuses = {name: assoc.send_c_store(path).Status for name, path in files.items()}
        finally:
            assoc.release()
        assert statuses == {name: 0 for name in SYNTAXES}
        for name, path in files.items():
            sent = pydicom.dcmread(path, stop_before_pixels=True)
            kept = node.spool / "instances" / sent.StudyInstanceUID / f"{sent.SOPInstanceUID}.dcm"
            assert dataset_bytes(kept) == dataset_bytes(path), name
            row = node.wait_study(sent.StudyInstanceUID, timeout_s=COMPLETE_AFTER_S + 60)
            assert (row["state"], row["images"], row["failed_images"]) == ("done", 1, 0), (name, row)


def dataset_bytes(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@pytest.mark.parametrize("accept", [None, "+xi"], ids=["uncompressed", "implicit-only"])
def test_destination_taking_only_uncompressed_gets_the_same_instances(tmp_path, accept):
    """The overlays are JPEG-LS and the SR Explicit VR; a PACS that accepts only uncompressed
    data (or only Implicit VR Little Endian) gets them converted, with the SOP Instance UIDs the
    node recorded (lossless, so the same instances)."""
    require(STORESCU)
    study = write_study(tmp_path / "study", 4606)
    with StoreSCP(tmp_path / "sink", aet="SINK", accept=accept) as scp:
        sink = {"sink": {"ae_title": "SINK", "host": "127.0.0.1", "port": scp.port}}
        with NodeProcess(tmp_path, config(tmp_path, destinations=sink)) as node:
            assert storescu("CALCNODE", node.port, study.paths).returncode == 0
            uid = study.identity.study_instance_uid
            assert node.wait_study(uid, timeout_s=COMPLETE_AFTER_S + 60)["state"] == "done"
            made = {r["sop_uid"]: r["kind"] for r in node.query("SELECT sop_uid, kind FROM outputs")}
            wait_for(lambda: not node.pending_deliveries(), 60, "deliveries to finish")
            assert {r["state"] for r in node.query("SELECT state FROM deliveries")} == {"done"}
        received = [pydicom.dcmread(p) for p in scp.files()]
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(made)
    for ds in received:
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        if made[ds.SOPInstanceUID] == "sc":
            assert ds.pixel_array.shape[-1] == 3


def test_sender_stalling_mid_pdu_loses_its_association_after_the_network_timeout(tmp_path):
    """pynetdicom's network timeout only runs between PDUs; the node also bounds each receive,
    so a peer that stops halfway through a PDU does not hold its slot for ever."""
    timeout_s = 2
    settings = config(tmp_path, listen={"network_timeout_s": timeout_s, "max_associations": 1})
    with NodeProcess(tmp_path, settings) as node:
        ae = AE(ae_title="STALLER")
        ae.add_requested_context(sop_class.DigitalMammographyXRayImageStorageForPresentation)

        def associated():  # the readiness check's association may still hold the one slot
            assoc = ae.associate("127.0.0.1", node.port, ae_title="CALCNODE")
            return assoc if assoc.is_established else None

        assoc = wait_for(associated, 10, "an association")
        sock = assoc.dul.socket.socket
        assoc.dul._kill_thread = True  # our side stops reading: the raw socket is the test's
        assoc.dul.join(timeout=5)
        sock.sendall(b"\x04\x00" + (1000).to_bytes(4, "big") + b"\x00" * 100)  # 106 of 1006 bytes
        stalled_at = time.monotonic()
        sock.settimeout(timeout_s + 30)
        try:
            while sock.recv(65536):
                pass  # the node may send an A-ABORT before it closes
        except ConnectionResetError:
            pass
        assert time.monotonic() - stalled_at < timeout_s + 10
        sock.close()
        # the one association slot is freed (the association's threads wind down first)
        wait_for(lambda: echoscu("CALCNODE", node.port).returncode == 0, 10, "the slot to be free")
