"""The command line: ``calcnode analyze``, ``calcnode check-config``.

The only module that prints or exits. Exit codes: 0 success; 1 some inputs could not be used
(the rest were still processed); 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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
