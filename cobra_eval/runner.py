"""The run loop: plan, generate in batches, commit every sample, export snapshots.

Knows nothing of SQL or of the JSON layout: it talks to the Store and to the
snapshot functions, to a Method and to a Backend.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from cobra_eval.backends import Backend, BackendOptions, GenerationRequest, create_backend
from cobra_eval.config import RunSettings, fingerprint
from cobra_eval.datasets import (
    Dataset,
    Sample,
    SampleReferences,
    Selection,
    load_dataset,
    select_samples,
)
from cobra_eval.errors import CobraEvalError, StoreError
from cobra_eval.finisher import MAX_PENDING_SAMPLES, BatchFinisher
from cobra_eval.generation import CachedGenerator
from cobra_eval.method_scores import MethodScores, open_scorer
from cobra_eval.methods import Method, PassOutput, resolve_methods
from cobra_eval.methods.prompts import load_prompts_file
from cobra_eval.metrics import CorpusScores
from cobra_eval.metrics.per_sample import (
    PreparedScoring,
    SampleScore,
    SampleScorer,
)
from cobra_eval.progress import Reporter, SilentReporter
from cobra_eval.resume import resolve_run
from cobra_eval.store import Store, resolve_url
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.checkpoint_schedule import scheduled_count
from cobra_eval.store.claims import (
    ClaimCursor,
    Heartbeat,
    acquire_export_lease,
    claim_batch,
    clear_claims,
    others_work,
    release,
    release_export_lease,
)
from cobra_eval.store.engine import database_error_message, worker_identity
from cobra_eval.store.models import utcnow
from cobra_eval.store.repository import CommitItem
from cobra_eval.store.snapshot_stream import WrittenItems
from cobra_eval.store.snapshots import (
    ExportedFile,
    catch_up_checkpoint,
    export_snapshot,
    prepare_method_folder,
)
from cobra_eval.store.tally import ResultTally

#: A run stops when this many samples in a row failed: the cause is systemic, not the samples.
MAX_CONSECUTIVE_FAILURES = 20
#: Seconds between looks at the database while other workers hold the remaining samples.
CLAIM_POLL_S = 1.0
#: Batches a worker claims at once: a claim is a write transaction, and the model
#: should not wait for one per batch (the claims are renewed while they wait).
CLAIM_AHEAD = 4
#: An exporter that died frees the export lease after this many seconds.
EXPORT_LEASE_S = 120.0
#: How long a finishing worker waits for another's export before writing the final file.
EXPORT_WAIT_S = 300.0


@dataclass
class MethodSummary:
    """What happened to one method of a run."""

    method: str
    total: int
    processed: int
    new_this_run: int
    failed: int
    generated: int = 0
    cache_hits: int = 0
    parse_fallbacks: int = 0
    parse_empty: int = 0
    checkpoints: list[Path] = field(default_factory=list)
    final_file: Path | None = None
    corpus: CorpusScores | None = None


@dataclass
class RunSummary:
    """The outcome of run_evaluation."""

    run_id: str
    db: str
    methods: list[MethodSummary]


class Interrupted(CobraEvalError):
    """The run was stopped (Ctrl-C); everything committed so far is kept."""

    def __init__(self, run_id: str, summary: str):
        self.run_id = run_id
        super().__init__(summary)


def run_evaluation(
    settings: RunSettings,
    *,
    reporter: Reporter | None = None,
    backend: Backend | None = None,
    on_run: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run (or resume, or extend) an evaluation as the CLI's bare command does.

    on_run is told the run's id as soon as it is known (before any generation).
    """
    reporter = reporter or SilentReporter()
    methods = resolve_methods(
        settings.method,
        prompts=load_prompts_file(settings.prompts),
        options={"llava_cot": {"use_format_instruction": settings.llava_cot_instruction}},
    )
    dataset = load_dataset(settings.dataset, settings.images, settings.split)
    chosen = select_samples(
        dataset, settings.num_samples, seed=settings.sample_seed, skip_missing=settings.skip_missing
    )
    # METEOR's JVM gets ready (its paraphrase table cut to the planned references, then
    # loaded) and CIDEr-D's document frequencies are counted, in the background while the
    # run opens and the model loads, which leave a core idle
    # one map by id for the scoring, every method and the scorer (100,000 entries take 10 ms)
    by_id = {s.image_id: s for s in chosen.samples}
    prepared = PreparedScoring(settings.metrics, SampleReferences(by_id))
    try:
        return _open_and_run(
            settings, methods, dataset, chosen, by_id, prepared, reporter, backend, on_run
        )
    finally:
        prepared.close()


