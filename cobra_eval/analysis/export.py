"""Tabular exports of a run: one row per sample and method, a column per metric.

CSV and JSON Lines need nothing else; Parquet goes through pandas + pyarrow
(``pip install 'cobra_eval[parquet]'``). The seed's checkpoint-shaped JSON is
written by the snapshot code (``store/snapshots.py``), not here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cobra_eval.errors import CobraEvalError
from cobra_eval.metrics import METRIC_GROUPS
from cobra_eval.store.checkpoint_io import write_atomic
from cobra_eval.store.repository import PLAN, RESULT, Store

TABULAR_FORMATS = ("csv", "jsonl", "parquet")
#: Metric columns in this order first; any other metric follows alphabetically.
KNOWN_METRICS = [key for keys in METRIC_GROUPS.values() for key in keys]


def sample_rows(store: Store, run_id: str, methods: Sequence[str]) -> list[dict[str, Any]]:
    """Every result of these methods in plan order: fields, parse status and metric columns."""
    position = (
        select(PLAN.c.position)
        .where(PLAN.c.run_id == RESULT.c.run_id, PLAN.c.image_id == RESULT.c.image_id)
        .scalar_subquery()
    )
    query = (
        select(RESULT, position.label("position"))
        .where(RESULT.c.run_id == run_id, RESULT.c.method.in_(list(methods)))
        .order_by(func.coalesce(position, 2**62), RESULT.c.image_id)
    )
    with store.reader.connect() as conn:
        found = conn.execute(query).mappings().all()
    order = {m: k for k, m in enumerate(methods)}
    found = sorted(found, key=lambda r: (order[r["method"]],))  # stable: plan order within
    present = {k for r in found for k in (r["metrics"] or {})}
    names = sorted(present, key=lambda k: (KNOWN_METRICS.index(k) if k in KNOWN_METRICS else 99, k))
    rows = []
    for r in found:
        metadata = r["metadata"] or {}
        row: dict[str, Any] = {
            "run_id": r["run_id"],
            "method": r["method"],
            "image_id": r["image_id"],
            "position": r["position"],
            "status": r["status"],
            "error": r["error"],
            "generated_caption": r["generated_caption"],
            "reasoning_trace": r["reasoning_trace"],
            "reference_captions": list(r["reference_captions"] or []),
            "parse_status": metadata.get("parse_status"),
            "cached": metadata.get("cached"),
            "worker": r["worker"],
            "latency_s": r["latency_s"],
            "created_at": r["created_at"].isoformat() if r["created_at"] else None,
        }
        metrics = r["metrics"] or {}
        row.update({name: metrics.get(name) for name in names})
        rows.append(row)
    return rows


def render_rows(rows: Sequence[dict[str, Any]], fmt: str) -> bytes:
    """CSV (lists as JSON text) or JSON Lines bytes of the rows."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt == "csv":
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list)
                                 else v for k, v in r.items()})  # fmt: skip
        return out.getvalue().encode()
    raise ValueError(f"not a text format: {fmt}")


def write_parquet(rows: Sequence[dict[str, Any]], output: Path) -> None:
    """A Parquet file of the rows (reference_captions as a list column)."""
    try:
        import pandas as pd
    except ImportError:
        raise CobraEvalError(
            "--format parquet needs pandas and pyarrow: pip install 'cobra_eval[parquet]'"
        ) from None
    frame = pd.DataFrame(list(rows))
    buffer = io.BytesIO()
    try:
        frame.to_parquet(buffer, index=False)
    except ImportError:
        raise CobraEvalError(
            "--format parquet needs pyarrow: pip install 'cobra_eval[parquet]'"
        ) from None
    write_atomic(output, buffer.getvalue())
