"""The HTML report: one self-contained file a reader opens offline to see how a run went.

A run of every method is made with the real CLI and the stand-in backend; the
report is checked as data (what the page is given) and, where Chromium is
installed, as a page a person uses: the gallery's rows, the plot's error bars,
search, sorting by disagreement and paging.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from click.testing import Result
from sqlalchemy import text

from cobra_eval.analysis import report as report_module
from cobra_eval.analysis.corpus_ci import corpus_intervals
from cobra_eval.analysis.report import ReportData, build_report, collect, render
from cobra_eval.analysis.report_gallery import gallery_data, raw_parts, reasoning_line, thumbnail
from cobra_eval.errors import CobraEvalError, ConfigError
from cobra_eval.store import MethodProgress, RunInfo, Store, resolve_url
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.scores import StoredScore, latest_corpus_metrics
from tests.conftest import REPO, World

METHODS = ["baseline", "scratchpad", "llava_cot", "scratchpad_compare"]
ATTACK = "<script>alert(1)</script>"
#: Words the synthetic captions of the 5000-sample page are made of.
VOCABULARY = """a man woman dog cat red blue small large sitting standing on next to the table
street grass near holding wooden white black two three bench kitchen"""
REQUIRE_BROWSER_ENV = "COBRA_EVAL_REQUIRE_BROWSER"
ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.fixture
def run(world: World, cli: Callable[..., Result]) -> World:
    """Every method on 12 samples, scored with BLEU, ROUGE-L and CIDEr-D."""
    result = cli(*world.run_args("--method", "all", "--num_samples", "12",
                                 "--metrics", "bleu,rouge,cider", "--run_id", "r"))  # fmt: skip
    assert result.exit_code == 0, result.output
    return world


@pytest.fixture
def store(run: World) -> Iterator[Store]:
    with Store.open(resolve_url(run.url or str(run.db))) as opened:
        yield opened


def page_data(html: str) -> dict[str, Any]:
    """The JSON blob the page's script renders."""
    found = re.search(
        r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S
    )
    assert found, "no data blob"
    return json.loads(found.group(1))


def inject(store: Store, image_id: int, method: str = "baseline") -> None:
    """Make one stored caption (and its reasoning and first reference) hostile markup."""
    with store.engine.begin() as conn:
        row = conn.execute(
            text("SELECT id, reference_captions, metadata FROM sample_result "
                 "WHERE run_id = 'r' AND method = :m AND image_id = :i"),
            {"m": method, "i": image_id},
        ).one()  # fmt: skip
        refs = row.reference_captions
        refs = json.loads(refs) if isinstance(refs, str) else refs
        metadata = row.metadata if isinstance(row.metadata, dict) else json.loads(row.metadata)
        metadata["passes"][0]["raw_output"] = ATTACK
        conn.execute(
            text("UPDATE sample_result SET generated_caption = :c, reasoning_trace = :c, "
                 "reference_captions = :r, metadata = :md WHERE id = :id"),
            {"c": ATTACK, "r": json.dumps([ATTACK + " & <b>bold</b>", *refs[1:]]),
             "md": json.dumps(metadata), "id": row.id},
        )  # fmt: skip


# -- the report as data ----------------------------------------------------------------


