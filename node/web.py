"""The dashboard, ``/metrics``, ``/healthz`` and ``/readyz``, served by the node itself.

The standard library's ThreadingHTTPServer (one daemon thread per request), server-rendered
HTML with every value passed through ``html.escape``. Each request reads the state database
on a connection of its own, closed when the request ends. Pages:

    /                                   recent studies (paginated), queues, free disk, version
    /study/<uid>                        findings, overlay images, deliveries of one study
    /study/<uid>/overlay/<sop>.png      an overlay secondary capture, reduced, as PNG
    /outbox                             deliveries; failed ones with a Retry button
    POST /outbox/retry                  queue failed deliveries again (one, or a destination's)
    /metrics /healthz /readyz           Prometheus text, liveness, readiness

With ``web.token`` set, everything but /healthz and /readyz needs it: ``Authorization: Bearer
<token>``, or ``?token=<token>`` once, which sets an HttpOnly, SameSite=Strict cookie. A node
listening beyond loopback without a token refuses to start. Patient names and IDs are not in
the database; they are read from a stored header only when ``web.show_patient_identity`` is on.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import io
import ipaddress
import logging
import math
import re
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from node import __version__
from node.config import Config, WebConfig
from node.errors import ConfigError
from node.metrics import new_registry
from node.outbox import Outbox
from node.reporting import codes as C
from node.reporting.uids import is_valid_uid
from node.spool import Spool

log = logging.getLogger(__name__)

PAGE_SIZE = 50
OVERLAY_MAX_PX = 1024
MAX_FORM_BYTES = 4096
COOKIE = "calcnode_session"
OPEN_PATHS = ("/healthz", "/readyz")
HTML = "text/html; charset=utf-8"
STUDY_PATH = re.compile(r"^/study/([0-9.]+)$")
OVERLAY_PATH = re.compile(r"^/study/([0-9.]+)/overlay/([0-9.]+)\.png$")
CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f3f3f3}.failed{color:#b00}.pending{color:#a60}.done{color:#070}
nav a{margin-right:1em}.uid{font-family:monospace;font-size:12px}figure{display:inline-block}
img{max-width:480px;border:1px solid #ccc}.note{background:#eef;padding:4px 8px}"""


def check_config(web: WebConfig) -> None:
    """A dashboard reachable from the network must ask for a token: it shows study data and
    can queue deliveries."""
    if web.enabled and not web.token and not is_loopback(web.host):
        raise ConfigError([f"web.token: must be set when web.host ({web.host!r}) is not a "
                           "loopback address; or set web.host to 127.0.0.1"])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_problem(receiver, max_associations: int) -> str | None:
    """Why the DICOM listener would not accept an association now, or None."""
    server = receiver.server
    if server is None or server.socket.fileno() == -1:
        return "the DICOM listener is not running"
    if len(server.active_associations) >= max_associations:
        return f"all {max_associations} association slots are in use"
    return None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    form: dict[str, str]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = HTML
    headers: tuple[tuple[str, str], ...] = ()


class WebServer:
    """``start()`` binds ``web.host:web.port`` and serves on a thread; ``stop()`` ends it."""

    def __init__(self, config: Config, spool: Spool, receiver, wake: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time):
        check_config(config.web)
        self.config = config
        self.spool = spool
        self.receiver = receiver
        self.wake = wake
        self.clock = clock
        self.registry = new_registry(spool)
        self.address: tuple[str, int] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        web = self.config.web
        try:
            self._server = ThreadingHTTPServer((web.host, web.port), _Handler)
        except OSError as exc:
            raise ConfigError([f"web.port: cannot listen on {web.host}:{web.port}: "
                               f"{exc.strerror or exc}"]) from None
        self._server.app = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="web", daemon=True)
        self._thread.start()
        self.address = self._server.server_address[:2]
        log.info("dashboard on http://%s:%d/", *self.address)
        return self.address

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        self._thread.join(10)

    # --- requests ---

    def respond(self, request: Request) -> Response:
        if request.path == "/healthz":
            return Response(200, b"ok\n", "text/plain")
        if request.path == "/readyz":
            problem = self.readiness_problem()
            return Response(503 if problem else 200, f"{problem or 'ready'}\n".encode(), "text/plain")
        token = self.config.web.token
        if token and "token" in request.query:
            if not _same(request.query["token"], token):
                return _page(401, "Not authorised", "<p>Wrong token.</p>")
            rest = urlencode({k: v for k, v in request.query.items() if k != "token"})
            cookie = f"{COOKIE}={_session(token)}; HttpOnly; SameSite=Strict; Path=/"
            return _redirect(request.path + (f"?{rest}" if rest else ""), cookie)
        if token and not self._authorised(request.headers):
            return _page(401, "Not authorised", "<p>Open this page with <code>?token=...</code> "
                         "once, or send <code>Authorization: Bearer ...</code>.</p>")
        with closing(Spool(self.spool.root, self.spool.fsync)) as spool:
            if request.method == "POST":
                return self._post(request, spool)
            return self._get(request, spool)

    def _authorised(self, headers: dict[str, str]) -> bool:
        token = self.config.web.token
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(given.strip(), token):
            return True
        cookies = dict(part.strip().partition("=")[::2] for part in headers.get("cookie", "").split(";"))
        return _same(cookies.get(COOKIE, ""), _session(token))

    def readiness_problem(self) -> str | None:
        problem = listener_problem(self.receiver, self.config.listen.max_associations)
        if problem:
            return problem
        try:
            with closing(Spool(self.spool.root, self.spool.fsync)) as spool:
                spool.db().execute("SELECT COUNT(*) FROM studies WHERE 0").fetchone()
                free_mb = spool.free_mb()
        except Exception as exc:  # any reason the database cannot be read makes the node unready
            return f"the spool database does not open: {type(exc).__name__}: {exc}"
        if free_mb < self.config.storage.min_free_mb:
            return f"{free_mb:.0f} MB free, below storage.min_free_mb {self.config.storage.min_free_mb}"
        return None

    def _get(self, request: Request, spool: Spool) -> Response:
        path = request.path
        if path == "/metrics":
            return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path == "/":
            return _page(200, "Studies", render_index(spool, self.config, _page_number(request)))
        if path == "/outbox":
            return _page(200, "Outbox", render_outbox(spool, self.config, _page_number(request),
                                                       request.query.get("state", ""),
                                                       request.query.get("requeued")))
        if match := OVERLAY_PATH.match(path):
            study_uid, sop_uid = match.groups()
            if not (is_valid_uid(study_uid) and is_valid_uid(sop_uid)):
                return _page(400, "Bad request", "<p>Not a valid UID.</p>")
            row = spool.db().execute("SELECT path FROM outputs WHERE sop_uid = ? AND study_uid = ?"
                                     " AND kind = 'sc'", (sop_uid, study_uid)).fetchone()
            if row is None:
                return _page(404, "Not found", "<p>No such overlay.</p>")
            return Response(200, overlay_png(spool.root / row["path"]), "image/png",
                            (("Cache-Control", "private, max-age=3600"),))
        if match := STUDY_PATH.match(path):
            if not is_valid_uid(match.group(1)):
                return _page(400, "Bad request", "<p>Not a valid UID.</p>")
            body = render_study(spool, self.config, match.group(1))
            return _page(404, "Not found", "<p>No such study.</p>") if body is None else (
                _page(200, "Study", body))
        return _page(404, "Not found", "<p>No such page.</p>")

    def _post(self, request: Request, spool: Spool) -> Response:
        if request.path != "/outbox/retry":
            return _page(404, "Not found", "<p>No such page.</p>")
        if not _same_origin(request.headers):
            return _page(403, "Forbidden", "<p>The form did not come from this dashboard.</p>")
        outbox, now = Outbox(spool), self.clock()
        delivery, destination = request.form.get("delivery", ""), request.form.get("destination")
        if delivery.isdigit():
            count = int(outbox.requeue_delivery(int(delivery), now))
            log.info("web: delivery %s queued again: %s", delivery, bool(count))
        elif destination:
            count = outbox.requeue_failed(now, destination)
            log.info("web: %d failed deliveries to %s queued again", count, destination)
        else:
            return _page(400, "Bad request", "<p>Name a delivery or a destination.</p>")
        self.wake()
        return _redirect(f"/outbox?requeued={count}")


