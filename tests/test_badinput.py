"""Bad input (issue 5): every kind of badinput.py gets its specific outcome, offline and from a
running node; random damage to a valid file never escapes the parsing boundary; no patient
identity reaches the node's log."""

from __future__ import annotations

import io
import re
import signal
import tracemalloc
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pynetdicom
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pynetdicom import AE, sop_class

import badinput
from badinput import ANALYSED_, FAILED, KEPT_, PHI, REFUSED
from node.config import Config, ImagesConfig
from node.errors import CalcnodeError
from node.images import read_file, to_mammogram
from node.pipeline import analyse_study, unanalysed_reason
from node.received import (
    CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS, OUT_OF_RESOURCES, PROCESSING_FAILURE,
    SUCCESS, Rejected, read_header,
)
from node.receiver import IMAGE_CLASSES
from node.reporting.uids import is_valid_uid
from node.testing.dicomfactory import StudyIdentity, make_mammo_dataset
from nodeproc import NodeProcess, node_config
from peers import LOOPBACK

# pydicom warns about every bad value it writes or reads: that is the point here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CORPUS = badinput.corpus()
BY_NAME = {case.name: case for case in CORPUS}
GOOD = badinput.good_study()
NOW = datetime(2026, 1, 2, 12, 0)
NAMED_STATUSES = {SUCCESS, OUT_OF_RESOURCES, DATASET_DOES_NOT_MATCH_SOP_CLASS, CANNOT_UNDERSTAND,
                  PROCESSING_FAILURE}
ISSUE_KINDS = (  # the kinds issue 5 names, each of which the corpus must hold
    "truncated-in-header", "truncated-in-pixel-data", "pixel-data-missing",
    "pixel-data-shorter-than-rows-x-columns", "bits-stored-above-bits-allocated",
    "bits-allocated-12", "odd-rows-and-columns", "one-by-one-pixel", "declared-20000-x-20000",
    "rgb", "ybr-full", "multi-frame-3", "spacing-missing-default-used", "spacing-zero",
    "spacing-negative", "laterality-missing", "view-missing", "laterality-contradicting",
    "charset-unknown-iso-ir-999", "study-uid-65-plus-chars", "sop-uid-path-traversal",
    "private-tags-ge-hologic-siemens-fuji", "for-processing", "jpeg-ls-corrupt-stream",
    "jpeg-2000-corrupt-stream", "modality-ct-in-mg-class", "ct-image-offered-as-mammogram",
    "own-cad-sr-sent-back", "own-gsps-sent-back",
)


def test_the_corpus_holds_every_kind_once_each_in_a_study_of_its_own():
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names)) >= 25
    assert set(ISSUE_KINDS) <= set(names)
    stored = [c.study_instance_uid for c in CORPUS if c.expected.outcome in (FAILED, ANALYSED_)]
    assert len(stored) == len(set(stored))
    assert GOOD[0].study_instance_uid not in stored
    assert badinput.corpus()[5].data == CORPUS[5].data  # same seed, same bytes


# -- 1: offline, through the receiver's header check and the analysis path ---------------------

def outcome_offline(case, folder: Path) -> tuple[str, object]:
    """What the node does with ``case``: ("refused", status), ("kept", None),
    ("failed", reason) or ("analysed", output kinds)."""
    path = folder / f"{case.name}.dcm"
    path.write_bytes(case.data)
    try:
        header = read_header(path, case.sop_class_uid, case.sop_instance_uid)
    except Rejected as exc:
        return REFUSED, exc.status
    if str(header.SOPClassUID) not in IMAGE_CLASSES:
        return KEPT_, None
    try:
        result = analyse_study([read_file(path)], Config(), NOW)
    except CalcnodeError as exc:
        return FAILED, str(exc)
    reason = unanalysed_reason(result)
    return (FAILED, reason) if reason else (ANALYSED_, sorted({kind for kind, _ in result.outputs}))


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_each_kind_gets_its_outcome_offline(case, tmp_path):
    outcome, detail = outcome_offline(case, tmp_path)
    expected = case.expected
    assert outcome == expected.outcome, (case.name, detail)
    if outcome == REFUSED:
        assert detail == expected.status
    elif outcome == FAILED:
        assert re.search(expected.reason, detail), detail
        assert case.sop_instance_uid in detail  # the person reading it can tell which image
    elif outcome == ANALYSED_:
        assert "sr" in detail