@pytest.mark.databases
def test_report_is_one_offline_file_with_every_sample_and_the_runs_provenance(
    run: World, store: Store, tmp_path: Path
) -> None:
    out = build_report(store, "r", tmp_path / "deep" / "report.html", bootstrap=200)
    html = out.read_text("utf-8")

    # nothing is fetched: no external src/href, stylesheet link, import or script source
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"<link\b|@import|url\(\s*['\"]?https?:|<script[^>]*\bsrc=", html, re.I)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)

    data = page_data(html)["gallery"]
    planned = [i for (i,) in run.rows("SELECT image_id FROM planned_sample WHERE run_id = 'r' "
                                      "ORDER BY position")]  # fmt: skip
    assert [s["id"] for s in data["samples"]] == planned[:12]
    assert data["methods"] == METHODS
    assert data["metrics"] == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    for sample in data["samples"]:
        assert sorted(sample["r"]) == sorted(METHODS)
        assert len(sample["refs"]) == 5
        assert sample["img"].startswith("data:image/jpeg;base64,")
    thumb = data["samples"][0]["img"].partition(",")[2]
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(thumb))) as image:
        assert image.format == "JPEG" and max(image.size) <= 96
    # scratchpad_compare keeps all three passes, each with its own metrics and prompt (the
    # final pass's metrics are the result's, stored once)
    cell = data["samples"][0]["r"]["scratchpad_compare"]
    passes = cell["ps"]
    assert [p["n"] for p in passes] == ["direct", "scratchpad", "refine"]
    assert [len(p.get("m", cell["m"])) for p in passes] == [6, 6, 6]
    assert "m" not in passes[2]
    assert "Draft caption:" in data["prompts"][passes[2]["q"]]

    fingerprint, version, created_by = run.rows(
        "SELECT fingerprint, tool_version, created_by FROM run WHERE id = 'r'")[0]  # fmt: skip
    (worker,) = [w for (w,) in run.rows("SELECT DISTINCT worker FROM sample_result")]
    for shown in (fingerprint, version, created_by, worker, "Run r", "12 / 12"):
        assert shown in html
    assert html.count('<g class="series"') == len(METHODS)
    assert html.count('<table class="comparison"') == len(METHODS) - 1


@pytest.mark.databases
def test_corpus_scores_match_the_stored_ones_and_their_intervals_bracket_them(
    store: Store,
) -> None:
    data = collect(store, "r", bootstrap=300)
    again = collect(store, "r", bootstrap=300)
    for method in METHODS:
        stored = latest_corpus_metrics(store, "r", method)
        assert stored is not None
        intervals = data.intervals[method]
        assert list(intervals) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
        for metric, iv in intervals.items():
            # pooled as pycocoevalcap pools them: BLEU from counts, not a mean of per-image BLEU
            assert iv.value == pytest.approx(stored.scores[metric], abs=1e-12), (method, metric)
            assert iv.n == 12
            assert iv.ci_low is not None and iv.ci_high is not None
            assert iv.ci_low - 1e-12 <= iv.value <= iv.ci_high + 1e-12
        assert intervals == again.intervals[method]  # one seed: the same report twice
    assert data.notes == []


def test_bleu_interval_pools_counts_rather_than_averaging_per_image_bleu() -> None:
    # one long caption with every 4-gram right, one short one with none: the corpus BLEU-4
    # pools the counts (high), the mean of per-image BLEU-4 would be about half of it
    good = {"testlen": 20, "reflen": 20, "guess": [20, 19, 18, 17], "correct": [20, 19, 18, 17]}
    bad = {"testlen": 3, "reflen": 3, "guess": [3, 2, 1, 0], "correct": [1, 0, 0, 0]}
    scores = {1: StoredScore({}, {"bleu": good}), 2: StoredScore({}, {"bleu": bad})}
    bleu4 = corpus_intervals(scores, bootstrap=200)["Bleu_4"]
    assert bleu4.value > 0.75
    assert bleu4.ci_low is not None and bleu4.ci_low < bleu4.value
    assert corpus_intervals(scores, bootstrap=0)["Bleu_4"].ci_low is None


def join_raw(parts: str | list[str | int], reasoning: str, caption: str) -> str:
    """The page's joinRaw, in Python: a raw output stored as parts made whole."""
    if isinstance(parts, str):
        return parts
    lines = reasoning.split("\n")
    pieces = {0: reasoning, 1: caption}
    return "".join(
        p if isinstance(p, str) else pieces.get(p) or reasoning_line(lines[p - 2]) for p in parts
    )


