"""Real DICOM peers for tests and benchmarks: an Orthanc PACS and DCMTK's storescu/storescp/echoscu.

The node has to interoperate with implementations other than pynetdicom talking to itself, so the
network tests drive real third-party peers. Every peer here runs as a child process on free
127.0.0.1 ports with a temp dir of its own, is reached only on 127.0.0.1, is waited for by polling
with a deadline (never a bare sleep), and is stopped by its PID (terminate, wait, then kill).

Interface caveat: neither Orthanc 1.10.1 nor DCMTK 3.6.7's storescp can bind to one interface,
so both listen on all interfaces. Orthanc serves HTTP only to loopback ("RemoteAccessAllowed":
false) and DICOM only to the configured loopback modalities ("DicomAlwaysAllow*": false,
"DicomCheckModalityHost": true). storescp accepts any peer while it runs; it lives only for the
duration of one test, on a random free port, and stores into a temp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

ORTHANC = "/usr/sbin/Orthanc"
STORESCU, STORESCP, ECHOSCU = "/usr/bin/storescu", "/usr/bin/storescp", "/usr/bin/echoscu"
LOOPBACK = "127.0.0.1"
POLL_S = 0.05
# storescu proposal flags the node must cope with: J2K, JPEG-LS and JPEG lossless (each also
# proposes the uncompressed syntaxes); None keeps storescu's default (uncompressed only).
PROPOSALS = {None: (), "-xv": ("-xv",), "-xt": ("-xt",), "-xs": ("-xs",)}
# Whatever the simplified tags of an instance lack, study_instances() reports as None, so tests
# can compare identities without a KeyError hiding which attribute went missing.
INSTANCE_KEYS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                 "PatientID", "PatientName", "AccessionNumber", "SeriesDescription", "Modality")


def require(*binaries: str) -> None:
    """Skip, not fail, when a Debian tool is absent: `make test` installs them, a bare venv not."""
    for binary in binaries:
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} is not installed (make test installs the Debian tools it needs)")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: sockets stay bound until all are chosen so none repeats."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


def free_port() -> int:
    """One free loopback port (the kernel's choice, so parallel tests do not collide)."""
    return free_ports(1)[0]


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str,
             interval_s: float = POLL_S) -> object:
    """Poll ``predicate`` until truthy; readiness is observed, never assumed after a sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def accepts_tcp(port: int, host: str = LOOPBACK) -> bool:
    """True once something listens on host:port (a plain connect, closed at once)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 10) -> None:
    """Stop one child by its PID: SIGTERM, bounded wait, then SIGKILL so nothing outlives a test."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def _tail(path: Path | None, limit: int = 6000) -> str:
    """The end of a peer's log, for failure messages (the start is mostly banner)."""
    text = path.read_text(errors="replace") if path is not None and path.exists() else ""
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _spawn(cmd: list[str], workdir: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a peer with its output in a log file, so pipes never fill and block it."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)


def _alive(proc: subprocess.Popen, name: str, log: Path) -> None:
    """Fail at once, with the log, when a peer exits while we wait for it."""
    if proc.poll() is not None:
        raise AssertionError(f"{name} exited with {proc.returncode}:\n{_tail(log)}")


# -- Orthanc -------------------------------------------------------------------------------

class OrthancError(AssertionError):
    """A REST call Orthanc answered with an HTTP error; the body carries Orthanc's explanation."""

    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"Orthanc {method} {path} -> HTTP {status}: {body}")
        self.status, self.body = status, body


def orthanc_config(tmp_dir: Path, http_port: int, dicom_port: int, aet: str,
                   modalities: dict[str, tuple[str, str, int]]) -> dict:
    """Orthanc's configuration: private storage, free ports, and only loopback peers admitted."""
    for name, (_, host, _) in modalities.items():
        if host != LOOPBACK:
            raise ValueError(f"modality {name}: tests talk to {LOOPBACK} only, not {host}")
    return {
        "Name": "calcnode-test", "StorageDirectory": str(tmp_dir / "storage"),
        "IndexDirectory": str(tmp_dir / "index"), "Plugins": [], "LuaScripts": [],
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpDescribeErrors": True, "SslEnabled": False,
        "OrthancExplorerEnabled": False, "WebDavEnabled": False, "MetricsEnabled": False,
        "DicomServerEnabled": True, "DicomAet": aet, "DicomPort": dicom_port,
        "DicomCheckModalityHost": True, "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False, "DicomModalitiesInDatabase": False,
        "DicomModalities": {
            name: {"AET": ae, "Host": host, "Port": port, "AllowEcho": True, "AllowStore": True}
            for name, (ae, host, port) in modalities.items()},
        "OrthancPeers": {}, "HttpProxy": "", "DicomTlsEnabled": False,
        "StableAge": 1, "DicomScuTimeout": 30, "DicomScpTimeout": 30, "ConcurrentJobs": 2,
        # close outgoing associations at once: storescp serves one association at a time
        "DicomAssociationCloseDelay": 0,
        "SaveJobs": False, "DeidentifyLogs": False, "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
    }