# -- 2: end to end, one node receives the whole corpus between the images of a good study ------

@dataclass
class NodeRun:
    node: NodeProcess
    statuses: dict[str, int | None]
    comments: dict[str, str | None]  # each response's Error Comment
    rows: dict[str, dict | None]
    echo_after: bool
    status_text: str
    log: str


def send_all(port: int, cases, folder: Path) -> tuple[dict[str, int | None], dict[str, str | None]]:
    """C-STORE each case's bytes as they are (the file meta names the request), in one
    association; returns each case's response status (None: no response) and Error Comment."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in cases:
        paths[case.name] = folder / f"{case.name}.dcm"
        paths[case.name].write_bytes(case.data)
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = {(c.sop_class_uid, transfer_syntax(c.data)) for c in cases}
    for abstract, syntax in sorted(contexts):
        ae.add_requested_context(abstract, syntax)
    statuses, comments = {}, {}
    previous = pynetdicom._config.STORE_SEND_CHUNKED_DATASET
    pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes, never re-encoded
    try:
        assoc = ae.associate(LOOPBACK, port, ae_title="CALCNODE")
        assert assoc.is_established
        try:
            for case in cases:
                response = assoc.send_c_store(paths[case.name])
                statuses[case.name] = response.get("Status")
                comments[case.name] = response.get("ErrorComment")
        finally:
            assoc.release()
    finally:
        pynetdicom._config.STORE_SEND_CHUNKED_DATASET = previous
    return statuses, comments


def transfer_syntax(data: bytes) -> str:
    at = data.index(b"\x02\x00\x10\x00UI") + 6
    length = int.from_bytes(data[at:at + 2], "little")
    return data[at + 2:at + 2 + length].rstrip(b"\0 ").decode("ascii")


def echo(port: int) -> bool:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(sop_class.Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="CALCNODE")
    if not assoc.is_established:
        return False
    try:
        return assoc.send_c_echo().get("Status") == SUCCESS
    finally:
        assoc.release()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> NodeRun:
    tmp = tmp_path_factory.mktemp("badinput-node")
    # the failed kinds last, so that `calcnode status` (the 10 latest studies) shows them
    failing = [c for c in CORPUS if c.expected.outcome == FAILED]
    others = [c for c in CORPUS if c.expected.outcome != FAILED]
    order = [*GOOD[:2], *others, GOOD[2], *failing, GOOD[3]]
    node = NodeProcess(tmp, node_config(tmp, study={"complete_after_s": 2, "max_wait_s": 120}))
    try:
        node.start()
        statuses, comments = send_all(node.port, order, tmp / "sent")
        studies = {c.study_instance_uid for c in [*GOOD, *CORPUS] if c.expected.outcome != REFUSED
                   and c.expected.outcome != KEPT_}
        rows = {uid: node.wait_study(uid, timeout_s=180) for uid in sorted(studies)}
        echo_after = echo(node.port)
        status_text = node.status().stdout
        node.stop(timeout_s=60)
    finally:
        node.close()
    return NodeRun(node, statuses, comments, rows, echo_after, status_text, node.log_text())


@pytest.mark.timeout(600)
def test_every_kind_gets_its_status_and_the_good_study_is_analysed(run):
    wrong = {}
    for case in CORPUS:
        expected = case.expected.status if case.expected.outcome == REFUSED else SUCCESS
        if run.statuses[case.name] != expected:
            wrong[case.name] = (run.statuses[case.name], expected)
    assert not wrong, f"{wrong}\n{run.log[-6000:]}"
    assert [run.statuses[c.name] for c in GOOD] == [SUCCESS] * 4
    good = run.rows[GOOD[0].study_instance_uid]
    assert (good["state"], good["images"], good["failed_images"]) == ("done", 4, 0), good
    outputs = run.node.query("SELECT kind, path FROM outputs WHERE study_uid = ?",
                             (GOOD[0].study_instance_uid,))
    assert "sr" in {o["kind"] for o in outputs}
    assert all((run.node.spool / o["path"]).is_file() for o in outputs)
    assert run.echo_after, "the node did not answer C-ECHO after the corpus"


@pytest.mark.timeout(600)
def test_each_refusal_says_why_in_its_error_comment(run):
    """The reason of the node's log line, as an Error Comment (an LO value: at most 64 printable
    ASCII characters, no backslash) the sender can show; none on a Success."""
    refusals = [line for line in run.log.splitlines() if "refused instance" in line]
    for case in CORPUS:
        comment = run.comments[case.name]
        if case.expected.outcome != REFUSED:
            assert comment is None, (case.name, comment)
            continue
        assert comment and len(comment) <= 64, (case.name, comment)
        assert all(" " <= c <= "~" and c != "\\" for c in comment), (case.name, comment)
        head = comment.removesuffix("...")[:24]
        status = f"status 0x{case.expected.status:04X} "
        assert any(status in line and head in line for line in refusals), (case.name, comment)
    assert all(run.comments[c.name] is None for c in GOOD)


@pytest.mark.timeout(600)
def test_each_bad_study_failed_with_its_reason_in_status_and_one_log_line(run):
    failed = [c for c in CORPUS if c.expected.outcome == FAILED]
    for case in failed:
        row = run.rows[case.study_instance_uid]
        assert row["state"] == "failed", (case.name, row)
        assert re.search(case.expected.reason, row["reason"]), (case.name, row["reason"])
        lines = [line for line in run.log.splitlines()
                 if f"study={case.study_instance_uid} failed" in line]
        assert len(lines) == 1 and re.search(case.expected.reason, lines[0]), (case.name, lines)
    assert f"{len(failed)} failed" in run.status_text, run.status_text
    shown = {case.name: line for case in failed for line in run.status_text.splitlines()
             if case.study_instance_uid in line}
    assert len(shown) >= 5, run.status_text
    for name, line in shown.items():
        assert " failed " in line and re.search(BY_NAME[name].expected.reason, line), line


@pytest.mark.timeout(600)
def test_refused_kinds_are_not_kept_and_tolerated_ones_are_analysed(run):
    kept = {r["sop_uid"]: r["role"] for r in run.node.query("SELECT sop_uid, role FROM instances")}
    refusals = [line for line in run.log.splitlines() if "refused instance" in line]
    for case in CORPUS:
        outcome = case.expected.outcome
        if outcome == REFUSED:
            assert case.sop_instance_uid not in kept, case.name
            uid = case.sop_instance_uid if is_valid_uid(case.sop_instance_uid) else repr(case.sop_instance_uid)
            assert [line for line in refusals if f"instance {uid} " in line
                    and f"status 0x{case.expected.status:04X}" in line], (case.name, refusals)
        elif outcome == KEPT_:
            assert kept[case.sop_instance_uid] == "kept", case.name
            assert run.node.study_row(case.study_instance_uid) is None, case.name  # never analysed
        elif outcome == ANALYSED_:
            row = run.rows[case.study_instance_uid]
            assert (row["state"], row["images"], row["failed_images"]) == ("done", 1, 0), (case.name, row)
    assert len(refusals) == sum(c.expected.outcome == REFUSED for c in CORPUS)
    stored = list((run.node.spool / "instances").rglob("*.dcm"))
    assert len(stored) == len(kept)
    assert all(is_valid_uid(p.parent.name) and is_valid_uid(p.stem) for p in stored)


# -- 4: no patient identity in the log ---------------------------------------------------------

def identifying_values() -> set[str]:
    values = set(PHI.values()) | set(badinput.OTHER_NAMES)
    for name in [PHI["PatientName"], *badinput.OTHER_NAMES]:
        values |= {part for part in re.split(r"[\^=]", name) if len(part) >= 3}
    return values | {value.upper() for value in values}


@pytest.mark.timeout(600)
def test_no_patient_identity_in_any_log_line(run):
    assert "refused instance" in run.log and " failed: " in run.log  # error paths were taken
    assert "stored study=" in run.log and "analysed study=" in run.log
    leaks = sorted(value for value in identifying_values() if value in run.log)
    assert not leaks, leaks


# -- 3: random damage at the parsing boundary -------------------------------------------------

def small_file() -> bytes:
    stored = (np.arange(64 * 72).reshape(64, 72) % 3000 + 100).astype(np.uint16)
    return badinput.to_bytes(make_mammo_dataset(stored, identity=StudyIdentity(5), laterality="L",
                                                view="MLO"))


BASE = small_file()
BASE_START = badinput.dataset_offset(BASE)
MG = "1.2.840.10008.5.1.4.1.1.1.2"
BASE_UID = badinput.request_of(BASE)[1]
FUZZED_KEYWORDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "PixelSpacing",
    "ImagerPixelSpacing", "EstimatedRadiographicMagnificationFactor", "ImageLaterality",
    "Laterality", "ViewPosition", "ViewCodeSequence", "SOPClassUID", "SOPInstanceUID",
    "StudyInstanceUID", "SeriesInstanceUID", "SpecificCharacterSet", "PatientOrientation",
    "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "PixelPaddingValue",
    "PresentationIntentType", "PixelIntensityRelationshipSign", "Modality", "PixelData",
)


@st.composite
def element_value(draw) -> bytes:
    """The file with one element's value replaced by random bytes or a random number text."""
    keyword = draw(st.sampled_from(FUZZED_KEYWORDS))
    value = draw(st.one_of(
        st.binary(max_size=12),
        st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{0,3})?(\\-?[0-9]{1,5})?", fullmatch=True).map(str.encode),
        st.integers(0, 65535).map(lambda n: n.to_bytes(2, "little")),
    ))
    value += b"\0" * (len(value) % 2)
    ds = dcmread(io.BytesIO(BASE))
    tag = Tag(keyword)
    vr = ds[tag].VR if tag in ds else dictionary_VR(tag).split(" or ")[0]
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return badinput.to_bytes(ds)


