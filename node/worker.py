"""What runs in an analysis process: one spooled study in, output files and a summary out.

Detection is CPU-bound and holds the GIL, so it runs in separate processes (service.py) and the
receiver's threads are never starved. ``run_analysis`` reads the study's files from the spool,
calls ``pipeline.analyse_study`` and writes the outputs durably under the spool's ``outputs/``
folder, with a worklist notice when the worklist is on (notices.py); the parent process records
them in the database. An exception here marks only this
study failed.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from node import notices
from node.batch import write_outputs
from node.config import Config
from node.errors import UnusableImageError
from node.images import quiet_pydicom, read_file
from node.model import AnalysisOutcome, AnalysisTask, OutputFile
from node.pipeline import analyse_study, unanalysed_reason

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def init_process(level: int) -> None:
    """Worker process start: log to the inherited stderr like the parent does."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("highdicom").setLevel(max(level, logging.WARNING))  # a line per module copied
    quiet_pydicom()



def run_analysis(task: AnalysisTask, config: Config, output_folder: str, fsync: bool) -> AnalysisOutcome:
    start = time.perf_counter()
    datasets, notes = [], []
    for path in task.paths:
        try:
            datasets.append(read_file(path))
        except UnusableImageError as exc:
            notes.append(f"{Path(path).stem}: {exc}")
    if not datasets:
        raise UnusableImageError("no image of this study could be analysed: " + "; ".join(notes))
    result = analyse_study(datasets, config, datetime.now(), task.predecessor)
    reason = unanalysed_reason(result, notes)
    if reason:  # the study is failed with this reason, and nothing is sent
        raise UnusableImageError(reason)
    written = write_outputs(result, Path(output_folder), fsync=fsync) if result.outputs else ()
    outputs = tuple(
        OutputFile(kind, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID), str(path))
        for (kind, ds), path in zip(result.outputs, written))
    findings = result.findings
    if findings.images and notices.destinations(config.worklist):  # none when nothing was analysed
        notice = notices.make_notice(datasets[0], findings.cluster_count, findings.highest_certainty,
                                     datetime.now(timezone.utc), corrected=task.predecessor is not None,
                                     uid_root=config.reporting.uid_root)
        outputs += (notices.write_notice(notice, Path(output_folder), fsync),)
    notes += [f"{f.source.sop_instance_uid}: {f.reason}" for f in findings.failures]
    notes += [f"{s.sop_instance_uid}: not analysed: {s.reason}" for s in result.skipped]
    return AnalysisOutcome(
        study_instance_uid=task.study_instance_uid, generation=task.generation, outputs=outputs,
        images=len(findings.images), failed_images=len(findings.failures) + len(task.paths) - len(datasets),
        clusters=findings.cluster_count, highest_certainty=findings.highest_certainty,
        seconds=time.perf_counter() - start, notes=tuple(notes))