class Orthanc:
    """One private Orthanc: the PACS the node sends its results to and receives studies from."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None
        self.log: Path | None = None
        self.http_port = self.dicom_port = 0
        self.aet = ""
        # no proxy: an http_proxy in the environment must not capture loopback requests
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def start(self, tmp_dir: str | Path, modalities: dict[str, tuple[str, str, int]] | None = None,
              aet: str = "ORTHANC", timeout_s: float = 30) -> Orthanc:
        """Write the config, launch /usr/sbin/Orthanc, and return once GET /system answers."""
        require(ORTHANC)
        self.dir = Path(tmp_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_ports(2)
        self.aet = aet
        config = orthanc_config(self.dir, self.http_port, self.dicom_port, aet, modalities or {})
        path = self.dir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self.log = self.dir / "orthanc.log"
        self.proc = _spawn([ORTHANC, "--verbose", str(path)], self.dir, self.log)
        try:
            wait_for(self._ready, timeout_s, f"Orthanc REST on port {self.http_port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        """Up once the REST API answers; fail fast, with the log, if Orthanc died instead."""
        _alive(self.proc, "Orthanc", self.log)
        try:
            return bool(self.get("/system", timeout_s=2).get("Version"))
        except (OSError, OrthancError):
            return False

    def stop(self) -> None:
        """Terminate by PID; Orthanc shuts down cleanly on SIGTERM."""
        stop_process(self.proc, timeout_s=15)

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def log_text(self) -> str:
        """Orthanc's log tail, to append to assertion messages."""
        return _tail(self.log)

    # -- REST, with urllib only (no extra dependency for tests) --------------------------

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json", timeout_s: float = 30) -> bytes:
        """Raw REST call; HTTP errors become OrthancError with Orthanc's description."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with self._http.open(req, timeout=timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise OrthancError(method, path, err.code, detail) from None

    def get(self, path: str, timeout_s: float = 30):
        return json.loads(self.request("GET", path, timeout_s=timeout_s))

    def post(self, path: str, payload, timeout_s: float = 30):
        """POST JSON (or raw bytes as text/plain, as /tools/lookup wants) and decode the answer."""
        if isinstance(payload, bytes):
            answer = self.request("POST", path, payload, "text/plain", timeout_s)
        else:
            answer = self.request("POST", path, json.dumps(payload).encode(), timeout_s=timeout_s)
        return json.loads(answer or b"null")

    def upload(self, path_or_bytes: str | Path | bytes) -> str:
        """Store one DICOM file through REST; returns its Orthanc instance id."""
        data = path_or_bytes
        if not isinstance(data, bytes):
            data = Path(data).read_bytes()
        return json.loads(self.request("POST", "/instances", data, "application/dicom"))["ID"]

    def store_to_modality(self, modality: str, resources: Sequence[str],
                          timeout_s: float = 60) -> dict:
        """C-STORE resources (any level) to a configured modality and wait for the result."""
        payload = {"Resources": list(resources), "Synchronous": True, "Timeout": timeout_s}
        return self.post(f"/modalities/{modality}/store", payload, timeout_s=timeout_s + 10)

    def echo(self, modality: str, timeout_s: float = 10) -> bool:
        """C-ECHO from Orthanc to a configured modality; False when it fails."""
        try:
            self.post(f"/modalities/{modality}/echo", {"Timeout": timeout_s}, timeout_s + 10)
        except OrthancError:
            return False
        return True

    def studies(self) -> list[str]:
        """Orthanc ids of every stored study."""
        return self.get("/studies")

    def find_study(self, study_instance_uid: str) -> str | None:
        """The Orthanc id of the study with this StudyInstanceUID, or None."""
        found = self.post("/tools/lookup", study_instance_uid.encode())
        ids = [item["ID"] for item in found if item.get("Type") == "Study"]
        return ids[0] if ids else None

    def study_instances(self, study_id: str) -> list[dict]:
        """Every instance of a study as simplified tags (keyword -> value), plus "OrthancID"."""
        result = []
        for instance in self.get(f"/studies/{study_id}/instances"):
            tags = self.get(f"/instances/{instance['ID']}/simplified-tags")
            result.append({**{key: None for key in INSTANCE_KEYS}, **tags,
                           "OrthancID": instance["ID"]})
        return sorted(result, key=lambda t: (t["SeriesInstanceUID"] or "", t["SOPInstanceUID"]))

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file, byte for byte as Orthanc keeps it."""
        return self.request("GET", f"/instances/{instance_id}/file")


@contextlib.contextmanager
def running_orthanc(tmp_path: str | Path,
                    modalities: dict[str, tuple[str, str, int]] | None = None,
                    aet: str = "ORTHANC") -> Iterator[Orthanc]:
    """An Orthanc for the duration of a with-block (or a yield fixture); always stopped."""
    orthanc = Orthanc()
    try:
        yield orthanc.start(Path(tmp_path) / "orthanc", modalities, aet)
    finally:
        orthanc.stop()


# -- DCMTK ---------------------------------------------------------------------------------