@st.composite
def damaged(draw) -> bytes:
    """A valid small file after a few random bit flips, cuts, insertions and overwrites."""
    data = bytearray(draw(st.one_of(st.just(BASE), element_value())))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("flip", "cut", "insert", "overwrite")))
        at = draw(st.integers(BASE_START, max(BASE_START, len(data) - 1)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
    return bytes(data)


class Hung(Exception):
    pass


def _hung(signum, frame):
    raise Hung()


MAX_BYTES = 64 << 20  # the base image is 9 kB; no damage may make the node allocate more


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=damaged())
def test_damaged_files_raise_only_the_nodes_own_errors(tmp_path, data):
    path = tmp_path / "damaged.dcm"
    path.write_bytes(data)
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.setitimer(signal.ITIMER_REAL, 10)  # a hang fails the example instead of the run
    tracemalloc.start()
    try:
        try:
            read_header(path, MG, BASE_UID)
        except Rejected as exc:
            assert exc.status in NAMED_STATUSES and str(exc)
        try:
            mammogram = to_mammogram(read_file(path), ImagesConfig())
            assert mammogram.pixels.dtype == np.float32 and min(mammogram.pixels.shape) >= 64
        except CalcnodeError as exc:
            assert str(exc)
        _, peak = tracemalloc.get_traced_memory()
        assert peak < MAX_BYTES, f"{peak} bytes allocated"
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
