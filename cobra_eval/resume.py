"""Which run an invocation works on: new, named, resumed from the DB, or rebuilt from JSON."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from cobra_eval.config import SETTINGS_KEY, RunSettings, diff_configs, fingerprint
from cobra_eval.errors import CheckpointFileError, ConfigError, ConfigMismatchError, StoreError
from cobra_eval.progress import Reporter
from cobra_eval.store import RunInfo, Store
from cobra_eval.store.checkpoint_io import find_candidates, read_checkpoint
from cobra_eval.store.snapshots import check_file_config, check_output_folder, import_document

FRESH_HINT = "Run with the same settings to continue it, or start a new run with --fresh."
#: --fresh cannot be combined with --load_results: the way to a new run is without the file.
LOAD_HINT = (
    "Run with the settings it was made with to continue it, or leave out --load_results "
    "to start a new run."
)


def current_config(
    run_cfg: dict[str, Any], method_cfg: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """The full config of one method as it appears in exports."""
    return {**run_cfg, "method": method_cfg, SETTINGS_KEY: settings}


def resolve_run(
    store: Store,
    settings: RunSettings,
    run_cfg: dict[str, Any],
    method_cfgs: dict[str, dict[str, Any]],
    reporter: Reporter,
) -> tuple[RunInfo, bool]:
    """The run to work on, and whether earlier work was found for it.

    Nothing is written until every configuration check has passed.
    """
    if settings.fresh and (settings.resume_from_checkpoint or settings.load_results):
        raise ConfigError(
            "--fresh starts a new run; it cannot be combined with resuming or loading"
        )
    # a run that cannot write its JSON files would be left in the database, started and empty
    check_output_folder(settings.output_dir)
    run_fp = fingerprint(run_cfg)
    if settings.load_results is not None:
        return _load_file(store, settings, run_cfg, method_cfgs, reporter), True
    if settings.run_id:
        run = store.get_run(settings.run_id)
        if run is not None:
            if settings.fresh:
                raise ConfigError(
                    f"run {settings.run_id!r} already exists in {store.display}; "
                    "--fresh needs a new --run_id (or none)"
                )
            _check_run(store, run, run_cfg, method_cfgs)
            reporter.message(f"Found checkpoint: run {run.id} in {store.display}")
            return run, True
        if settings.resume_from_checkpoint:
            run = _rebuild_from_json(store, settings, run_cfg, method_cfgs, reporter)
            if run is not None:
                return run, True
        try:
            run = store.create_run(settings.run_id, run_cfg, run_fp)
        except StoreError:
            # another worker started the same --run_id a moment ago: join it
            run = store.get_run(settings.run_id)
            if run is None:
                raise
            _check_run(store, run, run_cfg, method_cfgs)
            reporter.message(f"Joining run {run.id} in {store.display}")
            return run, True
        if settings.resume_from_checkpoint:
            # a mistyped --run_id must not pass for a resume
            reporter.message(
                f"No checkpoint of run {run.id} found in {settings.output_dir} or "
                f"{store.display}; starting it as a new run"
            )
        return run, False
    if settings.resume_from_checkpoint:
        mismatch: ConfigMismatchError | None = None
        for run in store.runs(fingerprint=run_fp):
            try:
                _check_run(store, run, run_cfg, method_cfgs)
            except ConfigMismatchError as exc:
                mismatch = mismatch or exc
                continue
            reporter.message(f"Found checkpoint: run {run.id} in {store.display}")
            return run, True
        run = _rebuild_from_json(store, settings, run_cfg, method_cfgs, reporter)
        if run is not None:
            return run, True
        if mismatch is None:
            mismatch = _newest_local_mismatch(store, settings.output_dir, run_cfg, method_cfgs)
        if mismatch is not None:
            raise mismatch
        reporter.message(
            f"No checkpoint found in {settings.output_dir} or {store.display}; starting a new run"
        )
    return store.create_run(_new_id(store), run_cfg, run_fp), False


def _new_id(store: Store) -> str:
    return store.unused_run_id("run_" + datetime.now().strftime("%Y%m%d_%H%M%S"))


def _check_run(
    store: Store, run: RunInfo, run_cfg: dict[str, Any], method_cfgs: dict[str, dict[str, Any]]
) -> None:
    differences = (
        diff_configs(run.config, run_cfg) if run.fingerprint != fingerprint(run_cfg) else []
    )
    for progress in store.run_methods(run.id):
        cfg = method_cfgs.get(progress.method)
        if cfg is not None and progress.fingerprint != fingerprint(cfg):
            differences += diff_configs({"method": progress.config}, {"method": cfg})
    if differences:
        raise ConfigMismatchError(f"Run {run.id} in {store.display}", differences, hint=FRESH_HINT)


def _newest_local_mismatch(
    store: Store, output_dir: Path, run_cfg: dict[str, Any], method_cfgs: dict[str, dict[str, Any]]
) -> ConfigMismatchError | None:
    """A run of this output folder that differs: resuming it by mistake must be refused."""
    for run in store.runs():
        if (output_dir / run.id).is_dir() and any(
            m.method in method_cfgs for m in store.run_methods(run.id)
        ):
            try:
                _check_run(store, run, run_cfg, method_cfgs)
            except ConfigMismatchError as exc:
                return exc
    return None


def _load_file(
    store: Store,
    settings: RunSettings,
    run_cfg: dict[str, Any],
    method_cfgs: dict[str, dict[str, Any]],
    reporter: Reporter,
) -> RunInfo:
    path = settings.load_results
    assert path is not None
    doc = read_checkpoint(path)
    if doc.meta.method not in method_cfgs:
        raise ConfigMismatchError(
            str(path),
            [("method", doc.meta.method, settings.method)],
            hint=f"It holds results of method {doc.meta.method!r}; "
            f"run with --method {doc.meta.method} to continue it.",
        )
    method = doc.meta.method
    current = current_config(run_cfg, method_cfgs[method], {})
    check_file_config(doc, current, str(path), hint=LOAD_HINT)
    reporter.message(f"Found checkpoint: {path.name}")
    summary = import_document(store, doc, run_id=settings.run_id, source=str(path))
    run = store.get_run(summary.run_id)
    assert run is not None
    _check_run(store, run, run_cfg, method_cfgs)
    return run


def _rebuild_from_json(
    store: Store,
    settings: RunSettings,
    run_cfg: dict[str, Any],
    method_cfgs: dict[str, dict[str, Any]],
    reporter: Reporter,
) -> RunInfo | None:
    """Import the newest matching JSON of each method (the DB was lost or is new)."""
    root = settings.output_dir
    run_id = settings.run_id
    first_mismatch: ConfigMismatchError | None = None
    for method, method_cfg in method_cfgs.items():
        current = current_config(run_cfg, method_cfg, {})
        for path in find_candidates(root, method):
            if settings.run_id and path.parent.parent.name != settings.run_id:
                continue
            try:
                doc = read_checkpoint(path)
                check_file_config(doc, current, str(path), method=method)
            except CheckpointFileError as exc:
                reporter.message(f"Skipping unreadable checkpoint: {exc}")
                continue
            except ConfigMismatchError as exc:
                first_mismatch = first_mismatch or exc
                continue
            reporter.message(f"Found checkpoint: {path.name}")
            run_id = import_document(store, doc, run_id=run_id, source=str(path)).run_id
            break
    if run_id is not None and (run := store.get_run(run_id)) is not None:
        return run
    if first_mismatch is not None:
        raise first_mismatch
    return None
