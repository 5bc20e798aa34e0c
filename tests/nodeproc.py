"""The node as a real process, for fault tests: `python -m node serve` on a config of its own.

``NodeProcess`` writes a YAML config, starts the node with the repository as working directory
(its log in a file, so no pipe fills up), and is ready once a C-ECHO succeeds. It reads the
node's state database read-only and runs the CLI against the same config. It is stopped by its
PID: SIGTERM (bounded wait) and SIGKILL. The node runs in a session of its own, so the worker,
forkserver and resource-tracker processes it starts share its process group; ``kill`` ends each
of them by PID, so nothing outlives a test even when the node itself crashed.

Also here: ``ThrottledProxy`` (a loopback relay that slows a sender down, so a test can act in
the middle of a transfer) and parsers for storescu's verbose output.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

import yaml
from pydicom import dcmread
from pydicom.dataset import Dataset

import peers
from peers import ECHOSCU, LOOPBACK, StoreSCP, accepts_tcp, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
MAMMO_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"


# -- configuration -----------------------------------------------------------------------------

def node_config(tmp_dir: str | Path, *, port: int | None = None,
                destinations: dict | None = None, **sections) -> dict:
    """The fault tests' config: loopback on free ports (DICOM and web), the spool
    ``<tmp_dir>/spool``, quick completion and retries. ``sections`` override keys (dicts are merged one level deep)."""
    config = {
        "listen": {"ae_title": "CALCNODE", "host": LOOPBACK, "port": port or free_port()},
        "storage": {"path": str(Path(tmp_dir) / "spool"), "min_free_mb": 0},
        "study": {"complete_after_s": 2, "max_wait_s": 120},
        "workers": 2,
        "retry": {"initial_delay_s": 0.5, "max_delay_s": 2, "max_age_h": 1},
        "destinations": destinations or {},
        "web": {"port": free_port()},  # never the default 8080: tests run side by side
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def leftover_files(folder: str | Path) -> list[Path]:
    """Regular files anywhere under ``folder`` (multiprocessing's socket folder holds none)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def sink(port: int, ae_title: str = "SINK", outputs: Iterable[str] = ("sr", "sc", "gsps"),
         timeout_s: float = 5) -> dict:
    """One destination entry for ``node_config(destinations={"sink": sink(port)})``."""
    return {"ae_title": ae_title, "host": LOOPBACK, "port": port, "outputs": list(outputs),
            "timeout_s": timeout_s}


# -- the node ----------------------------------------------------------------------------------

