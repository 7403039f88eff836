"""The worker's in-process pipeline: batcher -> claim + decode thread -> inference thread.

Celery task threads hand each delivered job to ``Runtime.submit`` and wait; the batch is
claimed, decoded, run through ONE forward pass, and every outcome is stored in one
pipeline before any waiting task returns, so a message is acked only after its result.

``hand_back`` (any warm shutdown: SIGTERM, ``celery control shutdown``; see tasks.py) lets
only the batch in its forward pass finish; every job not started goes back to its queue.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import redis

from models.specs import ModelSpec
from services.common.logs import log_context
from services.common.settings import WORKER_EXIT_MARGIN_S, WorkerSettings
from services.gpu_worker import acks, job_trace
from services.gpu_worker.batcher import Batcher
from services.gpu_worker.device import DevicePlan, available_cpus, default_threads
from services.gpu_worker.handback import HandBack
from services.gpu_worker.handover import smooth, wait_until_taken
from services.gpu_worker.metrics import WorkerMetrics
from services.gpu_worker.prepare import (
    Prepared,
    WorkItem,
    build_prepared,
)
from services.gpu_worker.serving import Served, build_served
from services.gpu_worker.store import Claim, JobStore, Outcome

logger = logging.getLogger(__name__)

# After a hand-back starts: the batch in its forward pass (at most the batch time limit),
# storing it (at most store.HURRIED_STORE_S), then Celery's own close. Past this, exit.
EXIT_MARGIN_S = WORKER_EXIT_MARGIN_S
# Failures that are ours, not the client's: each gets a log line (bad images do not).
_SERVER_FAULTS = frozenset({"inference_error", "out_of_memory"})
# The next batch waits for the queued one to start only where preparing an item (claim +
# decode) takes under this share of its forward pass: it then has time to be ready.
PREPARE_SHARE = 0.5


class Runtime:
    """Owns the batcher, the two pipeline threads and the loaded models of one worker."""

    def __init__(
        self,
        settings: WorkerSettings,
        plan: DevicePlan,
        specs: dict[str, ModelSpec],
        store: JobStore,
        metrics: WorkerMetrics,
        worker_id: str,
        handback: HandBack | None = None,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.specs = specs
        self.store = store
        self.metrics = metrics
        self.worker_id = worker_id
        self.handback = handback
        self._handing_back = threading.Event()
        self._running_jobs: frozenset[str] = frozenset()
        self._claiming = threading.Event()  # the prepare thread holds claims not yet queued
        self.device_label = plan.label
        self.batcher: Batcher[WorkItem] = Batcher(
            settings.max_batch_size, settings.max_wait_ms / 1000.0
        )
        self._prepared: queue.Queue[Prepared | None] = queue.Queue(maxsize=1)
        self._taken = threading.Event()  # the inference thread took the queued batch
        # Seconds per item, smoothed: the forward pass, and the prepare thread's claim +
        # decode. They decide whether the next batch may wait for the queued one to start.
        self._forward_per_item = 0.0
        self._prepare_per_item = 0.0
        self._served: dict[str, Served] = {}
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._stopping = threading.Event()
        self._busy = threading.Event()  # set while the inference thread runs a batch
        self._busy_since = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = 600.0) -> None:
        """Load the models on the inference thread and start the pipeline; raise on failure."""
        infer = threading.Thread(target=self._inference_main, name="vq-inference", daemon=True)
        infer.start()
        self._threads.append(infer)
        if not self._ready.wait(timeout_s):
            raise RuntimeError("models did not load in time")
        if self._load_error is not None:
            raise self._load_error
        prep = threading.Thread(target=self._prepare_main, name="vq-prepare", daemon=True)
        prep.start()
        self._threads.append(prep)
        watchdog = threading.Thread(target=self._watchdog, name="vq-watchdog", daemon=True)
        watchdog.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Finish what was handed in, then stop both threads."""
        self._stopping.set()
        self.batcher.close()
        for thread in self._threads:
            thread.join(timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def submit(
        self, job_id: str, model: str, urgent: bool = True, delivery_tag: str = ""
    ) -> WorkItem:
        """Queue one delivered job for batching; the caller waits on ``item.done``.

        Interactive jobs are urgent: they join the next batch ahead of bulk jobs. The
        message's ``delivery_tag`` lets the batch's store ack it (store.acks).
        """
        item = WorkItem(job_id, model, delivery_tag=delivery_tag)
        if model not in self._served or self._handing_back.is_set():
            item.release(requeue=True)
            return item
        try:
            self.batcher.put(model, item, urgent=urgent)
        except RuntimeError:  # closed by a hand-back meanwhile
            item.release(requeue=True)
        return item

    def hand_back(self) -> None:
        """Start a warm shutdown: give back every job not in the forward pass, at once.

        Jobs still in the batcher, and batches claimed and decoded but not started, go back
        to the head of their queues (claimed ones unclaimed first, their delivery not
        counted); the running batch finishes, is stored and acked. The process exits within
        VISIONQ_BATCH_TIME_LIMIT_S + EXIT_MARGIN_S whatever happens.
        """
        if self._handing_back.is_set():
            return
        self._handing_back.set()
        limit = self.settings.batch_time_limit_s + EXIT_MARGIN_S
        guard = threading.Timer(limit, self._exit_now, args=(limit,))
        guard.daemon = True
        guard.start()
        items = self.batcher.drain()
        # Let the prepare thread give back what it is claiming now (it checks the flag
        # before queueing a batch), then take what it queued before: a job still marked
        # running here when its message goes back would be claimed elsewhere as a
        # redelivery, counted twice.
        deadline = time.monotonic() + 2.0
        while self._claiming.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        claimed: list[WorkItem] = []
        sentinel = False
        while True:
            try:
                prepared = self._prepared.get_nowait()
            except queue.Empty:
                break
            self._prepared.task_done()
            if prepared is None:
                sentinel = True  # the prepare thread has ended: the inference thread may too
            else:
                claimed += prepared.run_items + [item for item, _ in prepared.ended]
        if sentinel:
            self._prepared.put(None)
        try:
            self._give_back(claimed)
            if self.handback is not None:
                self.handback.restore_held(self.worker_id, keep_jobs=self._running_jobs)
        except redis.RedisError as exc:
            logger.warning("handing back through Redis failed (%s); kombu requeues them", exc)
        for item in items + claimed:
            item.release(requeue=True)  # a message already restored is not restored twice
        logger.info(
            "shutting down: handed back %d job(s); %d in the forward pass finish first",
            len(items) + len(claimed),
            len(self._running_jobs),
        )
        self.batcher.poke()

    def _give_back(self, claimed: list[WorkItem]) -> None:
        if claimed and self.handback is not None:
            self.handback.unclaim(self.worker_id, [item.job_id for item in claimed])

    @staticmethod
    def _exit_now(limit: float) -> None:
        logger.critical("still running %g s after the shutdown began; exiting", limit)
        logging.shutdown()
        os._exit(1)

    @property
    def served(self) -> dict[str, Served]:
        """The models this worker serves, with their set-up handlers."""
        return dict(self._served)

    # -- inference thread ---------------------------------------------------------------

    def _inference_main(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            prepared = self._prepared.get()
            self._taken.set()
            if prepared is None:
                return
            # Published before the check, so a hand-back racing it keeps these messages.
            self._running_jobs = frozenset(item.job_id for item in prepared.run_items)
            if self._handing_back.is_set():  # claimed before the hand-back; not started
                self._running_jobs = frozenset()
                items = prepared.run_items + [item for item, _ in prepared.ended]
                try:
                    self._give_back(items)
                except redis.RedisError as exc:
                    logger.warning("unclaiming %d jobs failed: %s", len(items), exc)
                for item in items:
                    item.release(requeue=True)
                self._prepared.task_done()
                continue
            self._busy_since = time.monotonic()
            self._busy.set()
            try:
                with log_context(batch_id=prepared.batch_id):
                    self._run(prepared)
            except Exception:
                # A bug here must not leave tasks waiting forever with their messages held:
                # die, and let the supervisor restart us; kombu redelivers the jobs.
                logger.exception("inference loop failed; exiting so the jobs are redelivered")
                os._exit(70)
            finally:
                self._running_jobs = frozenset()
                self._busy.clear()
                self._prepared.task_done()
                self.batcher.poke()

    def _load(self) -> None:
        import torch

        from services.gpu_worker.device import resolve_device

        device, label = resolve_device(self.plan)
        self.device_label = label
        torch_threads, decode_threads = default_threads(device.type, available_cpus())
        torch_threads = self.settings.torch_threads or torch_threads
        decode_threads = self.settings.decode_threads or decode_threads
        # Same thread sets the thread count, loads and runs the model (see FACTS: a forward
        # from another thread made libgomp spawn a second team of threads).
        torch.set_num_threads(torch_threads)
        if decode_threads > 1:
            self._pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="vq-decode")
        for name, spec in self.specs.items():
            served = build_served(spec, self.settings, device)
            self._served[name] = served
            source = served.handler.weights_source
            logger.info(
                "model %s (%s) ready on %s (weights: %s; %d torch threads, %d decode threads)",
                name,
                served.task,
                label,
                f"{source.kind} {source.location}" if source is not None else "none",
                torch_threads,
                decode_threads,
            )

    def _run(self, prepared: Prepared) -> None:
        from services.gpu_worker.batch_result import outcomes_for

        served = self._served[prepared.model]
        forward_start = job_trace.now_ns()
        outcomes, forward_s = outcomes_for(
            prepared,
            served.forward,
            served.handler.encode,
            on_oom=lambda: self.metrics.oom.labels(self.device_label).inc(),
        )
        forward_end = job_trace.now_ns()
        if prepared.run_items:
            self._forward_per_item = smooth(
                self._forward_per_item, forward_s / len(prepared.run_items)
            )
        source = served.handler.weights_source
        if source is not None and source.is_random:
            # Honest output: every answer from random weights says so (see JobRecord.to_api).
            for outcome in outcomes:
                if outcome.result is not None:
                    outcome.result["random_weights"] = True
        outcomes += [outcome for _, outcome in prepared.ended]
        items = prepared.run_items + [item for item, _ in prepared.ended]
        # The store acks the messages with their results (one round trip for the batch).
        tags = [item.delivery_tag for item in items] if self.store.acks is not None else []
        start = time.perf_counter()
        stored = self.store.finish_until_stored(
            outcomes,
            self.worker_id,
            self.settings.visibility_timeout_s,
            hurry=self._handing_back.is_set,
            tags=tags if all(tags) else (),
        )
        store_s = time.perf_counter() - start
        if stored and tags and all(tags):
            acks.settle(tags)  # before any task returns: Celery's ack then skips Redis
        if stored and prepared.trace is not None:
            job_trace.finish(prepared, outcomes, (forward_start, forward_end), self.device_label)
        for item, outcome in zip(items, outcomes, strict=True):
            item.release(requeue=not stored, outcome=outcome)
        if stored:
            self._observe(prepared, outcomes, forward_s, store_s)

    def _observe(
        self, prepared: Prepared, outcomes: list[Outcome], forward_s: float, store_s: float
    ) -> None:
        m, dev = prepared.model, self.device_label
        if prepared.items:
            task = self._served[m].task
            self.metrics.batch_size.labels(m, dev, task).observe(len(prepared.items))
            self.metrics.batch_duration.labels(m, dev, "forward").observe(forward_s)
            decode_s = sum(prepared.decode_ms) / 1000.0
            self.metrics.batch_duration.labels(m, dev, "decode").observe(decode_s)
        self.metrics.batch_duration.labels(m, dev, "store").observe(store_s)
        now = time.time()
        for claim in prepared.run_claims:
            if claim.created is not None:
                self.metrics.queue_wait.labels(m).observe(
                    max(0.0, prepared.claimed_at - claim.created)
                )
                self.metrics.job_latency.labels(m).observe(max(0.0, now - claim.created))
        for out in outcomes:
            outcome = out.status.value if out.error is None else out.error.get("code", "failed")
            self.metrics.jobs_completed.labels(m, dev, outcome, self._served[m].task).inc()
            if outcome in _SERVER_FAULTS and out.error is not None:
                logger.warning(
                    "job %s failed: %s", out.job_id, out.error.get("message", outcome),
                    extra={"job_id": out.job_id},
                )  # fmt: skip

    # -- prepare thread -----------------------------------------------------------------

    def _watchdog(self) -> None:
        # A forward pass can't be interrupted from Python; one stuck past the limit (hung
        # driver, runaway input) would hold its jobs past the visibility timeout and get
        # them run twice. Dying instead hands them back at once through redelivery.
        limit = self.settings.batch_time_limit_s
        while not self._stopping.wait(min(0.5, limit / 4)):
            if self._busy.is_set() and time.monotonic() - self._busy_since > limit:
                logger.critical("a batch ran over VISIONQ_BATCH_TIME_LIMIT_S=%g s; exiting", limit)
                os._exit(75)

    def _forward_estimate(self) -> float:
        """Seconds per item of a forward pass: the smoothed figure, or more if the running
        batch has already taken longer per item (the first batches, a slower model)."""
        running = len(self._running_jobs)
        if not self._busy.is_set() or not running:
            return self._forward_per_item
        elapsed = time.monotonic() - self._busy_since
        return max(self._forward_per_item, elapsed / running)

    def _idle(self) -> bool:
        return not self._busy.is_set() and self._prepared.empty()

    def _prepare_main(self) -> None:
        while True:
            # Nothing running and nothing decoded: don't hold a lone job back waiting for
            # company; while a forward runs, jobs gather for up to MAX_WAIT_MS.
            got = self.batcher.next_batch(timeout=0.5, idle=self._idle)
            if got is None:
                if self._stopping.is_set() or self._handing_back.is_set():
                    self._prepared.put(None)
                    return
                continue
            model, items = got
            self._claiming.set()
            try:
                claim_start = job_trace.now_ns()
                claims = self._claim([item.job_id for item in items])
                claim_ns = (claim_start, job_trace.now_ns())
                if claims is None:
                    for item in items:
                        item.release(requeue=True)
                    continue
                self._count_skipped(str(model), claims)
                pairs = list(zip(items, claims, strict=True))
                runnable = [(i, c) for i, c in pairs if c.verdict != "suspect"]
                self._hand_over(str(model), runnable, claim_ns)
            finally:
                self._claiming.clear()
            # A redelivered job may be what killed the last worker. Claim and run it alone,
            # once everything claimed before it is stored, so that if it kills this worker
            # too no other job is in its hands (each death costs those jobs a delivery).
            for item, claim in pairs:
                if claim.verdict == "suspect":
                    self._prepared.join()
                    if self._handing_back.is_set():
                        item.release(requeue=True)
                        continue
                    self._claiming.set()
                    try:
                        claim_start = job_trace.now_ns()
                        solo = self._claim([item.job_id], solo=True)
                        if solo is None:
                            item.release(requeue=True)
                            continue
                        self._count_skipped(str(model), solo)
                        claim_ns = (claim_start, job_trace.now_ns())
                        self._hand_over(str(model), [(item, solo[0])], claim_ns)
                    finally:
                        self._claiming.clear()

    def _hand_over(
        self, model: str, pairs: list[tuple[WorkItem, Claim]], claim_ns: tuple[int, int]
    ) -> None:
        """Decode claimed jobs and queue them for the inference thread."""
        if not pairs:
            return
        items, claims = [p[0] for p in pairs], [p[1] for p in pairs]
        served = self._served[model]
        batch_id = uuid.uuid4().hex[:16]
        decode_start = job_trace.now_ns()
        claim_s = (claim_ns[1] - claim_ns[0]) / 1e9
        with log_context(batch_id=batch_id):
            prepared, skipped = build_prepared(
                model, items, claims, served.decode, served.params_type, self._pool, time.time()
            )
        prepared.batch_id = batch_id
        if items:
            prepare_s = claim_s + (job_trace.now_ns() - decode_start) / 1e9
            self._prepare_per_item = smooth(self._prepare_per_item, prepare_s / len(items))
        traced = [i.job_id for i in prepared.run_items] + [i.job_id for i, _ in prepared.ended]
        prepared.trace = job_trace.begin(
            self.store.client, model, prepared.batch_id, traced, claim_ns, decode_start
        )
        for item in skipped:
            item.release()
        if not (prepared.run_items or prepared.ended):
            return
        while not self._handing_back.is_set():
            try:
                self._prepared.put(prepared, timeout=0.1)
            except queue.Full:
                continue
            # Where preparing takes well under a forward (a big model, spare decode threads)
            # the next batch is formed once this one starts, gathering what arrives during
            # a whole forward. Where they take about as long (2 CPU cores: 3.5 ms to decode,
            # 4-6 ms to run an image), waiting left the forward idle 15 % of its time.
            if self._prepare_per_item < PREPARE_SHARE * self._forward_estimate():
                wait_until_taken(self._taken, self._busy, self._prepared, self._handing_back)
            return
        # Claimed while the worker began to shut down: give these back too, not started.
        back = prepared.run_items + [item for item, _ in prepared.ended]
        try:
            self._give_back(back)
        except redis.RedisError as exc:
            logger.warning("unclaiming %d jobs failed: %s", len(back), exc)
        for item in back:
            item.release(requeue=True)

    def _claim(self, job_ids: list[str], solo: bool = False) -> list[Claim] | None:
        delay = 0.1
        while True:
            try:
                return self.store.claim(job_ids, self.worker_id, solo=solo)
            except redis.RedisError as exc:
                if self._stopping.is_set() or self._handing_back.is_set():
                    return None
                logger.warning("claiming %d jobs failed (%s); retrying", len(job_ids), exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _count_skipped(self, model: str, claims: list[Claim]) -> None:
        for claim in claims:
            if claim.verdict in ("expired", "worker_lost"):
                task = self._served[model].task
                self.metrics.jobs_completed.labels(
                    model, self.device_label, claim.verdict, task
                ).inc()
