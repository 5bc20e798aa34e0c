"""The running node: builds everything from the config, starts and stops it.

Threads in this process: the receiver (pynetdicom's server and one thread per association), the
scheduler (below), and one dispatcher thread per destination. Analysis runs in worker processes.
The scheduler asks ``assembly`` which receiving studies are complete, claims them in the spool,
hands them to a worker, and records each outcome (queueing its outputs for delivery). All state
is in the spool, so a stop at any point resumes at the next start.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from node import notices, repair, sender, worker
from node.assembly import next_check_s, ready_reason
from node.config import Config
from node.dispatcher import Dispatcher
from node.errors import CalcnodeError
from node.model import AnalysisOutcome, AnalysisTask
from node.outbox import Outbox
from node.receiver import Receiver
from node.spool import Spool
from node.web import WebServer

log = logging.getLogger(__name__)

SCHEDULER_TICK_S = 1.0


def worker_count(config: Config) -> int:
    return config.workers or os.cpu_count() or 1


class Service:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.spool = Spool(config.storage.path, config.storage.fsync)
        self.outbox = Outbox(self.spool)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.receiver = Receiver(config, self.spool, clock, notify=self._wake.set)
        self.dispatcher = Dispatcher(config, self.outbox, sender.send_files, clock,
                                     channels=notices.senders(config.worklist))
        self._pool: ProcessPoolExecutor | None = None
        self._inflight: dict[Future, AnalysisTask] = {}
        self._scheduler = threading.Thread(target=self._schedule, name="scheduler", daemon=True)
        self.address: tuple[str, int] | None = None
        self.web = (WebServer(config, self.spool, self.receiver, self.dispatcher.wake, clock)
                    if config.web.enabled else None)  # checks web.token before anything starts

    def start(self) -> None:
        os.umask(0o077)  # spool files hold patient data: owner only
        repair.open_spool(self.spool)
        for uid in self.spool.recover(self.clock(), self.config.study.max_attempts):
            log.warning("study=%s: analysis was interrupted; queued again", uid)
        repair.fail_damaged(self.spool)
        # multiprocessing keeps its sockets in a temp folder chosen once per process: fix it
        # in the system temp dir before the next line (AF_UNIX paths are limited to 107 bytes).
        multiprocessing.util.get_temp_dir()
        # pynetdicom's chunked receive writes to the default temp folder and offers no other
        # hook; pointing it into the spool makes adopting a received file a rename, not a copy.
        tempfile.tempdir = str(self.spool.incoming)
        self._pool = self._new_pool()
        self.dispatcher.start()
        self._scheduler.start()
        self.address = self.receiver.start()
        if self.web is not None:
            try:
                self.web.start()
            except CalcnodeError:  # its port is taken: stop what already runs, then say why
                self.stop()
                raise
        where = ", ".join(notices.all_destinations(self.config))
        where = where or "none (outputs stay in the spool)"
        log.info("listening on %s:%d as %s; %d workers; destinations: %s", *self.address,
                 self.config.listen.ae_title, worker_count(self.config), where)

    def stop(self) -> None:
        """Stop accepting, let in-flight objects and analyses finish (bounded), keep the queues."""
        self._stopping.set()  # no new analyses; what is received meanwhile waits for the next start
        aborted = self.receiver.stop()
        if aborted:
            log.warning("aborted %d association(s) still open after the grace period", aborted)
        self._wake.set()
        self._scheduler.join(self.config.listen.shutdown_grace_s + 60)
        self.dispatcher.stop()
        if self._pool is not None:
            processes = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()  # an analysis still running is redone at the next start
        if self.web is not None:
            self.web.stop()
        self.spool.close()
        log.info("stopped")

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["node.worker"])
        return ProcessPoolExecutor(worker_count(self.config), mp_context=context,
                                   initializer=worker.init_process,
                                   initargs=(logging.getLogger().getEffectiveLevel(),),
                                   max_tasks_per_child=50)

    def _schedule(self) -> None:
        deadline = None
        while True:
            try:
                self._collect()
                if self._stopping.is_set():
                    deadline = deadline or time.monotonic() + self.config.listen.shutdown_grace_s
                    if not self._inflight or time.monotonic() > deadline:
                        return
                    wait_s = 0.2
                else:
                    wait_s = self._start_ready()
            except Exception:  # the scheduler must outlive any one study or database hiccup
                log.exception("scheduler pass failed")
                wait_s = SCHEDULER_TICK_S
            self._wake.wait(wait_s)
            self._wake.clear()

    def _start_ready(self) -> float:
        """Hand complete studies to free workers; returns how long to sleep."""
        now = self.clock()
        wait_s = SCHEDULER_TICK_S
        for study in self.spool.receiving():
            reason = ready_reason(study, now, self.config.study)
            if reason is None:
                wait_s = min(wait_s, next_check_s(study, now, self.config.study) + 0.01)
                continue
            if len(self._inflight) >= worker_count(self.config):
                break
            task = self.spool.claim(study.study_instance_uid)
            if task is not None:
                self._submit(task, reason)
        return wait_s

    def _submit(self, task: AnalysisTask, reason: str) -> None:
        folder = self.spool.output_folder(task.study_instance_uid)
        try:
            future = self._pool.submit(worker.run_analysis, task, self.config, str(folder),
                                       self.config.storage.fsync)
        except (RuntimeError, OSError) as exc:  # a broken pool: handled like a worker that died
            self.spool.release(task.study_instance_uid, self.config.study.max_attempts, str(exc))
            self._replace_pool()
            raise
        future.add_done_callback(lambda f: self._wake.set())
        self._inflight[future] = task
        log.info("analysing study=%s run=%d images=%d (%s)", task.study_instance_uid,
                 task.generation, len(task.paths), reason)

    def _collect(self) -> None:
        for future in [f for f in self._inflight if f.done()]:
            task = self._inflight.pop(future)
            uid = task.study_instance_uid
            try:
                self._record(task, future.result())
            except BrokenProcessPool:
                retry = self.spool.release(uid, self.config.study.max_attempts, "a worker process died")
                log.error("study=%s: worker process died; %s", uid,
                          "queued again" if retry else "study failed")
                self._replace_pool()
            except Exception as exc:  # noqa: BLE001 - any error fails this study, never the node
                reason = str(exc) if isinstance(exc, CalcnodeError) else f"{type(exc).__name__}: {exc}"
                self.spool.fail(uid, reason)
                log.error("study=%s failed: %s", uid, reason)

    def _replace_pool(self) -> None:
        if self._pool is not None and getattr(self._pool, "_broken", False):
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def _record(self, task: AnalysisTask, outcome: AnalysisOutcome) -> None:
        routes = [(name, dest.outputs) for name, dest in self.config.destinations.items()
                  if not dest.reply_to_sender or dest.ae_title == task.calling_ae]
        routes += notices.routes(self.config.worklist)
        uid = task.study_instance_uid
        if not self.spool.finish(outcome, routes, self.clock()):
            log.info("study=%s run=%d: new images arrived meanwhile; analysing again", uid,
                     task.generation)
            return
        best = "-" if outcome.highest_certainty is None else f"{outcome.highest_certainty:.0f}"
        log.info("analysed study=%s run=%d images=%d failed=%d clusters=%d highest=%s in %.1f s;"
                 " %d outputs in %s", uid, task.generation, outcome.images, outcome.failed_images,
                 outcome.clusters, best, outcome.seconds, len(outcome.outputs),
                 self.spool.output_folder(uid))
        for note in outcome.notes:
            log.warning("study=%s: %s", uid, note)
        if routes and outcome.outputs:
            self.dispatcher.wake()
