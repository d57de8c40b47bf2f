"""The HTML report of a run: one self-contained file that opens anywhere, offline.

``collect`` reads everything a report shows into a ``ReportData`` (testable
without a browser); ``render`` turns that into the page; ``build_report`` does
both and writes the file. Styles, script, the plot (SVG) and every thumbnail
are inside the file: nothing is fetched when it is opened. Static sections are
written here with every text escaped; the gallery is a JSON blob the page's
script renders a page at a time with ``textContent`` (captions are model
output and never become markup).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cobra_eval import __version__
from cobra_eval.analysis.compare import MIN_BOOTSTRAP, Comparison, compare_run
from cobra_eval.analysis.corpus_ci import METRIC_ORDER, CorpusInterval, corpus_intervals
from cobra_eval.analysis.report_gallery import gallery_data, image_paths
from cobra_eval.analysis.report_gallery import thumbnails as make_thumbnails
from cobra_eval.analysis.report_plot import corpus_svg, method_colour
from cobra_eval.errors import CobraEvalError, ConfigError
from cobra_eval.store import MethodProgress, RunInfo, Store
from cobra_eval.store.checkpoint_io import write_atomic
from cobra_eval.store.repository import PLAN
from cobra_eval.store.scores import CorpusRecord, latest_corpus_metrics, stored_scores

#: Where report.html takes the page's parts.
MARKER = re.compile(r"@@(VERSION|TITLE|CSS|BODY|DATA|JS)@@")
#: Seed of every resampling in a report: the same database gives the same report numbers.
SEED = 0


@dataclass
class ReportData:
    """Everything a report shows, read from the database; ``render`` makes the page of it."""

    #: the run's row: id, creation, tool version, config, fingerprint, status
    run: RunInfo
    #: the database, as it may be shown (password masked)
    database: str
    #: every method of the run, in the order they were started
    methods: list[MethodProgress]
    #: samples committed per worker (user@host:pid)
    workers: dict[str, int]
    #: method -> metric -> corpus score with its bootstrap interval
    intervals: dict[str, dict[str, CorpusInterval]]
    #: method -> the newest stored corpus scores (None if none were stored)
    stored_corpus: dict[str, CorpusRecord | None]
    #: pairwise method comparisons (empty for a single method or when they failed)
    comparisons: list[Comparison]
    #: why the comparison could not be made, if it could not
    comparison_error: str | None
    #: the gallery JSON (see report_gallery.gallery_data)
    gallery: dict[str, Any]
    #: bootstrap resamples behind every interval
    bootstrap: int
    #: caveats shown at the top of the page
    notes: list[str] = field(default_factory=list)
    #: when the data was read (UTC, ISO 8601)
    generated_at: str = ""


def collect(
    store: Store, run_id: str, *, bootstrap: int = 1000, thumbnails: bool = True
) -> ReportData:
    """Read a run's provenance, scores, comparisons and samples for a report.

    Thumbnails are made from the images the run's dataset names now; without
    them (or for an image that cannot be read) the gallery shows a placeholder.
    """
    if bootstrap < MIN_BOOTSTRAP:
        raise ConfigError(
            f"--bootstrap must be at least {MIN_BOOTSTRAP} resamples (got {bootstrap}): "
            "fewer cannot place the 2.5% tails of a 95% interval"
        )
    run = store.get_run(run_id)
    if run is None:
        raise CobraEvalError(f"no run {run_id!r} in {store.display} (see `runs`)")
    progress = store.method_progress(run_id)
    methods = [p.method for p in progress]
    notes: list[str] = []
    intervals: dict[str, dict[str, CorpusInterval]] = {}
    stored: dict[str, CorpusRecord | None] = {}
    for method in methods:
        scores = stored_scores(store, run_id, method)
        intervals[method] = corpus_intervals(scores, bootstrap=bootstrap, seed=SEED)
        stored[method] = latest_corpus_metrics(store, run_id, method)
        notes += _merge_stored(method, intervals[method], stored[method])
    comparisons: list[Comparison] = []
    comparison_error = None
    if len(methods) >= 2:
        try:
            comparisons = compare_run(store, run_id, bootstrap=bootstrap, seed=SEED)
        except CobraEvalError as exc:
            comparison_error = str(exc)
    results = {m: list(store.results(run_id, m)) for m in methods}
    order = _plan_order(store, run_id)
    thumbs: dict[int, str | None] = {}
    if thumbnails:
        wanted = {r.image_id for records in results.values() for r in records}
        paths, image_notes = image_paths(run, progress, wanted)
        notes += image_notes
        thumbs = make_thumbnails(paths)
        missing = len(wanted) - sum(1 for t in thumbs.values() if t)
        if missing and paths:
            notes.append(f"Images: {missing} of {len(wanted)} could not be read; "
                         "they show a placeholder.")  # fmt: skip
    return ReportData(
        run=run,
        database=store.display,
        methods=progress,
        workers=store.workers(run_id),
        intervals=intervals,
        stored_corpus=stored,
        comparisons=comparisons,
        comparison_error=comparison_error,
        gallery=gallery_data(methods, results, order=order, thumbnails=thumbs),
        bootstrap=bootstrap,
        notes=notes,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def build_report(
    store: Store,
    run_id: str,
    output: Path,
    *,
    bootstrap: int = 1000,
    thumbnails: bool = True,
) -> Path:
    """Write the run's report to output (one self-contained HTML file) and return its path."""
    data = collect(store, run_id, bootstrap=bootstrap, thumbnails=thumbnails)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, render(data).encode("utf-8"))
    return output


