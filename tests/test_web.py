"""The dashboard, /metrics, /healthz and /readyz (node/web.py, node/metrics.py).

Unit tests serve a spool filled by direct inserts in a temp dir with an in-process WebServer on
an ephemeral loopback port, and talk to it with http.client (redirects not followed, so the
token's cookie can be checked). The end-to-end test runs the node as a process, sends a study
with DCMTK's storescu and drives the dashboard with a real headless Chromium through Selenium.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from node.config import Config, StorageConfig, WebConfig
from node.errors import ConfigError
from node.metrics import new_registry, record_refused
from node.spool import Spool
from node.testing.study import write_study
from node.pages import PAGE_SIZE
from node.web import WebServer, check_config
from nodeproc import NodeProcess, node_config, sink, store_responses
from peers import ECHOSCU, LOOPBACK, STORESCU, free_port, require, storescu, wait_for

MG = "1.2.840.10008.5.1.4.1.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.50"
TOKEN = "s3cret-token"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


# -- a spool filled by hand ----------------------------------------------------------------------

def add_study(spool: Spool, uid: str, state: str = "done", *, calling_ae: str = "MODALITY",
              at: float = 1.7e9, images: int = 4, clusters: int | None = 1,
              certainty: float | None = 87.0, analysis_s: float | None = 3.0, reason: str = "",
              deliveries: dict[str, str] | None = None, header: Path | None = None) -> None:
    """One study with ``images`` MG instances, an SR output and its deliveries (destination ->
    state). ``header``: the stored file of the first instance (relative paths otherwise dangle)."""
    analysed = state == "done"
    with spool.transaction() as db:
        db.execute("INSERT INTO studies (study_uid, state, calling_ae, first_at, last_at, images,"
                   " clusters, highest_certainty, analysis_s, analysed_at, reason, generation)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                   (uid, state, calling_ae, at, at, images, clusters, certainty,
                    analysis_s if analysed else None, at if analysed else None, reason))
        for i in range(images):
            path = str(header.relative_to(spool.root)) if header and i == 0 else f"instances/{uid}/{i}.dcm"
            db.execute("INSERT INTO instances VALUES (?, ?, ?, ?, ?, 1, ?, ?, 'a', 'image', 'R', 'CC')",
                       (f"{uid}.{i + 1}", uid, f"{uid}.9", MG, path, at, calling_ae))
        if deliveries is not None:
            sr = f"{uid}.100"
            db.execute("INSERT INTO outputs VALUES (?, ?, 'sr', ?, ?, 1, ?)",
                       (sr, uid, SR, f"outputs/{uid}/sr_{sr}.dcm", at))
            for destination, dstate in deliveries.items():
                error = "" if dstate == "done" else "association rejected (<b>no</b> reason & more)"
                db.execute("INSERT INTO deliveries (output_uid, destination, state, created_at,"
                           " next_at, last_error) VALUES (?, ?, ?, ?, ?, ?)",
                           (sr, destination, dstate, at, at, error))


def write_header(path: Path, **attributes) -> Path:
    """A small DICOM file: the given attributes, plus RGB pixels when ``pixels`` is passed."""
    pixels = attributes.pop("pixels", None)
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = attributes.pop("SOPInstanceUID", "1.2.3.4.5")
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def spool(tmp_path):
    spool = Spool(tmp_path / "spool", fsync=False).open()
    yield spool
    spool.close()


def ready_receiver(associations: int = 0):
    """Stands in for node.receiver.Receiver: a listening server with open associations."""
    listening = SimpleNamespace(fileno=lambda: 7)
    return SimpleNamespace(server=SimpleNamespace(socket=listening,
                                                  active_associations=[object()] * associations))


@contextlib.contextmanager
def serving(spool: Spool, receiver=None, **web):
    """A WebServer on an ephemeral loopback port (port 0: the dataclass is not validated)."""
    config = Config(storage=StorageConfig(path=str(spool.root), min_free_mb=0),
                    web=WebConfig(port=0, **web),
                    destinations={})
    server = WebServer(config, spool, receiver or ready_receiver())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fetch(server: WebServer, path: str, method: str = "GET", headers: dict | None = None,
          body: str | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers, text); redirects are not followed."""
    connection = http.client.HTTPConnection(*server.address, timeout=30)
    try:
        send_headers = dict(headers or {})
        if body is not None:
            send_headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=body, headers=send_headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode("utf-8", "replace")
    finally:
        connection.close()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


# -- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_token(host):
    check_config(WebConfig(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "", "10.0.0.5", "calcnode.example"])
