"""Paired comparison of two methods (or one method in two runs) on the images they share.

Each side's score is the one pycocoevalcap would report for the shared images:
corpus BLEU pools every image's n-gram counts and lengths (``pooled_bleu``),
corpus ROUGE-L and CIDEr-D are means of the per-image scores (CIDEr-D's
document frequencies are fixed per planned set, so its corpus score is that
mean). METEOR's corpus score needs the Java scorer over all statistics lines,
which a bootstrap would run a thousand times; it is compared as the mean of
per-sample METEOR and labelled ``level="sample_mean"``.

The confidence interval is a paired bootstrap: the shared images are resampled
with replacement, the same draw for both sides, and the score of each side is
recomputed on each resample the way the score itself is computed (pooled counts
for BLEU, never a mean of per-image BLEU). The 2.5 and 97.5 percentiles of the
resampled differences (B - A) bound the 95% interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from sqlalchemy import select

from cobra_eval.analysis.resampling import (
    BLEU_COLUMNS,
    bleu_comps,
    bleu_count_matrix,
    pooled_bleu_rows,
    resample_weights,
)
from cobra_eval.errors import CobraEvalError, ConfigError
from cobra_eval.metrics.pooling import mean, pooled_bleu
from cobra_eval.store.repository import Store
from cobra_eval.store.scores import DOC_FREQ, StoredScore, stored_scores

#: The per-sample metrics compared, in the order they are reported (official keys).
METRIC_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
BLEU_KEYS = METRIC_KEYS[:4]
#: Fewer resamples cannot place the 2.5% tails of a 95% interval.
MIN_BOOTSTRAP = 100
#: Per-sample scores closer than this are a tie (they are the same arithmetic on floats).
TIE_TOLERANCE = 1e-12

Level = Literal["corpus", "sample_mean"]


@dataclass
class MetricComparison:
    """One metric of a comparison: both sides' scores on the same images, and B - A."""

    #: official key: Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr
    metric: str
    #: "corpus" (pycocoevalcap's corpus arithmetic) or "sample_mean" (mean of per-sample
    #: scores: METEOR always, BLEU when some sample lacks its stored n-gram counts)
    level: str
    #: shared images scored with this metric on both sides
    n: int
    #: side A's score on those images
    a: float
    #: side B's score on those images
    b: float
    #: b - a
    diff: float
    #: 2.5th percentile of the bootstrapped differences
    ci_low: float
    #: 97.5th percentile of the bootstrapped differences
    ci_high: float
    #: samples where B's per-sample score is higher than A's (by more than 1e-12)
    wins: int
    #: samples where they are equal within 1e-12
    ties: int
    #: samples where B's per-sample score is lower
    losses: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the 95% interval of B - A lies entirely above or below zero."""
        return self.ci_low > 0 or self.ci_high < 0


@dataclass
class Comparison:
    """Side B against side A on the images both scored successfully."""

    #: label of side A, "run/method"
    a: str
    #: label of side B, "run/method"
    b: str
    #: images with a successful result on both sides
    shared: int
    #: images successful only on side A
    only_a: int
    #: images successful only on side B
    only_b: int
    #: bootstrap resamples
    bootstrap: int
    #: seed of the resampling
    seed: int
    #: one entry per metric scored on both sides, in METRIC_KEYS order
    metrics: list[MetricComparison]
    #: caveats about comparability (e.g. CIDEr-D under different document frequencies)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values; each metric also says whether its interval excludes zero."""
        out = asdict(self)
        out["metrics"] = [{**asdict(m), "excludes_zero": m.excludes_zero} for m in self.metrics]
        return out


# -- the library API ------------------------------------------------------------


