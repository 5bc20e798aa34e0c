"""``calcnode status``: what the node holds, as lines of text built from the state database."""

from __future__ import annotations

from datetime import datetime

from node import notices
from node.config import Config
from node.outbox import Outbox
from node.spool import Spool


def report(spool: Spool, config: Config, now: float, recent: int = 10) -> list[str]:
    counts = spool.study_counts()
    received = sum(counts.values())
    lines = [f"spool: {spool.root} ({spool.free_mb():.0f} MB free)",
             f"studies: {received} received, {counts['receiving']} waiting, "
             f"{counts['analysing']} analysing, {counts['done']} done, {counts['failed']} failed"]
    rows = spool.db().execute(
        "SELECT study_uid, state, calling_ae, last_at, images, clusters, highest_certainty, reason"
        " FROM studies ORDER BY last_at DESC LIMIT ?", (recent,)).fetchall()
    if rows:
        lines.append("recent studies:")
    for r in rows:
        when = datetime.fromtimestamp(r["last_at"]).strftime("%Y-%m-%d %H:%M:%S")
        found = "" if r["clusters"] is None else f" images={r['images']} clusters={r['clusters']}"
        best = "" if r["highest_certainty"] is None else f" highest={r['highest_certainty']:.0f}"
        why = f" ({r['reason']})" if r["reason"] and r["state"] == "failed" else ""
        lines.append(f"  {when} {r['state']:<9} {r['study_uid']} from {r['calling_ae']}{found}{best}{why}")
    configured = set(notices.all_destinations(config))
    lines.append("outbox:" if configured else
                 "outbox: no destination configured; outputs stay in " + str(spool.outputs))
    summaries = {s.destination: s for s in Outbox(spool).summary()}
    for name in sorted(configured | set(summaries)):
        s = summaries.get(name)
        if s is None:
            lines.append(f"  {name}: nothing queued yet")
            continue
        line = f"  {name}: {s.pending} pending, {s.done} delivered, {s.failed} failed"
        if s.pending and s.next_attempt_at is not None and s.next_attempt_at > now:
            line += f", next attempt in {s.next_attempt_at - now:.0f} s"
        if s.last_error:
            line += f", last error: {s.last_error}"
        lines.append(line)
    return lines
