"""Merging one results database into another: a laptop's SQLite file into the team's database.

All or nothing. SRC is read in one read-only transaction and never written.
DEST is compared with it inside one write transaction; any conflict aborts that
transaction before a row is written, so DEST is either fully merged or unchanged.
Rows are written with Core executemany on the models' tables, autoincrement ids
remapped. Only the tables in ``merge_source.MERGED_TABLES`` travel: work claims
and export leases belong to the processes of one database.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from cobra_eval.config import diff_configs
from cobra_eval.errors import StoreError
from cobra_eval.store.engine import mask_url, resolve_url, sqlite_path
from cobra_eval.store.merge_source import Source, portable, read_source
from cobra_eval.store.repository import (
    CACHE,
    CHECKPOINT,
    CORPUS,
    METRIC,
    PASS,
    PLAN,
    RESULT,
    RUN,
    RUN_METHOD,
    Store,
)
from cobra_eval.store.result_writer import bump_revision
from cobra_eval.store.scores import DOC_FREQ

#: Offenders listed per kind of conflict; the rest are counted.
SHOWN_PER_KIND = 5
#: Bound parameters per IN (...) query: well under every driver's limit.
CHUNK = 500
#: Which of two statuses of the same method describes more progress.
STATUS_RANK = {"running": 0, "interrupted": 1, "finished": 2}


class MergeConflictError(StoreError):
    """SRC and DEST disagree about the same run, method or sample; DEST was left unchanged."""

    def __init__(self, conflicts: Sequence[Conflict]):
        self.conflicts = list(conflicts)
        super().__init__(conflict_report(self.conflicts))


@dataclass(frozen=True)
class Conflict:
    """One thing SRC and DEST disagree about."""

    kind: str
    """run | method | sample | document frequency."""
    detail: str
    """One line naming the offender and how the two differ."""


@dataclass
class MergeReport:
    """What a merge did (or, merging again, found already done)."""

    src: str
    """SRC's URL, password masked."""
    dest: str
    """DEST's URL, password masked."""
    runs_created: list[str] = field(default_factory=list)
    """Runs that were new to DEST."""
    runs_extended: list[str] = field(default_factory=list)
    """Runs DEST had that gained rows or progress."""
    runs_unchanged: list[str] = field(default_factory=list)
    """Runs DEST already held entirely."""
    methods_added: int = 0
    """run_method rows new to DEST."""
    planned_added: int = 0
    """Planned samples appended to DEST's plans."""
    results_copied: int = 0
    """Results DEST did not have (with their passes and metric rows)."""
    failed_replaced: int = 0
    """DEST's failed results replaced by SRC's successful ones."""
    rescored_replaced: int = 0
    """Identical outputs whose SRC scores are newer (scored against a larger planned set)."""
    results_present: int = 0
    """Successful results already in DEST with the same output."""
    src_failed_kept: int = 0
    """SRC's failed results where DEST already had a row, which it keeps."""
    corpus_copied: int = 0
    """corpus_metric rows copied."""
    checkpoints_copied: int = 0
    """checkpoint rows (records of exported files) copied."""
    document_frequencies_copied: int = 0
    """CIDEr-D document frequency rows copied."""
    cache_merged: bool = True
    """False with --run: the generation cache belongs to no run, so it is left out."""
    cache_added: int = 0
    """Generation cache entries new to DEST."""
    cache_present: int = 0
    """Cache entries DEST already had with the same output."""
    cache_kept: int = 0
    """Cache entries DEST had with another output: DEST's is kept (a cache, not results)."""

    @property
    def changed(self) -> bool:
        """Whether the merge wrote anything to DEST."""
        return bool(
            self.runs_created or self.runs_extended or self.corpus_copied
            or self.checkpoints_copied or self.document_frequencies_copied or self.cache_added
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {**asdict(self), "changed": self.changed}

    def lines(self) -> list[str]:
        """The report for people: a headline and one line per kind of row, zeros left out."""
        head = f"Merged {self.src} into {self.dest}"
        if not self.changed:
            head += ": everything was already present, nothing changed"
        runs = [f"{len(ids)} {label} ({', '.join(ids)})" for label, ids in (
            ("created", self.runs_created), ("extended", self.runs_extended),
            ("already present", self.runs_unchanged)) if ids]  # fmt: skip
        cache = (
            _counts((self.cache_added, "added"), (self.cache_present, "already present"),
                    (self.cache_kept, "kept with DEST's other output"))
            if self.cache_merged else "not merged (--run)"
        )  # fmt: skip
        return [
            head,
            f"  runs: {'; '.join(runs) or 'none'}",
            "  plan: " + _counts((self.methods_added, "methods added"),
                                 (self.planned_added, "planned samples added")),
            "  results: " + _counts(
                (self.results_copied, "copied"), (self.failed_replaced, "failed ones replaced"),
                (self.rescored_replaced, "rescored"), (self.results_present, "already present"),
                (self.src_failed_kept, "failed in SRC, DEST's kept")),
            "  also copied: " + _counts(
                (self.corpus_copied, "corpus metrics"), (self.checkpoints_copied, "checkpoints"),
                (self.document_frequencies_copied, "CIDEr-D document frequency sets")),
            f"  generation cache: {cache}",
        ]  # fmt: skip


def _counts(*items: tuple[int, str]) -> str:
    return ", ".join(f"{n} {label}" for n, label in items if n) or "nothing new"


def merge_databases(
    src_url: str, dest_url: str, *, run_ids: Sequence[str] | None = None
) -> MergeReport:
    """Merge the runs of SRC (all, or run_ids) into DEST in one transaction.

    Both are SQLAlchemy URLs or SQLite file paths. SRC must exist and be at the
    schema head; it is only read. DEST is created or upgraded. A conflict (a run
    or method with another configuration, a sample with another output, other
    CIDEr-D document frequencies) raises MergeConflictError listing them, and
    DEST is unchanged. Merging the same SRC again changes nothing.
    """
    src_url, dest_url = database_url(src_url, "SRC"), database_url(dest_url, "DEST")
    if _same_database(src_url, dest_url):
        raise StoreError(f"SRC and DEST are the same database ({mask_url(src_url)})")
    source = read_source(src_url, run_ids)
    report = MergeReport(src=mask_url(src_url), dest=mask_url(dest_url))
    report.cache_merged = source.cache is not None
    with Store.open(dest_url) as store:
        try:
            with store.engine.begin() as conn:
                _Merge(conn, source, report).run()
        except IntegrityError as exc:
            # only a concurrent writer can break a constraint the checks above kept
            raise StoreError(
                f"DEST {store.display} changed while merging ({exc.orig}); nothing was "
                "merged, run the merge again"
            ) from None
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot merge into {store.display}: {_reason(exc)}") from None
    return report


def database_url(value: str, role: str) -> str:
    """A SQLAlchemy URL from a URL or a SQLite path, as --db resolves them."""
    if not value.strip():
        raise StoreError(f"{role} is empty: give a SQLite file path or a database URL")
    if "://" in value:
        try:
            make_url(value)
        except (ArgumentError, ValueError) as exc:  # a bad port number is a ValueError
            raise StoreError(
                f"{role} {_mask_unparsed(value)!r} is not a valid database URL: {exc}"
            ) from None
    return resolve_url(value)


def conflict_report(conflicts: Sequence[Conflict]) -> str:
    """The refusal: counts per kind, then the first few offenders of each kind."""
    by_kind: dict[str, list[Conflict]] = defaultdict(list)
    for conflict in conflicts:
        by_kind[conflict.kind].append(conflict)
    counts = ", ".join(
        f"{len(items)} {_plural(kind, len(items))}" for kind, items in by_kind.items()
    )
    n = len(conflicts)
    lines = [f"merge refused: {n} {_plural('conflict', n)} ({counts}), DEST unchanged"]
    for kind, items in by_kind.items():
        lines += [f"  {c.detail}" for c in items[:SHOWN_PER_KIND]]
        if len(items) > SHOWN_PER_KIND:
            extra = len(items) - SHOWN_PER_KIND
            lines.append(f"  ... and {extra} more {_plural(kind, extra)}")
    lines.append("Hint: --run RUN merges only the runs you name.")
    return "\n".join(lines)


# -- merging into DEST ------------------------------------------------------


class _Merge:
    """One merge inside DEST's transaction: compare everything, then write everything."""

    def __init__(self, conn: Connection, source: Source, report: MergeReport):
        self.conn, self.src, self.report = conn, source, report
        self.conflicts: list[Conflict] = []
        self.run_ids = [r["id"] for r in source.runs]
        #: runs DEST had that gain something
        self.touched: set[str] = set()
        #: every method of the merged runs as it will be after the merge
        self.final_methods: dict[tuple[str, str], dict[str, Any]] = {}

    def run(self) -> None:
        dest_runs = {r["id"]: r for r in self._dest_rows(RUN, RUN.c.id)}
        dest_methods = {(m["run_id"], m["method"]): m
                        for m in self._dest_rows(RUN_METHOD, RUN_METHOD.c.id)}  # fmt: skip
        # conflicts first, all of them; a run or method that conflicts is not compared further
        bad_runs = self._check_configs(RUN, self.src.runs, dest_runs)
        bad_methods = self._check_configs(
            RUN_METHOD, [m for m in self.src.methods if m["run_id"] not in bad_runs], dest_methods
        )
        skip = set(bad_methods) | {
            (m["run_id"], m["method"]) for m in self.src.methods if m["run_id"] in bad_runs
        }
        copy, replace = self._plan_results(skip)
        frequencies = self._plan_document_frequencies(bad_runs)
        if self.conflicts:
            raise MergeConflictError(self.conflicts)

        created = [r for r in self.src.runs if r["id"] not in dest_runs]
        if created:
            self.conn.execute(insert(RUN), created)
        self.report.runs_created = [r["id"] for r in created]
        self._merge_methods(dest_methods)
        self._write_plan()
        self._write_results(copy, replace)
        self.report.corpus_copied = self._insert_new(CORPUS, self.src.corpus)
        self.report.checkpoints_copied = self._insert_new(CHECKPOINT, self.src.checkpoints)
        if frequencies:
            self.conn.execute(insert(DOC_FREQ), frequencies)
            self.touched.update(r["run_id"] for r in frequencies)
        self.report.document_frequencies_copied = len(frequencies)
        self._merge_run_status(dest_runs)
        grown = sorted(self.touched & set(dest_runs))
        if grown:
            # results may have been replaced or placed between others: no snapshot's bytes hold
            bump_revision(self.conn, grown)
        if self.src.cache is not None:
            self._merge_cache(self.src.cache)
        for run_id in self.run_ids:
            if run_id in dest_runs:
                extended = run_id in self.touched
                (self.report.runs_extended if extended else self.report.runs_unchanged).append(
                    run_id
                )

    def _check_configs(
        self, table: Table, rows: list[dict[str, Any]], dest: dict[Any, dict[str, Any]]
    ) -> set[Any]:
        """Keys of the runs (or methods) DEST has with another fingerprint; each a conflict."""
        bad = set()
        for row in rows:
            key = row["id"] if table is RUN else (row["run_id"], row["method"])
            there = dest.get(key)
            if there is None or there["fingerprint"] == row["fingerprint"]:
                continue
            bad.add(key)
            kind, name = ("run", key) if table is RUN else ("method", "/".join(key))
            self._conflict(
                kind,
                f"{kind} {name} has another configuration in DEST (fingerprint "
                f"{_short(there['fingerprint'])} in DEST, {_short(row['fingerprint'])} in SRC; "
                f"{_differences(there['config'], row['config'])})",
            )
        return bad

    # -- helpers over DEST

    def _dest_rows(self, table: Table, *order: Any) -> list[dict[str, Any]]:
        column = table.c.id if table is RUN else table.c.run_id
        query = select(table).where(column.in_(self.run_ids)).order_by(*order)
        return [portable(r) for r in self.conn.execute(query).mappings()]

    def _conflict(self, kind: str, detail: str) -> None:
        self.conflicts.append(Conflict(kind, detail))

    # -- run_method and run

    def _merge_methods(self, dest: dict[tuple[str, str], dict[str, Any]]) -> None:
        new = [m for m in self.src.methods if (m["run_id"], m["method"]) not in dest]
        if new:
            self.conn.execute(insert(RUN_METHOD), [_without_id(m) for m in new])
            self.report.methods_added = len(new)
            self.touched.update(m["run_id"] for m in new)
        self.final_methods = dict(dest)
        for m in self.src.methods:
            key = (m["run_id"], m["method"])
            there = dest.get(key)
            if there is None:
                self.final_methods[key] = m
                continue
            values = _advanced_method(there, m)
            changed = {k: v for k, v in values.items() if there[k] != v}
            if changed:
                self.conn.execute(
                    update(RUN_METHOD).where(RUN_METHOD.c.id == there["id"]).values(**changed)
                )
                self.touched.add(key[0])
            self.final_methods[key] = {**there, **values}

    def _merge_run_status(self, dest: dict[str, dict[str, Any]]) -> None:
        """Finished when every method is; otherwise the state of the side still working."""
        statuses: dict[str, list[str]] = defaultdict(list)
        for (run_id, _), m in self.final_methods.items():
            statuses[run_id].append(m["status"])
        for run in self.src.runs:
            there = dest.get(run["id"])
            if there is None:
                continue
            methods = statuses.get(run["id"], [])
            if methods and all(s == "finished" for s in methods):
                status = "finished"
            elif there["status"] != "finished":
                status = there["status"]
            elif run["status"] != "finished":
                status = run["status"]
            else:
                status = "interrupted"
            if status != there["status"]:
                self.conn.execute(update(RUN).where(RUN.c.id == run["id"]).values(status=status))
                self.touched.add(run["id"])

    # -- plans and results

    def _plan_results(self, skip: set[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[int]]:
        """Decide every SRC result: copy, replace DEST's row, or keep DEST's; note conflicts."""
        dest = {
            _key(r): dict(r)
            for r in self.conn.execute(
                select(
                    RESULT.c.id, RESULT.c.run_id, RESULT.c.method, RESULT.c.image_id,
                    RESULT.c.status, RESULT.c.reference_captions, RESULT.c.generated_caption,
                    RESULT.c.reasoning_trace, RESULT.c.metrics, RESULT.c.scoring,
                ).where(RESULT.c.run_id.in_(self.run_ids))
            ).mappings()
        }  # fmt: skip
        dest_passes = self._dest_passes(
            [d["id"] for r in self.src.results
             if (d := dest.get(_key(r))) is not None and d["status"] == "ok" == r["status"]]
        )  # fmt: skip
        copy: list[dict[str, Any]] = []
        replace: list[int] = []
        for r in self.src.results:
            key = _key(r)
            if key[:2] in skip:
                continue
            there = dest.get(key)
            if there is None:
                copy.append(r)
            elif r["status"] != "ok":
                self.report.src_failed_kept += 1
            elif there["status"] != "ok":
                copy.append(r)
                replace.append(there["id"])
                self.report.failed_replaced += 1
            else:
                ours = [_pass_output(p) for p in self.src.passes.get(r["id"], [])]
                how = _output_difference(r, ours, there, dest_passes.get(there["id"], []))
                if how is not None:
                    self._conflict("sample", f"sample {'/'.join(map(str, key))} differs "
                                   f"(ok in both, {how})")  # fmt: skip
                elif _score_rank(r) > _score_rank(there):
                    copy.append(r)
                    replace.append(there["id"])
                    self.report.rescored_replaced += 1
                else:
                    self.report.results_present += 1
        self.report.results_copied = len(copy) - len(replace)
        return copy, replace

    def _dest_passes(self, result_ids: Sequence[int]) -> dict[int, list[tuple[str, ...]]]:
        out: dict[int, list[tuple[str, ...]]] = defaultdict(list)
        for chunk in _chunks(result_ids):
            query = (
                select(PASS.c.result_id, PASS.c.name, PASS.c.raw_output, PASS.c.caption)
                .where(PASS.c.result_id.in_(chunk))
                .order_by(PASS.c.result_id, PASS.c.pass_index)
            )
            for row in self.conn.execute(query):
                out[row.result_id].append(_pass_output(row._mapping))
        return out

    def _write_plan(self) -> None:
        """Union of the plans: DEST keeps its positions, SRC-only images follow in SRC's order."""
        existing: dict[str, set[int]] = defaultdict(set)
        last: dict[str, int] = {}
        query = select(PLAN.c.run_id, PLAN.c.image_id, PLAN.c.position).where(
            PLAN.c.run_id.in_(self.run_ids)
        )
        for run_id, image_id, position in self.conn.execute(query):
            existing[run_id].add(image_id)
            last[run_id] = max(last.get(run_id, -1), position)
        with_results: dict[str, list[int]] = defaultdict(list)
        for r in self.src.results:
            with_results[r["run_id"]].append(r["image_id"])
        new: list[dict[str, Any]] = []
        for run_id in self.run_ids:
            position = last.get(run_id, -1)
            # a result outside SRC's plan (imported) still gets a place, as import gives it
            for image_id in [*self.src.plans.get(run_id, []), *with_results[run_id]]:
                if image_id in existing[run_id]:
                    continue
                existing[run_id].add(image_id)
                position += 1
                new.append({"run_id": run_id, "position": position, "image_id": image_id})
                self.touched.add(run_id)
        if new:
            self.conn.execute(insert(PLAN), new)
        self.report.planned_added = len(new)

    def _write_results(self, copy: list[dict[str, Any]], replace: list[int]) -> None:
        """Replace and copy results with their passes and metric rows, ids remapped.

        Plain executemany, then the new ids read back by their unique keys: an
        INSERT ... RETURNING of many rows is several times slower on psycopg.
        """
        for chunk in _chunks(replace):
            self.conn.execute(delete(METRIC).where(METRIC.c.result_id.in_(chunk)))
            self.conn.execute(delete(PASS).where(PASS.c.result_id.in_(chunk)))
            self.conn.execute(delete(RESULT).where(RESULT.c.id.in_(chunk)))
        if not copy:
            return
        runs = sorted({r["run_id"] for r in copy})
        self.touched.update(runs)
        self.conn.execute(insert(RESULT), [_without_id(r) for r in copy])
        query = select(RESULT.c.id, RESULT.c.run_id, RESULT.c.method, RESULT.c.image_id)
        found = self.conn.execute(query.where(RESULT.c.run_id.in_(runs))).mappings()
        by_key = {_key(r): r["id"] for r in found}
        result_ids = {r["id"]: by_key[_key(r)] for r in copy}
        passes = [(old, p) for old in result_ids for p in self.src.passes.get(old, [])]
        pass_ids: dict[int, int] = {}
        if passes:
            self.conn.execute(
                insert(PASS),
                [{**_without_id(p), "result_id": result_ids[old]} for old, p in passes],
            )
            query = (
                select(PASS.c.id, PASS.c.result_id, PASS.c.pass_index)
                .join(RESULT, RESULT.c.id == PASS.c.result_id)
                .where(RESULT.c.run_id.in_(runs))
            )
            new_ids = {(r.result_id, r.pass_index): r.id for r in self.conn.execute(query)}
            pass_ids = {p["id"]: new_ids[(result_ids[old], p["pass_index"])] for old, p in passes}
        metrics = [
            {
                **_without_id(m),
                "result_id": result_ids[old],
                "pass_id": pass_ids[m["pass_id"]] if m["pass_id"] is not None else None,
            }
            for old in result_ids
            for m in self.src.metrics.get(old, [])
        ]
        if metrics:
            self.conn.execute(insert(METRIC), metrics)

    # -- corpus metrics, checkpoints, document frequencies, cache

    def _insert_new(self, table: Table, rows: list[dict[str, Any]]) -> int:
        """Copy the rows DEST lacks, equal in every column but the id (duplicates counted)."""
        present = Counter(_content(r) for r in self._dest_rows(table, table.c.id))
        new = []
        for row in rows:
            content = _content(row)
            if present[content]:
                present[content] -= 1
            else:
                new.append(_without_id(row))
        if new:
            self.conn.execute(insert(table), new)
            self.touched.update(r["run_id"] for r in new)
        return len(new)

    def _plan_document_frequencies(self, bad_runs: set[str]) -> list[dict[str, Any]]:
        dest = {(r["run_id"], r["n_images"]): r["sha256"]
                for r in self._dest_rows(DOC_FREQ, DOC_FREQ.c.id)}  # fmt: skip
        new = []
        for row in self.src.document_frequencies:
            key = (row["run_id"], row["n_images"])
            if row["run_id"] in bad_runs:
                continue
            if key not in dest:
                new.append(_without_id(row))
            elif dest[key] != row["sha256"]:
                self._conflict(
                    "document frequency",
                    f"CIDEr-D document frequencies of run {key[0]}'s {key[1]} planned images "
                    f"differ (sha256 {_short(dest[key])} in DEST, {_short(row['sha256'])} in SRC)",
                )
        return new

    def _merge_cache(self, rows: list[dict[str, Any]]) -> None:
        """Add missing keys; a key DEST has keeps DEST's output (either is a valid cache hit)."""
        dest: dict[str, str] = {}
        for chunk in _chunks([r["key"] for r in rows]):
            query = select(CACHE.c.key, CACHE.c.output).where(CACHE.c.key.in_(chunk))
            dest.update({k: v for k, v in self.conn.execute(query)})
        new = [r for r in rows if r["key"] not in dest]
        self.report.cache_present = sum(dest.get(r["key"]) == r["output"] for r in rows)
        self.report.cache_kept = len(rows) - len(new) - self.report.cache_present
        if new:
            self.conn.execute(insert(CACHE), new)
        self.report.cache_added = len(new)


# -- comparing rows ---------------------------------------------------------


def _key(row: Any) -> tuple[str, str, int]:
    return (row["run_id"], row["method"], row["image_id"])


def _pass_output(row: Any) -> tuple[str, ...]:
    return (row["name"], row["raw_output"], row["caption"])


def _output_difference(
    src: dict[str, Any],
    src_passes: list[tuple[str, ...]],
    dest: dict[str, Any],
    dest_passes: list[tuple[str, ...]],
) -> str | None:
    """How two successful results of one sample differ in what the model produced, if they do.

    Scores are not compared here: the same output scored against another planned
    set (the run was extended on one side) is the same result, rescored.
    """
    for column, what in (
        ("generated_caption", "other caption"),
        ("reasoning_trace", "other reasoning trace"),
        ("reference_captions", "other reference captions"),
    ):
        if src[column] != dest[column]:
            return what
    if src_passes != dest_passes:
        names = [p[0] for p in src_passes]
        if names != [p[0] for p in dest_passes]:
            return f"other passes ({', '.join(names)} in SRC)"
        pass_name = next(a[0] for a, b in zip(src_passes, dest_passes, strict=True) if a != b)
        return f"other output of pass {pass_name}"
    return None


def _score_rank(row: dict[str, Any]) -> tuple[int, int]:
    """Newer scores rank higher: against a larger planned set (CIDEr-D's N), then more metrics."""
    scoring, metrics = row["scoring"], row["metrics"]
    planned = scoring.get("cider_planned") if isinstance(scoring, dict) else None
    return (planned if isinstance(planned, int) else -1, len(metrics or {}))


def _advanced_method(dest: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """The progress fields of a method present on both sides: the further one's, widest times."""

    def rank(m: dict[str, Any]) -> tuple[int, int, datetime]:
        return (m["total_planned"], STATUS_RANK.get(m["status"], 0), m["updated_at"])

    ahead = src if rank(src) > rank(dest) else dest
    return {
        "settings": ahead["settings"],
        "total_planned": ahead["total_planned"],
        "status": ahead["status"],
        "finished_at": ahead["finished_at"],
        "started_at": min(dest["started_at"], src["started_at"]),
        "updated_at": max(dest["updated_at"], src["updated_at"]),
    }


def _short(digest: str) -> str:
    return digest[:8]


def _differences(dest: dict[str, Any], src: dict[str, Any]) -> str:
    found = diff_configs(dest, src)
    shown = "; ".join(f"{key}: {a!r} in DEST, {b!r} in SRC" for key, a, b in found[:3])
    more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
    return (shown + more) or "same settings"


def _content(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, repr(v)) for k, v in row.items() if k != "id"))


def _without_id(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "id"}


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _same_database(a: str, b: str) -> bool:
    pa, pb = sqlite_path(a), sqlite_path(b)
    if pa is not None or pb is not None:
        return pa is not None and pb is not None and pa.resolve() == pb.resolve()
    return make_url(a).render_as_string(hide_password=False) == make_url(b).render_as_string(
        hide_password=False
    )


def _mask_unparsed(value: str) -> str:
    """Mask a password even in a URL SQLAlchemy cannot parse."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", value)


def _reason(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _plural(word: str, n: int) -> str:
    if n == 1:
        return word
    return word[:-1] + "ies" if word.endswith("y") else word + "s"