def render(data: ReportData) -> str:
    """The report page of the data: static sections, the gallery's JSON and its script."""
    methods = [p.method for p in data.methods]
    colours = {m: method_colour(k) for k, m in enumerate(methods)}
    body = "\n".join(
        [
            f"<h1>Run {_e(data.run.id)}</h1>",
            f'<p class="subtitle">cobra_eval report · {len(methods)} method(s) · '
            f"{len(data.gallery.get('samples', []))} images · generated "
            f"{_e(data.generated_at)} by cobra_eval {_e(__version__)}</p>",
            _notes(data.notes),
            _provenance(data),
            _corpus(data, methods),
            _comparisons(data, methods),
            _gallery_shell(),
        ]
    )
    parts = {
        "VERSION": _e(__version__),
        "TITLE": _e(f"cobra_eval report: run {data.run.id}"),
        "CSS": _asset("report.css"),
        "BODY": body,
        "DATA": script_json({"gallery": data.gallery, "colours": colours}),
        "JS": _asset("report.js"),
    }
    # one pass over the template: a marker inside substituted text (a run id, say) stays text
    return MARKER.sub(lambda found: parts[found.group(1)], _asset("report.html"))


def script_json(value: Any) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element or open a comment."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# -- data -----------------------------------------------------------------------


def _plan_order(store: Store, run_id: str) -> list[int]:
    query = select(PLAN.c.image_id).where(PLAN.c.run_id == run_id).order_by(PLAN.c.position)
    with store.reader.connect() as conn:
        return list(conn.execute(query).scalars())


def _merge_stored(
    method: str, intervals: dict[str, CorpusInterval], record: CorpusRecord | None
) -> list[str]:
    """Add stored scores with no per-sample statistics (METEOR, SPICE); note disagreements."""
    if record is None:
        return []
    notes = []
    for metric, value in record.scores.items():
        mine = intervals.get(metric)
        if mine is None:
            intervals[metric] = CorpusInterval(metric, value, None, None, record.n_samples)
        elif mine.n != record.n_samples or not math.isclose(mine.value, value, abs_tol=1e-9):
            notes.append(
                f"{method} {metric}: {mine.value:.4f} over the {mine.n} stored per-sample "
                f"scores; the newest stored corpus score ({record.scope}) is {value:.4f} "
                f"over {record.n_samples} samples."
            )
    order = [m for m in METRIC_ORDER if m in intervals]
    rest = [m for m in intervals if m not in order]
    reordered = {m: intervals[m] for m in order + rest}
    intervals.clear()
    intervals.update(reordered)
    return notes


# -- sections -------------------------------------------------------------------


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f'<div class="notes" id="notes"><ul>{items}</ul></div>'


