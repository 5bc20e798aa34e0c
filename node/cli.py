"""The command line: ``serve``, ``status``, ``retry``, ``echo``, ``demo``, ``analyze``,
``check-config``.

The only module that prints or exits. Exit codes: 0 success; 1 some inputs could not be used or
the peer did not answer Success (the rest was still processed); 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime
from pathlib import Path

from node import __version__
from node.errors import ConfigError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    quiet = logging.INFO if getattr(args, "log_info", False) else logging.WARNING
    logging.basicConfig(level=logging.DEBUG if args.verbose else quiet,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # pynetdicom logs every PDU at INFO and dumps datasets (patient names) at DEBUG
    # and logs a refused connection as an ERROR that our own message already explains
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if quiet == logging.INFO else logging.CRITICAL)
    from node.images import quiet_pydicom
    quiet_pydicom()
    try:
        return args.run(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calcnode", description="Microcalcification CAD DICOM node.")
    parser.add_argument("--version", action="version", version=f"calcnode {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    analyze = sub.add_parser("analyze", help="analyse DICOM files or folders and write the outputs")
    analyze.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (searched recursively)")
    analyze.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    analyze.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    analyze.set_defaults(run=_analyze)

    check = sub.add_parser("check-config", help="validate a YAML config file")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(run=_check_config)

    serve = sub.add_parser("serve", help="run the DICOM node in the foreground until SIGTERM / SIGINT")
    serve.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    serve.set_defaults(run=_serve, log_info=True)

    status = sub.add_parser("status", help="studies and deliveries, from the node's state database")
    status.add_argument("--config", metavar="FILE", help="YAML config naming the spool")
    status.add_argument("--studies", type=int, default=10, metavar="N", help="recent studies to list")
    status.add_argument("--audit", action="store_true",
                        help="the audit trail instead: associations (refused ones too) and "
                        "delivery attempts, newest first")
    status.add_argument("--limit", type=int, default=50, metavar="N", help="audit records to list")
    status.set_defaults(run=_status)

    retry = sub.add_parser("retry", help="queue failed deliveries again")
    retry.add_argument("--config", metavar="FILE", help="YAML config naming the spool")
    retry.add_argument("--destination", metavar="NAME", help="only this destination")
    retry.set_defaults(run=_retry)

    echo = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    echo.add_argument("peer", metavar="AE@HOST:PORT")
    echo.add_argument("--calling-ae", default="CALCNODE", metavar="AE")
    echo.add_argument("--timeout", type=float, default=10.0, metavar="S")
    echo.set_defaults(run=_echo)

    demo = sub.add_parser("demo", help="send a synthetic four-view study to the running node and "
                          "print what it made of it")
    demo.add_argument("--config", metavar="FILE", help="the YAML config the node runs with")
    demo.add_argument("--seed", type=int, default=7, help="which synthetic study")
    demo.add_argument("--timeout", type=float, default=120.0, metavar="S",
                      help="how long to wait for the results beyond study.complete_after_s")
    demo.set_defaults(run=_demo)
    return parser


def _check_config(args) -> int:
    from node.config import load_config

    load_config(args.file)
    print(f"{args.file}: OK")
    return EXIT_OK


def _analyze(args) -> int:
    from node.batch import analyse_paths
    from node.config import load_config

    config = load_config(args.config)
    runs, unused = analyse_paths(args.paths, config, args.out, datetime.now(), _progress_printer())
    _print_summary(runs)
    for item in unused:
        print(f"not used: {item.path}: {item.reason}", file=sys.stderr)
    written = sum(len(run.written) for run in runs)
    print(f"{len(runs)} stud{'y' if len(runs) == 1 else 'ies'} analysed, {written} output files in {args.out}")
    return EXIT_PARTIAL if unused else EXIT_OK


def _progress_printer():
    if not sys.stderr.isatty():
        return lambda done, total, study: None

    def show(done: int, total: int, study: str) -> None:
        end = "\n" if done == total else ""
        print(f"\r[{done}/{total}] {study[:48]:<48}", end=end, file=sys.stderr, flush=True)

    return show


def _print_summary(runs) -> None:
    rows = [("study", "image", "view", "clusters", "highest certainty")]
    for run in runs:
        headers = {f.source.sop_instance_uid: f for f in run.result.findings.images}
        for uid, found in headers.items():
            best = max((c.certainty for c in found.clusters), default=None)
            rows.append((
                _short(run.study_instance_uid),
                _short(uid),
                found.view_label,
                str(len(found.clusters)),
                "-" if best is None else f"{best:.0f}",
            ))
        for failure in run.result.findings.failures:
            rows.append((_short(run.study_instance_uid), _short(failure.source.sop_instance_uid), "?", "failed", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _short(uid: str) -> str:
    return uid if len(uid) <= 24 else "…" + uid[-23:]


def _serve(args) -> int:
    import signal
    import threading

    from node.config import load_config
    from node.service import Service

    config = load_config(args.config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())  # only sets the event; the service winds down
    Service(config).run(stop)
    return EXIT_OK


def _open_spool(config_path):
    from node.config import load_config
    from node.spool import Spool

    config = load_config(config_path)
    return config, Spool(config.storage.path, config.storage.fsync).open()


def _status(args) -> int:
    from node import audit, status

    config, spool = _open_spool(args.config)
    try:
        if args.audit:
            lines = audit.lines(spool, args.limit)
        else:
            lines = status.report(spool, config, time.time(), args.studies)
        for line in lines:
            print(line)
    finally:
        spool.close()
    return EXIT_OK


def _retry(args) -> int:
    from node import notices
    from node.outbox import Outbox

    config, spool = _open_spool(args.config)
    try:
        if args.destination and args.destination not in notices.all_destinations(config):
            print(f"no destination {args.destination!r} in the config", file=sys.stderr)
            return EXIT_USAGE
        count = Outbox(spool).requeue_failed(time.time(), args.destination)
    finally:
        spool.close()
    print(f"{count} failed deliver{'y' if count == 1 else 'ies'} queued again")
    return EXIT_OK


def _echo(args) -> int:
    from node.sender import echo

    ae, host, port = _peer(args.peer)
    status, description = echo(ae, host, port, args.calling_ae, args.timeout)
    print(f"{args.peer}: {description}" + ("" if status is None else f" (0x{status:04X})"))
    return EXIT_OK if status == 0 else EXIT_PARTIAL


def _peer(text: str) -> tuple[str, str, int]:
    ae, _, address = text.partition("@")
    host, _, port = address.rpartition(":")
    if not ae or not host or not port.isdigit():
        raise SystemExit(f"calcnode: expected AE@HOST:PORT, got {text!r}")
    return ae, host, int(port)


def _demo(args) -> int:
    from node import demo

    config, spool = _open_spool(args.config)
    try:
        lines, ok = demo.run(config, spool, args.seed, args.timeout, print)
    finally:
        spool.close()
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_PARTIAL
