"""The retry policy (dispatcher.decide), the C-STORE status classification (sender.classify) and
the conversion for a destination that takes another transfer syntax (sender._store)."""

import random

import pytest
from pydicom.dataset import Dataset

from node.config import RetryConfig
from node.dispatcher import decide, retry_delay_s
from node.model import OutboxJob, StoreOutcome, StoreResult
from node.sender import classify

RETRY = RetryConfig(initial_delay_s=10, max_delay_s=600, max_age_h=1)


def job(attempts=0, created_at=0.0):
    return OutboxJob(1, "1.2.3", "1.2.840.10008.5.1.4.1.1.88.50", "1.2", "pacs", "/x.dcm", attempts, created_at)


def status(code, comment=None):
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment
    return ds


def test_delay_doubles_and_is_capped_with_jitter():
    rng = random.Random(1)
    delays = [retry_delay_s(n, RETRY, rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        base = min(600, 10 * 2 ** (n - 1))
        assert 0.8 * base <= delay <= 1.2 * base
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not lockstep


def test_success_is_done():
    assert decide(job(), StoreResult(StoreOutcome.SUCCESS, 0, ""), 5, RETRY, random.Random(0)).action == "done"


def test_permanent_fails_at_once_with_reason():
    result = StoreResult(StoreOutcome.PERMANENT, 0xA900, "status 0xA900")
    decision = decide(job(), result, 5, RETRY, random.Random(0))
    assert decision.action == "fail" and "0xA900" in decision.message


def test_transient_retries_later():
    decision = decide(job(attempts=2), StoreResult(StoreOutcome.TRANSIENT, None, "refused"), 100,
                      RETRY, random.Random(0))
    assert decision.action == "retry"
    assert 100 + 0.8 * 40 <= decision.next_at <= 100 + 1.2 * 40


def test_transient_gives_up_after_max_age():
    decision = decide(job(attempts=7, created_at=0), StoreResult(StoreOutcome.TRANSIENT, None, "refused"),
                      3590, RETRY, random.Random(0))
    assert decision.action == "fail" and "gave up after 8 attempts" in decision.message


@pytest.mark.parametrize("code, outcome", [
    (0x0000, StoreOutcome.SUCCESS),
    (0xB000, StoreOutcome.SUCCESS),  # coercion of data elements: stored
    (0xB007, StoreOutcome.SUCCESS),
    (0xA700, StoreOutcome.TRANSIENT),  # out of resources: try again later
    (0xA7FF, StoreOutcome.TRANSIENT),
    (0xA900, StoreOutcome.PERMANENT),
    (0xC000, StoreOutcome.PERMANENT),
    (0x0110, StoreOutcome.PERMANENT),
    (0x0122, StoreOutcome.PERMANENT),  # SOP class not supported
])
def test_status_classification(code, outcome):
    assert classify(status(code)).outcome is outcome


def test_empty_response_is_transient_never_success():
    assert classify(Dataset()).outcome is StoreOutcome.TRANSIENT
    assert classify(None).outcome is StoreOutcome.TRANSIENT


def test_error_comment_is_kept_in_the_reason():
    assert "disk full" in classify(status(0xA700, "disk full")).reason


def test_a_compressed_output_is_decoded_with_the_fastest_decoder_for_a_destination_without_it(
        tmp_path, monkeypatch):
    """sender._store: a destination that took only Explicit VR Little Endian for SC gets the same
    instance decoded, by the decoder images.py prefers (pyjpegls for JPEG-LS, 6x faster here)."""
    from types import SimpleNamespace

    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage

    from node import images, sender
    from node.testing.dicomfactory import test_uid

    rgb = np.random.default_rng(5).integers(0, 256, (64, 48, 3), np.uint8)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, test_uid("sc", 1)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 64, 48, 3, 0
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "RGB", 8, 8, 7
    ds.PixelRepresentation = 0
    ds.compress(JPEGLSLossless, rgb, encoding_plugin="pyjpegls")
    path = tmp_path / "sc.dcm"
    ds.save_as(path, enforce_file_format=True)
    plugins, sent = [], []
    original = Dataset.decompress

    def recording(self, *args, **kwargs):
        plugins.append(kwargs.get("decoding_plugin"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "decompress", recording)
    context = SimpleNamespace(abstract_syntax=SecondaryCaptureImageStorage,
                              transfer_syntax=[ExplicitVRLittleEndian])
    assoc = SimpleNamespace(is_established=True, accepted_contexts=[context],
                            send_c_store=lambda dataset: sent.append(dataset) or status(0x0000))
    job_ = OutboxJob(1, str(ds.SOPInstanceUID), SecondaryCaptureImageStorage, "1.2", "pacs", str(path), 0, 0.0)
    meta = SimpleNamespace(TransferSyntaxUID=JPEGLSLossless)
    result = sender._store(assoc, job_, meta)
    assert result.outcome is StoreOutcome.SUCCESS
    assert plugins == [images.decoding_plugin(JPEGLSLossless)] == ["pyjpegls"]
    [out] = sent
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(out.pixel_array, rgb)