class NodeProcess:
    """``python -m node serve --config <tmp_dir>/<name>.yaml``, logging to ``<name>.log``."""

    def __init__(self, tmp_dir: str | Path, config: dict, name: str = "node",
                 echo_args: Sequence[str] = ()):
        """``echo_args``: extra echoscu options for the readiness C-ECHO (TLS)."""
        self.dir = Path(tmp_dir)
        self.config = copy.deepcopy(config)
        self.name = name
        self.echo_args = tuple(echo_args)
        self.config_path = self.dir / f"{name}.yaml"
        self.log_path = self.dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    # -- what the config says

    @property
    def port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def ae_title(self) -> str:
        return self.config.get("listen", {}).get("ae_title", "CALCNODE")

    @property
    def spool(self) -> Path:
        path = Path(self.config["storage"]["path"])
        return path if path.is_absolute() else REPO / path

    @property
    def web_url(self) -> str:
        return f"http://{LOOPBACK}:{self.config['web']['port']}"

    @property
    def db_path(self) -> Path:
        return self.spool / "state.sqlite3"

    # -- lifecycle

    def start(self, timeout_s: float = 60) -> NodeProcess:
        """Write the config, start the node, and return once it answers C-ECHO (or TCP)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node", "serve", "--config", str(self.config_path)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # its own process group: see kill()
        try:
            wait_for(self._ready, timeout_s, f"the node on port {self.port}", interval_s=0.2)
        except BaseException:
            self.kill()
            raise
        return self

    def _ready(self) -> bool:
        self.check_alive()
        if os.access(ECHOSCU, os.X_OK):
            allowed = self.config["listen"].get("allowed_calling_ae_titles") or ["ECHOSCU"]
            return peers.echoscu(self.ae_title, self.port, calling=allowed[0], timeout_s=10,
                                 extra_args=self.echo_args).returncode == 0
        return accepts_tcp(self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise, with the log, when the node has exited (so waits fail fast, not by timeout)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the node exited with {self.proc.returncode}:\n{self.log_tail()}")

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the node's main process only."""
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code, or None when the node is still running after ``timeout_s``."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        """Signal the node and wait for it to exit by itself; returns its exit code. When it is
        still running after ``timeout_s`` it is killed and AssertionError raised."""
        if self.proc is None:
            raise RuntimeError("the node was never started")
        self.send_signal(sig)
        code = self.wait_exit(timeout_s)
        if code is None:
            self.kill()
            raise AssertionError(f"the node did not exit within {timeout_s} s of signal {sig}:\n"
                                 f"{self.log_tail()}")
        self._reap_group()
        return code

    def kill(self) -> None:
        """SIGKILL the node, then every process left in its process group, each by PID."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reap_group()

    def close(self) -> None:
        """Teardown: SIGTERM with a short bounded wait, then kill whatever is left."""
        if self.alive():
            self.send_signal(signal.SIGTERM)
            self.wait_exit(20)
        self.kill()

    def _reap_group(self) -> None:
        """Processes the node started (workers, forkserver) that outlived it, killed by PID."""
        pgid = self.proc.pid  # start_new_session: the node leads a group of its own
        for _ in range(50):
            members = [pid for pid in group_members(pgid) if pid != os.getpid()]
            if not members:
                return
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    def __enter__(self) -> NodeProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the log

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, limit: int = 8000) -> str:
        text = self.log_text()
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def stored_count(self) -> int:
        """How many instances the node has logged as stored (its "stored study=" lines)."""
        return self.log_text().count("stored study=")

    # -- the state database, read-only

    def db(self) -> sqlite3.Connection:
        """A read-only connection to ``<spool>/state.sqlite3`` (rows as sqlite3.Row); close it."""
        connection = sqlite3.connect(f"{self.db_path.as_uri()}?mode=ro", uri=True, timeout=30)
        connection.row_factory = sqlite3.Row
        return connection

    def query(self, sql: str, args: tuple = ()) -> list[dict]:
        """Run one read-only query on a fresh connection; rows as plain dicts."""
        connection = self.db()
        try:
            return [dict(row) for row in connection.execute(sql, args).fetchall()]
        finally:
            connection.close()

    def study_row(self, uid: str) -> dict | None:
        rows = self.query("SELECT * FROM studies WHERE study_uid = ?", (uid,))
        return rows[0] if rows else None

    def study_state(self, uid: str) -> str | None:
        row = self.study_row(uid)
        return None if row is None else row["state"]

    def wait_study(self, uid: str, states: Iterable[str] = ("done", "failed"),
                   timeout_s: float = 60) -> dict:
        """Wait until the study is in one of ``states``; returns its studies row."""
        states = tuple(states)

        def reached():
            self.check_alive()
            row = self.study_row(uid) if self.db_path.exists() else None
            return row if row is not None and row["state"] in states else None

        try:
            return wait_for(reached, timeout_s, f"study {uid} in {states}", interval_s=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; row now {self.study_row(uid)}\n{self.log_tail()}") from None

    def pending_deliveries(self) -> int:
        return self.query("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'pending'")[0]["n"]

    # -- the CLI on the same config

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """``python -m node <args> --config <this config>``; stdout and stderr captured apart."""
        return subprocess.run([sys.executable, "-m", "node", *args, "--config", str(self.config_path)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout_s, check=False)

    def status(self) -> subprocess.CompletedProcess:
        return self.cli("status")


def group_members(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid`` (from /proc/<pid>/stat)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


# -- peers the fault tests need beyond peers.py ------------------------------------------------

def received_headers(scp: StoreSCP) -> list[Dataset]:
    """Headers of every file a storescp received (identified by content, never by name)."""
    return [dcmread(path, stop_before_pixels=True) for path in scp.files()]


class ThrottledProxy:
    """A loopback TCP relay to ``target_port`` that forwards client-to-server bytes at about
    ``bytes_per_s`` (the other direction unthrottled). It slows a sender such as storescu, so a
    test can act while a transfer is under way; a close on either side closes both."""

    def __init__(self, target_port: int, bytes_per_s: float, chunk: int = 16384):
        self.target_port = target_port
        self.bytes_per_s = bytes_per_s
        self.chunk = chunk
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.port = 0

    def start(self) -> ThrottledProxy:
        self._listener = socket.socket()
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen()
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)
        return self

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            self._spawn(self._pump, client, server, True)
            self._spawn(self._pump, server, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while True:
                data = src.recv(self.chunk)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if throttled:
                    time.sleep(len(data) / self.bytes_per_s)  # rate limit, not a readiness wait
                dst.sendall(data)
        except OSError:
            for sock in (src, dst):
                _close(sock)

    def stop(self) -> None:
        if self._listener is not None:
            _close(self._listener)
        with self._lock:
            for sock in self._sockets:
                _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> ThrottledProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# -- storescu's verbose output -----------------------------------------------------------------

_SENDING = re.compile(r"I: Sending file: (.+)$")
_RESPONSE = re.compile(r"I: Received Store Response(?: \((.+)\))?$")
_DIMSE_STATUS = re.compile(r"D: DIMSE Status\s*: (0x[0-9a-fA-F]{4}: .+)$")


def store_responses(output: str) -> list[tuple[str, str]]:
    """(file, response) for each C-STORE response in ``storescu -v`` or ``-d`` output, in order.

    storescu sends one request at a time, so a response belongs to the last file it announced
    ("I: Sending file: <path>"); a file without a response line got no answer at all. With -v
    the response is the text in "I: Received Store Response (Success)"; with -d that line has
    no parentheses and the response is the next "D: DIMSE Status : 0xa700: Refused: ..." value.
    """
    current, waiting, answered = None, None, []
    for raw in output.splitlines():
        line = raw.strip()
        if match := _SENDING.search(line):
            current, waiting = match.group(1), None
        elif (match := _RESPONSE.search(line)) and current is not None:
            if match.group(1) is None:
                waiting = current
            else:
                answered.append((current, match.group(1)))
            current = None
        elif (match := _DIMSE_STATUS.search(line)) and waiting is not None:
            answered.append((waiting, match.group(1)))
            waiting = None
    return answered


def acknowledged_files(output: str) -> list[str]:
    """The files storescu saw answered with Success (-v output)."""
    return [path for path, response in store_responses(output) if response == "Success"]


# -- a destination that counts every C-STORE it answered ---------------------------------------

class RecordingSink:
    """A pynetdicom storage SCP on 127.0.0.1 (in this process) that keeps no files but records
    every C-STORE it answered with Success, in order of arrival: ``received`` lists
    (SOPInstanceUID, StudyInstanceUID, SOPClassUID). A second C-STORE of the same instance is a
    second entry, so ``counts()`` shows duplicate deliveries. ``port`` 0 takes a free port; a
    fixed one lets a test configure a destination that comes up later."""

    CLASSES = (MAMMO_CAD_SR, "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.11.1")

    def __init__(self, ae_title: str = "SINK", port: int = 0):
        self.ae_title = ae_title
        self.port = port
        self.received: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server = None

    def start(self) -> RecordingSink:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        ae = AE(ae_title=self.ae_title)
        for uid in self.CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server((LOOPBACK, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self._server.server_address[1]
        return self

    def _store(self, event) -> int:
        ds = event.dataset
        with self._lock:
            self.received.append((str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                                  str(ds.SOPClassUID)))
        return 0x0000

    def uids(self) -> list[str]:
        """SOP Instance UIDs in order of arrival, repeats included."""
        with self._lock:
            return [sop for sop, _, _ in self.received]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sop in self.uids():
            counts[sop] = counts.get(sop, 0) + 1
        return counts

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> RecordingSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