def _provenance(data: ReportData) -> str:
    run = data.run
    rows = [
        ("Run", run.id),
        ("Status", run.status),
        ("Created", f"{_when(run.created_at)} by {run.created_by}"),
        ("Tool version", run.tool_version),
        ("Fingerprint", run.fingerprint),
        ("Database", data.database),
        ("Bootstrap", f"{data.bootstrap} resamples of the images, seed {SEED}"),
    ]
    kv = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    method_rows = []
    for p in data.methods:
        details = (
            f"<details><summary>config</summary><pre>{_e(_json(p.config))}</pre></details>"
            f"<details><summary>settings</summary><pre>{_e(_json(p.settings))}</pre></details>"
        )
        method_rows.append(
            f'<tr data-method="{_e(p.method)}"><td>{_e(p.method)}</td><td>{_e(p.status)}</td>'
            f'<td class="num">{p.done} / {p.total_planned}</td><td class="num">{p.failed}</td>'
            f"<td><code>{_e(p.fingerprint)}</code></td><td>{_e(_when(p.updated_at))}</td>"
            f"<td>{details}</td></tr>"
        )
    workers = "".join(
        f'<tr><td>{_e(w or "(unknown)")}</td><td class="num">{n}</td></tr>'
        for w, n in data.workers.items()
    )
    return (
        '<section id="provenance"><h2>Run and provenance</h2>'
        f'<table class="kv">{kv}</table>'
        '<h3>Methods</h3><table id="methods"><tr><th>Method</th><th>Status</th>'
        '<th class="num">Done / planned</th><th class="num">Failed</th><th>Fingerprint</th>'
        f"<th>Updated</th><th></th></tr>{''.join(method_rows)}</table>"
        f'<h3>Workers</h3><table id="workers"><tr><th>Worker</th><th class="num">Samples</th>'
        f"</tr>{workers}</table>"
        f"<details><summary>Run config (JSON)</summary><pre>{_e(_json(run.config))}</pre>"
        "</details></section>"
    )


def _corpus(data: ReportData, methods: Sequence[str]) -> str:
    metrics: list[str] = []
    for method in methods:
        metrics += [m for m in data.intervals.get(method, {}) if m not in metrics]
    order = list(METRIC_ORDER)
    metrics.sort(key=lambda m: (order.index(m) if m in order else len(order), m))
    if not metrics:
        return (
            '<section id="corpus"><h2>Corpus metrics</h2><p class="muted">No metrics were '
            "stored for this run (it ran with --metrics none, or without Java).</p></section>"
        )
    head = "".join(f'<th class="num">{_e(m)}</th>' for m in metrics)
    rows = []
    for k, method in enumerate(methods):
        found = data.intervals.get(method, {})
        n = max((iv.n for iv in found.values()), default=0)
        cells = "".join(_interval_cell(found.get(m)) for m in metrics)
        record = data.stored_corpus.get(method)
        stored = f"{record.scope}, n = {record.n_samples}" if record else "none"
        rows.append(
            f'<tr data-method="{_e(method)}"><td><span class="swatch" '
            f'style="background:{method_colour(k)}"></span>{_e(method)}</td>'
            f'<td class="num">{n}</td>{cells}<td class="muted">{_e(stored)}</td></tr>'
        )
    svg = corpus_svg(methods, data.intervals)
    return (
        '<section id="corpus"><h2>Corpus metrics</h2>'
        f'<p class="muted">Points are corpus scores pooled as pycocoevalcap pools them; bars '
        f"and brackets are 95% percentile intervals from {data.bootstrap} bootstrap resamples "
        "of each method's images. METEOR and SPICE show the stored corpus score without an "
        "interval (their pooling needs the Java scorers).</p>"
        f'<div class="plot-wrap">{svg}</div>'
        f'<table id="corpus-table"><tr><th>Method</th><th class="num">n</th>{head}'
        '<th title="the newest corpus scores the run stored">Stored</th></tr>'
        f"{''.join(rows)}</table></section>"
    )


