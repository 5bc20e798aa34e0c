"""Prometheus metrics, read from the spool's state database at scrape time.

Almost everything worth counting is already in the database (instances kept, analyses, clusters,
deliveries), so a custom collector turns rows into samples when ``/metrics`` is scraped: the
numbers survive restarts and are the same whichever process asks. Only what the database does
not keep is counted in memory: C-STOREs the receiver refused (``record_refused``).

Counters derived from rows can go down when a row changes state (a failed delivery queued
again, a finished study re-opened by a late image); Prometheus treats that as a counter reset.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
)

from node.spool import Spool

ANALYSIS_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

_refused_lock = threading.Lock()
# (sop class, status) -> count, per Spool object, so that two services in one process (tests)
# keep apart; entries go with their Spool.
_refused: "weakref.WeakKeyDictionary[Spool, Counter]" = weakref.WeakKeyDictionary()


def record_refused(spool: Spool, sop_class_uid: str, status: int) -> None:
    """Count one C-STORE the receiver answered with a failure ``status`` (not stored)."""
    with _refused_lock:
        _refused.setdefault(spool, Counter())[(sop_class_uid, status)] += 1


def refused_counts(spool: Spool) -> dict[tuple[str, int], int]:
    with _refused_lock:
        return dict(_refused.get(spool, {}))


def new_registry(spool: Spool) -> CollectorRegistry:
    """A registry of the node's own (not prometheus_client's global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpoolCollector(spool))
    return registry


class SpoolCollector:
    """Samples from ``spool``'s database; each scrape uses a connection of its own, closed after
    (the web server runs every request on a new thread)."""

    def __init__(self, spool: Spool):
        self.spool = spool

    def collect(self):
        reader = Spool(self.spool.root, self.spool.fsync)
        try:
            yield from self._families(reader)
        finally:
            reader.close()

    def _families(self, reader: Spool):
        db = reader.db()
        received = CounterMetricFamily(
            "calcnode_instances_received", "C-STORE requests by SOP class and outcome (an "
            "instance sent again counts once)", labels=["sop_class", "outcome", "status"])
        for sop_class, count in db.execute("SELECT sop_class, COUNT(*) FROM instances GROUP BY 1"):
            received.add_metric([sop_class, "stored", "0x0000"], count)
        for (sop_class, status), count in sorted(refused_counts(self.spool).items()):
            received.add_metric([sop_class, "refused", f"0x{status:04X}"], count)
        yield received

        counts = reader.study_counts()
        analysed = CounterMetricFamily("calcnode_studies_analysed",
                                       "Studies analysed, by outcome", labels=["outcome"])
        done = db.execute("SELECT COUNT(*) FROM studies WHERE analysed_at IS NOT NULL"
                          " AND state != 'failed'").fetchone()[0]
        analysed.add_metric(["done"], done)
        analysed.add_metric(["failed"], counts["failed"])
        yield analysed

        clusters = db.execute("SELECT COALESCE(SUM(clusters), 0) FROM studies").fetchone()[0]
        yield CounterMetricFamily("calcnode_clusters_found",
                                  "Clusters in the latest analysis of every study", value=clusters)
        yield _analysis_histogram(db)

        deliveries = CounterMetricFamily("calcnode_deliveries", "Deliveries finished, by "
                                         "destination and outcome", labels=["destination", "outcome"])
        pending = GaugeMetricFamily("calcnode_outbox_pending", "Deliveries waiting, by destination",
                                    labels=["destination"])
        for destination, state, count in db.execute(
                "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2"):
            if state == "pending":
                pending.add_metric([destination], count)
            else:
                deliveries.add_metric([destination, state], count)
        yield deliveries
        yield pending

        queued = GaugeMetricFamily("calcnode_studies_queued", "Studies waiting for analysis "
                                   "(receiving) or being analysed", labels=["state"])
        queued.add_metric(["receiving"], counts["receiving"])
        queued.add_metric(["analysing"], counts["analysing"])
        yield queued
        yield GaugeMetricFamily("calcnode_free_disk_bytes", "Free bytes on the spool's filesystem",
                                value=reader.free_mb() * 1e6)


def _analysis_histogram(db) -> HistogramMetricFamily:
    columns = ", ".join(f"SUM(analysis_s <= {le})" for le in ANALYSIS_BUCKETS_S)
    row = db.execute(f"SELECT {columns}, COUNT(*), COALESCE(SUM(analysis_s), 0) FROM studies"
                     " WHERE analysis_s IS NOT NULL").fetchone()
    *cumulative, count, total = row
    buckets = [(str(float(le)), n or 0) for le, n in zip(ANALYSIS_BUCKETS_S, cumulative)]
    buckets.append(("+Inf", count))
    return HistogramMetricFamily("calcnode_analysis_seconds", "Seconds of the latest analysis of "
                                 "every analysed study", buckets=buckets, sum_value=total)
