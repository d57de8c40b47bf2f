"""Moving results between the database and the JSON contract: export and import."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from cobra_eval import __version__
from cobra_eval.config import (
    SETTINGS_KEY,
    diff_configs,
    fingerprint,
    method_part,
    run_part,
    semantic,
)
from cobra_eval.errors import ConfigMismatchError, StoreError
from cobra_eval.store.checkpoint_io import (
    CheckpointFile,
    checkpoint_name,
    final_name,
    latest_name,
    link_atomic,
    method_dir,
    remove_stale_temps,
    write_stream_atomic,
)
from cobra_eval.store.checkpoint_schedule import DEFAULT_KEEP, prune_snapshots, scheduled_count
from cobra_eval.store.engine import user_at_host, worker_identity
from cobra_eval.store.models import utcnow
from cobra_eval.store.repository import (
    RUN,
    RUN_METHOD,
    Store,
)
from cobra_eval.store.result_writer import CommitItem, write_results
from cobra_eval.store.scores import record_corpus_metrics
from cobra_eval.store.snapshot_stream import WrittenItems, open_snapshot


@dataclass(frozen=True)
class ExportedFile:
    """A JSON file written from the database."""

    path: Path
    count: int
    size: int
    sha256: str
    #: where its results lie, for the next checkpoint to copy (None: not reusable)
    items: WrittenItems | None = None
    #: results copied from the earlier snapshot rather than serialised
    reused: int = 0


@dataclass(frozen=True)
class ImportSummary:
    """What an import did."""

    run_id: str
    method: str
    imported: int
    skipped: int
    created_run: bool


def export_snapshot(
    store: Store,
    output_dir: Path,
    run_id: str,
    method: str,
    *,
    is_checkpoint: bool,
    when: datetime | None = None,
    keep: int = DEFAULT_KEEP,
    earlier: WrittenItems | None = None,
) -> ExportedFile:
    """Write a checkpoint (numbered + latest) or the final results file atomically; record it.

    The document is streamed from one consistent read of the database to a temp
    file (hashed as it is written), fsynced and renamed; ``latest`` becomes a hard
    link to the numbered file (a copy where links are not supported). Then the
    method's numbered snapshots beyond the newest keep are deleted (0 keeps all).
    earlier (the ``items`` of this method's previous export) lets the results
    it holds be copied instead of serialised again, when they are unchanged.
    """
    when = when or datetime.now()
    folder = method_dir(output_dir, run_id, method)
    with open_snapshot(
        store, run_id, method, is_checkpoint=is_checkpoint, when=when, earlier=earlier
    ) as snapshot:
        count = snapshot.count
        name = checkpoint_name(method, count, when) if is_checkpoint else final_name(method)
        path = folder / name
        try:
            # a checkpoint's folder is fsynced once, after latest's rename too
            size, digest = write_stream_atomic(
                path, snapshot.chunks(), sync_folder=not is_checkpoint
            )
            items = snapshot.written_items(path, size)
            if is_checkpoint:
                link_atomic(path, folder / latest_name(method))
        except OSError as exc:
            # a full disk or a folder that became read-only: the samples are safe in the database
            raise StoreError(
                f"cannot write {path}: {exc.strerror or exc}; every sample is still in the "
                f"database ({store.display}) and no partial file was left; free the space or "
                "fix the folder, then run again with --resume_from_checkpoint (the missed file "
                "is written then)"
            ) from None
    store.record_checkpoint(
        run_id,
        method,
        count=count,
        path=str(path),
        size=size,
        sha256=digest,
        is_final=not is_checkpoint,
    )
    if is_checkpoint:
        prune_snapshots(folder, method, keep, current=path)
    return ExportedFile(
        path=path, count=count, size=size, sha256=digest, items=items, reused=snapshot.reused
    )


def prepare_method_folder(output_dir: Path, run_id: str, method: str) -> list[Path]:
    """Create the method's folder and clear temp files of writers that died; returns those."""
    folder = method_dir(output_dir, run_id, method)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create output folder {folder}: {exc.strerror}") from None
    return remove_stale_temps(folder)


def check_output_folder(output_dir: Path) -> None:
    """Refuse an output folder that cannot be written, before the run stores anything.

    Probes the folder (or, if it does not exist yet, the nearest existing folder
    above it, where it would be created) with an unnamed temp file: creates nothing.
    """
    folder = output_dir.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise StoreError(f"cannot write to output folder {output_dir}: {exc.strerror}") from None


def catch_up_checkpoint(
    store: Store,
    output_dir: Path,
    run_id: str,
    method: str,
    *,
    interval: int,
    processed: int,
    fixed: bool = False,
    keep: int = DEFAULT_KEEP,
) -> ExportedFile | None:
    """Write the checkpoint a crash skipped (killed between a commit and its export)."""
    due = scheduled_count(processed, interval, fixed=fixed)
    if not due or store.last_checkpoint_count(run_id, method) >= due:
        return None
    return export_snapshot(store, output_dir, run_id, method, is_checkpoint=True, keep=keep)


def check_file_config(
    doc: CheckpointFile,
    current: dict[str, Any],
    source: str,
    method: str | None = None,
    *,
    hint: str = "Run with the same settings, or start over with --fresh.",
) -> None:
    """Refuse a file made by another method or another semantic config (hint: what to do)."""
    if method is not None and doc.meta.method != method:
        raise ConfigMismatchError(
            f"{source}",
            [("method", doc.meta.method, method)],
            hint=f"it holds results of method {doc.meta.method!r}; run with "
            f"--method {doc.meta.method} to continue it",
        )
    differences = diff_configs(semantic(doc.meta.config), semantic(current))
    if differences:
        raise ConfigMismatchError(source, differences, hint=hint)


def import_document(
    store: Store, doc: CheckpointFile, *, run_id: str | None = None, source: str = "file"
) -> ImportSummary:
    """Import a validated file into a run, all or nothing.

    The run is run_id, else the file's meta.run_id, else a new one. An existing
    run or method must have the file's configuration. Results already stored
    successfully are kept (the database is the truth); failed ones are replaced.
    """
    config = semantic(doc.meta.config)
    run_cfg, method_cfg = run_part(config), method_part(config)
    method = doc.meta.method
    target = run_id or doc.meta.run_id
    worker = worker_identity()
    fresh_id = None if target else _fresh_id(store)
    with store.engine.begin() as conn:
        run = (
            conn.execute(select(RUN).where(RUN.c.id == target)).mappings().first()
            if target
            else None
        )
        created = run is None
        if run is None:
            target = target or fresh_id
            conn.execute(
                insert(RUN).values(
                    id=target,
                    created_at=utcnow(),
                    created_by=user_at_host(),
                    tool_version=__version__,
                    config=run_cfg,
                    fingerprint=fingerprint(run_cfg),
                    status="interrupted",
                )
            )
        elif run["fingerprint"] != fingerprint(run_cfg):
            raise ConfigMismatchError(
                f"{source} (run {target})",
                diff_configs(run["config"], run_cfg),
                hint="Import it into another run with --run_id NEW_ID.",
            )
        existing = (
            conn.execute(
                select(RUN_METHOD).where(
                    RUN_METHOD.c.run_id == target, RUN_METHOD.c.method == method
                )
            )
            .mappings()
            .first()
        )
        if existing is None:
            now = utcnow()
            conn.execute(
                insert(RUN_METHOD).values(
                    run_id=target,
                    method=method,
                    config=method_cfg,
                    fingerprint=fingerprint(method_cfg),
                    settings=doc.meta.config.get(SETTINGS_KEY) or {},
                    total_planned=doc.meta.total_samples,
                    status="interrupted",
                    started_at=now,
                    updated_at=now,
                )
            )
        elif existing["fingerprint"] != fingerprint(method_cfg):
            raise ConfigMismatchError(
                f"{source} (run {target}, method {method})",
                diff_configs({"method": existing["config"]}, {"method": method_cfg}),
            )
        assert target is not None
        store.append_to_plan(conn, target, (r.image_id for r in doc.results))
        written = write_results(
            conn, target, method, [CommitItem(r) for r in doc.results], worker=worker
        )
        imported = sum(written)
        skipped = len(written) - imported
    if doc.corpus_metrics is not None and not skipped:
        # the file's scores describe the imported set only when nothing else was kept
        record_corpus_metrics(
            store, target, method, doc.corpus_metrics.scores,
            n=doc.corpus_metrics.n_samples, scope=doc.corpus_metrics.scope,
        )  # fmt: skip
    _finish_if_complete(store, target, method)
    return ImportSummary(target, method, imported, skipped, created)


def _finish_if_complete(store: Store, run_id: str, method: str) -> None:
    """An imported method with every planned sample is finished, as a run would leave it;
    and its run, once every method is. A method a worker is running is left to it."""
    methods = store.run_methods(run_id)
    info = next(m for m in methods if m.method == method)
    if info.status != "interrupted":
        return
    total = info.total_planned
    if store.count_results(run_id, method, limit=total) < total:
        return
    store.set_method_status(run_id, method, "finished")
    if all(m.status == "finished" for m in methods if m.method != method):
        store.set_run_status(run_id, "finished")


def _fresh_id(store: Store) -> str:
    return store.unused_run_id("run_" + datetime.now().strftime("%Y%m%d_%H%M%S"))
