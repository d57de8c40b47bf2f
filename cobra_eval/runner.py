"""The run loop: plan, generate in batches, commit every sample, export snapshots.

Knows nothing of SQL or of the JSON layout: it talks to the Store and to the
snapshot functions, to a Method and to a Backend.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cobra_eval.backends import Backend, BackendOptions, GenerationRequest, create_backend
from cobra_eval.config import RunSettings, fingerprint
from cobra_eval.datasets import Sample, load_dataset
from cobra_eval.errors import CobraEvalError
from cobra_eval.generation import CachedGenerator
from cobra_eval.methods import Method, PassOutput, resolve_methods
from cobra_eval.methods.prompts import load_prompts_file
from cobra_eval.metrics import METRIC_GROUPS, CorpusScores, score_corpus
from cobra_eval.metrics.corpus import spice_unavailable_reason
from cobra_eval.metrics.per_sample import SampleScorer
from cobra_eval.progress import Reporter, SilentReporter
from cobra_eval.resume import resolve_run
from cobra_eval.store import Store, resolve_url
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.engine import worker_identity
from cobra_eval.store.snapshots import (
    catch_up_checkpoint,
    export_snapshot,
    prepare_method_folder,
)

#: A run stops when this many samples in a row failed: the cause is systemic, not the samples.
MAX_CONSECUTIVE_FAILURES = 20


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
    settings: RunSettings, *, reporter: Reporter | None = None, backend: Backend | None = None
) -> RunSummary:
    """Run (or resume, or extend) an evaluation as the CLI's bare command does."""
    reporter = reporter or SilentReporter()
    methods = resolve_methods(
        settings.method,
        prompts=load_prompts_file(settings.prompts),
        options={"llava_cot": {"use_format_instruction": settings.llava_cot_instruction}},
    )
    dataset = load_dataset(settings.dataset, settings.images, settings.split)
    selected = dataset.select(settings.num_samples)
    if backend is None:
        backend = create_backend(
            settings.backend,
            BackendOptions(
                model=resolve_model(settings), device=settings.device, dtype=settings.dtype
            ),
        )
    run_cfg = {
        "model": {"backend": settings.backend, **backend.identity()},
        "generation": settings.generation.model_dump(),
        "dataset": dataset.identity_config(),
    }
    method_cfgs = {m.name: {"name": m.name, **m.config()} for m in methods}
    with Store.open(resolve_url(settings.db, settings.output_dir)) as store:
        run, resumed = resolve_run(store, settings, run_cfg, method_cfgs, reporter)
        store.ensure_plan(run.id, [s.image_id for s in selected])
        generator = CachedGenerator(backend, store, run_cfg["model"], enabled=settings.cache)
        # CIDEr-D's document frequencies come from the planned samples' references
        scorer = SampleScorer({s.image_id: s.references for s in selected}, settings.metrics)
        summaries = []
        try:
            for method in methods:
                loop = _MethodLoop(
                    store, run.id, method, selected, settings, generator, scorer, reporter
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
    ):
        self.store, self.run_id, self.method = store, run_id, method
        self.samples = {s.image_id: s for s in selected}
        self.total = len(selected)
        self.settings, self.generator, self.reporter = settings, generator, reporter
        self.scorer = scorer
        self.worker = worker_identity()

    def run(self, method_cfg: dict[str, Any], resumed: bool) -> MethodSummary:
        name = self.method.name
        self.store.ensure_method(
            self.run_id,
            name,
            config=method_cfg,
            fingerprint=fingerprint(method_cfg),
            settings=self.settings.settings_record(),
            total=self.total,
        )
        pending = self.store.pending(self.run_id, name, self.total)
        processed = self.store.count_results(self.run_id, name, limit=self.total)
        retried = self.store.failed_ids(self.run_id, name)
        generated_before, hits_before = self.generator.generated, self.generator.hits
        summary = MethodSummary(name, self.total, processed, 0, 0)
        if self.settings.method == "all":
            self.reporter.message(f"== {name} (run {self.run_id}) ==")
        if resumed and processed:
            remaining = self.total - processed
            self.reporter.message(
                f"Loaded checkpoint: {processed} samples processed, {remaining} remaining"
            )
        interval = self.settings.checkpoint_interval
        prepare_method_folder(self.settings.output_dir, self.run_id, name)
        self.reporter.start_method(name, self.total, processed)
        missed = catch_up_checkpoint(
            self.store,
            self.settings.output_dir,
            self.run_id,
            name,
            interval=interval,
            processed=processed,
        )
        if missed is not None:
            summary.checkpoints.append(missed.path)
            self.reporter.checkpoint(missed.path.name, missed.count, self.total)
        failures_in_row = 0
        try:
            for start in range(0, len(pending), self.settings.batch_size):
                batch = [self.samples[i] for i in pending[start : start + self.settings.batch_size]]
                for result, latency in self._generate(batch):
                    inserted = self.store.commit_result(
                        self.run_id, name, result, worker=self.worker, latency_s=latency
                    )
                    # a retried failure replaces a row that was already counted
                    new = inserted and result.image_id not in retried
                    if new:
                        processed += 1
                    summary.new_this_run += 1
                    failures_in_row = failures_in_row + 1 if result.status == "failed" else 0
                    self.reporter.processed(
                        processed, self.total, cached=bool(result.metadata.get("cached"))
                    )
                    if interval and new and processed % interval == 0:
                        exported = export_snapshot(
                            self.store,
                            self.settings.output_dir,
                            self.run_id,
                            name,
                            is_checkpoint=True,
                        )
                        summary.checkpoints.append(exported.path)
                        self.reporter.checkpoint(exported.path.name, processed, self.total)
                    if failures_in_row >= MAX_CONSECUTIVE_FAILURES:
                        raise CobraEvalError(
                            f"stopping: the last {failures_in_row} samples all failed "
                            f"(last error: {result.metadata.get('error')}); they are stored as "
                            "failed and will be retried on --resume_from_checkpoint"
                        )
        except KeyboardInterrupt:
            self.store.set_method_status(self.run_id, name, "interrupted")
            self.store.set_run_status(self.run_id, "interrupted")
            raise Interrupted(
                self.run_id,
                f"Interrupted: {processed}/{self.total} samples of {name} are saved in run "
                f"{self.run_id}; continue with --resume_from_checkpoint "
                f"(or --run_id {self.run_id})",
            ) from None
        finally:
            self.reporter.end_method()
        summary.processed = processed
        summary.generated = self.generator.generated - generated_before
        summary.cache_hits = self.generator.hits - hits_before
        summary.failed = next((p.failed for p in self.store.method_progress(self.run_id, name)), 0)
        final = export_snapshot(
            self.store, self.settings.output_dir, self.run_id, name, is_checkpoint=False
        )
        summary.final_file = final.path
        results = list(self.store.results(self.run_id, name))
        summary.corpus = self._score(results, reuse=summary.new_this_run == 0)
        for result in results:
            status = str(result.metadata.get("parse_status", "ok"))
            if result.status == "ok" and status != "ok":
                summary.parse_empty += status == "empty"
                summary.parse_fallbacks += status != "empty"
        if processed >= self.total:
            self.store.set_method_status(self.run_id, name, "finished")
        return summary

    def _score(self, results: Sequence[ResultRecord], *, reuse: bool) -> CorpusScores | None:
        """Corpus metrics of the method's successful results in this selection.

        With reuse (nothing new was generated), stored scores of the same samples are
        returned instead of starting the Java scorers again.
        """
        if not self.settings.metrics:
            return None
        candidates, references = {}, {}
        for result in results:
            if result.status == "ok" and result.image_id in self.samples:
                candidates[result.image_id] = result.generated_caption
                references[result.image_id] = result.reference_captions
        reused = self._stored_scores(len(candidates)) if reuse else None
        if reused is not None:
            return reused
        scores = score_corpus(candidates, references, self.settings.metrics)
        self.store.record_corpus_metrics(
            self.run_id, self.method.name, scores.scores, n=scores.n, scope="final"
        )
        return scores

    def _stored_scores(self, n_now: int) -> CorpusScores | None:
        """The stored final scores, if they cover the same samples and every metric asked for."""
        n, stored = self.store.final_corpus_metrics(self.run_id, self.method.name)
        keys = [k for g in self.settings.metrics if g != "spice" for k in METRIC_GROUPS[g]]
        if n != n_now or any(key not in stored for key in keys):
            return None
        out = CorpusScores(n=n, scores={key: stored[key] for key in keys})
        if "spice" in self.settings.metrics:
            if "SPICE" in stored:
                out.scores["SPICE"] = stored["SPICE"]
            else:
                reason = spice_unavailable_reason()
                if reason is None:
                    return None  # SPICE became available: score again
                out.unavailable["spice"] = reason
        return out

    def _score_passes(
        self, batch: Sequence[Sample], passes: list[list[PassOutput]], errors: dict[int, str]
    ) -> None:
        """Per-pass metrics for every sample that succeeded, in one tokenizer call."""
        items = [
            (batch[k].image_id, p.caption)
            for k in range(len(batch))
            if k not in errors
            for p in passes[k]
            if p.caption
        ]
        scores = iter(self.scorer.score(items))
        for k in range(len(batch)):
            if k in errors:
                continue
            for p in passes[k]:
                if p.caption:
                    p.metrics = dict(next(scores))

    def _final_metrics(
        self, image_id: int, caption: str, passes: Sequence[PassOutput]
    ) -> dict[str, float | None]:
        """The final caption's metrics: those of the pass it came from, else scored now."""
        if not caption:
            return {}
        for p in reversed(passes):
            if p.caption == caption and p.metrics:
                return dict(p.metrics)
        return dict(self.scorer.score([(image_id, caption)])[0])

    def _generate(self, batch: Sequence[Sample]) -> list[tuple[ResultRecord, float]]:
        """Run every pass of the method over a batch; one result per sample."""
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
        self._score_passes(batch, passes, errors)
        latency = (time.perf_counter() - started) / max(len(batch), 1)
        out = []
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
            else:
                final = self.method.finalize(passes[k])
                caption = final.generated_caption
                record = ResultRecord(
                    image_id=sample.image_id,
                    reference_captions=list(sample.references),
                    generated_caption=final.generated_caption,
                    reasoning_trace=final.reasoning_trace,
                    metrics=self._final_metrics(sample.image_id, caption, passes[k]),
                    metadata={
                        **final.metadata,
                        "cached": all(p.cached for p in passes[k]),
                        "passes": done,
                    },
                )
            out.append((record, latency))
        return out


def resolve_model(settings: RunSettings) -> str | None:
    """--model, or the bundled demo model for the default backend."""
    if settings.backend == "hf" and settings.model in (None, "demo"):
        from cobra_eval.demo import DEMO_MODEL_DIR

        return str(DEMO_MODEL_DIR)
    return settings.model
