"""One study's journey: images -> detection -> reporting. Used by ``analyze`` and by the node.

``analyse_study`` takes the decoded-on-demand datasets of one study and returns the findings and
the output datasets (CAD SR, overlay SCs, GSPS) it made. It reads and writes no files; callers
decide where the datasets come from and go.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Sequence

from pydicom.dataset import Dataset

from node import __version__
from node.config import Config
from node.detection.breast import segment_breast
from node.detection.correlate import correlate, correlated_images, locate_nipple
from node.detection.detector import detect
from node.errors import NotAnalysableError, ReportError, UnusableImageError
from node.images import source_ref, to_mammogram
from node.model import (
    Equipment, ImageFailure, ImageFindings, Mammogram, SourceRef, StudyFindings,
)
from node.pixels import display_pixels
from node.reporting.gsps import build_gsps
from node.reporting.overlay import build_overlay_sc
from node.reporting.sr import build_cad_sr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """An object of the study that was not attempted, and why (not a mammogram, QC image...)."""

    sop_instance_uid: str
    reason: str


@dataclass(frozen=True)
class StudyResult:
    findings: StudyFindings
    outputs: tuple[tuple[str, Dataset], ...]
    skipped: tuple[Skipped, ...]


def equipment(config: Config) -> Equipment:
    """How the node names itself; the parameter digest makes UIDs change with the settings."""
    params = asdict(config.detection)
    digest = hashlib.sha256(repr(sorted(params.items())).encode()).hexdigest()[:16]
    rep = config.reporting
    return Equipment(
        manufacturer=rep.manufacturer,
        model_name=rep.model_name,
        software_version=__version__,
        device_serial_number=rep.device_serial_number,
        institution_name=rep.institution_name,
        uid_root=rep.uid_root,
        algorithm_parameters=(
            f"operating_point={config.detection.operating_point}",
            f"report_certainty={config.detection.report_certainty}",
            f"parameters_sha256={digest}",
        ),
    )


def analyse_study(datasets: Sequence[Dataset], config: Config, now: datetime,
                  predecessor: SourceRef | None = None) -> StudyResult:
    """Analyse every image of one study and build the outputs the config asks for.

    After every image is analysed, the clusters of the CC and MLO views of each breast are
    paired into composite findings (``detection.correlate``). ``predecessor`` is the SR of
    this study's previous run, which the new SR supersedes.
    """
    if not datasets:
        raise ValueError("a study needs at least one dataset")
    study_uid = str(datasets[0].get("StudyInstanceUID", ""))
    analysed, failures, skipped, attempted, displays = [], [], [], [], {}
    for ds in datasets:
        uid = str(ds.get("SOPInstanceUID", ""))
        try:
            start = time.perf_counter()
            mammogram = to_mammogram(ds, config.images)
            found = _findings(mammogram, config)
            analysed.append(dataclasses.replace(found, seconds=time.perf_counter() - start))
            if found.clusters and "sc" in config.outputs:
                # from the array decoded above: pydicom keeps it until decoding options change
                try:
                    displays[uid] = display_pixels(ds, ds.pixel_array)
                except ValueError as exc:  # e.g. a window width of 0: no overlay, findings stand
                    log.warning("study %s image %s: no overlay image: %s", study_uid, uid, exc)
            attempted.append(ds)
            for warning in mammogram.warnings:
                log.warning("study %s image %s: %s", study_uid, uid, warning)
        except NotAnalysableError as exc:
            skipped.append(Skipped(uid, str(exc)))
        except UnusableImageError as exc:
            failures.append(ImageFailure(source_ref(ds), str(exc)))
            attempted.append(ds)
            log.warning("study %s image %s failed: %s", study_uid, uid, exc)
    findings = StudyFindings(study_uid, tuple(analysed), tuple(failures),
                             composites=correlate(analysed),
                             correlated_images=correlated_images(analysed))
    outputs = _outputs(attempted, displays, findings, config, now, predecessor) if attempted else ()
    return StudyResult(findings, outputs, tuple(skipped))


def _findings(mammogram: Mammogram, config: Config) -> ImageFindings:
    """Detection on one image, and where its nipple is (for CC / MLO correlation); the breast
    is segmented once for both."""
    pixels, spacing, params = mammogram.pixels, mammogram.spacing_mm, config.detection
    breast = segment_breast(pixels, spacing, params, mammogram.valid)
    clusters = detect(pixels, spacing, params, mammogram.valid, breast=breast)
    nipple = locate_nipple(pixels, spacing, mammogram.chest_wall, params, mammogram.valid, breast)
    return ImageFindings(mammogram.source, clusters, laterality=mammogram.laterality,
                         view=mammogram.view, spacing_mm=mammogram.spacing_mm,
                         nipple_rc=nipple)


def unanalysed_reason(result: StudyResult, notes: Sequence[str] = ()) -> str | None:
    """Why no image of a study could be analysed (a failed study's reason), or None when some was.

    ``notes`` are the files that could not even be read; the failures and skips follow.
    """
    if result.findings.images:
        return None
    reasons = list(notes)
    reasons += [f"{f.source.sop_instance_uid}: {f.reason}" for f in result.findings.failures]
    reasons += [f"{s.sop_instance_uid}: not analysed: {s.reason}" for s in result.skipped]
    return "no image of this study could be analysed: " + "; ".join(reasons)


def _outputs(attempted: list[Dataset], displays: dict, findings: StudyFindings, config: Config,
             now: datetime, predecessor: SourceRef | None):
    """Build each requested output; one that cannot be built is logged and the others still made."""
    kit = equipment(config)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in attempted}
    marked = [f for f in findings.images if f.clusters]
    builders = []
    if "sr" in config.outputs:
        builders.append(("sr", lambda: [build_cad_sr(by_uid, findings, kit, now, predecessor)]))
    if "sc" in config.outputs:
        for number, image in enumerate((f for f in marked if f.source.sop_instance_uid in displays),
                                       start=1):
            uid = image.source.sop_instance_uid
            builders.append(("sc", lambda s=by_uid[uid], d=displays[uid], i=image, n=number: [
                build_overlay_sc(s, d, i, kit, now, instance_number=n)]))
    if "gsps" in config.outputs and marked:
        sources = [by_uid[f.source.sop_instance_uid] for f in marked]
        builders.append(("gsps", lambda: build_gsps(sources, marked, kit, now)))
    outputs: list[tuple[str, Dataset]] = []
    for kind, build in builders:
        try:
            outputs.extend((kind, ds) for ds in build())
        except (ReportError, UnusableImageError, ValueError, TypeError, AttributeError, KeyError) as exc:
            # a header the builder cannot use must not cost the study its other outputs
            log.error("study %s: could not build %s: %s", findings.study_instance_uid, kind, exc)
    return tuple(outputs)