def compare_sides(
    store: Store,
    a: tuple[str, str],
    b: tuple[str, str],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Comparison:
    """(run_id, method) vs (run_id, method): B's scores against A's on their shared images."""
    _check_resampling(bootstrap, seed)
    scores = []
    for run_id, method in (a, b):
        _check_side(store, run_id, method)
        scores.append(stored_scores(store, run_id, method))
    comparison = compare_scores(
        scores[0], scores[1], a_label="/".join(a), b_label="/".join(b),
        bootstrap=bootstrap, seed=seed,
    )  # fmt: skip
    note = _cider_note(store, a, b, scores[0], scores[1], comparison)
    if note:
        comparison.notes.append(note)
    return comparison


def compare_run(
    store: Store,
    run_id: str,
    *,
    methods: Sequence[str] | None = None,
    against: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> list[Comparison]:
    """The CLI's ``compare --run RUN [--methods A,B] [--against RUN2]``.

    With ``against``: each method of RUN (or each given one) vs the same method in
    RUN2; without methods, those RUN2 also has. Within RUN: the first given method
    vs each other given one; none given: the run's first method vs each other
    method, in run order.
    """
    _check_resampling(bootstrap, seed)
    own = _methods_of(store, run_id)
    wanted = list(dict.fromkeys(methods)) if methods else []
    for method in wanted:
        _check_side(store, run_id, method, known=own)
    if against is not None:
        theirs = _methods_of(store, against)
        if wanted:
            for method in wanted:
                _check_side(store, against, method, known=theirs)
        else:
            wanted = [m for m in own if m in theirs]
            if not wanted:
                raise CobraEvalError(
                    f"runs {run_id} and {against} have no method in common "
                    f"({run_id}: {', '.join(own) or 'none'}; {against}: "
                    f"{', '.join(theirs) or 'none'})"
                )
        pairs = [((run_id, m), (against, m)) for m in wanted]
    else:
        if not wanted:
            wanted = own
        if not wanted:
            raise CobraEvalError(f"run {run_id} has no methods yet: nothing to compare")
        if len(wanted) < 2:
            what = "--methods names" if methods else f"run {run_id} has"
            raise CobraEvalError(
                f"{what} only one method ({wanted[0]}): name two with --methods A,B, "
                "or compare it with the same method of another run with --against RUN2"
            )
        pairs = [((run_id, wanted[0]), (run_id, m)) for m in wanted[1:]]
    return [compare_sides(store, a, b, bootstrap=bootstrap, seed=seed) for a, b in pairs]


def compare_scores(
    a: Mapping[int, StoredScore],
    b: Mapping[int, StoredScore],
    *,
    a_label: str = "A",
    b_label: str = "B",
    bootstrap: int = 1000,
    seed: int = 0,
) -> Comparison:
    """The comparison of two sets of stored scores (by image id), without a database."""
    _check_resampling(bootstrap, seed)
    # sorted ids: the same resamples whichever order a database returns rows in
    shared = sorted(set(a) & set(b))
    if not shared:
        raise CobraEvalError(
            f"{a_label} and {b_label} have no successful results on the same images "
            f"({a_label}: {len(a)}, {b_label}: {len(b)})"
        )
    a_shared, b_shared = [a[i] for i in shared], [b[i] for i in shared]
    pooled: dict[bytes, _PooledBleu | None] = {}
    inputs = [
        found for key in METRIC_KEYS if (found := _metric_input(key, a_shared, b_shared, pooled))
    ]
    diffs = _bootstrap_diffs(inputs, bootstrap, seed)
    metrics = []
    for item in inputs:
        step = item.b_values - item.a_values
        low, high = np.percentile(diffs[item.metric], [2.5, 97.5])
        metrics.append(
            MetricComparison(
                metric=item.metric,
                level=item.level,
                n=len(item.rows),
                a=item.a_score,
                b=item.b_score,
                diff=item.b_score - item.a_score,
                ci_low=float(low),
                ci_high=float(high),
                wins=int(np.sum(step > TIE_TOLERANCE)),
                ties=int(np.sum(np.abs(step) <= TIE_TOLERANCE)),
                losses=int(np.sum(step < -TIE_TOLERANCE)),
            )
        )
    return Comparison(
        a=a_label,
        b=b_label,
        shared=len(shared),
        only_a=len(set(a) - set(b)),
        only_b=len(set(b) - set(a)),
        bootstrap=bootstrap,
        seed=seed,
        metrics=metrics,
    )


def comparison_table(comparisons: Sequence[Comparison]) -> list[str]:
    """Aligned text lines: per comparison a header, then one line per metric.

    A metric line: metric, level, n, A, B, diff, [ci_low, ci_high], W/T/L, and
    ``*`` when the 95% interval excludes zero.
    """
    lines: list[str] = []
    header = ("metric", "level", "n", "A", "B", "B-A", "95% CI", "W/T/L", "")
    for comparison in comparisons:
        if lines:
            lines.append("")
        only = (
            f" ({comparison.only_a} only in A, {comparison.only_b} only in B)"
            if comparison.only_a or comparison.only_b
            else ""
        )
        lines.append(
            f"A = {comparison.a} vs B = {comparison.b}: {comparison.shared} shared images{only}, "
            f"bootstrap {comparison.bootstrap} (seed {comparison.seed})"
        )
        rows = [
            (
                m.metric,
                m.level,
                str(m.n),
                f"{m.a:.4f}",
                f"{m.b:.4f}",
                f"{m.diff:+.4f}",
                f"[{m.ci_low:+.4f}, {m.ci_high:+.4f}]",
                f"{m.wins}/{m.ties}/{m.losses}",
                "*" if m.excludes_zero else "",
            )
            for m in comparison.metrics
        ]
        if not rows:
            lines.append("  no metric was scored on both sides (score them with `score --run`)")
        else:
            widths = [max(len(r[k]) for r in (header, *rows)) for k in range(len(header))]
            for row in (header, *rows):
                cells = [
                    cell.ljust(w) if k < 2 else cell.rjust(w)
                    for k, (cell, w) in enumerate(zip(row, widths, strict=True))
                ]
                lines.append(("  " + "  ".join(cells)).rstrip())
        lines.extend(f"  note: {note}" for note in comparison.notes)
    if any(m.excludes_zero for c in comparisons for m in c.metrics):
        lines.append("* the 95% interval of B-A excludes 0")
    if any(m.level == "sample_mean" for c in comparisons for m in c.metrics):
        lines.append(
            "sample_mean: mean of per-sample scores, not the corpus score "
            "(METEOR's corpus score needs the Java scorer over all samples)"
        )
    return lines


# -- inside -------------------------------------------------------------------------


@dataclass
class _PooledBleu:
    """Both sides' BLEU statistics of one set of samples, and their corpus BLEU-1..4."""

    a_counts: np.ndarray
    b_counts: np.ndarray
    a_scores: list[float]
    b_scores: list[float]


@dataclass
class _MetricInput:
    """One metric's paired per-sample values and what its score is computed from."""

    metric: str
    level: Level
    #: positions (into the shared images) of the samples scored on both sides
    rows: np.ndarray
    a_values: np.ndarray
    b_values: np.ndarray
    a_score: float
    b_score: float
    #: the samples' BLEU statistics (corpus BLEU only)
    bleu: _PooledBleu | None = None


def _metric_input(
    key: str,
    a: Sequence[StoredScore],
    b: Sequence[StoredScore],
    pooled: dict[bytes, _PooledBleu | None],
) -> _MetricInput | None:
    """The paired inputs of one metric, or None when no shared sample has it on both sides.

    `pooled` keeps the BLEU statistics per sample set, for the four BLEU metrics to share.
    """
    rows, a_values, b_values = [], [], []
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        u, v = _value(x.metrics, key), _value(y.metrics, key)
        if u is not None and v is not None:
            rows.append(k)
            a_values.append(u)
            b_values.append(v)
    if not rows:
        return None
    item = _MetricInput(
        metric=key,
        level="sample_mean",
        rows=np.array(rows, dtype=np.int64),
        a_values=np.array(a_values),
        b_values=np.array(b_values),
        a_score=mean(a_values),
        b_score=mean(b_values),
    )
    if key in ("ROUGE_L", "CIDEr"):
        item.level = "corpus"  # pycocoevalcap's corpus score is this mean
    elif key in BLEU_KEYS:
        sample_set = item.rows.tobytes()
        if sample_set not in pooled:
            pooled[sample_set] = _pool_bleu([a[k] for k in rows], [b[k] for k in rows])
        bleu = pooled[sample_set]
        # imported results may lack the counts: then only the mean of per-sample BLEU is known
        if bleu is not None:
            n_gram = BLEU_KEYS.index(key)
            item.level, item.bleu = "corpus", bleu
            item.a_score, item.b_score = bleu.a_scores[n_gram], bleu.b_scores[n_gram]
    return item


def _pool_bleu(a: Sequence[StoredScore], b: Sequence[StoredScore]) -> _PooledBleu | None:
    """Both sides' BLEU statistics, or None if any sample on either side lacks them."""
    a_comps = [bleu_comps(s.scoring) for s in a]
    b_comps = [bleu_comps(s.scoring) for s in b]
    if any(c is None for c in a_comps + b_comps):
        return None
    complete_a = [c for c in a_comps if c is not None]
    complete_b = [c for c in b_comps if c is not None]
    return _PooledBleu(
        a_counts=bleu_count_matrix(complete_a),
        b_counts=bleu_count_matrix(complete_b),
        a_scores=pooled_bleu(complete_a),
        b_scores=pooled_bleu(complete_b),
    )


def _value(metrics: Any, key: str) -> float | None:
    value = metrics.get(key) if isinstance(metrics, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _bootstrap_diffs(
    inputs: Sequence[_MetricInput], bootstrap: int, seed: int
) -> dict[str, np.ndarray]:
    """B - A of every metric on each of `bootstrap` paired resamples of its samples.

    Metrics scored on the same samples share one draw (a fresh generator seeded
    with `seed` per distinct sample set), so their intervals describe the same
    resamples. A chunk of resamples is held as how many times each draws each
    image: summing the statistics over the drawn images is then one matrix
    product, the same integers as indexing them with the draw and summing (exact
    in float64), without an (n_resamples, n, columns) array.
    """
    groups: dict[bytes, list[_MetricInput]] = {}
    for item in inputs:
        groups.setdefault(item.rows.tobytes(), []).append(item)
    out: dict[str, np.ndarray] = {}
    for members in groups.values():
        n = len(members[0].rows)
        # summed per resample: each metric's A and B values, or once per set the BLEU counts
        blocks: list[np.ndarray] = []
        where: dict[int, int] = {}
        for item in members:
            key = id(item.bleu) if item.bleu is not None else id(item)
            if key in where:
                continue
            where[key] = sum(block.shape[1] for block in blocks)
            if item.bleu is not None:
                blocks += [item.bleu.a_counts, item.bleu.b_counts]
            else:
                blocks += [item.a_values[:, None], item.b_values[:, None]]
        columns = np.hstack(blocks).astype(np.float64)
        for item in members:
            out[item.metric] = np.empty(bootstrap)
        for first, weights in resample_weights(n, bootstrap, seed):
            size = len(weights)
            sums = weights @ columns
            bleu_rows: dict[int, np.ndarray] = {}
            for item in members:
                if item.bleu is not None:
                    start = where[id(item.bleu)]
                    if start not in bleu_rows:
                        a_bleu = pooled_bleu_rows(sums[:, start : start + BLEU_COLUMNS])
                        end = start + 2 * BLEU_COLUMNS
                        b_bleu = pooled_bleu_rows(sums[:, start + BLEU_COLUMNS : end])
                        bleu_rows[start] = b_bleu - a_bleu
                    diff = bleu_rows[start][:, BLEU_KEYS.index(item.metric)]
                else:
                    start = where[id(item)]
                    diff = (sums[:, start + 1] - sums[:, start]) / n
                out[item.metric][first : first + size] = diff
    return out


def _check_resampling(bootstrap: int, seed: int) -> None:
    if bootstrap < MIN_BOOTSTRAP:
        raise ConfigError(
            f"--bootstrap must be at least {MIN_BOOTSTRAP} resamples (got {bootstrap}): "
            "fewer cannot place the 2.5% tails of a 95% interval"
        )
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more (got {seed})")


def _methods_of(store: Store, run_id: str) -> list[str]:
    if store.get_run(run_id) is None:
        raise CobraEvalError(f"no run {run_id!r} in {store.display} (see `runs`)")
    return [p.method for p in store.run_methods(run_id)]


def _check_side(store: Store, run_id: str, method: str, known: list[str] | None = None) -> None:
    methods = _methods_of(store, run_id) if known is None else known
    if method not in methods:
        raise CobraEvalError(
            f"run {run_id} has no method {method!r} (it has {', '.join(methods) or 'none'})"
        )


def _cider_note(
    store: Store,
    a: tuple[str, str],
    b: tuple[str, str],
    a_scores: Mapping[int, StoredScore],
    b_scores: Mapping[int, StoredScore],
    comparison: Comparison,
) -> str | None:
    """Why per-sample CIDEr-D of the two sides may not be comparable, if it may not be.

    CIDEr-D of an image depends on the document frequencies of the set it was
    scored in; the same caption scores differently against another planned set.
    """
    if not any(m.metric == "CIDEr" for m in comparison.metrics):
        return None
    shared = set(a_scores) & set(b_scores)
    planned = [
        {(s.scoring or {}).get("cider_planned") for i, s in side.items() if i in shared}
        for side in (a_scores, b_scores)
    ]
    if all(len(p) == 1 and None not in p for p in planned):
        n_a, n_b = next(iter(planned[0])), next(iter(planned[1]))
        if a[0] == b[0] and n_a == n_b:
            return None
        with store.reader.connect() as conn:
            hashes = [
                conn.execute(
                    select(DOC_FREQ.c.sha256).where(
                        DOC_FREQ.c.run_id == run_id, DOC_FREQ.c.n_images == n_images
                    )
                ).scalar_one_or_none()
                for run_id, n_images in ((a[0], n_a), (b[0], n_b))
            ]
        if hashes[0] is not None and hashes[0] == hashes[1]:
            return None
    sizes = [" or ".join(sorted(str(n) if n else "unknown" for n in p)) for p in planned]
    return (
        f"CIDEr-D of {comparison.a} was scored against the document frequencies of "
        f"{sizes[0]} planned images, of {comparison.b} against {sizes[1]} (or another "
        "planned set): a caption's CIDEr-D depends on them, so part of the CIDEr "
        "difference may come from the sets, not the captions"
    )