def _open_and_run(
    settings: RunSettings,
    methods: Sequence[Method],
    dataset: Dataset,
    chosen: Selection,
    by_id: dict[int, Sample],
    prepared: PreparedScoring,
    reporter: Reporter,
    backend: Backend | None,
    on_run: Callable[[str], None] | None,
) -> RunSummary:
    record = settings.settings_record()
    if chosen.skipped:
        record["skipped"] = chosen.skipped_record()
        counts = ", ".join(f"{len(ids)} {kind}" for kind, ids in chosen.skipped.items())
        reporter.message(f"Skipped with --skip_missing: {counts} (recorded in the run)")
    if backend is None:
        backend = create_backend(
            settings.backend,
            BackendOptions(
                model=resolve_model(settings),
                device=settings.device,
                dtype=settings.dtype,
                extra=settings.backend_extra(),
            ),
        )
    run_cfg = {
        "model": {"backend": settings.backend, **backend.identity()},
        "generation": settings.generation.model_dump(),
        "dataset": {"identity": dataset.identity, "split": dataset.split, **chosen.selection},
    }
    method_cfgs = {m.name: {"name": m.name, **m.config()} for m in methods}
    url = resolve_url(settings.db, settings.output_dir)
    try:
        with Store.open(url, durability=settings.durability) as store:
            return _run_in_store(
                store, settings, methods, by_id, record, backend, run_cfg, method_cfgs,
                prepared, reporter, on_run,
            )  # fmt: skip
    except OperationalError as exc:
        raise StoreError(database_error_message(exc, url)) from None


def _run_in_store(
    store: Store,
    settings: RunSettings,
    methods: Sequence[Method],
    by_id: dict[int, Sample],
    record: dict[str, Any],
    backend: Backend,
    run_cfg: dict[str, Any],
    method_cfgs: dict[str, dict[str, Any]],
    prepared: PreparedScoring,
    reporter: Reporter,
    on_run: Callable[[str], None] | None,
) -> RunSummary:
    run, resumed = resolve_run(store, settings, run_cfg, method_cfgs, reporter)
    if on_run is not None:
        on_run(run.id)
    # the selection in its order, by id
    store.ensure_plan(run.id, list(by_id))
    generator = CachedGenerator(backend, store, run_cfg["model"], enabled=settings.cache)
    scorer = open_scorer(store, run.id, by_id, settings.metrics, prepared)
    total = len(by_id)
    # counting within the plan's first `total` joins the plan (90 ms at 100k), needed only
    # when it holds more; every count and tally of the run does the same
    in_plan = total if store.planned_beyond(run.id, total) else None
    # the first method's count serves its loop too (a count reads 99,000 index entries of a
    # 100k run: 15-35 ms); a later method counts again when it starts, after others' commits
    first_done = store.count_results(run.id, methods[0].name, limit=in_plan)
    if first_done >= total and all(
        store.count_results(run.id, m.name, limit=in_plan) >= total for m in methods[1:]
    ):
        # nothing to score as samples land: the JVM started early is not needed (a
        # final corpus score that needs METEOR starts it again)
        scorer.close()
    summaries = []
    try:
        for k, method in enumerate(methods):
            loop = _MethodLoop(
                store, run.id, method, by_id, settings, generator, scorer, reporter, record,
                in_plan=in_plan, counted=first_done if k == 0 else None,
            )  # fmt: skip
            summaries.append(loop.run(method_cfgs[method.name], resumed))
    finally:
        generator.close()
        scorer.close()
    if all(s.processed >= s.total for s in summaries):
        store.set_run_status(run.id, "finished")
    return RunSummary(run.id, store.display, summaries)


