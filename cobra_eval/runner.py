"""The run loop: plan, generate in batches, commit every sample, export snapshots.

Knows nothing of SQL or of the JSON layout: it talks to the Store and to the
snapshot functions, to a Method and to a Backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from cobra_eval.backends import Backend, BackendOptions, GenerationRequest, create_backend
from cobra_eval.config import RunSettings, fingerprint
from cobra_eval.datasets import Sample, load_dataset, select_samples
from cobra_eval.errors import CobraEvalError, StoreError
from cobra_eval.generation import CachedGenerator
from cobra_eval.methods import Method, PassOutput, resolve_methods
from cobra_eval.methods.prompts import load_prompts_file
from cobra_eval.metrics import METRIC_GROUPS, CorpusScores, score_corpus
from cobra_eval.metrics.corpus import spice_unavailable_reason
from cobra_eval.metrics.per_sample import DocumentFrequency, SampleScore, SampleScorer
from cobra_eval.progress import Reporter, SilentReporter
from cobra_eval.resume import resolve_run
from cobra_eval.store import Store, resolve_url
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.claims import (
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
from cobra_eval.store.scores import (
    ScoreUpdate,
    latest_corpus_metrics,
    note_rescored,
    record_corpus_metrics,
    save_document_frequency,
    stored_document_frequency,
    stored_scores,
    update_scores,
)
from cobra_eval.store.snapshots import (
    ExportedFile,
    catch_up_checkpoint,
    export_snapshot,
    prepare_method_folder,
)

#: A run stops when this many samples in a row failed: the cause is systemic, not the samples.
MAX_CONSECUTIVE_FAILURES = 20
#: Stored results scored again per tokenizer call when a run's planned set changes.
RESCORE_CHUNK = 500
#: Seconds between looks at the database while other workers hold the remaining samples.
CLAIM_POLL_S = 1.0
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
    selected = chosen.samples
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
                store, settings, methods, selected, record, backend, run_cfg, method_cfgs,
                reporter, on_run,
            )  # fmt: skip
    except OperationalError as exc:
        raise StoreError(database_error_message(exc, url)) from None


def _run_in_store(
    store: Store,
    settings: RunSettings,
    methods: Sequence[Method],
    selected: Sequence[Sample],
    record: dict[str, Any],
    backend: Backend,
    run_cfg: dict[str, Any],
    method_cfgs: dict[str, dict[str, Any]],
    reporter: Reporter,
    on_run: Callable[[str], None] | None,
) -> RunSummary:
    run, resumed = resolve_run(store, settings, run_cfg, method_cfgs, reporter)
    if on_run is not None:
        on_run(run.id)
    store.ensure_plan(run.id, [s.image_id for s in selected])
    generator = CachedGenerator(backend, store, run_cfg["model"], enabled=settings.cache)
    scorer = open_scorer(store, run.id, selected, settings.metrics)
    summaries = []
    try:
        for method in methods:
            loop = _MethodLoop(
                store, run.id, method, selected, settings, generator, scorer, reporter, record
            )
            summaries.append(loop.run(method_cfgs[method.name], resumed))
    finally:
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
        selected: Sequence[Sample],
        settings: RunSettings,
        generator: CachedGenerator,
        scorer: SampleScorer,
        reporter: Reporter,
        record: dict[str, Any],
    ):
        self.store, self.run_id, self.method = store, run_id, method
        self.samples = {s.image_id: s for s in selected}
        self.total = len(selected)
        self.settings, self.generator, self.reporter = settings, generator, reporter
        self.scorer = scorer
        self.worker = worker_identity()
        #: the non-semantic settings recorded with the method (and what was skipped)
        self.record = record
        #: scores of the successful results in this selection: what corpus scores pool
        self.scored: dict[int, SampleScore] = {}
        self.scores_loaded_at = utcnow()

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
        processed = self.store.count_results(self.run_id, name, limit=self.total)
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
        self.scores_loaded_at = utcnow()
        rescored = self._load_scores()
        interval = self.settings.checkpoint_interval
        prepare_method_folder(self.settings.output_dir, self.run_id, name)
        self.reporter.start_method(name, self.total, processed)
        self.last_exported = self.store.last_checkpoint_count(self.run_id, name)
        missed = self._exclusive_export(
            lambda: catch_up_checkpoint(
                self.store, self.settings.output_dir, self.run_id, name,
                interval=interval, processed=processed,
            )
        )  # fmt: skip
        if missed is not None:
            summary.checkpoints.append(missed.path)
            self.last_exported = missed.count
            self.reporter.checkpoint(missed.path.name, missed.count, self.total)
        started = utcnow()
        failures_in_row = 0
        lease_s = self.settings.lease_seconds
        waiting_shown = False
        try:
            with Heartbeat(self.store, self.run_id, name, self.worker, lease_s) as heartbeat:
                while True:
                    claimed = claim_batch(
                        self.store, self.run_id, name, self.worker,
                        limit=self.settings.batch_size, total=self.total, lease_s=lease_s,
                        retry_failed_before=started,
                    )  # fmt: skip
                    if not claimed:
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
                    heartbeat.hold(claimed)
                    batch = [self.samples[i] for i in claimed]
                    for result, latency, score in self._generate(batch):
                        self.store.commit_result(
                            self.run_id, name, result, worker=self.worker, latency_s=latency,
                            scoring=score.detail if score is not None else None,
                        )  # fmt: skip
                        if score is not None:
                            self.scored[result.image_id] = score
                        if result.status == "failed":
                            # the next invocation may retry it at once
                            release(self.store, self.run_id, name, self.worker, [result.image_id])
                        # other workers commit too: the count is the database's
                        processed = self.store.count_results(self.run_id, name, limit=self.total)
                        summary.new_this_run += 1
                        failures_in_row = failures_in_row + 1 if result.status == "failed" else 0
                        self.reporter.processed(
                            processed, self.total, cached=bool(result.metadata.get("cached"))
                        )
                        exported = self._checkpoint_if_due(processed)
                        if exported is not None:
                            summary.checkpoints.append(exported.path)
                        if failures_in_row >= MAX_CONSECUTIVE_FAILURES:
                            raise CobraEvalError(
                                f"stopping: the last {failures_in_row} samples all failed "
                                f"(last error: {result.metadata.get('error')}); they are stored "
                                "as failed and will be retried on --resume_from_checkpoint"
                            )
                    heartbeat.hold([])
        except KeyboardInterrupt:
            release(self.store, self.run_id, name, self.worker)
            self.store.set_method_status(self.run_id, name, "interrupted")
            self.store.set_run_status(self.run_id, "interrupted")
            raise Interrupted(
                self.run_id,
                f"Interrupted: {processed}/{self.total} samples of {name} are saved in run "
                f"{self.run_id}; continue with --resume_from_checkpoint "
                f"(or --run_id {self.run_id})",
            ) from None
        except BaseException:
            release(self.store, self.run_id, name, self.worker)
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
            summary.corpus = self._final_corpus(reuse=summary.new_this_run == 0 and not rescored)
            return export_snapshot(
                self.store, self.settings.output_dir, self.run_id, name, is_checkpoint=False
            )

        final = self._exclusive_export(finish, wait=True)
        summary.final_file = final.path if final is not None else None
        for result in self.store.results(self.run_id, name):
            status = str(result.metadata.get("parse_status", "ok"))
            if result.status == "ok" and status != "ok":
                summary.parse_empty += status == "empty"
                summary.parse_fallbacks += status != "empty"
        if processed >= self.total:
            self.store.set_method_status(self.run_id, name, "finished")
            clear_claims(self.store, self.run_id, name)
        return summary

    def _checkpoint_if_due(self, processed: int) -> ExportedFile | None:
        """Export a checkpoint when the count passed a multiple of the interval since the last.

        With several workers exactly one exports (the export lease) and counts only grow.
        """
        interval = self.settings.checkpoint_interval
        due = processed // interval * interval if interval else 0
        if not due or due <= self.last_exported:
            return None

        def export() -> ExportedFile | None:
            self.last_exported = self.store.last_checkpoint_count(self.run_id, self.method.name)
            if self.last_exported >= due:
                return None  # another worker wrote it
            self._corpus("checkpoint")
            return export_snapshot(
                self.store, self.settings.output_dir, self.run_id, self.method.name,
                is_checkpoint=True,
            )  # fmt: skip

        exported = self._exclusive_export(export)
        if exported is not None:
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

    def _load_scores(self) -> int:
        """Read the stored scores of this selection; score again what they cannot serve.

        Results scored against another planned set (the run was extended, so
        CIDEr-D's document frequencies changed), imported ones and ones scored
        with fewer metrics are rescored now, and the rescoring is recorded.
        Returns how many were rescored.
        """
        stored = stored_scores(self.store, self.run_id, self.method.name)
        stale = []
        for image_id in self.samples:
            entry = stored.get(image_id)
            if entry is None:
                continue
            if self.scorer.available and not (entry.scoring and self.scorer.covers(entry.scoring)):
                stale.append(image_id)
            else:
                self.scored[image_id] = SampleScore(dict(entry.metrics), dict(entry.scoring or {}))
        if not stale:
            return 0
        wanted = set(stale)
        results = [r for r in self.store.results(self.run_id, self.method.name)
                   if r.image_id in wanted]  # fmt: skip
        updates = {}
        for start in range(0, len(results), RESCORE_CHUNK):
            chunk = results[start : start + RESCORE_CHUNK]
            passes = [
                [PassOutput.model_validate(p) for p in r.metadata.get("passes") or []]
                for r in chunk
            ]
            ids = [r.image_id for r in chunk]
            pass_scores = self._score_passes(ids, passes)
            captions = [r.generated_caption for r in chunk]
            finals = self._final_scores(ids, captions, passes, pass_scores)
            for result, done, score in zip(chunk, passes, finals, strict=True):
                # metrics not asked for this time keep their stored values
                old = stored[result.image_id]
                merged = SampleScore(
                    {**old.metrics, **score.scores}, {**(old.scoring or {}), **score.detail}
                )
                updates[result.image_id] = ScoreUpdate(
                    metrics=merged.scores,
                    scoring=merged.detail,
                    pass_metrics=[dict(p.metrics) for p in done],
                    metadata=self._refreshed_metadata(result, done),
                )
                self.scored[result.image_id] = merged
        update_scores(self.store, self.run_id, self.method.name, updates)
        planned = self.scorer.document_frequency
        if planned is not None:
            note_rescored(self.store, self.run_id, planned.n_images, self.method.name, len(updates))
        self.reporter.message(
            f"Rescored {len(updates)} earlier samples of {self.method.name} against the "
            f"{self.scorer.planned} planned samples' references (CIDEr-D document frequencies)"
        )
        return len(updates)

    def _refreshed_metadata(
        self, result: ResultRecord, passes: Sequence[PassOutput]
    ) -> dict[str, Any]:
        """The result's metadata with its passes' new metrics (and what the method derives)."""
        metadata = dict(result.metadata)
        if not passes:
            return metadata
        old = metadata.get("passes") or []
        metadata["passes"] = [{**o, "metrics": dict(p.metrics)}
                              for o, p in zip(old, passes, strict=True)]  # fmt: skip
        redone = self.method.finalize(passes)
        if redone.generated_caption == result.generated_caption:
            metadata.update(redone.metadata)
        return metadata

    def _corpus(self, scope: str) -> CorpusScores | None:
        """Corpus scores pooled from the successful results so far; stored under scope."""
        if not self.settings.metrics or not self.scorer.available:
            return None
        self._add_others_scores()
        # in plan order: corpus means are summed in that order
        samples = [self.scored[i] for i in self.samples if i in self.scored]
        if not samples:
            return None
        scores = self.scorer.corpus(samples)
        record_corpus_metrics(
            self.store, self.run_id, self.method.name, scores, n=len(samples), scope=scope
        )
        return CorpusScores(n=len(samples), scores=scores)

    def _add_others_scores(self) -> None:
        """Scores of results other workers committed since this worker loaded the stored ones."""
        if len(self.scored) >= len(self.samples):
            return
        others = stored_scores(self.store, self.run_id, self.method.name,
                               since=self.scores_loaded_at, other_than=self.worker)  # fmt: skip
        for image_id, entry in others.items():
            if image_id in self.samples and image_id not in self.scored and entry.scoring \
                    and self.scorer.covers(entry.scoring):  # fmt: skip
                self.scored[image_id] = SampleScore(dict(entry.metrics), dict(entry.scoring))

    def _final_corpus(self, *, reuse: bool) -> CorpusScores | None:
        """Corpus metrics of the method's successful results in this selection.

        With reuse (nothing new was scored), stored scores of the same samples are
        returned instead of starting the Java scorers again.
        """
        if not self.settings.metrics:
            return None
        if self.scorer.available:
            self._add_others_scores()
        reused = self._stored_final(len(self.scored)) if reuse else None
        if reused is not None:
            return reused
        out = self._corpus("final") or CorpusScores(n=len(self.scored))
        if not self.scorer.available:
            out.unavailable.update(
                {g: "Java is not installed (the COCO scorers need it)"
                 for g in self.settings.metrics if g != "spice"}
            )  # fmt: skip
        if "spice" in self.settings.metrics:
            spice = self._spice()
            out.scores.update(spice.scores)
            out.unavailable.update(spice.unavailable)
        return out

    def _spice(self) -> CorpusScores:
        """SPICE has no per-sample statistics here: the official scorer runs at the end."""
        candidates, references = {}, {}
        for result in self.store.results(self.run_id, self.method.name):
            if result.status == "ok" and result.image_id in self.samples:
                candidates[result.image_id] = result.generated_caption
                references[result.image_id] = result.reference_captions
        spice = score_corpus(candidates, references, ("spice",))
        record_corpus_metrics(
            self.store, self.run_id, self.method.name, spice.scores, n=spice.n, scope="final"
        )
        return spice

    def _stored_final(self, n_now: int) -> CorpusScores | None:
        """The stored final scores, if they cover the same samples and every metric asked for."""
        stored = latest_corpus_metrics(self.store, self.run_id, self.method.name, scope="final")
        if stored is None:
            return None
        keys = [k for g in self.settings.metrics if g != "spice" for k in METRIC_GROUPS[g]]
        if stored.n_samples != n_now or any(key not in stored.scores for key in keys):
            return None
        out = CorpusScores(n=n_now, scores={key: stored.scores[key] for key in keys})
        if "spice" in self.settings.metrics:
            if "SPICE" in stored.scores:
                out.scores["SPICE"] = stored.scores["SPICE"]
            else:
                reason = spice_unavailable_reason()
                if reason is None:
                    return None  # SPICE became available: score again
                out.unavailable["spice"] = reason
        return out

    def _score_passes(
        self, image_ids: Sequence[int], passes: Sequence[Sequence[PassOutput]]
    ) -> list[list[SampleScore | None]]:
        """Score every non-empty pass caption in one tokenizer call, setting its metrics."""
        items = [(i, p.caption) for i, done in zip(image_ids, passes, strict=True)
                 for p in done if p.caption]  # fmt: skip
        scored = iter(self.scorer.score(items))
        out: list[list[SampleScore | None]] = []
        for done in passes:
            row: list[SampleScore | None] = []
            for p in done:
                score = next(scored) if p.caption else None
                if score is not None:
                    p.metrics = {**p.metrics, **score.scores}
                row.append(score)
            out.append(row)
        return out

    def _final_scores(
        self,
        image_ids: Sequence[int],
        captions: Sequence[str],
        passes: Sequence[Sequence[PassOutput]],
        pass_scores: Sequence[Sequence[SampleScore | None]],
    ) -> list[SampleScore]:
        """Each final caption's scores: those of the pass it came from, else scored now."""
        finals: list[SampleScore | None] = []
        for caption, done, scores in zip(captions, passes, pass_scores, strict=True):
            match = [s for p, s in zip(done, scores, strict=True) if s and p.caption == caption]
            finals.append(match[-1] if match else None)
        missing = [k for k, score in enumerate(finals) if score is None]
        fresh = iter(self.scorer.score([(image_ids[k], captions[k]) for k in missing]))
        return [score if score is not None else next(fresh) for score in finals]

    def _generate(
        self, batch: Sequence[Sample]
    ) -> list[tuple[ResultRecord, float, SampleScore | None]]:
        """Run every pass of the method over a batch; one result (and its scores) per sample."""
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
        ok = [k for k in range(len(batch)) if k not in errors]
        ids = [batch[k].image_id for k in ok]
        # pass metrics first: finalize compares the passes by them
        pass_scores = self._score_passes(ids, [passes[k] for k in ok])
        finals = {k: self.method.finalize(passes[k]) for k in ok}
        captions = [finals[k].generated_caption for k in ok]
        final_scores = self._final_scores(ids, captions, [passes[k] for k in ok], pass_scores)
        scores = dict(zip(ok, final_scores, strict=True))
        latency = (time.perf_counter() - started) / max(len(batch), 1)
        out: list[tuple[ResultRecord, float, SampleScore | None]] = []
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
                out.append((record, latency, None))
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
            out.append((record, latency, scores[k] if scores[k].detail else None))
        return out


def open_scorer(
    store: Store, run_id: str, selected: Sequence[Sample], metrics: Sequence[str]
) -> SampleScorer:
    """A scorer whose CIDEr-D document frequencies are those stored for this planned set.

    The first invocation that plans the set computes and stores them; later ones
    (resume, other workers) read them back, so every sample of the set is scored
    against the same frequencies.
    """
    references = {s.image_id: s.references for s in selected if s.references}
    stored = stored_document_frequency(store, run_id, len(references))
    known = DocumentFrequency.from_bytes(stored) if stored is not None else None
    scorer = SampleScorer(references, metrics, document_frequency=known)
    df = scorer.document_frequency
    if known is None and df is not None:
        save_document_frequency(
            store, run_id, n_images=df.n_images, n_ngrams=len(df.counts), data=df.to_bytes(),
            sha256=df.sha256,
        )  # fmt: skip
    return scorer


def _clock(when: datetime | None) -> str:
    return when.astimezone().strftime("%H:%M:%S") if when else "?"


def resolve_model(settings: RunSettings) -> str | None:
    """--model, or the bundled demo model for the default backend."""
    if settings.backend == "hf" and settings.model in (None, "demo"):
        from cobra_eval.demo import DEMO_MODEL_DIR

        return str(DEMO_MODEL_DIR)
    return settings.model
