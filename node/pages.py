"""The dashboard's HTML pages and overlay images, rendered from the state database (web.py
serves them). Every value from the database or a file goes through ``esc``."""

from __future__ import annotations

import html
import io
import logging
import math
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from node.config import Config
from node.images import open_bounded
from node.notices import all_destinations
from node.outbox import Outbox
from node.reporting import codes as C
from node.spool import Spool

log = logging.getLogger(__name__)

PAGE_SIZE = 50
OVERLAY_MAX_PX = 1024
CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f3f3f3}.failed{color:#b00}.pending{color:#a60}.done{color:#070}
nav a{margin-right:1em}.uid{font-family:monospace;font-size:12px}figure{display:inline-block}
img{max-width:480px;border:1px solid #ccc}.note{background:#eef;padding:4px 8px}"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def when(timestamp: float | None) -> str:
    return "" if timestamp is None else datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def table(headings: list[str], rows: list[list[str]]) -> str:
    """Rows of HTML cells (already escaped) under escaped headings."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def pager(base: str, page: int, total: int, **params: str) -> str:
    pages = max(1, math.ceil(total / PAGE_SIZE))
    links = []
    for label, target in (("newer", page - 1), ("older", page + 1)):
        if 1 <= target <= pages:
            query = urlencode({**{k: v for k, v in params.items() if v}, "page": target})
            links.append(f"<a rel='{'prev' if target < page else 'next'}' href='{base}?{query}'>{label}</a>")
    return f"<p class='pager'>page {page} of {pages} ({total} in all) {' '.join(links)}</p>"


def patient_identity(spool: Spool, study_uid: str) -> str:
    """Name and ID from the study's first stored header: call only when the config allows."""
    row = spool.db().execute("SELECT path FROM instances WHERE study_uid = ? ORDER BY received_at"
                             " LIMIT 1", (study_uid,)).fetchone()
    if row is None:
        return ""
    try:
        with open_bounded(spool.root / row["path"]) as fp:
            header = dcmread(fp, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
        return f"{header.get('PatientName', '')} ({header.get('PatientID', '')})"
    except Exception:  # noqa: BLE001 - a damaged header must not break the page
        return "(unreadable)"


# --- pages ---

def render_index(spool: Spool, config: Config, page: int) -> str:
    db = spool.db()
    counts = spool.study_counts()
    total = sum(counts.values())
    pending = dict(db.execute("SELECT destination, COUNT(*) FROM deliveries WHERE state = 'pending'"
                              " GROUP BY destination").fetchall())
    outbox = ", ".join(f"{esc(name)} {pending.get(name, 0)}"
                       for name in sorted(set(all_destinations(config)) | set(pending))) or "no destination"
    summary = (f"<p>{total} studies: {counts['receiving']} waiting, {counts['analysing']} analysing, "
               f"{counts['done']} done, {counts['failed']} failed. Outbox pending: {outbox}. "
               f"Free disk: {spool.free_mb() / 1000:.1f} GB.</p>")
    rows = db.execute("SELECT study_uid, state, calling_ae, last_at, clusters, highest_certainty"
                      " FROM studies ORDER BY last_at DESC LIMIT ? OFFSET ?",
                      (PAGE_SIZE, (page - 1) * PAGE_SIZE)).fetchall()
    uids = [r["study_uid"] for r in rows]
    marks = ",".join("?" * len(uids))
    images = dict(db.execute(f"SELECT study_uid, COUNT(*) FROM instances WHERE study_uid IN ({marks})"
                             " AND role = 'image' GROUP BY study_uid", uids).fetchall())
    delivered: dict[str, dict[str, dict[str, int]]] = {}
    for r in db.execute("SELECT o.study_uid, d.destination, d.state, COUNT(*) FROM outputs o JOIN"
                        f" deliveries d ON d.output_uid = o.sop_uid WHERE o.study_uid IN ({marks})"
                        " GROUP BY 1, 2, 3", uids):
        delivered.setdefault(r[0], {}).setdefault(r[1], {})[r[2]] = r[3]
    show_patient = config.web.show_patient_identity
    headings = ["received", "study", "from", *(["patient"] if show_patient else []), "images",
                "state", "clusters", "highest certainty", "deliveries"]
    cells = []
    for r in rows:
        uid = r["study_uid"]
        cells.append([
            esc(when(r["last_at"])),
            f"<a class='uid' href='/study/{esc(uid)}'>{esc(uid)}</a>",
            esc(r["calling_ae"]),
            *([esc(patient_identity(spool, uid))] if show_patient else []),
            esc(images.get(uid, 0)),
            f"<span class='{esc(r['state'])}'>{esc(r['state'])}</span>",
            esc(r["clusters"]),
            "" if r["highest_certainty"] is None else f"{r['highest_certainty']:.0f}",
            delivery_states(delivered.get(uid, {})),
        ])
    return summary + table(headings, cells) + pager("/", page, total)


def delivery_states(by_destination: dict[str, dict[str, int]]) -> str:
    """Per destination the worst state of its deliveries: failed, else pending, else done."""
    parts = []
    for name, states in sorted(by_destination.items()):
        state = next(s for s in ("failed", "pending", "done") if s in states or s == "done")
        parts.append(f"{esc(name)}: <span class='{state}'>{state}</span>")
    return "<br>".join(parts)


def render_study(spool: Spool, config: Config, uid: str) -> str | None:
    db = spool.db()
    study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (uid,)).fetchone()
    if study is None:
        return None
    facts = [("study", uid), ("state", study["state"]), ("from", study["calling_ae"]),
             ("last received", when(study["last_at"])), ("analysed", when(study["analysed_at"])),
             ("runs", study["generation"]), ("images", study["images"]),
             ("images that failed", study["failed_images"]), ("clusters", study["clusters"]),
             ("highest certainty", study["highest_certainty"]),
             ("analysis seconds", study["analysis_s"]), ("notes", study["reason"])]
    if config.web.show_patient_identity:
        facts.insert(1, ("patient", patient_identity(spool, uid)))
    body = table(["", ""], [[esc(k), esc(v)] for k, v in facts])
    outputs = db.execute("SELECT sop_uid, kind, path FROM outputs WHERE study_uid = ? AND generation ="
                         " (SELECT MAX(generation) FROM outputs WHERE study_uid = ?) ORDER BY kind,"
                         " sop_uid", (uid, uid)).fetchall()
    reports = [o for o in outputs if o["kind"] == "sr"]
    if reports:
        try:
            found = sr_findings(spool.root / reports[0]["path"])
        except (OSError, InvalidDicomError, AttributeError, IndexError, ValueError) as exc:
            log.warning("web: study=%s: cannot read its CAD SR: %s", uid, exc)
            found = None
        body += "<h2>Findings (CAD SR)</h2>" + (
            "<p>The CAD SR could not be read; see the node's log.</p>" if found is None else
            table(["cluster", "certainty %", "calcifications", "type"],
                  [[str(i), esc(c), esc(n), esc(t)] for i, (c, n, t) in enumerate(found, 1)])
            if found else "<p>No clusters marked.</p>")
    overlays = [o for o in outputs if o["kind"] == "sc"]
    if overlays:
        body += "<h2>Overlays</h2>" + "".join(
            f"<figure><img alt='overlay {esc(o['sop_uid'])}' src='/study/{esc(uid)}/overlay/"
            f"{esc(o['sop_uid'])}.png'><figcaption class='uid'>{esc(o['sop_uid'])}</figcaption>"
            "</figure>" for o in overlays)
    deliveries = db.execute("SELECT o.kind, o.sop_uid, d.destination, d.state, d.attempts,"
                            " d.last_error FROM outputs o JOIN deliveries d ON d.output_uid ="
                            " o.sop_uid WHERE o.study_uid = ? ORDER BY d.id", (uid,)).fetchall()
    if deliveries:
        body += "<h2>Deliveries</h2>" + table(
            ["output", "object", "destination", "state", "attempts", "last error"],
            [[esc(d["kind"]), f"<span class='uid'>{esc(d['sop_uid'])}</span>", esc(d["destination"]),
              f"<span class='{esc(d['state'])}'>{esc(d['state'])}</span>", esc(d["attempts"]),
              esc(d["last_error"])] for d in deliveries])
    return body


def sr_findings(path: Path) -> list[tuple[float | None, int | None, str]]:
    """(certainty %, calcifications, type) of every single-image finding in a CAD SR."""
    found = []

    def named(item, code) -> bool:
        names = item.get("ConceptNameCodeSequence") or []
        return bool(names) and (names[0].CodeValue, names[0].CodingSchemeDesignator) == (
            code.value, code.scheme_designator)

    def walk(items) -> None:
        for item in items:
            if named(item, C.SINGLE_IMAGE_FINDING):
                found.append(_finding(item.get("ContentSequence") or [], named))
            walk(item.get("ContentSequence") or [])

    walk(dcmread(path).get("ContentSequence") or [])
    return found


def _finding(children, named) -> tuple[float | None, int | None, str]:
    certainty = count = None
    kind = ""
    for child in children:
        if named(child, C.CERTAINTY_OF_FINDING):
            certainty = float(child.MeasuredValueSequence[0].NumericValue)
        elif named(child, C.NUMBER_OF_CALCIFICATIONS):
            count = int(child.MeasuredValueSequence[0].NumericValue)
        elif named(child, C.CALCIFICATION_TYPE):
            kind = str(child.ConceptCodeSequence[0].CodeMeaning)
    return certainty, count, kind


def overlay_png(path: Path, max_px: int = OVERLAY_MAX_PX) -> bytes:
    """A secondary capture's pixels as PNG, at most ``max_px`` on its longer side."""
    pixels = dcmread(path).pixel_array
    if pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) * (255.0 / max(high - low, 1.0))).astype(np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((max_px, max_px))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def render_outbox(spool: Spool, config: Config, page: int, state: str, requeued: str | None) -> str:
    db = spool.db()
    body = f"<p class='note'>{esc(requeued)} queued again.</p>" if requeued is not None else ""
    summaries = {s.destination: s for s in Outbox(spool).summary()}
    rows = []
    for name in sorted(set(all_destinations(config)) | set(summaries)):
        s = summaries.get(name)
        retry_all = "" if s is None or not s.failed else retry_form("destination", name, "Retry all failed")
        rows.append([esc(name), *(esc(v) for v in (
            (s.pending, s.done, s.failed, when(s.next_attempt_at), s.last_error) if s else
            ("", "", "", "", "nothing queued yet"))), retry_all])
    body += table(["destination", "pending", "delivered", "failed", "next attempt", "last error", ""], rows)
    state = state if state in ("pending", "done", "failed") else ""
    where, args = ("WHERE d.state = ?", [state]) if state else ("", [])
    total = db.execute(f"SELECT COUNT(*) FROM deliveries d {where}", args).fetchone()[0]
    found = db.execute(
        "SELECT d.id, d.destination, d.state, d.attempts, d.created_at, d.done_at, d.last_error,"
        f" o.study_uid, o.kind FROM deliveries d JOIN outputs o ON o.sop_uid = d.output_uid {where}"
        " ORDER BY d.id DESC LIMIT ? OFFSET ?", args + [PAGE_SIZE, (page - 1) * PAGE_SIZE]).fetchall()
    filters = " ".join(f"<a href='/outbox{'?state=' + s if s else ''}'>{s or 'all'}</a>"
                       for s in ("", "failed", "pending", "done"))
    body += f"<h2>Deliveries ({esc(state or 'all')})</h2><p>show: {filters}</p>" + table(
        ["id", "made", "destination", "study", "output", "state", "attempts", "finished",
         "last error", ""],
        [[esc(d["id"]), esc(when(d["created_at"])), esc(d["destination"]),
          f"<a class='uid' href='/study/{esc(d['study_uid'])}'>{esc(d['study_uid'])}</a>",
          esc(d["kind"]), f"<span class='{esc(d['state'])}'>{esc(d['state'])}</span>",
          esc(d["attempts"]), esc(when(d["done_at"])), esc(d["last_error"]),
          retry_form("delivery", str(d["id"]), "Retry") if d["state"] == "failed" else ""]
         for d in found])
    return body + pager("/outbox", page, total, state=state)


def retry_form(field: str, value: str, label: str) -> str:
    return (f"<form method='post' action='/outbox/retry'><input type='hidden' name='{field}'"
            f" value='{esc(value)}'><button type='submit'>{esc(label)}</button></form>")