class _MethodLoop:
    def __init__(
        self,
        store: Store,
        run_id: str,
        method: Method,
        samples: dict[int, Sample],
        settings: RunSettings,
        generator: CachedGenerator,
        scorer: SampleScorer,
        reporter: Reporter,
        record: dict[str, Any],
        *,
        in_plan: int | None,
        counted: int | None = None,
    ):
        self.store, self.run_id, self.method = store, run_id, method
        #: count results within the plan's first `total` (None: all of them are)
        self.in_plan = in_plan
        #: the method's results as counted just before (None: counted when it starts)
        self.counted = counted
        self.samples = samples
        self.total = len(samples)
        self.settings, self.generator, self.reporter = settings, generator, reporter
        self.scorer = scorer
        self.worker = worker_identity()
        #: the non-semantic settings recorded with the method (and what was skipped)
        self.record = record
        self.scores = MethodScores(
            store, run_id, method, self.samples, settings.metrics, scorer, reporter, self.worker
        )

    def run(self, method_cfg: dict[str, Any], resumed: bool) -> MethodSummary:
        name = self.method.name
        self.store.ensure_method(
            self.run_id,
            name,
            config=method_cfg,
            fingerprint=fingerprint(method_cfg),
            settings=self.record,
            total=self.total,
        )
        in_plan = self.in_plan
        processed = (
            self.counted
            if self.counted is not None
            else self.store.count_results(self.run_id, name, limit=in_plan)
        )
        generated_before, hits_before = self.generator.generated, self.generator.hits
        summary = MethodSummary(name, self.total, processed, 0, 0)
        if self.settings.method == "all":
            self.reporter.message(f"== {name} (run {self.run_id}) ==")
        if resumed and processed:
            remaining = self.total - processed
            self.reporter.message(
                f"Loaded checkpoint: {processed} samples processed, {remaining} remaining"
            )
        # results other workers commit from now on are picked up at each checkpoint
        self.scores.loaded_at = utcnow()
        rescored = self.scores.load()
        interval = self.settings.checkpoint_interval
        prepare_method_folder(self.settings.output_dir, self.run_id, name)
        self.reporter.start_method(name, self.total, processed)
        self.last_exported = self.store.last_checkpoint_count(self.run_id, name)
        missed = self._exclusive_export(
            lambda: catch_up_checkpoint(
                self.store, self.settings.output_dir, self.run_id, name,
                interval=interval, processed=processed,
                fixed=self.settings.fixed_checkpoint_interval, keep=self.settings.keep_checkpoints,
            )
        )  # fmt: skip
        self.written: WrittenItems | None = None
        if missed is not None:
            self.written = missed.items
            summary.checkpoints.append(missed.path)
            self.last_exported = missed.count
            self.reporter.checkpoint(missed.path.name, missed.count, self.total)
        started = utcnow()
        self.failures_in_row = 0
        self.processed = processed
        self.tally = ResultTally(self.store, self.run_id, name, limit=in_plan)
        self.failed_before = self.store.failed_ids(self.run_id, name)
        lease_s = self.settings.lease_seconds
        params = self.settings.generation
        waiting_shown = False
        queued: list[int] = []
        # a resumed run's settled samples are, but for a few, the plan's first `processed`:
        # its first claim looks after them instead of probing every one (120-410 ms at 100k);
        # those before that are pending (failures to retry, a dead worker's batch) are
        # claimed once nothing is pending after (claim_batch goes back to the start)
        cursor = ClaimCursor(position=processed - 1)
        # with the generation cache off, a batch generated but not yet committed would be
        # lost work if the process died: then each batch is finished before the next starts
        finisher = BatchFinisher(
            overlap=self.settings.cache,
            max_pending=max(MAX_PENDING_SAMPLES // self.settings.batch_size, 1),
        )
        try:
            with Heartbeat(self.store, self.run_id, name, self.worker, lease_s) as heartbeat, \
                    finisher, _announced_stop(finisher, self.reporter):  # fmt: skip
                batch_size = self.settings.batch_size
                # the queue's last batch is left: nothing more to claim for now
                tail = False
                while True:
                    # the next block is claimed with the last batch of this one left, so its
                    # images are hashed and looked up in the cache while that batch generates
                    if not queued or (len(queued) <= batch_size and not tail):
                        more = claim_batch(
                            self.store, self.run_id, name, self.worker,
                            limit=batch_size * CLAIM_AHEAD, total=self.total, lease_s=lease_s,
                            retry_failed_before=started, in_hand=finisher.holding() + queued,
                            cursor=cursor,
                        )  # fmt: skip
                        # (a first block's first batch generates at once: looked up inline)
                        ahead = more if queued else more[batch_size:]
                        self.generator.prefetch(self._first_requests(ahead), params)
                        tail = bool(queued) and not more
                        queued += more
                    if not queued:
                        finisher.wait()
                        heartbeat.hold([])
                        others = others_work(self.store, self.run_id, name, self.worker, self.total)
                        if not others.count:
                            break
                        if not waiting_shown:
                            self.reporter.message(
                                f"Waiting for {others.count} samples other workers hold "
                                f"(claims expire by {_clock(others.until)})"
                            )
                            waiting_shown = True
                        time.sleep(min(CLAIM_POLL_S, lease_s / 4))
                        continue
                    claimed, queued = queued[:batch_size], queued[batch_size:]
                    # the batches being finished stay claimed until they are committed
                    heartbeat.hold(finisher.holding() + claimed + queued)
                    batch = [self.samples[i] for i in claimed]
                    generated = self._generate(batch)
                    # its generations reach the cache before the model starts on the next
                    # batch: a kill from then on costs no model work, however far behind the
                    # finisher is
                    self.generator.save()
                    finisher.submit(
                        functools.partial(self._finish, batch, generated, summary), claimed
                    )
                finisher.wait()
                heartbeat.hold([])
        except KeyboardInterrupt:
            # the batch already generated is committed before stopping: nothing is lost
            finisher.wait()
            self.generator.save()
            release(self.store, self.run_id, name, self.worker)
            self._mark_interrupted()
            raise Interrupted(
                self.run_id,
                f"Interrupted: {self.processed}/{self.total} samples of {name} are saved in run "
                f"{self.run_id}; continue with --resume_from_checkpoint "
                f"(or --run_id {self.run_id})",
            ) from None
        except BaseException:
            # the generations of a batch that stopped between its passes are kept too
            with contextlib.suppress(Exception):
                self.generator.save()
            release(self.store, self.run_id, name, self.worker)
            # stopped by an error, it no longer runs: `runs` must not say it does (a resume
            # sets it running again); a failing database may refuse this too
            with contextlib.suppress(Exception):
                self._mark_interrupted()
            raise
        finally:
            self.reporter.end_method()
        # other workers may have committed since this one's last sample
        processed = self.store.count_results(self.run_id, name, limit=self.total)
        summary.processed = processed
        summary.generated = self.generator.generated - generated_before
        summary.cache_hits = self.generator.hits - hits_before
        summary.failed = next((p.failed for p in self.store.method_progress(self.run_id, name)), 0)

        def finish() -> ExportedFile:
            # under the export lease: with several workers, the last one to finish scores
            # and writes everything, after every other worker's commits
            summary.corpus = self.scores.final(reuse=summary.new_this_run == 0 and not rescored)
            return export_snapshot(
                self.store, self.settings.output_dir, self.run_id, name, is_checkpoint=False,
                earlier=self.written,
            )  # fmt: skip

        final = self._exclusive_export(finish, wait=True)
        summary.final_file = final.path if final is not None else None
        summary.parse_fallbacks, summary.parse_empty = self.store.parse_counts(self.run_id, name)
        if processed >= self.total:
            self.store.set_method_status(self.run_id, name, "finished")
            clear_claims(self.store, self.run_id, name)
        return summary

    def _finish(
        self,
        batch: Sequence[Sample],
        generated: _Generated,
        summary: MethodSummary,
    ) -> None:
        """Score a generated batch and commit it; export the checkpoints its samples reach.

        The batch is committed in one transaction, split where a checkpoint falls due,
        so a checkpoint holds exactly the count it is named for when one worker runs.
        """
        finished = self._score_and_record(batch, generated)
        chunk: list[CommitItem] = []
        count = self._count()
        for k, item in enumerate(finished):
            chunk.append(item)
            count += 1
            if k + 1 < len(finished) and not self._due(count):
                continue
            committed = self.store.commit_results(
                self.run_id, self.method.name, chunk, worker=self.worker
            )
            for done, inserted in zip(chunk, committed, strict=True):
                self._committed(done, inserted, summary)
            chunk = []
            count = self.processed
            exported = self._checkpoint_if_due(self.processed)
            if exported is not None:
                summary.checkpoints.append(exported.path)

    def _committed(self, item: CommitItem, inserted: bool, summary: MethodSummary) -> None:
        result = item.result
        name = self.method.name
        # not inserted: another worker's row is the sample's, and its scores come with it
        # (add_others); this worker's caption was not stored and is not in the corpus
        if item.scoring is not None and inserted:
            scores = {key: value for key, value in result.metrics.items() if value is not None}
            self.scores.add(result.image_id, SampleScore(scores, dict(item.scoring)))
        if result.status == "failed":
            # the next invocation may retry it at once
            release(self.store, self.run_id, name, self.worker, [result.image_id])
        # a retried failure was counted already (its failed row was)
        counted = result.image_id in self.failed_before
        self.failed_before.discard(result.image_id)
        self.processed = min(self.processed + int(inserted and not counted), self.total)
        summary.new_this_run += 1
        self.failures_in_row = self.failures_in_row + 1 if result.status == "failed" else 0
        self.reporter.processed(
            self.processed, self.total, cached=bool(result.metadata.get("cached"))
        )
        if self.failures_in_row >= MAX_CONSECUTIVE_FAILURES:
            raise CobraEvalError(
                f"stopping: the last {self.failures_in_row} samples all failed "
                f"(last error: {result.metadata.get('error')}); they are stored "
                "as failed and will be retried on --resume_from_checkpoint"
            )

    def _count(self) -> int:
        """Samples committed so far, re-read once per batch: other workers commit too."""
        self.processed = self.tally.read()
        return self.processed

    def _scheduled(self, processed: int) -> int:
        """The newest checkpoint count due by processed (the interval thins as runs grow)."""
        return scheduled_count(
            processed,
            self.settings.checkpoint_interval,
            fixed=self.settings.fixed_checkpoint_interval,
        )

    def _due(self, processed: int) -> bool:
        return self._scheduled(processed) > self.last_exported

    def _checkpoint_if_due(self, processed: int) -> ExportedFile | None:
        """Export a checkpoint when the count passed a multiple of the interval since the last.

        With several workers exactly one exports (the export lease) and counts only grow.
        """
        if not self._due(processed):
            return None
        due = self._scheduled(processed)

        def export() -> ExportedFile | None:
            self.last_exported = self.store.last_checkpoint_count(self.run_id, self.method.name)
            if self.last_exported >= due:
                return None  # another worker wrote it
            self.scores.corpus("checkpoint")
            return export_snapshot(
                self.store, self.settings.output_dir, self.run_id, self.method.name,
                is_checkpoint=True, keep=self.settings.keep_checkpoints, earlier=self.written,
            )  # fmt: skip

        exported = self._exclusive_export(export)
        if exported is not None:
            # the next checkpoint copies this one's results (while they are unchanged)
            self.written = exported.items
            self.last_exported = exported.count
            self.reporter.checkpoint(exported.path.name, exported.count, self.total)
        return exported

    def _exclusive_export(
        self, export: Callable[[], ExportedFile | None], *, wait: bool = False
    ) -> ExportedFile | None:
        """Run an export holding the (run, method) export lease; skip it if another holds it.

        With wait, wait for the lease instead: the final results file is written by
        every worker that finishes, one after the other, the last one with everything.
        """
        deadline = time.monotonic() + EXPORT_WAIT_S
        name = self.method.name
        while not acquire_export_lease(self.store, self.run_id, name, self.worker, EXPORT_LEASE_S):
            if not wait or time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        try:
            return export()
        finally:
            release_export_lease(self.store, self.run_id, name, self.worker)

    def _first_requests(self, ids: Sequence[int]) -> list[GenerationRequest]:
        """The requests of the method's first pass for these samples (no pass is done yet)."""
        if not ids:
            return []
        prompt = self.method.build_prompt(self.method.pass_names[0], [])
        return [
            GenerationRequest(image_path=self.samples[i].image_path, prompt=prompt) for i in ids
        ]

    def _mark_interrupted(self) -> None:
        """The method, and its run, stopped before the end (a resume sets them running)."""
        self.store.set_method_status(self.run_id, self.method.name, "interrupted")
        self.store.set_run_status(self.run_id, "interrupted")

    def _generate(self, batch: Sequence[Sample]) -> _Generated:
        """Run every pass of the method over a batch (the model's part of a batch)."""
        started = time.perf_counter()
        passes: list[list[PassOutput]] = [[] for _ in batch]
        errors: dict[int, str] = {}
        params = self.settings.generation
        for pass_name in self.method.pass_names:
            live = [k for k in range(len(batch)) if k not in errors]
            if not live:
                break
            requests = [
                GenerationRequest(
                    image_path=batch[k].image_path,
                    prompt=self.method.build_prompt(pass_name, passes[k]),
                )
                for k in live
            ]
            for k, request, generated in zip(
                live, requests, self.generator.generate(requests, params), strict=True
            ):
                output = generated.output
                if isinstance(output, Exception):
                    errors[k] = f"{type(output).__name__}: {output}"
                    continue
                parsed = self.method.parse(pass_name, output)
                passes[k].append(
                    PassOutput(
                        name=pass_name,
                        prompt=request.prompt,
                        raw_output=output,
                        caption=parsed.caption,
                        reasoning=parsed.reasoning,
                        parse_status=parsed.parse_status,
                        details=parsed.details,
                        cached=generated.cached,
                    )
                )
        latency = (time.perf_counter() - started) / max(len(batch), 1)
        return _Generated(passes, errors, latency)

    def _score_and_record(self, batch: Sequence[Sample], generated: _Generated) -> list[CommitItem]:
        """Score a generated batch and build its results (and their corpus statistics)."""
        passes, errors, latency = generated.passes, generated.errors, generated.latency_s
        ok = [k for k in range(len(batch)) if k not in errors]
        ids = [batch[k].image_id for k in ok]
        # pass metrics first: finalize compares the passes by them
        pass_scores = self.scores.score_passes(ids, [passes[k] for k in ok])
        finals = {k: self.method.finalize(passes[k]) for k in ok}
        captions = [finals[k].generated_caption for k in ok]
        final_scores = self.scores.final_scores(ids, captions, [passes[k] for k in ok], pass_scores)
        scores = dict(zip(ok, final_scores, strict=True))
        out: list[CommitItem] = []
        for k, sample in enumerate(batch):
            done = [p.model_dump() for p in passes[k]]
            if k in errors:
                record = ResultRecord(
                    image_id=sample.image_id,
                    reference_captions=list(sample.references),
                    generated_caption="",
                    reasoning_trace="",
                    metadata={"status": "failed", "error": errors[k], "passes": done},
                    metrics={},
                )
                out.append(CommitItem(record, latency))
                continue
            final = finals[k]
            record = ResultRecord(
                image_id=sample.image_id,
                reference_captions=list(sample.references),
                generated_caption=final.generated_caption,
                reasoning_trace=final.reasoning_trace,
                metrics=dict(scores[k].scores),
                metadata={
                    **final.metadata,
                    "cached": all(p.cached for p in passes[k]),
                    "passes": done,
                },
            )
            # scored (metrics asked for): its statistics, none for ROUGE-L alone, which pools
            # the samples' own scores; None marks a result that was not scored
            scoring = scores[k].detail if self.scores.metrics else None
            out.append(CommitItem(record, latency, scoring))
        return out


@dataclass
class _Generated:
    """A batch's pass outputs, per-sample errors (by batch index) and latency per sample."""

    passes: list[list[PassOutput]]
    errors: dict[int, str]
    latency_s: float


@contextlib.contextmanager
def _announced_stop(finisher: BatchFinisher, reporter: Reporter) -> Iterator[None]:
    """On Ctrl-C, say so before waiting for the batches generated but not yet finished."""
    try:
        yield
    except KeyboardInterrupt:
        waiting = len(finisher.holding())
        if waiting:
            # scoring them may first wait for METEOR's JVM to load: seconds without a line
            reporter.message(f"Stopping: first committing the {waiting} samples already generated")
        raise


def _clock(when: datetime | None) -> str:
    return when.astimezone().strftime("%H:%M:%S") if when else "?"


def resolve_model(settings: RunSettings) -> str | None:
    """--model, or the bundled demo model for the default backend."""
    if settings.backend == "hf" and settings.model in (None, "demo"):
        from cobra_eval.demo import DEMO_MODEL_DIR

        return str(DEMO_MODEL_DIR)
    return settings.model
