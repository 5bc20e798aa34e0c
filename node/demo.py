"""``calcnode demo``: send a synthetic four-view study to the running node and report back.

Meant for a second terminal beside ``make run``: it writes a study from the generator (two
suspicious clusters, on RCC and RMLO), C-STOREs it to the node named by the config, waits until
the node has analysed it, and lists the findings and the output files (and deliveries, when a
destination is configured).
"""

from __future__ import annotations

import tempfile
import time
from typing import Callable

from node.config import Config, DestinationConfig
from node.model import StoreOutcome
from node.sender import send_paths
from node.spool import Spool
from node.testing.study import write_study

DEMO_AE = "CALCNODE-DEMO"
POLL_S = 0.25


def run(config: Config, spool: Spool, seed: int, timeout_s: float,
        say: Callable[[str], None]) -> tuple[list[str], bool]:
    """Returns the result lines and whether the study was analysed."""
    listen = config.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else listen.host
    node = DestinationConfig(ae_title=listen.ae_title, host=host, port=listen.port)
    with tempfile.TemporaryDirectory(prefix="calcnode-demo-") as folder:
        study = write_study(folder, seed, rows=2294, cols=1914, spacing_mm=0.1)
        results = send_paths(node, [str(p) for p in study.paths], DEMO_AE)
    sent = sum(r.outcome is StoreOutcome.SUCCESS for r in results)
    uid = study.identity.study_instance_uid
    say(f"sent {sent}/{len(results)} images of study {uid} to {listen.ae_title}@{host}:{listen.port}")
    if sent == 0:
        return [f"the node did not take the study: {results[0].reason}"], False
    deadline = time.monotonic() + config.study.complete_after_s + timeout_s
    say("waiting for the analysis ...")
    while time.monotonic() < deadline:
        row = spool.db().execute("SELECT * FROM studies WHERE study_uid = ?", (uid,)).fetchone()
        if row is not None and row["state"] in ("done", "failed"):
            return _describe(spool, row), row["state"] == "done"
        time.sleep(POLL_S)
    return [f"no result for study {uid} within the timeout; see the node's log"], False


def _describe(spool: Spool, study) -> list[str]:
    lines = [f"study {study['study_uid']}: {study['state']}" +
             (f" ({study['reason']})" if study["reason"] else "")]
    if study["state"] == "done":
        best = study["highest_certainty"]
        lines.append(f"  {study['images']} images analysed in {study['analysis_s']:.1f} s, "
                     f"{study['clusters']} clusters" + ("" if best is None else f", highest certainty {best:.0f}"))
    db = spool.db()
    for out in db.execute("SELECT * FROM outputs WHERE study_uid = ? ORDER BY kind, path",
                          (study["study_uid"],)):
        lines.append(f"  {out['kind']:<4} {spool.root / out['path']}")
        for d in db.execute("SELECT destination, state, last_error FROM deliveries WHERE output_uid = ?",
                            (out["sop_uid"],)):
            lines.append(f"       -> {d['destination']}: {d['state']} {d['last_error']}".rstrip())
    return lines
