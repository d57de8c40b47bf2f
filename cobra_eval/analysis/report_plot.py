"""The report's corpus-metric plot: inline SVG written here, no chart library.

One panel per metric (their scales differ: CIDEr-D runs past 1, BLEU does not),
one coloured point with its confidence interval per method in every panel. Each
method's marks are grouped in one ``<g class="series">`` so a reader (or a test)
can find a method's error bars together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

from cobra_eval.analysis.corpus_ci import CorpusInterval

#: Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
PANEL_W, PANEL_H = 230, 200
PAD_LEFT, PAD_TOP, PAD_BOTTOM, PAD_RIGHT = 46, 30, 14, 10
PANELS_PER_ROW = 4
LEGEND_H = 28


def method_colour(index: int) -> str:
    """The colour of the index-th method, in the plot and in the gallery."""
    return PALETTE[index % len(PALETTE)]


def corpus_svg(
    methods: Sequence[str], intervals: Mapping[str, Mapping[str, CorpusInterval]]
) -> str:
    """An SVG of every metric's score per method (intervals as error bars), or '' if none.

    ``intervals`` maps method -> metric -> interval; a metric some method lacks is
    simply not drawn for that method.
    """
    metrics = _metrics(methods, intervals)
    if not methods or not metrics:
        return ""
    rows = math.ceil(len(metrics) / PANELS_PER_ROW)
    cols = min(len(metrics), PANELS_PER_ROW)
    width, height = cols * PANEL_W, LEGEND_H + rows * PANEL_H
    parts = [
        f'<svg id="corpus-plot" class="corpus-plot" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="Corpus metrics per method with 95% confidence intervals">',
        _legend(methods),
    ]
    scales = {}
    for k, metric in enumerate(metrics):
        x0, y0 = (k % PANELS_PER_ROW) * PANEL_W, LEGEND_H + (k // PANELS_PER_ROW) * PANEL_H
        top = _nice_top(
            max(
                (iv.ci_high if iv.ci_high is not None else iv.value)
                for m in methods
                if (iv := intervals.get(m, {}).get(metric)) is not None
            )
        )
        scales[metric] = (x0, y0, top)
        parts.append(_panel(metric, x0, y0, top))
    slot = (PANEL_W - PAD_LEFT - PAD_RIGHT) / len(methods)
    for j, method in enumerate(methods):
        colour = method_colour(j)
        parts.append(f'<g class="series" data-method="{_e(method)}" fill="{colour}" '
                     f'stroke="{colour}">')  # fmt: skip
        for metric in metrics:
            iv = intervals.get(method, {}).get(metric)
            if iv is None:
                continue
            x0, y0, top = scales[metric]
            x = x0 + PAD_LEFT + slot * (j + 0.5)

            shown = f"{method} {metric} {iv.value:.3f}"
            if iv.ci_low is not None and iv.ci_high is not None:
                shown += f" [{iv.ci_low:.3f}, {iv.ci_high:.3f}]"
            parts.append(f'<g class="errorbar" data-metric="{_e(metric)}">'
                         f"<title>{_e(shown + f' (n={iv.n})')}</title>")  # fmt: skip
            if iv.ci_low is not None and iv.ci_high is not None:
                lo, hi = _y(iv.ci_low, y0, top), _y(iv.ci_high, y0, top)
                parts.append(
                    f'<line class="ci" x1="{x:.1f}" x2="{x:.1f}" y1="{lo:.1f}" y2="{hi:.1f}" '
                    f'stroke-width="2"/>'
                    f'<line class="cap" x1="{x - 5:.1f}" x2="{x + 5:.1f}" y1="{lo:.1f}" '
                    f'y2="{lo:.1f}" stroke-width="2"/>'
                    f'<line class="cap" x1="{x - 5:.1f}" x2="{x + 5:.1f}" y1="{hi:.1f}" '
                    f'y2="{hi:.1f}" stroke-width="2"/>'
                )
            cy = _y(iv.value, y0, top)
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{cy:.1f}" r="4"/></g>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _metrics(
    methods: Sequence[str], intervals: Mapping[str, Mapping[str, CorpusInterval]]
) -> list[str]:
    seen: list[str] = []
    for method in methods:
        for metric in intervals.get(method, {}):
            if metric not in seen:
                seen.append(metric)
    return seen


def _legend(methods: Sequence[str]) -> str:
    parts, x = ['<g class="legend" font-size="12">'], 8.0
    for j, method in enumerate(methods):
        parts.append(
            f'<rect x="{x:.0f}" y="8" width="12" height="12" fill="{method_colour(j)}"/>'
            f'<text x="{x + 17:.0f}" y="18.5">{_e(method)}</text>'
        )
        x += 17 + 7.2 * len(method) + 22  # rough text width: the legend needs no precision
    parts.append("</g>")
    return "".join(parts)


def _panel(metric: str, x0: float, y0: float, top: float) -> str:
    left, right = x0 + PAD_LEFT, x0 + PANEL_W - PAD_RIGHT
    parts = [
        f'<g class="panel" data-metric="{_e(metric)}" font-size="11">',
        f'<text x="{(left + right) / 2:.1f}" y="{y0 + 18:.1f}" text-anchor="middle" '
        f'font-size="13" font-weight="bold">{_e(metric)}</text>',
    ]
    for tick in _ticks(top):
        ty = _y(tick, y0, top)
        parts.append(
            f'<line x1="{left:.1f}" x2="{right:.1f}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="#ddd"/><text x="{left - 4:.1f}" y="{ty + 4:.1f}" '
            f'text-anchor="end" fill="#555">{_tick_label(tick)}</text>'
        )
    bottom = _y(0.0, y0, top)
    parts.append(
        f'<line x1="{left:.1f}" x2="{left:.1f}" y1="{y0 + PAD_TOP:.1f}" y2="{bottom:.1f}" '
        f'stroke="#888"/></g>'
    )
    return "".join(parts)


def _y(value: float, y0: float, top: float) -> float:
    """The vertical position of a value in a panel whose axis runs from 0 to top."""
    inner = PANEL_H - PAD_TOP - PAD_BOTTOM
    return y0 + PAD_TOP + inner * (1.0 - max(0.0, min(value, top)) / top)


def _nice_top(value: float) -> float:
    """The smallest 1/2/2.5/5 x 10^k at or above value (1 for nothing to show)."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        top = step * 10.0**exp
        if top >= value * 1.0001:
            return top
    return 10.0 ** (exp + 1)


def _ticks(top: float) -> list[float]:
    return [top * k / 4 for k in range(5)]


def _tick_label(value: float) -> str:
    return f"{value:.3g}"


def _e(text: str) -> str:
    return escape(text, quote=True)