def test_network_hosts_need_a_token(host):
    with pytest.raises(ConfigError, match=r"web\.token: must be set when web\.host"):
        check_config(WebConfig(host=host))
    check_config(WebConfig(host=host, token=TOKEN))
    check_config(WebConfig(host=host, enabled=False))


def test_node_refuses_to_start_on_the_network_without_token(tmp_path):
    config = node_config(tmp_path, web={"host": "0.0.0.0"})
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(config))
    ran = subprocess.run([sys.executable, "-m", "node", "serve", "--config", str(path)],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert ran.returncode == 2, ran.stderr
    assert "web.token: must be set when web.host ('0.0.0.0') is not a loopback address" in ran.stderr


# -- tokens and forms --------------------------------------------------------------------------

def test_token_rules(spool):
    add_study(spool, "1.2.3", deliveries={"pacs": "failed"})
    with serving(spool, token=TOKEN) as server:
        for open_path in ("/healthz", "/readyz"):
            assert fetch(server, open_path)[0] == 200
        for path in ("/", "/outbox", "/metrics", "/study/1.2.3"):
            assert fetch(server, path)[0] == 401, path
            assert fetch(server, path, headers={"Authorization": "Bearer wrong"})[0] == 401
            assert fetch(server, path, headers=BEARER)[0] == 200, path

        status, headers, _ = fetch(server, "/?token=wrong")
        assert status == 401 and "Set-Cookie" not in headers
        status, headers, _ = fetch(server, f"/outbox?state=failed&token={TOKEN}")
        assert status == 303 and headers["Location"] == "/outbox?state=failed"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        session = {"Cookie": cookie.split(";")[0]}
        status, _, page = fetch(server, "/", headers=session)
        assert status == 200 and "1.2.3" in page
        assert fetch(server, "/", headers={"Cookie": "calcnode_session=forged"})[0] == 401


def test_retry_needs_the_token_and_the_same_origin(spool):
    add_study(spool, "1.2.3", deliveries={"pacs": "failed", "archive": "failed"})
    add_study(spool, "1.2.4", deliveries={"pacs": "failed"})
    db = spool.db()

    def states() -> dict[tuple[str, str], str]:
        rows = db.execute("SELECT o.study_uid, d.destination, d.state FROM deliveries d JOIN"
                          " outputs o ON o.sop_uid = d.output_uid")
        return {(r[0], r[1]): r[2] for r in rows}

    [(first_id,)] = db.execute("SELECT d.id FROM deliveries d JOIN outputs o ON o.sop_uid ="
                               " d.output_uid WHERE o.study_uid = '1.2.3' AND destination = 'pacs'")
    with serving(spool, token=TOKEN) as server:
        here = f"http://{LOOPBACK}:{server.address[1]}"
        form = f"delivery={first_id}"
        assert fetch(server, "/outbox/retry", "POST", {"Origin": here}, form)[0] == 401
        assert fetch(server, "/outbox/retry", "POST", BEARER, form)[0] == 403  # no Origin / Referer
        assert fetch(server, "/outbox/retry", "POST", {**BEARER, "Origin": "http://evil.example"},
                     form)[0] == 403
        assert set(states().values()) == {"failed"}

        status, headers, _ = fetch(server, "/outbox/retry", "POST", {**BEARER, "Origin": here}, form)
        assert status == 303 and headers["Location"] == "/outbox?requeued=1"
        assert states() == {("1.2.3", "pacs"): "pending", ("1.2.3", "archive"): "failed",
                            ("1.2.4", "pacs"): "failed"}
        status, headers, _ = fetch(server, "/outbox/retry", "POST",
                                   {**BEARER, "Referer": here + "/outbox"}, "destination=pacs")
        assert status == 303 and headers["Location"] == "/outbox?requeued=1"
        assert states()[("1.2.4", "pacs")] == "pending" and states()[("1.2.3", "archive")] == "failed"
        status, _, page = fetch(server, "/outbox?requeued=1", headers=BEARER)
        assert "1 queued again" in page


# -- pages -------------------------------------------------------------------------------------

def test_pages_escape_what_they_show(spool):
    add_study(spool, "1.2.3", calling_ae="<script>alert(1)</script>", reason="a & b <i>x</i>",
              deliveries={"pacs": "failed"})
    with serving(spool) as server:  # loopback without a token: open
        _, _, index = fetch(server, "/")
        _, _, study = fetch(server, "/study/1.2.3")
        _, _, outbox = fetch(server, "/outbox?state=failed")
    assert "<script>" not in index and "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "<script>" not in study and "a &amp; b &lt;i&gt;x&lt;/i&gt;" in study
    assert "<b>no</b>" not in outbox and "association rejected (&lt;b&gt;no&lt;/b&gt; reason &amp; more)" in outbox
    assert "<span class='failed'>failed</span>" in index  # the delivery state per destination
    assert "name='delivery'" in outbox  # a Retry button for the failed delivery


def test_patient_identity_only_when_allowed(spool):
    header = write_header(spool.root / "instances" / "1.2.3" / "1.2.3.1.dcm",
                          PatientName="DOE^JANE", PatientID="PID-4711")
    add_study(spool, "1.2.3", header=header)
    for allowed in (False, True):
        with serving(spool, show_patient_identity=allowed) as server:
            pages = fetch(server, "/")[2] + fetch(server, "/study/1.2.3")[2]
        assert ("DOE^JANE" in pages and "PID-4711" in pages) is allowed
        assert ("DOE" in pages or "4711" in pages) is allowed


def test_invalid_uids_never_reach_the_file_system(spool):
    add_study(spool, "1.2.3")
    with serving(spool) as server:
        assert fetch(server, "/study/1.2.3")[0] == 200
        assert fetch(server, "/study/1.2.4")[0] == 404
        assert fetch(server, "/study/1.2..3")[0] == 400
        assert fetch(server, "/study/01.2")[0] == 400
        assert fetch(server, "/study/" + "1." * 40 + "1")[0] == 400  # longer than 64
        assert fetch(server, "/study/1.2.3/overlay/1.02.png")[0] == 400
        assert fetch(server, "/study/..%2F..%2Fetc%2Fpasswd")[0] == 404
        assert fetch(server, "/study/1.2.3/overlay/9.9.png")[0] == 404  # no such output


def test_overlay_is_served_as_a_reduced_png(spool):
    pixels = np.zeros((2000, 1500, 3), np.uint8)
    pixels[:1000, :, 0] = 255  # top half red, bottom half blue
    pixels[1000:, :, 2] = 255
    path = write_header(spool.root / "outputs" / "1.2.3" / "sc_1.2.3.7.dcm", SOPInstanceUID="1.2.3.7",
                        pixels=pixels)
    add_study(spool, "1.2.3")
    with spool.transaction() as db:
        db.execute("INSERT INTO outputs VALUES ('1.2.3.7', '1.2.3', 'sc', ?, ?, 1, 0)",
                   (SecondaryCaptureImageStorage, str(path.relative_to(spool.root))))
    with serving(spool) as server:
        assert "src='/study/1.2.3/overlay/1.2.3.7.png'" in fetch(server, "/study/1.2.3")[2]
        connection = http.client.HTTPConnection(*server.address, timeout=30)
        connection.request("GET", "/study/1.2.3/overlay/1.2.3.7.png")
        response = connection.getresponse()
        data = response.read()
        connection.close()
    assert response.status == 200 and response.getheader("Content-Type") == "image/png"
    image = Image.open(__import__("io").BytesIO(data))
    assert image.format == "PNG" and image.size == (768, 1024)
    assert image.convert("RGB").getpixel((10, 10)) == (255, 0, 0)
    assert image.convert("RGB").getpixel((10, 1000)) == (0, 0, 255)


# -- metrics and health ------------------------------------------------------------------------

def test_collector_reads_the_spool(spool, tmp_path):
    add_study(spool, "1.2.1", analysis_s=3.0, clusters=2, deliveries={"pacs": "done", "ris": "failed"})
    add_study(spool, "1.2.2", analysis_s=45.0, clusters=1, deliveries={"pacs": "done"})
    add_study(spool, "1.2.3", state="failed", clusters=None, analysis_s=None)
    add_study(spool, "1.2.4", state="receiving", clusters=None, analysis_s=None,
              deliveries={"pacs": "pending"})
    add_study(spool, "1.2.5", state="analysing", clusters=None, analysis_s=None, images=1)
    record_refused(spool, MG, 0xA700)
    record_refused(spool, MG, 0xA700)
    registry = new_registry(spool)
    value = registry.get_sample_value
    assert value("calcnode_instances_received_total",
                 {"sop_class": MG, "outcome": "stored", "status": "0x0000"}) == 17
    assert value("calcnode_instances_received_total",
                 {"sop_class": MG, "outcome": "refused", "status": "0xA700"}) == 2
    assert value("calcnode_studies_analysed_total", {"outcome": "done"}) == 2
    assert value("calcnode_studies_analysed_total", {"outcome": "failed"}) == 1
    assert value("calcnode_clusters_found_total") == 3
    assert value("calcnode_analysis_seconds_bucket", {"le": "5.0"}) == 1
    assert value("calcnode_analysis_seconds_bucket", {"le": "60.0"}) == 2
    assert value("calcnode_analysis_seconds_count") == 2 and value("calcnode_analysis_seconds_sum") == 48
    assert value("calcnode_deliveries_total", {"destination": "pacs", "outcome": "done"}) == 2
    assert value("calcnode_deliveries_total", {"destination": "ris", "outcome": "failed"}) == 1
    assert value("calcnode_outbox_pending", {"destination": "pacs"}) == 1
    assert value("calcnode_studies_queued", {"state": "receiving"}) == 1
    assert value("calcnode_studies_queued", {"state": "analysing"}) == 1
    assert value("calcnode_free_disk_bytes") > 0

    other = Spool(tmp_path / "other", fsync=False).open()  # a second service in this process
    try:
        assert new_registry(other).get_sample_value(
            "calcnode_instances_received_total",
            {"sop_class": MG, "outcome": "refused", "status": "0xA700"}) is None
        assert value("calcnode_instances_received_total",
                     {"sop_class": MG, "outcome": "refused", "status": "0xA700"}) == 2
    finally:
        other.close()


def test_readyz_says_why_not(spool, tmp_path):
    with serving(spool) as server:
        assert fetch(server, "/readyz")[:3:2] == (200, "ready\n")
    with serving(spool, SimpleNamespace(server=None)) as server:
        assert fetch(server, "/readyz")[:3:2] == (503, "the DICOM listener is not running\n")
    with serving(spool, ready_receiver(associations=16)) as server:
        assert fetch(server, "/readyz")[:3:2] == (503, "all 16 association slots are in use\n")
        assert fetch(server, "/healthz")[0] == 200
    with serving(spool) as server:
        server.config = replace(server.config, storage=replace(server.config.storage,
                                                               min_free_mb=10**12))
        status, _, text = fetch(server, "/readyz")
        assert status == 503 and "below storage.min_free_mb" in text
    broken = Spool(tmp_path / "broken", fsync=False)
    (broken.root / "state.sqlite3").mkdir(parents=True)  # a database that cannot be opened
    with serving(broken) as server:
        status, _, text = fetch(server, "/readyz")
        assert status == 503 and text.startswith("the spool database does not open"), text


# -- 10,000 studies ----------------------------------------------------------------------------

def fill(spool: Spool, studies: int) -> None:
    """``studies`` done studies, 4 images, an SR and a delivery each, inserted directly."""
    uids = [f"1.2.826.0.1.{n}" for n in range(studies)]
    with spool.transaction() as db:
        db.executemany("INSERT INTO studies (study_uid, state, calling_ae, first_at, last_at, images,"
                       " clusters, highest_certainty, analysis_s, analysed_at) VALUES"
                       " (?, 'done', 'MODALITY', ?, ?, 4, ?, ?, 2.5, ?)",
                       [(u, 1.7e9 + n, 1.7e9 + n, n % 3, 50.0 + n % 50 if n % 3 else None, 1.7e9 + n)
                        for n, u in enumerate(uids)])
        db.executemany("INSERT INTO instances VALUES (?, ?, ?, ?, 'x', 1, ?, 'MODALITY', 'a',"
                       " 'image', 'R', 'CC')",
                       [(f"{u}.{i}", u, f"{u}.9", MG, 1.7e9) for u in uids for i in range(1, 5)])
        db.executemany("INSERT INTO outputs VALUES (?, ?, 'sr', ?, 'x', 1, 0)",
                       [(f"{u}.100", u, SR) for u in uids])
        db.executemany("INSERT INTO deliveries (output_uid, destination, state, created_at, next_at)"
                       " VALUES (?, 'pacs', ?, 0, 0)",
                       [(f"{u}.100", "failed" if n % 97 == 0 else "done") for n, u in enumerate(uids)])


def test_ten_thousand_studies_render_paginated(spool):
    fill(spool, 10_000)
    plan = " ".join(str(tuple(r)) for r in spool.db().execute(
        "EXPLAIN QUERY PLAN SELECT * FROM studies ORDER BY last_at DESC LIMIT 50 OFFSET 100"))
    assert "studies_recent" in plan, plan
    with serving(spool) as server:
        for path in ("/", "/?page=200", "/outbox?state=failed", "/metrics"):
            status, _, page = fetch(server, path)
            assert status == 200, path
        _, _, first = fetch(server, "/")
        _, _, last = fetch(server, "/?page=200")
    assert first.count("href='/study/") == PAGE_SIZE
    assert "page 1 of 200 (10000 in all)" in first and "href='/?page=2'" in first
    assert "1.2.826.0.1.9999'" in first and "1.2.826.0.1.9949'" not in first  # newest first
    assert last.count("href='/study/") == PAGE_SIZE and "page 200 of 200" in last
    assert "1.2.826.0.1.0'" in last and "href='/?page=199'" in last and "page=201" not in last


# -- end to end, with a real browser -----------------------------------------------------------

def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(metrics: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent); prometheus_client writes the
    labels sorted by name."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)$"
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def browser(tmp_path, monkeypatch):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"the browser test needs {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium "
                    "and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--no-proxy-server", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_dashboard_in_a_browser(tmp_path, browser):
    require(STORESCU, ECHOSCU)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    config = node_config(tmp_path, destinations={"dead": sink(free_port(), timeout_s=2)},
                         retry={"max_age_h": 0.001}, web={"token": TOKEN})  # gives up after 3.6 s
    study = write_study(tmp_path / "study", seed=881)
    uid = study.identity.study_instance_uid
    with NodeProcess(tmp_path, config) as node:
        base = node.web_url
        wait_for(lambda: get(base + "/healthz")[0] == 200, 30, "the dashboard")
        assert get(base + "/readyz") == (200, "ready\n")
        before = get(base + "/metrics", BEARER)[1]

        browser.get(f"{base}/?token={TOKEN}")  # sets the cookie, then drops the token from the URL
        assert browser.current_url == base + "/" and browser.title == "calcnode: Studies"
        assert uid not in browser.page_source

        sent = storescu(node.ae_title, node.port, study.paths)
        assert [r for _, r in store_responses(sent.stdout)] == ["Success"] * 4, sent.stdout

        def listed():
            browser.refresh()
            return uid in browser.page_source
        wait_for(listed, 30, "the study on the dashboard", interval_s=0.5)
        node.wait_study(uid)

        browser.find_element(By.LINK_TEXT, uid).click()
        assert browser.find_element(By.TAG_NAME, "h1").text == "Study"
        overlays = node.query("SELECT sop_uid FROM outputs WHERE kind = 'sc'")
        assert overlays, "the synthetic study should have marked images"
        loaded = browser.execute_script(
            "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
        assert loaded == len(overlays)
        findings = browser.find_elements(
            By.XPATH, "//h2[text()='Findings (CAD SR)']/following-sibling::table[1]//tr")
        assert len(findings) - 1 == node.study_row(uid)["clusters"]  # a header row, then one each
        assert "SYNTHETIC" not in browser.page_source and study.identity.pid not in browser.page_source

        made = len(node.query("SELECT 1 FROM deliveries"))
        wait_for(lambda: len(node.query("SELECT 1 FROM deliveries WHERE state = 'failed'")) == made,
                 30, "every delivery to the closed port to fail for good")
        browser.get(base + "/outbox?state=failed")
        oldest = browser.find_elements(By.CSS_SELECTOR, "input[name=delivery]")[-1]
        delivery_id = int(oldest.get_attribute("value"))
        oldest.find_element(By.XPATH, "following-sibling::button").click()  # its Retry button
        note = WebDriverWait(browser, 10).until(  # the click's navigation may still be going on
            lambda b: b.find_elements(By.CLASS_NAME, "note"), message=browser.page_source)
        assert note[0].text == "1 queued again."
        row = node.query("SELECT state, attempts FROM deliveries WHERE id = ?", (delivery_id,))[0]
        assert row["state"] == "pending", row  # due now; the dead destination fails it 3.6 s later
        assert len(node.query("SELECT 1 FROM deliveries WHERE state = 'failed'")) == made - 1

        after = get(base + "/metrics", BEARER)[1]
        stored = {"sop_class": MG, "outcome": "stored", "status": "0x0000"}
        assert sample(after, "calcnode_instances_received_total", **stored) == (
            sample(before, "calcnode_instances_received_total", **stored) + 4)
        assert sample(after, "calcnode_studies_analysed_total", outcome="done") == 1
        assert sample(after, "calcnode_clusters_found_total") == node.study_row(uid)["clusters"]
        assert sample(after, "calcnode_analysis_seconds_count") == 1
        assert sample(after, "calcnode_deliveries_total", destination="dead", outcome="failed") >= made - 1
        assert get(base + "/metrics")[0] == 401
        assert get(base + "/healthz")[0] == 200 and get(base + "/readyz")[0] == 200
        assert study.identity.pid not in node.log_text()