@pytest.mark.parametrize(
    ("raw", "reasoning", "caption", "stored"),
    [
        ("a red circle", "", "a red circle", [1]),
        ("Objects: two cats.\nCaption: two cats", "Objects: two cats.", "two cats",
         [0, "\nCaption: ", 1]),
        ("<SUMMARY> I will look at the picture </SUMMARY> <CAPTION> a dog sits on a mat "
         "</CAPTION> <CONCLUSION> a dog </CONCLUSION>",
         "SUMMARY: I will look at the picture\nCAPTION: a dog sits on a mat", "a dog",
         ["<SUMMARY> ", 2, " </SUMMARY> <CAPTION> ", 3, " </CAPTION> <CONCLUSION> ", 1,
          " </CONCLUSION>"]),
        ("no caption marker here", "no caption marker here", "", [0]),
        ("unrelated text", "something else", "x y z", "unrelated text"),
    ],
)  # fmt: skip
def test_raw_outputs_are_stored_without_the_text_parsed_out_of_them(
    raw: str, reasoning: str, caption: str, stored: Any
) -> None:
    parts = raw_parts(raw, reasoning, caption)
    assert parts == stored
    assert join_raw(parts, reasoning, caption) == raw


@pytest.mark.databases
def test_captions_are_escaped_text_never_markup(run: World, store: Store, tmp_path: Path) -> None:
    first = run.rows("SELECT image_id FROM planned_sample ORDER BY position LIMIT 1")[0][0]
    inject(store, first)
    with store.engine.begin() as conn:  # run fields are text too, template markers included
        conn.execute(text("UPDATE run SET created_by = :x"), {"x": "@@DATA@@ <i>me</i>"})
    html = build_report(store, "r", tmp_path / "r.html", bootstrap=100).read_text("utf-8")
    assert ATTACK not in html and "<b>bold</b>" not in html and "<i>" not in html
    assert "@@DATA@@ &lt;i&gt;me&lt;/i&gt;" in html
    assert html.count("<script") == 2  # the data blob and the page's own script
    cell = page_data(html)["gallery"]["samples"][0]
    assert cell["r"]["baseline"]["c"] == ATTACK
    assert cell["r"]["baseline"]["t"] == ATTACK
    assert cell["refs"][0] == ATTACK + " & <b>bold</b>"


def test_missing_images_show_placeholders_and_thumbnails_can_be_left_out(
    run: World, store: Store, tmp_path: Path
) -> None:
    first = run.rows("SELECT image_id FROM planned_sample ORDER BY position LIMIT 1")[0][0]
    (run.dataset.parent / f"img_{first:06d}.png").unlink()
    html = build_report(store, "r", tmp_path / "r.html", bootstrap=100).read_text("utf-8")
    samples = page_data(html)["gallery"]["samples"]
    assert samples[0]["img"] is None
    assert all(s["img"] for s in samples[1:])
    assert "1 of 12 could not be read" in html

    bare = build_report(store, "r", tmp_path / "bare.html", bootstrap=100, thumbnails=False)
    assert "data:image/jpeg;base64," not in bare.read_text("utf-8")


def test_failed_samples_show_their_error_and_a_placeholder(
    world: World, cli: Callable[..., Result], tmp_path: Path
) -> None:
    (world.dataset.parent / "img_001007.png").write_bytes(b"not a picture")
    assert cli(*world.run_args("--num_samples", "3", "--run_id", "f")).exit_code == 0
    with Store.open(resolve_url(str(world.db))) as store:
        html = build_report(store, "f", tmp_path / "f.html", bootstrap=100).read_text()
    gallery = page_data(html)["gallery"]
    failed = gallery["samples"][1]
    assert failed["id"] == 1007 and failed["img"] is None
    assert failed["r"]["baseline"]["p"] == "failed"
    assert "not an image file Pillow can read" in failed["r"]["baseline"]["e"]
    assert gallery["statuses"] == ["failed", "ok"]
    assert "1 of 3 could not be read" in html


