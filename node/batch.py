"""Offline analysis: DICOM files in, output files out (``calcnode analyze``).

Files are grouped by Study Instance UID from their headers alone, then each study is read in full,
analysed by ``pipeline.analyse_study`` and its outputs written under ``OUT/<StudyInstanceUID>/``.
Nothing here prints: progress and results go back to the caller through a callback and return
values.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

import pydicom

from node.config import Config
from node.errors import UnusableImageError
from node.images import open_bounded, read_file
from node.pipeline import StudyResult, analyse_study
from node.reporting.uids import is_valid_uid
from node.spool import place_file


@dataclass(frozen=True)
class Unused:
    """An input file that was not used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class StudyRun:
    study_instance_uid: str
    files: tuple[Path, ...]
    result: StudyResult
    written: tuple[Path, ...]


def find_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Unused]]:
    """Every file under ``paths`` (folders recursively, sorted), and the paths that do not exist."""
    files, missing = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            missing.append(Unused(path, "no such file or folder"))
    return files, missing


def group_by_study(files: Iterable[Path]) -> tuple[dict[str, list[Path]], list[Unused]]:
    """Files grouped by Study Instance UID (headers only), and the files that are not usable DICOM."""
    studies: dict[str, list[Path]] = defaultdict(list)
    unused: list[Unused] = []
    for path in files:
        try:
            with open_bounded(path) as fp:
                header = pydicom.dcmread(fp, stop_before_pixels=True)
        except Exception as exc:  # a damaged file makes pydicom raise many types
            unused.append(Unused(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})"))
            continue
        study = str(header.get("StudyInstanceUID", ""))
        if not is_valid_uid(study):
            unused.append(Unused(path, f"missing or invalid Study Instance UID {study!r}"))
            continue
        studies[study].append(path)
    return dict(studies), unused


def analyse_files(
    study_uid: str, files: list[Path], config: Config, out_dir: Path, now: datetime
) -> tuple[StudyRun | None, list[Unused]]:
    """Read, analyse and write one study; return the run and the files it could not use."""
    datasets, unused, origin = [], [], {}
    for path in files:
        try:
            ds = read_file(path)
        except UnusableImageError as exc:
            unused.append(Unused(path, str(exc)))
            continue
        datasets.append(ds)
        origin[str(ds.get("SOPInstanceUID", ""))] = path
    if not datasets:
        return None, unused
    result = analyse_study(datasets, config, now)
    for failure in result.findings.failures:
        unused.append(Unused(origin[failure.source.sop_instance_uid], failure.reason))
    for skipped in result.skipped:
        unused.append(Unused(origin[skipped.sop_instance_uid], skipped.reason))
    written = write_outputs(result, out_dir / study_uid) if result.outputs else ()
    return StudyRun(study_uid, tuple(files), result, written), unused


def write_outputs(result: StudyResult, folder: Path, fsync: bool = False) -> tuple[Path, ...]:
    """Write each output as ``<kind>_<SOPInstanceUID>.dcm``, atomically (tmp file, rename);
    with ``fsync`` each file and the folder are flushed to disk before this returns."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, ds in result.outputs:
        path = folder / f"{kind}_{ds.SOPInstanceUID}.dcm"
        tmp = path.with_suffix(".tmp")
        ds.save_as(tmp, enforce_file_format=True)
        place_file(tmp, path, fsync)
        written.append(path)
    return tuple(written)


def analyse_paths(
    paths: Iterable[str | Path],
    config: Config,
    out_dir: Path,
    now: datetime,
    progress: Callable[[int, int, str], None] = lambda done, total, study: None,
) -> tuple[list[StudyRun], list[Unused]]:
    """Analyse every study found under ``paths``; a bad file never stops the others."""
    files, unused = find_files(paths)
    studies, unreadable = group_by_study(files)
    unused.extend(unreadable)
    runs = []
    for done, (study_uid, study_files) in enumerate(sorted(studies.items())):
        progress(done, len(studies), study_uid)
        run, bad = analyse_files(study_uid, study_files, config, out_dir, now)
        unused.extend(bad)
        if run is not None:
            runs.append(run)
    progress(len(studies), len(studies), "")
    return runs, unused