def _dcmtk_env(tcp_nodelay: bool) -> dict:
    """DCMTK reads TCP_NODELAY from the environment; the benchmark compares both settings."""
    return {**os.environ, **({"TCP_NODELAY": "1"} if tcp_nodelay else {})}


def storescu(ae_called: str, port: int, files: Sequence[str | Path], *,
             calling: str = "STORESCU", propose: str | None = None, max_pdu: int | None = None,
             timeout_s: float = 120, tcp_nodelay: bool = False,
             extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Send files with DCMTK's storescu to 127.0.0.1:port, the way a modality would.

    Verbose, so the per-file status lines are in ``.stdout`` (stderr merged into it); callers
    assert the return code and output. Raises subprocess.TimeoutExpired (child killed) on timeout.
    """
    require(STORESCU)
    cmd = [STORESCU, "-v", "-aet", calling, "-aec", ae_called, *PROPOSALS[propose]]
    if max_pdu:
        cmd += ["-pdu", str(max_pdu)]
    cmd += [*extra_args, LOOPBACK, str(port), *map(str, files)]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout_s, env=_dcmtk_env(tcp_nodelay),
                          check=False)


def echoscu(ae_called: str, port: int, calling: str = "ECHOSCU",
            timeout_s: float = 30, extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """C-ECHO with DCMTK's echoscu to 127.0.0.1:port; return code 0 means verified.
    ``extra_args`` e.g. TLS: ``dcmtk_tls(key, certificate, ca)``."""
    require(ECHOSCU)
    cmd = [ECHOSCU, "-v", "-aet", calling, "-aec", ae_called, *extra_args, LOOPBACK, str(port)]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout_s, check=False)


def dcmtk_tls(private_key: str | Path | None, certificate: str | Path | None,
              ca_certificates: str | Path) -> list[str]:
    """DCMTK 3.6.7 TLS options (echoscu, storescu, storescp): ``+tls KEY CERT`` (or ``+tla``,
    anonymous, when there is no key) and ``+cf CA``, the certificate trusted for the peer.
    The peer's certificate is then required and verified (DCMTK's default, ``-rc``)."""
    own = ["+tls", str(private_key), str(certificate)] if private_key else ["+tla"]
    return [*own, "+cf", str(ca_certificates)]


class StoreSCP:
    """DCMTK's storescp on a free port: a reference destination and the benchmark's yardstick.

    storescp 3.6.7 has no bind-address option (see the module docstring for the caveat).
    ``accept`` is the transfer syntax policy flag; the default "+xa" accepts every syntax DCMTK
    knows, so compressed objects arrive as sent. ``bit_preserving`` (+B) writes data exactly as
    received, so the files can be compared byte for byte with what was sent.
    """

    def __init__(self, tmp_dir: str | Path, *, aet: str = "STORESCP",
                 bit_preserving: bool = False, max_pdu: int | None = None,
                 accept: str | None = "+xa", tcp_nodelay: bool = False,
                 extra_args: Sequence[str] = (), port: int | None = None) -> None:
        self.dir = Path(tmp_dir)
        self.fixed_port = port  # a destination configured first that comes up later
        self.out = self.dir / "received"
        self.log = self.dir / "storescp.log"
        self.aet, self.port = aet, 0
        self.proc: subprocess.Popen | None = None
        self._options = ["-aet", aet, "-od", str(self.out)]
        self._options += ["+B"] if bit_preserving else []
        self._options += ["-pdu", str(max_pdu)] if max_pdu else []
        self._options += [accept] if accept else []
        self._options += list(extra_args)
        self._env = _dcmtk_env(tcp_nodelay)

    def start(self, timeout_s: float = 15) -> StoreSCP:
        """Launch storescp and return once its port accepts TCP connections."""
        require(STORESCP)
        self.out.mkdir(parents=True, exist_ok=True)
        self.port = self.fixed_port or free_port()
        cmd = [STORESCP, "-v", *self._options, str(self.port)]
        self.proc = _spawn(cmd, self.dir, self.log, self._env)
        try:
            wait_for(self._ready, timeout_s, f"storescp on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        _alive(self.proc, "storescp", self.log)
        return accepts_tcp(self.port)

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> StoreSCP:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def files(self) -> list[Path]:
        """Received files, sorted by name (storescp names them <modality>.<SOPInstanceUID>)."""
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def wait_files(self, count: int, timeout_s: float = 30) -> list[Path]:
        """Wait for ``count`` files whose total size stopped changing between two polls.

        Only asynchronous senders (the node) need this: storescu and Orthanc's synchronous
        store return after the C-STORE response, which storescp sends after writing the file.
        """
        last: list[int] = [-1]

        def settled() -> list[Path] | None:
            files = self.files()
            size = sum(p.stat().st_size for p in files)
            stable, last[0] = size == last[0], size
            return files if len(files) >= count and stable else None

        return wait_for(settled, timeout_s, f"{count} file(s) in storescp {self.out}")

    def log_text(self) -> str:
        return _tail(self.log)
