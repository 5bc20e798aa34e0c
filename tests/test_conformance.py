"""docs/conformance.md against the code: every UID, status and code it must name, and no other
accepted transfer syntax than the receiver's."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.sr.coding import Code
from pynetdicom import sop_class

from node import received, receiver
from node.config import Config, ListenConfig
from node.pipeline import analyse_study
from node.reporting import codes as C
from node.testing.study import write_study

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


@pytest.fixture(scope="module")
def text() -> str:
    return DOC.read_text(encoding="utf-8")


def table_after(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule dropped) of the first table after a heading."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading in line)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table after heading {heading!r}"
    return [row for row in rows[2:]]


def mentions(text: str, uid: str) -> bool:
    """``uid`` as a whole UID, not as the prefix of a longer one."""
    return re.search(rf"(?<![\d.]){re.escape(uid)}(?![\d.]*\d)", text) is not None


def test_every_received_sop_class_is_listed(text):
    received = receiver.IMAGE_CLASSES + receiver.KEPT_CLASSES + (sop_class.Verification,)
    assert not [uid for uid in received if not mentions(text, uid)]
    listed = {row[1] for row in table_after(text, "4.2.1.1 SOP classes")}
    assert listed == {str(uid) for uid in received}


def test_accepted_transfer_syntax_table_is_exactly_the_receivers():
    rows = table_after(DOC.read_text(encoding="utf-8"), "Transfer syntaxes accepted for storage")
    listed = [row[1] for row in rows]
    assert len(listed) == len(set(listed)), "a transfer syntax is listed twice"
    assert set(listed) == {str(uid) for uid in receiver.TRANSFER_SYNTAXES}
    # the order matters: pynetdicom accepts the first of the node's list the requester proposed
    assert listed == [str(uid) for uid in receiver.TRANSFER_SYNTAXES]


def test_every_transfer_syntax_is_named_with_its_uid(text):
    assert not [uid for uid in receiver.TRANSFER_SYNTAXES if not mentions(text, uid)]


def test_created_objects_are_listed_with_their_class_and_syntax(text, tmp_path):
    """Make the outputs of a synthetic study and find each (SOP class, transfer syntax) in 8.1.1."""
    study = write_study(tmp_path, seed=3)
    datasets = [pydicom.dcmread(path) for path in study.paths]
    result = analyse_study(datasets, Config(), datetime(2024, 1, 2, 3, 4, 5))
    made = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in result.outputs}
    assert {uid for uid, _ in made} == {
        "1.2.840.10008.5.1.4.1.1.88.50", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.11.1"}
    rows = table_after(text, "8.1.1 Created SOP instances")
    documented = {(row[1], row[2].split()[-1]) for row in rows}
    assert made <= documented


def test_implementation_identity_is_pynetdicoms(text):
    ae = receiver.build_ae(Config())
    assert ae.implementation_class_uid == pynetdicom.PYNETDICOM_IMPLEMENTATION_UID
    assert ae.implementation_version_name == pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION


def test_implementation_identity_values(text):
    assert mentions(text, pynetdicom.PYNETDICOM_IMPLEMENTATION_UID)
    assert pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION in text


def test_every_store_status_the_scp_returns_is_documented(text):
    statuses = {f"{received.__dict__[name]:04X}" for name in (
        "SUCCESS", "OUT_OF_RESOURCES", "DATASET_DOES_NOT_MATCH_SOP_CLASS", "CANNOT_UNDERSTAND",
        "PROCESSING_FAILURE")}
    documented = {row[0] for row in table_after(text, "C-STORE SCP status codes")}
    assert documented == statuses


def test_every_code_the_reports_use_is_in_the_code_table(text):
    used: set[tuple[str, str]] = set()
    for value in vars(C).values():
        candidates = value.values() if isinstance(value, dict) else [value]
        used |= {(c.value, c.scheme_designator) for c in candidates if isinstance(c, Code)}
    table = {(row[0], row[1]) for row in table_after(text, "8.3 Coded terminology")}
    assert used - table == set()
    assert table - used == set(), "the table lists a code the reports do not use"


def test_security_section_matches_tls_support(text):
    has_tls = "tls" in {f.name for f in dataclasses.fields(ListenConfig)}
    if has_tls:
        assert "listen.tls" in text
    else:
        assert "TLS is not supported in this version" in text
