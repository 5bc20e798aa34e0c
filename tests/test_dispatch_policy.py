"""The retry policy (dispatcher.decide) and the C-STORE status classification (sender.classify)."""

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