def test_a_moved_dataset_is_a_note_not_a_failure(run: World, store: Store, tmp_path: Path) -> None:
    shutil.rmtree(run.dataset.parent)
    html = build_report(store, "r", tmp_path / "r.html", bootstrap=100).read_text("utf-8")
    assert "could not load the dataset" in html
    assert all(s["img"] is None for s in page_data(html)["gallery"]["samples"])


def test_comparison_failures_are_shown_and_one_method_has_nothing_to_compare(
    world: World, cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(*world.run_args("--num_samples", "3", "--run_id", "one")).exit_code == 0
    assert cli(*world.run_args("--method", "scratchpad", "--num_samples", "3",
                               "--run_id", "one")).exit_code == 0  # fmt: skip
    with Store.open(resolve_url(str(world.db))) as store:

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise CobraEvalError("baseline and scratchpad have no successful results <here>")

        monkeypatch.setattr(report_module, "compare_run", refuse)
        html = build_report(store, "one", tmp_path / "a.html", bootstrap=100).read_text()
        assert "no successful results &lt;here&gt;" in html
        monkeypatch.undo()
        # without --metrics the run has no scores: the page says so instead of plotting
        assert "No metrics were stored" in html

    assert cli(*world.run_args("--num_samples", "2", "--run_id", "solo")).exit_code == 0
    with Store.open(resolve_url(str(world.db))) as store:
        html = build_report(store, "solo", tmp_path / "b.html", bootstrap=100).read_text()
    assert "One method: nothing to compare." in html


def test_unknown_runs_and_too_few_resamples_are_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(CobraEvalError, match="no run 'nope'"):
        build_report(store, "nope", tmp_path / "x.html")
    with pytest.raises(ConfigError, match="at least 100"):
        build_report(store, "r", tmp_path / "x.html", bootstrap=10)
    assert not (tmp_path / "x.html").exists()


# -- 5000 samples, built from constructed inputs --------------------------------------


def synthetic_thumbnails(tmp_path: Path, count: int) -> list[str]:
    """Thumbnails of busy noisy pictures, about the size real photos give."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    made = []
    for k in range(count):
        image = Image.new("RGB", (320, 240), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y, w, h = (int(v) for v in rng.integers(0, 240, 4))
            draw.ellipse([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        pixels = np.asarray(image, dtype=float) + rng.normal(0, 30, (240, 320, 3))
        path = tmp_path / f"synthetic_{k}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(path)
        url = thumbnail(path)
        assert url is not None
        made.append(url)
    return made


class Large(NamedTuple):
    """A big report page and what it was made of."""

    html: str
    gallery: dict[str, Any]
    results: dict[str, list[ResultRecord]]
    #: bytes of what the page must hold: thumbnails, references, every raw model output
    #: (captions and reasoning are cut from them) and each distinct prompt
    content: int


def large_report(tmp_path: Path, n: int = 5000) -> Large:
    """A report page of n images x 4 methods, shaped like the methods' real outputs."""
    thumbs = synthetic_thumbnails(tmp_path, 40)
    words = VOCABULARY.split()

    def say(seed: int, length: int = 10) -> str:
        return " ".join(words[(seed * 7 + k * 13 + k * k) % len(words)] for k in range(length))

    def scores(seed: int) -> dict[str, float | None]:
        base = (seed * 31 % 100) / 100
        return {"Bleu_1": base, "Bleu_2": base * 0.8, "Bleu_3": base * 0.6,
                "Bleu_4": base * 0.4, "ROUGE_L": base * 0.9, "CIDEr": base * 1.7}  # fmt: skip

    def one(name: str, prompt: str, raw: str, caption: str, reasoning: str, seed: int) -> Any:
        keys = ("name", "prompt", "raw_output", "caption", "reasoning", "metrics")
        return dict(zip(keys, (name, prompt, raw, caption, reasoning, scores(seed)), strict=True))

    cot = "I have an image and a question that I want you to answer. " * 18
    results: dict[str, list[ResultRecord]] = {m: [] for m in METHODS}
    for i in range(n):
        refs = [say(i + j, 9 + j % 3) for j in range(5)]
        caption, notes = say(i), "Objects: " + say(i + 1, 25) + "."
        stages = {"SUMMARY": say(i + 2, 20), "CAPTION": say(i + 3, 25), "REASONING": say(i + 4, 40)}
        tagged = " ".join(f"<{k}> {v} </{k}>" for k, v in stages.items())
        staged = "\n".join(f"{k}: {v}" for k, v in stages.items())
        direct = one("direct", "Describe this image.", caption, caption, "", i)
        scratch, refined, concluded = say(i + 5), say(i + 7), say(i + 6)
        scratchpad = one("scratchpad", "Scratchpad first.", f"{notes}\nCaption: {scratch}",
                         scratch, notes, i + 5)  # fmt: skip
        refine = one("refine", f"Draft caption: {caption}\nScratchpad: {notes}\nRefine it.",
                     f"{notes}\nCaption: {refined}", refined, notes, i + 7)  # fmt: skip
        llava = one("llava_cot", cot, f"{tagged} <CONCLUSION> {concluded} </CONCLUSION>",
                    concluded, staged, i + 6)  # fmt: skip
        passes = {
            "baseline": [{**direct, "name": "caption"}],
            "scratchpad": [scratchpad],
            "llava_cot": [llava],
            "scratchpad_compare": [direct, scratchpad, refine],
        }
        for method in METHODS:
            final = passes[method][-1]
            record = ResultRecord(
                image_id=100_000 + i,
                reference_captions=refs,
                generated_caption=final["caption"],
                reasoning_trace=final["reasoning"],
                metadata={"parse_status": "ok", "passes": passes[method]},
                metrics=final["metrics"],
            )
            results[method].append(record)
    now = datetime.now(timezone.utc)
    gallery_thumbs = {100_000 + i: thumbs[i % len(thumbs)] for i in range(n)}
    gallery = gallery_data(METHODS, results, thumbnails=gallery_thumbs)
    stored = {r.image_id: StoredScore(dict(r.metrics), None) for r in results["baseline"]}
    data = ReportData(
        run=RunInfo("big", now, "me@here", "0.1.0", {"dataset": {}}, "f" * 16, "finished"),
        database="sqlite:///big.db",
        methods=[
            MethodProgress(
                run_id="big",
                method=m,
                config={},
                fingerprint="0" * 16,
                settings={},
                total_planned=n,
                done=n,
                failed=0,
                status="finished",
                updated_at=now,
            )
            for m in METHODS
        ],
        workers={"me@here:1": 4 * n},
        intervals={m: corpus_intervals(stored, bootstrap=100) for m in METHODS},
        stored_corpus={},
        comparisons=[],
        comparison_error=None,
        gallery=gallery,
        bootstrap=100,
    )
    prompts = {p["prompt"] for r in results.values() for x in r for p in x.metadata["passes"]}
    content = sum(len(t) for t in gallery_thumbs.values()) + sum(
        len(text.encode())
        for text in [
            *prompts,
            *(ref for x in results["baseline"] for ref in x.reference_captions),
            *(p["raw_output"] for r in results.values() for x in r for p in x.metadata["passes"]),
        ]
    )
    return Large(render(data), gallery, results, content)


def test_five_thousand_samples_make_a_page_of_sane_size(tmp_path: Path) -> None:
    html, gallery, _, content = large_report(tmp_path)
    size = len(html.encode())
    assert len(gallery["samples"]) == 5000
    assert len(gallery["prompts"]) <= 5000 + 3  # the long shared prompts once, not per sample
    # nothing is stored twice: beyond the content itself, under 200 bytes per result (keys,
    # every pass's metric values); about 20 MB here, 9 MB of it thumbnails
    assert size < content + 200 * 4 * 5000
    assert size < 25 * 1024**2
    assert page_data(html)["gallery"]["samples"][4999]["id"] == 104_999


# -- in a browser -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through chromedriver (skipped where they are not installed)."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    reason = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        reason = "selenium is not installed (pip install -e '.[dev]')"
    if reason is None and not (chromium and driver_path):
        reason = "chromium and chromedriver are not installed (apt-get install chromium " \
                 "chromium-driver)"  # fmt: skip
    if reason is not None:
        if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_BROWSER_ENV}=1 is set")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = chromium
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def row_ids(driver: Any) -> list[int]:
    """The image ids of the gallery's rows, read in one go (a re-render cannot interleave)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#gallery-body tr.sample'), "
        "r => Number(r.dataset.imageId));"
    )


def rows(driver: Any) -> list[int]:
    return row_ids(driver)


def result_cell(driver: Any, image_id: int, method: str) -> Any:
    return driver.find_element(
        "css selector", f'tr[data-image-id="{image_id}"] td[data-method="{method}"]'
    )


def matching(samples: list[dict[str, Any]], needle: str) -> list[int]:
    """Ids of the samples whose references or captions hold the text, as the search finds."""
    return [
        s["id"]
        for s in samples
        if any(needle in t for t in [*s["refs"], *(cell["c"] for cell in s["r"].values())])
    ]


def wait_for(driver: Any, condition: Callable[[], bool], what: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(lambda _: condition(), message=what)


def choose(driver: Any, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


@pytest.mark.browser
def test_a_reader_searches_sorts_and_pages_the_report_in_a_browser(
    run: World, store: Store, tmp_path: Path, browser: Any
) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    plan = [i for (i,) in run.rows("SELECT image_id FROM planned_sample ORDER BY position")][:12]
    inject(store, plan[0])
    out = build_report(store, "r", tmp_path / "report.html", bootstrap=200)
    data = page_data(out.read_text("utf-8"))["gallery"]
    browser.get(out.as_uri())
    wait_for(browser, lambda: len(rows(browser)) == 12, "the gallery shows every sample")
    assert row_ids(browser) == plan

    # the plot: one group of error bars per method, each with its bars and points
    series = browser.find_elements("css selector", "svg#corpus-plot g.series")
    assert [s.get_attribute("data-method") for s in series] == METHODS
    for group in series:
        assert len(group.find_elements("css selector", "line.ci")) == 6
        assert len(group.find_elements("css selector", "circle.point")) == 6

    # model output shows as text: nothing ran, the literal markup is on the page
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    cell = result_cell(browser, plan[0], "baseline")
    assert cell.find_element("css selector", ".caption").text == ATTACK
    assert len(browser.find_elements("css selector", "script")) == 2

    # search: typing a caption keeps only the samples whose captions or references hold it
    needle = data["samples"][5]["r"]["llava_cot"]["c"]
    expected = matching(data["samples"], needle)
    assert 1 <= len(expected) < 12
    box = browser.find_element("id", "filter-text")
    box.send_keys(needle.upper())
    wait_for(browser, lambda: row_ids(browser) == expected, "search narrows the rows")
    box.clear()
    box.send_keys(" ")  # clear() sends no input event; an edit does
    wait_for(browser, lambda: len(rows(browser)) == 12, "clearing the search shows all")

    # sorting by disagreement puts the sample the methods disagree on most first
    k = data["metrics"].index("CIDEr")
    spread = {s["id"]: max(c["m"][k] for c in s["r"].values()) - min(c["m"][k] for c in
              s["r"].values()) for s in data["samples"]}  # fmt: skip
    most = sorted(plan, key=lambda i: (-spread[i], plan.index(i)))
    least = sorted(plan, key=lambda i: (spread[i], plan.index(i)))
    choose(browser, "sort-by", "disagreement")
    wait_for(browser, lambda: row_ids(browser) == most, "most disagreement first")
    choose(browser, "sort-dir", "asc")
    wait_for(browser, lambda: row_ids(browser) == least, "least disagreement first")
    assert least[0] != plan[0] or most[0] != plan[0]  # the first row did change
    choose(browser, "sort-dir", "desc")

    # a method's parse status: llava_cot falls back on every stand-in output
    choose(browser, "sort-by", "order")
    choose(browser, "filter-method", "llava_cot")
    wait_for(browser, lambda: len(browser.find_elements("css selector", "#gallery-head th")) == 3,
             "one method's column")  # fmt: skip
    choose(browser, "filter-status", "fallback:no_tags")
    wait_for(browser, lambda: len(rows(browser)) == 12, "every llava_cot sample fell back")
    choose(browser, "filter-status", "ok")
    wait_for(browser, lambda: len(rows(browser)) == 0, "no llava_cot sample parsed")
    choose(browser, "filter-status", "")
    choose(browser, "filter-method", "")

    # paging: 10 a page, then the last 2
    choose(browser, "page-size", "10")
    wait_for(browser, lambda: row_ids(browser) == plan[:10], "the first page")
    assert browser.find_element("id", "page-info").text == "Page 1 of 2"
    browser.find_element("id", "page-next").click()
    wait_for(browser, lambda: row_ids(browser) == plan[10:], "the second page")
    assert browser.find_element("id", "page-next").get_attribute("disabled") is not None

    choose(browser, "page-size", "50")
    wait_for(browser, lambda: len(rows(browser)) == 12, "back to one page")
    # the whole page in one picture, kept as a test artifact for a person to look at
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(height, 8000))
    browser.execute_script("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "report.png"))
    browser.set_window_size(1400, 1000)


@pytest.mark.browser
def test_five_thousand_samples_open_a_page_at_a_time(tmp_path: Path, browser: Any) -> None:
    html, gallery, results, _ = large_report(tmp_path)
    page = tmp_path / "big.html"
    page.write_text(html, "utf-8")
    browser.get(page.as_uri())
    wait_for(browser, lambda: len(rows(browser)) == 50, "the first page of 50 rows")
    ids = [s["id"] for s in gallery["samples"]]
    assert row_ids(browser) == ids[:50]
    assert browser.find_element("id", "page-info").text == "Page 1 of 100"
    browser.find_element("id", "page-next").click()
    wait_for(browser, lambda: row_ids(browser) == ids[50:100], "the second page")

    # a raw output stored as parts is whole again on the page, tags and all
    cell = result_cell(browser, ids[50], "llava_cot")
    shown = cell.find_elements("css selector", ".pass pre")[-1].get_attribute("textContent")
    assert shown == results["llava_cot"][50].metadata["passes"][0]["raw_output"]
    assert "<CONCLUSION>" in shown

    needle = gallery["samples"][4321]["r"]["llava_cot"]["c"]
    expected = matching(gallery["samples"], needle)
    assert 100_000 + 4321 in expected and len(expected) < 5000
    browser.find_element("id", "filter-text").send_keys(needle)
    wait_for(browser, lambda: row_ids(browser) == expected[:50], "search reaches every page")
    count = browser.find_element("id", "match-count").text
    assert count == f"{len(expected)} of 5000 samples match"


def test_the_report_command_writes_beside_the_run_and_refuses_unknown_runs(
    run: World, cli: Callable[..., Result]
) -> None:
    result = cli("report", "r", "--output_dir", str(run.out), *run.db_args, "--bootstrap", "200")
    assert result.exit_code == 0, result.output
    path = run.out / "r" / "report.html"
    assert result.output.strip() == f"Report of run r written to {path}"
    assert len(page_data(path.read_text())["gallery"]["samples"]) == 12
    unknown = cli("report", "nope", "--output_dir", str(run.out), *run.db_args)
    assert unknown.exit_code == 1 and "no run 'nope'" in unknown.output
    assert not (run.out / "nope").exists()