def _interval_cell(iv: CorpusInterval | None) -> str:
    if iv is None:
        return '<td class="num muted">–</td>'
    text = f"{iv.value:.3f}"
    if iv.ci_low is not None and iv.ci_high is not None:
        text += f" [{iv.ci_low:.3f}, {iv.ci_high:.3f}]"
    return f'<td class="num" title="n = {iv.n}">{_e(text)}</td>'


def _comparisons(data: ReportData, methods: Sequence[str]) -> str:
    head = '<section id="comparison"><h2>Method comparison</h2>'
    if len(methods) < 2:
        return head + '<p class="muted">One method: nothing to compare.</p></section>'
    if data.comparison_error is not None:
        return head + f'<p class="error-box">{_e(data.comparison_error)}</p></section>'
    parts = [
        head,
        '<p class="muted">B against A on the images both scored: B − A with a 95% paired '
        "bootstrap interval (the same resampled images for both sides); W/T/L counts the "
        "images where B's per-sample score is higher / equal / lower. "
        '<span class="sig">*</span> marks an interval that excludes zero.</p>',
    ]
    for c in data.comparisons:
        only = f" ({c.only_a} only in A, {c.only_b} only in B)" if c.only_a or c.only_b else ""
        parts.append(f"<h3>B = {_e(c.b)} vs A = {_e(c.a)}</h3>")
        parts.append(f'<p class="muted">{c.shared} shared images{_e(only)}</p>')
        parts += [f'<p class="notes">{_e(note)}</p>' for note in c.notes]
        rows = []
        for m in c.metrics:
            mark = '<span class="sig">*</span>' if m.ci_low > 0 or m.ci_high < 0 else ""
            rows.append(
                f'<tr data-metric="{_e(m.metric)}"><td>{_e(m.metric)}</td><td>{_e(m.level)}</td>'
                f'<td class="num">{m.n}</td><td class="num">{m.a:.4f}</td>'
                f'<td class="num">{m.b:.4f}</td><td class="num">{m.diff:+.4f}{mark}</td>'
                f'<td class="num">[{m.ci_low:+.4f}, {m.ci_high:+.4f}]</td>'
                f'<td class="num">{m.wins}/{m.ties}/{m.losses}</td></tr>'
            )
        parts.append(
            f'<table class="comparison" data-a="{_e(c.a)}" data-b="{_e(c.b)}"><tr>'
            '<th>Metric</th><th>Level</th><th class="num">n</th><th class="num">A</th>'
            '<th class="num">B</th><th class="num">B − A</th><th class="num">95% CI</th>'
            f'<th class="num">W/T/L</th></tr>{"".join(rows)}</table>'
        )
    parts.append("</section>")
    return "".join(parts)


def _gallery_shell() -> str:
    """The gallery's controls and empty table; the page's script fills them from the JSON."""
    return """<section id="samples"><h2>Samples</h2>
<div class="controls">
<label>Search <input type="search" id="filter-text" placeholder="captions and references"
 aria-label="Search captions and references"></label>
<label>Method <select id="filter-method"><option value="">all methods</option></select></label>
<label>Parse status <select id="filter-status"><option value="">any</option></select></label>
<label>Sort by <select id="sort-by"><option value="order">plan order</option>
<option value="disagreement">disagreement (max − min)</option></select></label>
<label>Metric <select id="sort-metric"></select></label>
<label>Order <select id="sort-dir"><option value="desc">high first</option>
<option value="asc">low first</option></select></label>
<label><select id="page-size" aria-label="Rows per page"></select></label>
</div>
<div class="pager"><button type="button" id="page-prev">‹ Previous</button>
<span id="page-info"></span><button type="button" id="page-next">Next ›</button>
<span id="match-count" class="muted"></span></div>
<noscript><p class="error-box">The gallery needs JavaScript.</p></noscript>
<table id="gallery"><colgroup id="gallery-cols"></colgroup><thead><tr id="gallery-head"></tr>
</thead><tbody id="gallery-body"></tbody></table>
</section>"""


# -- helpers --------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("cobra_eval.analysis").joinpath("report_assets", name).read_text("utf-8")


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    # the store's clock is UTC; SQLite hands the timestamps back without a zone
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="seconds")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _e(text: object) -> str:
    return escape(str(text), quote=True)
