"""The command line: parse, call the library, print. The bare form is the run."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cobra_eval import __version__
from cobra_eval.errors import CobraEvalError
from cobra_eval.process_exit import freeze_heap_at_exit

F = TypeVar("F", bound=Callable[..., Any])
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def flag(name: str, *args: Any, **kwargs: Any) -> Callable[[F], F]:
    """An option spelled both --snake_case (the guide's) and --dashed-case."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return click.option(*names, name, *args, **kwargs)


def db_options(func: F) -> F:
    """--db and --output_dir: where the results database is."""
    func = flag(
        "output_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("results"),
        show_default=True,
        help="Folder of run folders; the default database is OUTPUT_DIR/cobra_eval.db.",
    )(func)
    return flag(
        "db",
        envvar="COBRA_EVAL_DB",
        metavar="URL|PATH",
        help="Results database: a SQLite file path or any SQLAlchemy URL "
        "(e.g. postgresql+psycopg://user@host/db). Env: COBRA_EVAL_DB.",
    )(func)


class _RunCommand(click.Command):
    """The `run` command, whose help (the tool's --help) ends with the other commands."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # listed from the group itself, so a new command cannot be left out of --help
        group = ctx.parent.command if ctx.parent else None
        if not isinstance(group, click.Group):
            return
        rows = [
            (name, command.get_short_help_str(limit=80))
            for name, command in group.commands.items()
            if command is not self and not command.hidden
        ]
        formatter.write_paragraph()
        formatter.write_text("Other commands (see python -m cobra_eval COMMAND --help):")
        with formatter.indentation():
            formatter.write_dl(rows)


class _DefaultToRun(click.Group):
    """A group whose bare invocation (and --help) is the `run` command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if (not args or args[0] not in self.commands) and args[:1] != ["--version"]:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToRun, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cobra_eval")
def main() -> None:
    """cobra_eval: evaluate VLM captioning methods without ever losing work."""
    freeze_heap_at_exit()


def _run_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not RUN_ID_RE.match(value):
        raise click.BadParameter(
            "use letters, digits, '.', '_' and '-' (it names a folder), at most 200 characters"
        )
    return value


def _method_choices() -> list[str]:
    from cobra_eval.methods import method_names

    return [*method_names(), "all"]


@main.command(
    "run",
    cls=_RunCommand,
    context_settings={"max_content_width": 100},
)
@flag(
    "method",
    type=click.Choice(_method_choices()),
    default="baseline",
    show_default=True,
    help="Prompting method, or 'all' to run every method in turn (each resumes on its own).",
)
@flag(
    "num_samples",
    type=click.IntRange(min=1),
    default=None,
    help="Samples to evaluate, in the dataset's order [default: all]. Raising it on a "
    "finished run extends that run.",
)
@flag(
    "checkpoint_interval",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Export a checkpoint JSON every N samples; 0 disables the JSON files (every sample "
    "is still committed to the database). Each checkpoint is a whole-run copy, so after 16*N "
    "samples the interval doubles each time the count doubles (about 8 checkpoints per "
    "doubling; see --fixed_checkpoint_interval).",
)
@flag(
    "fixed_checkpoint_interval",
    is_flag=True,
    help="Write a checkpoint at every multiple of --checkpoint_interval, however long the run. "
    "By default the interval thins out after 16 intervals: the database already holds every "
    "sample, and each checkpoint copies the whole run, so exporting every N samples would "
    "cost time and disk quadratic in the run's length (100,000 samples at N=10: 10,000 "
    "copies). Thinned, all checkpoints together cost about 12 final-size exports.",
)
@flag(
    "keep_checkpoints",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    metavar="K",
    help="Keep the newest K numbered checkpoint files of each method in a run and delete "
    "older ones once a new one is safely written; 0 keeps all. checkpoint_*_latest.json and "
    "results_*.json are never deleted, and the database keeps every sample.",
)
@flag(
    "resume_from_checkpoint",
    is_flag=True,
    help="Continue the newest run with this configuration (from the database; if it has "
    "none, from the newest checkpoint JSON under --output_dir).",
)
@flag(
    "load_results",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Import a checkpoint or final results JSON first, then continue up to --num_samples.",
)
@db_options
@flag(
    "run_id",
    callback=_run_id,
    metavar="ID",
    help="Name of the run to create, resume or extend [default: run_YYYYmmdd_HHMMSS].",
)
@flag("fresh", is_flag=True, help="Always start a new run, even if a matching one exists.")
@flag(
    "batch_size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Samples per generation call.",
)
@flag(
    "durability",
    type=click.Choice(["normal", "full"]),
    default="normal",
    show_default=True,
    help="SQLite: 'normal' keeps every committed sample through a process crash; 'full' "
    "also through a power loss or OS crash (an fsync per sample, slower). PostgreSQL "
    "keeps its server's setting.",
)
@flag(
    "workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes on this machine sharing the run (one per GPU with --devices); "
    "Ctrl-C stops them all, and --resume_from_checkpoint continues.",
)
@flag(
    "devices",
    metavar="LIST",
    help="With --workers N: one device per worker, e.g. 0,1,2,3 (GPU numbers), cuda:0, cpu.",
)
@flag(
    "lease_seconds",
    type=click.FloatRange(min=0.0, min_open=True),
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="Workers sharing a run (same --run_id, on any machine) claim samples in batches; a "
    "claim not renewed for this long (its worker crashed) is taken over. A dead worker "
    "on this machine is taken over within seconds.",
)
@flag(
    "backend",
    default="hf",
    show_default=True,
    help="Model backend: a registered name or a plugin as module:attribute.",
)
@flag(
    "api_base",
    metavar="URL",
    envvar="OPENAI_BASE_URL",
    help="--backend openai: the server's OpenAI-compatible base URL, e.g. "
    "http://localhost:8000/v1 (vLLM, SGLang, TGI, LM Studio, Ollama, hosted APIs) "
    "[env: OPENAI_BASE_URL].",
)
@flag(
    "api_key_env",
    metavar="VAR",
    default="OPENAI_API_KEY",
    show_default=True,
    help="--backend openai: the environment variable holding the API key (the key itself is "
    "never taken on the command line, logged or stored).",
)
@flag(
    "concurrency",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="--backend openai: requests in flight at once (within one batch: raise --batch_size "
    "with it).",
)
@flag(
    "request_timeout",
    type=click.FloatRange(min=0.0, min_open=True),
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="--backend openai: seconds one request may take before it is retried.",
)
@flag(
    "max_retries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="--backend openai: retries of a request after 429, 5xx or a timeout, with "
    "exponential backoff; then the sample is stored as failed (retried on resume).",
)
@flag(
    "model",
    metavar="ID|PATH",
    default="demo",
    show_default=True,
    help="Model to evaluate: a hub id, a local folder, or 'demo' (the bundled tiny model).",
)
@flag(
    "dataset",
    metavar="NAME|PATH",
    default="demo",
    show_default=True,
    help="Dataset: 'demo' (the bundled synthetic world's held-out split); a COCO captions "
    "JSON (captions_val2014.json); the Karpathy split file (dataset_coco.json); a captions "
    ".jsonl/.csv of file_name + captions; or a folder holding captions.jsonl or captions.csv "
    "and the images. Every selected sample is checked before generation.",
)
@flag(
    "images",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Folder of the dataset's images [default: the annotation file's folder].",
)
@flag(
    "split",
    help="Dataset split: for a Karpathy dataset_coco.json one of train, restval, val, test "
    "[default: test].",
)
@flag(
    "sample_seed",
    type=int,
    metavar="SEED",
    help="Take a seeded random subset instead of the first N; the order is fixed by the seed, "
    "so a larger --num_samples later extends the same subset.",
)
@flag(
    "skip_missing",
    is_flag=True,
    help="Plan without samples whose image file is missing or whose reference captions are "
    "missing or unreadable (recorded in the run) instead of refusing to start.",
)
@flag(
    "max_new_tokens",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Generation length limit.",
)
@flag(
    "temperature",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Sampling temperature; 0 = greedy decoding.",
)
@flag(
    "top_p",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Nucleus sampling mass (with temperature > 0).",
)
@flag("seed", type=int, default=0, show_default=True, help="Random seed for generation.")
@flag(
    "prompts",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help='JSON file overriding prompt templates, e.g. {"baseline": {"caption": "..."}}; '
    "see `methods --show` for the names and defaults.",
)
@click.option(
    "--llava_cot_instruction/--no_llava_cot_instruction",
    "--llava-cot-instruction/--no-llava-cot-instruction",
    default=True,
    show_default=True,
    help="Prefix llava_cot's question with the public LLaVA-CoT format instruction "
    "(switch off for models fine-tuned on the format, e.g. Llama-3.2V-11B-cot).",
)
@click.option(
    "--no_cache",
    "--no-cache",
    "no_cache",
    is_flag=True,
    help="Always generate; do not reuse (or store) generations from the cache.",
)
@flag(
    "device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    show_default=True,
    help="Where a local model runs (auto: cuda, then mps, then cpu).",
)
@flag(
    "dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Model weights' dtype (auto: bfloat16 on CUDA, else float32).",
)
@flag(
    "metrics",
    default="bleu,meteor,rouge,cider,spice",
    show_default=True,
    help="Corpus metrics printed and stored at the end of each method: a comma list of "
    "bleu, meteor, rouge, cider, spice; 'all'; or 'none'.",
)
def run_command(**opts: Any) -> None:
    """Evaluate a captioning method; every sample is committed to the database at once.

    \b
    Worked example (100 samples, a checkpoint JSON every 10):
      python -m cobra_eval --method scratchpad --num_samples 100 \\
          --checkpoint_interval 10 --dataset captions_val2017.json --images val2017/
    If it is interrupted, run the same command with --resume_from_checkpoint:
    finished samples are skipped and the run completes. Results land in
    results/<run_id>/<method>/ (checkpoint_*.json, results_<method>.json) and in
    the database (results/cobra_eval.db), which you can query with SQL.
    """
    from cobra_eval.config import GenerationParams, RunSettings
    from cobra_eval.interrupts import patient_interrupts
    from cobra_eval.metrics import parse_metric_list
    from cobra_eval.progress import generation_lines, metrics_table, reporter_for_stdout
    from cobra_eval.runner import Interrupted, run_evaluation

    generation = GenerationParams(
        max_new_tokens=opts.pop("max_new_tokens"),
        temperature=opts.pop("temperature"),
        top_p=opts.pop("top_p"),
        seed=opts.pop("seed"),
    )
    workers, devices = opts.pop("workers"), opts.pop("devices")
    try:
        opts["metrics"] = parse_metric_list(opts["metrics"])
        opts["cache"] = not opts.pop("no_cache")
        settings = RunSettings(generation=generation, **opts)
        with patient_interrupts():
            if workers > 1 or devices:
                _run_parallel(settings, workers, devices)
                return
            summary = run_evaluation(settings, reporter=reporter_for_stdout())
    except Interrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(
            "Interrupted: every committed sample is kept; run again with "
            "--resume_from_checkpoint to continue.",
            err=True,
        )
        sys.exit(130)
    except CobraEvalError as exc:
        raise click.ClickException(str(exc)) from None
    for item in summary.methods:
        failed = f", {item.failed} failed (retried on resume)" if item.failed else ""
        click.echo(
            f"Done: {item.method} {item.processed}/{item.total} samples{failed} "
            f"-> {item.final_file}"
        )
    for line in [*generation_lines(summary), *metrics_table(summary)]:
        click.echo(line)
    click.echo(f"Run {summary.run_id} in {summary.db}")


def _run_parallel(settings: Any, workers: int, devices: str | None) -> None:
    from cobra_eval.parallel import parse_devices, run_parallel, summary_lines

    outcome = run_parallel(
        settings, workers, parse_devices(devices, workers), echo=lambda t: click.echo(t)
    )
    if outcome.exit_code == 130:
        click.echo(
            f"Interrupted: every committed sample is kept in run {outcome.run_id}; continue with "
            f"--workers {workers} --run_id {outcome.run_id} --resume_from_checkpoint",
            err=True,
        )
        sys.exit(130)
    if outcome.run_id is not None:
        for line in summary_lines(settings, outcome.run_id):
            click.echo(line)
    if outcome.exit_code:
        sys.exit(outcome.exit_code)


@main.command("methods", short_help="list methods, their passes and prompt templates (--show)")
@click.option("--show", is_flag=True, help="Print every prompt template in full.")
@flag(
    "prompts",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Show the templates as this prompts file would make them.",
)
def methods_command(show: bool, prompts: Path | None) -> None:
    """List the methods with their passes and prompt templates."""
    from cobra_eval.config import fingerprint
    from cobra_eval.methods import resolve_methods
    from cobra_eval.methods.prompts import load_prompts_file

    with _errors():
        methods = resolve_methods("all", prompts=load_prompts_file(prompts))
    for method in methods:
        config = method.config()
        templates = config.get("templates", config["prompts"])
        click.echo(
            f"{method.name}: passes {', '.join(method.pass_names)}; prompts version "
            f"{config.get('prompts_version')}, config hash {fingerprint(config)}"
        )
        if show:
            for name, text in templates.items():
                click.echo(f"  [{name}]")
                for line in text.splitlines():
                    click.echo(f"    {line}")


@main.command("score", short_help="rescore a results file or a stored run without the model")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--run", "run_id", metavar="RUN", help="Rescore a stored run instead of a file.")
@flag("method", help="With --run: the method to rescore (needed when the run has several).")
@flag(
    "metrics",
    default="bleu,meteor,rouge,cider,spice",
    show_default=True,
    help="Metric groups: a comma list of bleu, meteor, rouge, cider, spice; or 'all'.",
)
@flag("per_sample", is_flag=True, help="Also print every sample's scores.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@db_options
def score_command(
    file: Path | None,
    run_id: str | None,
    method: str | None,
    metrics: str,
    per_sample: bool,
    fmt: str,
    db: str | None,
    output_dir: Path,
) -> None:
    """Score results again without the model: a checkpoint/results FILE, or a stored --run.

    With --run, the stored sample metrics and the corpus metrics (scope 'rescore')
    are updated in the database; refused while a worker is running that method.
    """
    from cobra_eval.metrics import parse_metric_list
    from cobra_eval.metrics.rescore import rescore, rescore_stored
    from cobra_eval.progress import metrics_table, unavailable_lines
    from cobra_eval.store import Store, resolve_url
    from cobra_eval.store.checkpoint_io import read_checkpoint

    with _errors():
        groups = parse_metric_list(metrics)
        if (file is None) == (run_id is None):
            raise CobraEvalError("give either a results FILE or --run RUN (not both)")
        if file is not None:
            doc = read_checkpoint(file)
            label = doc.meta.method
            scored = rescore(doc.results, groups)
        else:
            assert run_id is not None
            with Store.open(resolve_url(db, output_dir), create=False) as store:
                label = _only_method(store, run_id, method)
                scored = rescore_stored(store, run_id, label, groups)
        corpus = scored.corpus
        if corpus.n and not corpus.scores and corpus.unavailable:
            # the command's one job: a script must see that it did nothing
            why = "; ".join(unavailable_lines(corpus.unavailable))
            raise CobraEvalError(f"nothing could be scored: {why}")
    if fmt == "json":
        payload: dict[str, Any] = {
            "method": label,
            "n": scored.corpus.n,
            "corpus": scored.corpus.scores,
            "unavailable": scored.corpus.unavailable,
        }
        if per_sample:
            payload["per_sample"] = {str(k): v for k, v in scored.per_sample.items()}
        click.echo(json.dumps(payload, indent=2))
        return
    from types import SimpleNamespace

    summary = SimpleNamespace(methods=[SimpleNamespace(method=label, corpus=scored.corpus)])
    for line in metrics_table(summary):
        click.echo(line)
    if per_sample:
        names = list(scored.corpus.scores)
        click.echo("image_id  " + "  ".join(f"{n:>8}" for n in names))
        for image_id, values in scored.per_sample.items():
            cells = "  ".join(f"{values[n]:>8.3f}" if n in values else f"{'-':>8}" for n in names)
            click.echo(f"{image_id:<8}  {cells}")


def _only_method(store: Any, run_id: str, method: str | None) -> str:
    """The method of a run to act on: the one given, or the run's only one."""
    if store.get_run(run_id) is None:
        raise CobraEvalError(f"no run {run_id!r} in {store.display} (see `runs`)")
    methods = [p.method for p in store.run_methods(run_id)]
    if method is None:
        if len(methods) != 1:
            raise CobraEvalError(
                f"run {run_id} has methods {', '.join(methods)}; choose one with --method"
            )
        return methods[0]
    if method not in methods:
        raise CobraEvalError(f"run {run_id} has no method {method!r} (it has {', '.join(methods)})")
    return method


@main.command("runs", short_help="list runs with each method's progress")
@db_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def runs_command(db: str | None, output_dir: Path, fmt: str) -> None:
    """List runs, newest first, with each method's progress and who ran it."""
    from cobra_eval.store import Store, resolve_url

    with _errors(), Store.open(resolve_url(db, output_dir), create=False) as store:
        rows: list[dict[str, Any]] = []
        for run in store.runs():
            rows.append(
                {
                    "run_id": run.id,
                    "created_at": run.created_at.isoformat(timespec="seconds"),
                    "created_by": run.created_by,
                    "status": run.status,
                    "fingerprint": run.fingerprint,
                    "methods": [
                        {
                            "method": p.method,
                            "done": p.done,
                            "failed": p.failed,
                            "total": p.total_planned,
                            "status": p.status,
                        }
                        for p in store.method_progress(run.id)
                    ],
                    "workers": store.workers(run.id),
                }
            )
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No runs yet.")
        return
    header = ("RUN", "CREATED", "BY", "STATUS", "METHODS", "WORKERS")
    table: list[tuple[str, ...]] = [
        (
            r["run_id"],
            r["created_at"][:19].replace("T", " "),
            r["created_by"],
            r["status"],
            ", ".join(f"{m['method']} {m['done']}/{m['total']}" for m in r["methods"]) or "-",
            _workers_cell(r["workers"]),
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    for line in (header, *table):
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


def _workers_cell(workers: dict[str, int]) -> str:
    """'root@gpu1 x3, ann@laptop': processes per user@host that committed samples."""
    by_host: dict[str, int] = {}
    for worker in workers:
        host = worker.rsplit(":", 1)[0] if worker else "(imported)"
        by_host[host] = by_host.get(host, 0) + 1
    return ", ".join(f"{h} x{n}" if n > 1 else h for h, n in by_host.items()) or "-"


@main.command("export", short_help="write a run's results: checkpoint JSON, CSV, JSONL or Parquet")
@click.argument("run_id")
@flag(
    "method",
    help="Method to export (json: needed when the run has several; csv/jsonl/parquet: every "
    "method by default).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv", "jsonl", "parquet"]),
    default="json",
    show_default=True,
    help="json: the checkpoint file shape (importable); csv, jsonl, parquet: one row per "
    "sample and method with a column per metric.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file (atomically) instead of standard output (parquet needs it).",
)
@db_options
def export_command(
    run_id: str,
    method: str | None,
    fmt: str,
    output: Path | None,
    db: str | None,
    output_dir: Path,
) -> None:
    """Write a run's results: checkpoint-shaped JSON, or a table (CSV, JSON Lines, Parquet)."""
    from datetime import datetime

    from cobra_eval.store import Store, resolve_url
    from cobra_eval.store.checkpoint_io import write_stream_atomic
    from cobra_eval.store.snapshot_stream import open_snapshot

    if fmt != "json":
        _export_table(run_id, method, fmt, output, db, output_dir)
        return
    # streamed from one consistent read: memory does not grow with the run
    with _errors(), Store.open(resolve_url(db, output_dir), create=False) as store:
        method = _only_method(store, run_id, method)
        with open_snapshot(
            store, run_id, method, is_checkpoint=False, when=datetime.now()
        ) as snapshot:
            if output is None:
                stdout = sys.stdout.buffer
                for chunk in snapshot.chunks():
                    stdout.write(chunk)
                stdout.flush()
                return
            write_stream_atomic(output, snapshot.chunks())
            count = snapshot.count
    click.echo(f"Exported {count} results of {method} to {output}", err=True)


def _export_table(
    run_id: str, method: str | None, fmt: str, output: Path | None, db: str | None, out: Path
) -> None:
    from cobra_eval.analysis.export import render_rows, sample_rows, write_parquet
    from cobra_eval.store import Store, resolve_url
    from cobra_eval.store.checkpoint_io import write_atomic

    with _errors():
        if fmt == "parquet" and output is None:
            raise CobraEvalError("--format parquet writes a binary file: give --output FILE")
        with Store.open(resolve_url(db, out), create=False) as store:
            methods = (
                [_only_method(store, run_id, method)]
                if method
                else [p.method for p in store.run_methods(run_id)]
            )
            if not methods:
                _only_method(store, run_id, None)  # the clear error for an unknown run
            rows = sample_rows(store, run_id, methods)
        if fmt == "parquet":
            assert output is not None
            write_parquet(rows, output)
        elif output is None:
            click.echo(render_rows(rows, fmt).decode(), nl=False)
            return
        else:
            write_atomic(output, render_rows(rows, fmt))
    click.echo(f"Exported {len(rows)} rows ({', '.join(methods)}) to {output}", err=True)


@main.command("query", short_help="run one read-only SQL statement and print the rows")
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@db_options
def query_command(sql: str, fmt: str, db: str | None, output_dir: Path) -> None:
    """Run one read-only SQL statement on the results database and print the rows.

    SQL is the statement, or - to read it from standard input.

    \b
    The connection cannot write: SQLite is opened read-only and only reading is
    authorised; PostgreSQL runs the statement alone in a READ ONLY transaction.
    Example: python -m cobra_eval query "SELECT method, AVG(value) FROM metric_value
      JOIN sample_result r ON r.id = result_id WHERE name = 'CIDEr' AND pass_id IS NULL
      GROUP BY method"  (see the README for more)
    """
    from cobra_eval.analysis.query import format_result, run_query
    from cobra_eval.store import resolve_url

    if sql == "-":
        sql = sys.stdin.read()
    with _errors():
        result = run_query(resolve_url(db, output_dir), sql)
    click.echo(format_result(result, fmt), nl=False)


@main.command("compare", short_help="compare methods (or two runs) with paired bootstrap intervals")
@click.option("--run", "run_id", required=True, metavar="RUN",
              help="The run whose methods are compared (side A).")  # fmt: skip
@flag(
    "methods",
    metavar="A,B",
    help="Comma list of methods of RUN: the first against each other one. Default: the run's "
    "first method against each other method; with --against, the methods both runs have.",
)
@flag(
    "against",
    metavar="RUN2",
    help="Compare each method of RUN with the same method in RUN2 (side B) instead of with "
    "each other.",
)
@flag(
    "bootstrap",
    type=click.IntRange(min=100),
    default=1000,
    show_default=True,
    help="Resamples of the shared images for the 95% interval.",
)
@flag(
    "seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the resampling: the same seed gives the same intervals.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@db_options
def compare_command(
    run_id: str,
    methods: str | None,
    against: str | None,
    bootstrap: int,
    seed: int,
    fmt: str,
    db: str | None,
    output_dir: Path,
) -> None:
    """Compare methods of a run, or one method across two runs, on the images both scored.

    Per metric: each side's score, B - A, a paired bootstrap 95% interval and
    per-image wins/ties/losses. BLEU, ROUGE-L and CIDEr-D are corpus scores,
    recomputed for every resample; METEOR is the mean of per-image scores
    (level sample_mean), because its corpus score needs the Java scorer.
    """
    from cobra_eval.analysis.compare import compare_run, comparison_table
    from cobra_eval.store import Store, resolve_url

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    with _errors(), Store.open(resolve_url(db, output_dir), create=False) as store:
        comparisons = compare_run(
            store, run_id, methods=chosen, against=against, bootstrap=bootstrap, seed=seed
        )
    if fmt == "json":
        click.echo(json.dumps([c.as_dict() for c in comparisons], indent=2))
        return
    for line in comparison_table(comparisons):
        click.echo(line)


@main.command("report", short_help="write a self-contained HTML report of a run")
@click.argument("run_id", metavar="RUN")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write it [default: OUTPUT_DIR/RUN/report.html].",
)
@flag(
    "bootstrap",
    type=click.IntRange(min=100),
    default=1000,
    show_default=True,
    help="Bootstrap resamples behind every interval.",
)
@flag(
    "no_thumbnails",
    is_flag=True,
    help="Leave the image thumbnails out (about 2 kB per image otherwise).",
)
@db_options
def report_command(
    run_id: str,
    output: Path | None,
    bootstrap: int,
    no_thumbnails: bool,
    db: str | None,
    output_dir: Path,
) -> None:
    """Write a self-contained HTML report of RUN, viewable without a network.

    Provenance, corpus metrics with 95% bootstrap intervals (plot and table), the
    paired method comparison, and a searchable, sortable, paged gallery of every
    sample with its thumbnail, references, captions, metrics, reasoning and passes.
    """
    from cobra_eval.analysis.report import build_report
    from cobra_eval.store import Store, resolve_url

    target = output or output_dir / run_id / "report.html"
    with _errors(), Store.open(resolve_url(db, output_dir), create=False) as store:
        _only_method(store, run_id, next(iter(p.method for p in store.run_methods(run_id)), None))
        path = build_report(
            store, run_id, target, bootstrap=bootstrap, thumbnails=not no_thumbnails
        )
    click.echo(f"Report of run {run_id} written to {path}")


@main.command("import", short_help="load a checkpoint/results JSON into the database")
@click.argument("file", type=click.Path(path_type=Path))
@flag(
    "run_id",
    callback=_run_id,
    metavar="ID",
    help="Import into this run (created if new) instead of the file's own run id.",
)
@db_options
def import_command(file: Path, run_id: str | None, db: str | None, output_dir: Path) -> None:
    """Load a checkpoint or results JSON into the database without running anything.

    Prints the id of the run it created or extended on standard output.
    """
    from cobra_eval.store import Store, resolve_url
    from cobra_eval.store.checkpoint_io import read_checkpoint
    from cobra_eval.store.snapshots import import_document

    with _errors():
        doc = read_checkpoint(file)
        with Store.open(resolve_url(db, output_dir)) as store:
            summary = import_document(store, doc, run_id=run_id, source=str(file))
    verb = "created" if summary.created_run else "extended"
    click.echo(
        f"Imported {summary.imported} results of {summary.method} ({summary.skipped} already "
        f"stored); {verb} run {summary.run_id}",
        err=True,
    )
    click.echo(summary.run_id)


@main.group("db", short_help="upgrade | current: the database schema")
def db_group() -> None:
    """The results database schema (Alembic migrations shipped with the tool)."""


@db_group.command("upgrade")
@db_options
def db_upgrade(db: str | None, output_dir: Path) -> None:
    """Create the database, or bring its schema to this version's head."""
    from cobra_eval.store import mask_url, resolve_url
    from cobra_eval.store.engine import current_revision, head_revision, open_engine

    with _errors():
        url = resolve_url(db, output_dir)
        before = current_revision(url)
        open_engine(url).dispose()
    click.echo(f"{mask_url(url)}: schema {before or 'empty'} -> {head_revision()} (head)")


@db_group.command("current")
@db_options
def db_current(db: str | None, output_dir: Path) -> None:
    """Show the database's schema revision and this version's head, changing nothing."""
    from cobra_eval.store import mask_url, resolve_url
    from cobra_eval.store.engine import current_revision, head_revision

    with _errors():
        url = resolve_url(db, output_dir)
        revision = current_revision(url)
    state = "up to date" if revision == head_revision() else "needs `db upgrade`"
    click.echo(f"{mask_url(url)}: schema {revision or 'empty'} (head {head_revision()}, {state})")


@main.command("merge", short_help="SRC DEST: copy runs into another database (laptop -> team DB)")
@click.argument("src", metavar="SRC")
@click.argument("dest", metavar="DEST")
@click.option(
    "--run",
    "run_ids",
    multiple=True,
    metavar="RUN",
    help="Merge only this run (repeatable); the generation cache is then left out.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format of the report.",
)
def merge_command(src: str, dest: str, run_ids: tuple[str, ...], fmt: str) -> None:
    """Merge the runs of database SRC into DEST, all or nothing; SRC is only read.

    SRC and DEST are SQLite file paths or SQLAlchemy URLs, e.g. a laptop's
    results/cobra_eval.db into postgresql+psycopg://user@host/team. A run or
    method with another configuration, or a sample with another output, refuses
    the whole merge with a list of the conflicts, and DEST is left unchanged.
    Merging again adds only what is new.
    """
    from cobra_eval.store.merge import merge_databases

    with _errors():
        report = merge_databases(src, dest, run_ids=list(run_ids) or None)
    if fmt == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    for line in report.lines():
        click.echo(line)


class _errors:
    """Turn our errors (and OS errors on user paths) into one clean CLI message."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        if isinstance(exc, CobraEvalError):
            raise click.ClickException(str(exc)) from None
        if isinstance(exc, OSError) and exc.filename is not None:
            raise click.ClickException(f"{exc.filename}: {exc.strerror}") from None
