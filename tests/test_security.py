"""Security: who may associate (AE titles, hosts), DICOM TLS both ways, the spool's permissions
and the audit trail (``calcnode status --audit``).

Certificates are made here with the openssl CLI: a CA, a server certificate for 127.0.0.1 and a
client certificate both signed by it, and a self-signed "rogue" certificate (also for 127.0.0.1)
that nobody trusts. The TLS peers are DCMTK's echoscu / storescu / storescp with ``+tls``.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pydicom
import pytest

from node import audit, security
from node.config import Config, ListenConfig, TLSConfig, parse_config
from node.errors import ConfigError
from node.outbox import Outbox
from node.receiver import Receiver
from node.spool import DB_NAME, Spool
from node.testing.study import write_study
from nodeproc import NodeProcess, node_config, sink
from peers import (
    ECHOSCU, LOOPBACK, STORESCP, STORESCU, StoreSCP, dcmtk_tls, echoscu, free_port, require,
    storescu, wait_for,
)

OPENSSL = "/usr/bin/openssl"
LEAF_EXTENSIONS = """basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


# -- certificates ------------------------------------------------------------------------------

def _openssl(folder: Path, *args: str) -> None:
    subprocess.run([OPENSSL, *args], cwd=folder, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> dict[str, tuple[str, str]]:
    """{"ca" | "server" | "client" | "rogue": (private key, certificate)} as PEM files."""
    require(OPENSSL)
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/CN=calcnode test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (folder / "leaf.ext").write_text(LEAF_EXTENSIONS)
    for name in ("server", "client"):
        _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN=calcnode test {name}")
        _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-out", f"{name}.pem")
    _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key",
             "-out", "rogue.pem", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1")
    return {name: (str(folder / f"{name}.key"), str(folder / f"{name}.pem"))
            for name in ("ca", "server", "client", "rogue")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[str, str]]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def ca_file(pki) -> str:
    return pki["ca"][1]


def client_tls(pki, name: str = "client") -> list[str]:
    """DCMTK options of a caller presenting certificate ``name`` (None: no certificate)."""
    key, cert = pki[name] if name else (None, None)
    return dcmtk_tls(key, cert, ca_file(pki))


def tls_section(pki, own: str | None = None, **extra) -> dict:
    key, cert = pki[own] if own else ("", "")
    return {"enabled": True, "certificate": cert, "private_key": key,
            "ca_certificates": ca_file(pki), **extra}


# -- configuration, without a network ----------------------------------------------------------

def test_allowed_hosts_are_checked_when_the_config_is_loaded(tmp_path):
    parsed = parse_config({"listen": {"allowed_hosts": ["10.1.2.0/24", "127.0.0.1", "::1"]}})
    assert parsed.listen.allowed_hosts == ("10.1.2.0/24", "127.0.0.1", "::1")
    with pytest.raises(ConfigError) as caught:
        parse_config({"listen": {"allowed_hosts": ["10.1.2.0/24", "pacs.example"]}}, "node.yaml")
    assert caught.value.problems == [
        "node.yaml: listen.allowed_hosts[1]: expected a string (an IP address or network such as"
        " 10.1.2.0/24), got 'pacs.example'"]
    # a Config made in code, not loaded: the receiver refuses it before listening
    built = Config(listen=ListenConfig(allowed_hosts=("10.0.0.300",)))
    with pytest.raises(ConfigError, match=r"listen.allowed_hosts\[0\]: .* got '10.0.0.300'"):
        Receiver(built, Spool(tmp_path / "spool"))


def test_host_allow_list_matches_addresses_and_networks():
    networks = security.allowed_networks(["10.1.2.0/24", "192.0.2.7", "fd00::/8"])
    assert security.host_allowed("10.1.2.99", networks)
    assert security.host_allowed("192.0.2.7", networks)
    assert security.host_allowed("::ffff:10.1.2.3", networks)  # IPv4 caller, dual-stack socket
    assert security.host_allowed("fd00::1", networks)
    assert not security.host_allowed("10.1.3.1", networks)
    assert not security.host_allowed("192.0.2.8", networks)
    assert not security.host_allowed("not-an-address", networks)
    assert security.host_allowed("203.0.113.5", ())  # nothing configured: anyone


def test_listener_tls_settings_are_checked_before_anything_listens(tmp_path, pki):
    def receiver(**tls):
        config = parse_config({"listen": {"tls": {"enabled": True, **tls}}})
        return Receiver(config, Spool(tmp_path / "spool"))

    key, cert = pki["server"]
    with pytest.raises(ConfigError, match="certificate and private_key are required"):
        receiver(certificate=cert)
    with pytest.raises(ConfigError, match="ca_certificates: required with require_client_cert"):
        receiver(certificate=cert, private_key=key, require_client_certificate=True)
    missing = str(tmp_path / "missing-ca.pem")
    with pytest.raises(ConfigError, match="listen.tls.ca_certificates: cannot load .*missing-ca"):
        receiver(certificate=cert, private_key=key, ca_certificates=missing)
    with pytest.raises(ConfigError, match="listen.tls.certificate: cannot load"):
        receiver(certificate=cert, private_key=pki["client"][0])  # a key of another certificate
    strict = receiver(certificate=cert, private_key=key, ca_certificates=ca_file(pki),
                      require_client_certificate=True).ssl_context
    assert strict.verify_mode == ssl.CERT_REQUIRED
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_2
    lenient = receiver(certificate=cert, private_key=key, ca_certificates=ca_file(pki)).ssl_context
    assert lenient.verify_mode == ssl.CERT_OPTIONAL  # a certificate, if shown, must be the CA's


def test_destination_tls_trusts_its_ca_or_the_system_store_with_host_names(pki):
    private = security.client_context(TLSConfig(enabled=True, ca_certificates=ca_file(pki)))
    assert private.verify_mode == ssl.CERT_REQUIRED and not private.check_hostname
    assert private.minimum_version == ssl.TLSVersion.TLSv1_2
    public = security.client_context(TLSConfig(enabled=True))
    assert public.verify_mode == ssl.CERT_REQUIRED and public.check_hostname


def test_database_files_are_owner_only_even_when_made_before_the_node(tmp_path):
    """``calcnode status`` before the first ``serve`` creates the database under the shell's
    umask; the spool tightens it (SQLite gives the -wal and -shm the database's mode)."""
    old = os.umask(0o022)
    try:
        spool = Spool(tmp_path / "spool").open()
        spool.db().execute("SELECT COUNT(*) FROM studies").fetchone()
        spool.close()
        reopened = Spool(tmp_path / "spool").open()
        try:
            files = [tmp_path / "spool" / f"{DB_NAME}{suffix}" for suffix in ("", "-wal", "-shm")]
            assert all(path.exists() for path in files)
            assert [oct(stat.S_IMODE(path.stat().st_mode)) for path in files] == ["0o600"] * 3
        finally:
            reopened.close()
    finally:
        os.umask(old)


def test_every_delivery_attempt_is_kept_in_the_audit_trail(tmp_path):
    spool = Spool(tmp_path / "spool").open()
    with spool.transaction() as db:
        db.execute("INSERT INTO outputs VALUES ('1.2.3.4', '1.2.3', 'sr',"
                   " '1.2.840.10008.5.1.4.1.1.88.50', 'outputs/1.2.3/sr_1.2.3.4.dcm', 1, 1000.0)")
        db.execute("INSERT INTO deliveries (output_uid, destination, state, created_at, next_at)"
                   " VALUES ('1.2.3.4', 'pacs', 'pending', 1000.0, 1000.0)")
    outbox = Outbox(spool)
    [job] = outbox.due("pacs", 1000.0)
    outbox.retry_later(job, 1010.0, "no association with PACS@10.0.0.5:104")
    assert outbox.requeue_failed(1020.0) == 0  # nothing failed: no attempt, no record
    [job] = outbox.due("pacs", 1010.0)
    outbox.delivered(job, 2_000_000_000.0)  # a clock far ahead: this record is the newest
    lines = audit.lines(spool, 10)
    spool.close()
    assert [line[20:] for line in lines] == [
        "delivery to pacs: sop=1.2.3.4 study=1.2.3 attempt 2 delivered",
        "delivery to pacs: sop=1.2.3.4 study=1.2.3 attempt 1 retry: no association with PACS@10.0.0.5:104",
    ]


# -- the host allow list, against a receiver in this process ----------------------------------

def test_caller_from_a_host_not_allowed_is_rejected_and_audited(tmp_path):
    require(ECHOSCU)
    config = parse_config({"listen": {"host": LOOPBACK, "port": free_port(),
                                      "allowed_hosts": ["192.0.2.0/24"]}})
    spool = Spool(tmp_path / "spool").open()
    receiver = Receiver(config, spool)
    try:
        receiver.start()
        refused = echoscu("CALCNODE", config.listen.port, calling="MODALITY", timeout_s=30)
        server = receiver.server  # the refused association ends with the connection
        wait_for(lambda: not server.active_associations, 5, "the refused association to end")
    finally:
        receiver.stop()
    assert refused.returncode != 0
    assert "Rejected Permanent, Source: Service User" in refused.stdout, refused.stdout
    assert "Reason: No Reason" in refused.stdout, refused.stdout
    lines = audit.lines(spool, 10)
    spool.close()
    assert len(lines) == 1
    assert re.search(r" association MODALITY -> CALCNODE from 127\.0\.0\.1:\d+ until .*: 0 objects,"
                     r" rejected: host not in listen.allowed_hosts$", lines[0]), lines


# -- DICOM TLS, against a node process ---------------------------------------------------------

@pytest.fixture(scope="module")
def tls_world(tmp_path_factory, pki):
    """A node listening with TLS (client certificates required) and two TLS destinations: "pacs"
    (a storescp with a certificate from our CA) and "rogue" (a storescp with a self-signed one).
    Both storescps require and verify the node's client certificate."""
    require(ECHOSCU, STORESCU, STORESCP)
    root = tmp_path_factory.mktemp("tls")
    scps = {name: StoreSCP(root / name, aet="PACS", extra_args=dcmtk_tls(*pki[cert], ca_file(pki)))
            for name, cert in (("pacs", "server"), ("rogue", "rogue"))}
    for scp in scps.values():
        scp.start()
    destinations = {name: {**sink(scp.port, "PACS"), "tls": tls_section(pki, "client")}
                    for name, scp in scps.items()}
    listen_tls = tls_section(pki, "server", require_client_certificate=True)
    config = node_config(root, destinations=destinations, listen={"tls": listen_tls})
    node = NodeProcess(root, config, echo_args=client_tls(pki))
    try:
        node.start()
        yield node, scps
    finally:
        node.close()
        for scp in scps.values():
            scp.stop()


@pytest.mark.slow
def test_store_over_tls_is_analysed_and_results_go_out_over_tls(tmp_path, pki, tls_world):
    node, scps = tls_world
    echoed = echoscu(node.ae_title, node.port, extra_args=client_tls(pki))
    assert echoed.returncode == 0, echoed.stdout
    study = write_study(tmp_path / "study", 5101)
    sent = storescu(node.ae_title, node.port, study.paths[:1], extra_args=client_tls(pki))
    assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stdout, sent.stdout
    uid = study.identity.study_instance_uid
    row = node.wait_study(uid, timeout_s=90)
    assert (row["state"], row["images"], row["failed_images"]) == ("done", 1, 0), row

    def settled():
        rows = node.query("SELECT destination, state, attempts, last_error FROM deliveries")
        return rows if rows and all(r["state"] != "pending" for r in rows) else None

    rows = wait_for(settled, 60, "every delivery done or failed")
    made = len(node.query("SELECT 1 FROM outputs WHERE study_uid = ?", (uid,)))
    assert made >= 1
    assert len(scps["pacs"].wait_files(made)) == made  # over TLS, with our client certificate
    assert {r["state"] for r in rows if r["destination"] == "pacs"} == {"done"}
    rogue = [r for r in rows if r["destination"] == "rogue"]
    assert len(rogue) == made and scps["rogue"].files() == []
    for r in rogue:  # failed for good at the first attempt: a certificate is configuration
        assert (r["state"], r["attempts"]) == ("failed", 1), r
        assert r["last_error"] == (f"TLS with PACS@{LOOPBACK}:{scps['rogue'].port} failed: "
                                   "certificate verify failed: self-signed certificate"), r


@pytest.mark.slow
def test_callers_without_a_trusted_certificate_or_tls_are_refused(tmp_path, pki, tls_world):
    node, _ = tls_world
    study = write_study(tmp_path / "study", 5102)
    attempts = {
        "no certificate": echoscu(node.ae_title, node.port, extra_args=client_tls(pki, None)),
        "self-signed": echoscu(node.ae_title, node.port, extra_args=client_tls(pki, "rogue")),
        "plain echo": echoscu(node.ae_title, node.port),
        "plain store": storescu(node.ae_title, node.port, study.paths[:1]),
        "self-signed store": storescu(node.ae_title, node.port, study.paths[:1],
                                      extra_args=client_tls(pki, "rogue")),
    }
    for what, result in attempts.items():
        assert result.returncode != 0, (what, result.stdout)
        assert "Association Request Failed" in result.stdout, (what, result.stdout)
    assert node.alive()
    assert node.study_row(study.identity.study_instance_uid) is None
    # the caller may see its failure before the node has recorded it: wait for every record
    wait_for(lambda: len(node.query("SELECT outcome FROM associations WHERE outcome LIKE "
                                    "'rejected: TLS%'")) >= len(attempts), 10,
             "every refused caller recorded")
    log = node.log_text()
    assert "handshake failed (peer did not return a certificate)" in log, node.log_tail()
    assert "handshake failed (certificate verify failed: self-signed certificate)" in log
    assert "handshake failed (wrong version number)" in log
    # nothing of that held a slot or broke the listener: a trusted caller still gets through
    assert echoscu(node.ae_title, node.port, extra_args=client_tls(pki)).returncode == 0


# -- the audit trail and the spool's permissions, against a node process ----------------------

@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    """A node that took one association with 2 images, refused one caller, delivered the
    results to "sink" and failed to deliver the SR to "dead" (nothing listens there, and with
    retry.max_age_h 0 the first failure is final)."""
    require(ECHOSCU, STORESCU, STORESCP)
    root = tmp_path_factory.mktemp("audit")
    study = write_study(root / "study", 5201)
    with StoreSCP(root / "sink", aet="SINK") as scp:
        destinations = {"sink": sink(scp.port), "dead": sink(free_port(), "DEAD", outputs=["sr"])}
        config = node_config(root, destinations=destinations, retry={"max_age_h": 0},
                             listen={"allowed_calling_ae_titles": ["ECHOSCU", "STORESCU"]})
        with NodeProcess(root, config) as node:
            sent = storescu(node.ae_title, node.port, study.paths[:2])
            assert sent.returncode == 0, sent.stdout
            refused = echoscu(node.ae_title, node.port, calling="INTRUDER")
            assert "Calling AE Title Not Recognized" in refused.stdout, refused.stdout
            node.wait_study(study.identity.study_instance_uid, timeout_s=90)
            wait_for(lambda: node.query("SELECT 1 FROM deliveries")
                     and not node.pending_deliveries(), 60, "every delivery done or failed")
            yield node, study


@pytest.mark.slow
def test_audit_lists_associations_refusals_and_delivery_attempts(audited_run):
    node, study = audited_run
    shown = node.cli("status", "--audit", "--limit", "100")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    accepted = [line for line in lines if re.fullmatch(
        stamp + r" association STORESCU -> CALCNODE from 127\.0\.0\.1:\d+ until \S+: 2 objects,"
        r" released", line)]
    rejected = [line for line in lines if re.fullmatch(
        stamp + r" association INTRUDER -> CALCNODE from 127\.0\.0\.1:\d+ until \S+: 0 objects,"
        r" rejected: Calling AE title not recognised", line)]
    delivered = [line for line in lines if " delivery to sink: " in line]
    failed = [line for line in lines if " delivery to dead: " in line]
    assert len(accepted) == 1 and len(rejected) == 1, shown.stdout
    made = node.query("SELECT destination, COUNT(*) AS n FROM deliveries GROUP BY 1")
    assert {r["destination"]: r["n"] for r in made} == {"sink": len(delivered), "dead": 1}
    uid = study.identity.study_instance_uid
    assert all(re.search(rf"sop=[\d.]+ study={re.escape(uid)} attempt 1 delivered$", line)
               for line in delivered), delivered
    assert re.search(r"attempt 1 failed: gave up after 1 attempts: no association with DEAD@",
                     failed[0]), failed
    stamps = [line[:19] for line in lines]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    assert lines.index(failed[0]) < lines.index(accepted[0])  # delivered after it was received
    limited = node.cli("status", "--audit", "--limit", "2").stdout.splitlines()
    assert limited == lines[:2]
    header = pydicom.dcmread(study.paths[0], stop_before_pixels=True)
    identity = [str(header.get(k, "")) for k in ("PatientName", "PatientID", "AccessionNumber")]
    for value in filter(None, identity):
        assert value not in shown.stdout and value not in node.log_text(), value


@pytest.mark.slow
def test_every_spool_file_and_folder_is_owner_only(audited_run):
    node, _ = audited_run
    paths = [node.spool, *node.spool.rglob("*")]
    names = {p.relative_to(node.spool).parts[0] for p in paths[1:]}
    assert {"incoming", "instances", "outputs", DB_NAME, f"{DB_NAME}-wal",
            f"{DB_NAME}-shm"} <= names, names
    assert any(p.suffix == ".dcm" for p in (node.spool / "instances").rglob("*"))
    assert any(p.suffix == ".dcm" for p in (node.spool / "outputs").rglob("*"))
    loose = [(str(p), oct(stat.S_IMODE(p.lstat().st_mode))) for p in paths
             if stat.S_IMODE(p.lstat().st_mode) & 0o077]
    assert not loose


def test_plain_tcp_probe_of_a_tls_listener_does_not_block_it(tmp_path, pki):
    """A caller that connects and says nothing must not hold up the TLS listener: the handshake
    runs in the association's thread, not in pynetdicom's accept loop."""
    require(ECHOSCU)
    listen = {"host": LOOPBACK, "port": free_port(), "tls": tls_section(pki, "server")}
    spool = Spool(tmp_path / "spool").open()
    receiver = Receiver(parse_config({"listen": listen}), spool)
    try:
        receiver.start()
        with socket.create_connection((LOOPBACK, listen["port"]), timeout=5):
            anonymous = echoscu("CALCNODE", listen["port"], extra_args=client_tls(pki, None),
                                timeout_s=20)
    finally:
        receiver.stop()
        spool.close()
    assert anonymous.returncode == 0, anonymous.stdout  # no client certificate required here