class _Handler(BaseHTTPRequestHandler):
    timeout = 30  # a client that stalls mid-request does not hold its thread for ever
    server_version = "calcnode"

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            form = self._form() if method == "POST" else {}
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            response = self.server.app.respond(Request(method, url.path, query, headers, form))
        except ValueError:
            response = _page(400, "Bad request", "<p>Malformed request.</p>")
        except Exception:  # one broken page must not take the server down; the log says why
            log.exception("web: %s %s failed", method, url.path)
            response = _page(500, "Error", "<p>Internal error; see the node's log.</p>")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline';"
                         " frame-ancestors 'none'")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_FORM_BYTES:
            raise ValueError("form too large")
        text = self.rfile.read(length).decode("utf-8")
        return {k: v[0] for k, v in parse_qs(text).items()}

    def log_message(self, format: str, *args) -> None:
        """Silent: the access line would carry ``?token=``; failures are logged in _answer."""


# --- helpers ---

def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _session(token: str) -> str:
    """The cookie's value: derived from the token (cookie-safe characters, token not echoed)."""
    return hashlib.sha256(f"calcnode-web-session:{token}".encode()).hexdigest()


def _same_origin(headers: dict[str, str]) -> bool:
    """A form post must come from a page of this server: Origin (or Referer) names our Host."""
    source = headers.get("origin") or headers.get("referer")
    host = headers.get("host")
    return bool(source and host and urlsplit(source).netloc == host)


def _page_number(request: Request) -> int:
    value = request.query.get("page", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _redirect(location: str, cookie: str | None = None) -> Response:
    headers = (("Location", location),) + ((("Set-Cookie", cookie),) if cookie else ())
    return Response(303, b"", "text/plain", headers)


def _page(status: int, title: str, body: str) -> Response:
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>calcnode: "
                f"{html.escape(title)}</title><style>{CSS}</style></head><body><nav>"
                "<b>calcnode</b> <a href='/'>Studies</a><a href='/outbox'>Outbox</a>"
                f"<a href='/metrics'>Metrics</a></nav><h1>{html.escape(title)}</h1>{body}"
                f"<footer><p>calcnode {html.escape(__version__)}</p></footer></body></html>")
    return Response(status, document.encode())


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
        header = dcmread(spool.root / row["path"], stop_before_pixels=True,
                         specific_tags=["PatientName", "PatientID"])
    except (OSError, ValueError, EOFError):
        return "(unreadable)"
    return f"{header.get('PatientName', '')} ({header.get('PatientID', '')})"


# --- pages ---

def render_index(spool: Spool, config: Config, page: int) -> str:
    db = spool.db()
    counts = spool.study_counts()
    total = sum(counts.values())
    pending = dict(db.execute("SELECT destination, COUNT(*) FROM deliveries WHERE state = 'pending'"
                              " GROUP BY destination").fetchall())
    outbox = ", ".join(f"{esc(name)} {pending.get(name, 0)}"
                       for name in sorted(set(config.destinations) | set(pending))) or "no destination"
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
    for name in sorted(set(config.destinations) | set(summaries)):
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
