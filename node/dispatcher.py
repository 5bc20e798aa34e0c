"""The outbox worker: sends due deliveries to each destination and applies the retry policy.

One thread per destination, so a destination that is down never holds back the others (nor the
receiver, which shares nothing with these threads but the database). Each pass takes the due
jobs of its destination in order of creation and hands them to that destination's send function:
C-STORE in one association for a DICOM destination (``sender.send_files``), MLLP or HTTP for the
worklist notices (``notices.senders``, passed in as ``channels``). Every send function returns
one StoreResult per job, so one policy serves them all. The policy is a
pure function, ``decide``: success -> done; transient failure -> retry after an exponential
backoff with jitter, for as long as ``retry.max_age_h`` allows since the output was made, then
failed; permanent failure -> failed at once with the reason. Pending deliveries live in the
database, so they survive restarts.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from node.config import Config, DestinationConfig, RetryConfig
from node.errors import ConfigError
from node.model import OutboxJob, StoreOutcome, StoreResult
from node.outbox import Outbox

log = logging.getLogger(__name__)

POLL_S = 2.0  # picks up `calcnode retry` and other processes' changes at least this often
JITTER = 0.2  # +-20 % so that many nodes do not retry in lockstep

Sender = Callable[[DestinationConfig, Sequence[OutboxJob], str], Iterable[StoreResult]]
Deliver = Callable[[Sequence[OutboxJob]], Iterable[StoreResult]]  # one destination's jobs -> results


@dataclass(frozen=True)
class Decision:
    action: str  # "done", "retry", "fail"
    next_at: float | None = None
    message: str = ""


def retry_delay_s(attempt: int, retry: RetryConfig, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (1 = the first retry): doubling, capped, jittered."""
    base = min(retry.max_delay_s, retry.initial_delay_s * 2 ** max(0, attempt - 1))
    return base * rng.uniform(1 - JITTER, 1 + JITTER)


def decide(job: OutboxJob, result: StoreResult, now: float, retry: RetryConfig,
           rng: random.Random) -> Decision:
    if result.outcome is StoreOutcome.SUCCESS:
        return Decision("done", message=result.reason)
    if result.outcome is StoreOutcome.PERMANENT:
        return Decision("fail", message=result.reason)
    attempt = job.attempts + 1
    next_at = now + retry_delay_s(attempt, retry, rng)
    if next_at > job.created_at + retry.max_age_h * 3600:
        return Decision("fail", message=f"gave up after {attempt} attempts: {result.reason}")
    return Decision("retry", next_at, result.reason)


class Dispatcher:
    def __init__(self, config: Config, outbox: Outbox, send: Sender,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 channels: Mapping[str, Deliver] | None = None):
        """``send`` C-STOREs to the DICOM destinations of the config; ``channels`` are further
        destinations by name with their own send function (the worklist notices)."""
        self.config = config
        self.outbox = outbox
        self.clock = clock
        self.rng = rng or random.Random()
        clash = sorted(set(config.destinations) & set(channels or {}))
        if clash:
            raise ConfigError([f"destinations.{clash[0]}: the name is reserved for worklist notices"])
        self._deliver: dict[str, Deliver] = {
            name: functools.partial(send, dest, calling_ae=config.listen.ae_title)
            for name, dest in config.destinations.items()} | dict(channels or {})
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in self._deliver}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name in self._deliver:
            thread = threading.Thread(target=self._run, args=(name,), name=f"dispatch-{name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the association in progress (bounded by the destinations' timeouts)."""
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout_s)

    def _run(self, name: str) -> None:
        wake = self._wake[name]
        while not self._stop.is_set():
            try:
                sent = self.deliver_due(name)
            except Exception:  # a bug or a database error must not end deliveries for good
                log.exception("destination %s: delivery pass failed", name)
                sent = 0
            if sent:
                continue
            due = self.outbox.next_due_at(name)
            wait_s = POLL_S if due is None else min(POLL_S, max(0.0, due - self.clock()))
            wake.wait(wait_s)
            wake.clear()

    def deliver_due(self, name: str) -> int:
        """Send what is due for one destination now; returns how many jobs were attempted."""
        jobs = self.outbox.due(name, self.clock())
        if not jobs:
            return 0
        results = self._deliver[name](jobs)  # may be lazy: each result is recorded as it comes
        for job, result in zip(jobs, results, strict=True):
            self._record(job, result)
        return len(jobs)

    def _record(self, job: OutboxJob, result: StoreResult) -> None:
        now = self.clock()
        decision = decide(job, result, now, self.config.retry, self.rng)
        where = f"study={job.study_instance_uid} sop={job.output_uid} to={job.destination}"
        if decision.action == "done":
            self.outbox.delivered(job, now, decision.message)
            log.info("delivered %s%s", where, f" ({decision.message})" if decision.message else "")
        elif decision.action == "retry":
            self.outbox.retry_later(job, decision.next_at, decision.message)
            log.warning("delivery %s failed (%s); retry in %.0f s", where, decision.message,
                        decision.next_at - now)
        else:
            self.outbox.give_up(job, now, decision.message)
            log.error("delivery %s failed for good: %s", where, decision.message)
