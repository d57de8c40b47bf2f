"""When periodic snapshots are written, and how many of them are kept.

Every sample is committed to the database; a checkpoint JSON is a whole-run
copy. Writing one every N samples costs O(total²) over a long run (10,000
exports of up to 100,000 results at N = 10), so the schedule thins out: every
N samples up to 16·N, then the effective interval doubles each time the count
doubles (about 8 snapshots per doubling). The exports of a whole run then cost
about 12 times one final export, whatever its length. Retention keeps the
newest K numbered snapshots of a method; ``latest`` and the final results file
are never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

from cobra_eval.store.checkpoint_io import parse_numbered

#: Checkpoints come every interval until this many intervals; then ~8 per doubling.
FULL_RATE_INTERVALS = 16
#: --keep_checkpoints default: numbered snapshots kept per method and run (0 keeps all).
DEFAULT_KEEP = 10


def checkpoint_step(count: int, interval: int) -> int:
    """The effective interval at count: interval up to 16 intervals, then doubling.

    step(c) = interval · 2^max(0, floor(log2(c / (8 · interval)))): interval below
    16 intervals, 2·interval from 16 to 32 intervals, 4·interval from 32 to 64, ...
    """
    if interval <= 0:
        raise ValueError("interval must be positive")
    # floor(log2(x)) of a real x >= 1 is that of its integer part: no floating point
    doublings = (count // (FULL_RATE_INTERVALS // 2 * interval)).bit_length() - 1
    return interval << max(doublings, 0)


def scheduled_count(processed: int, interval: int, *, fixed: bool = False) -> int:
    """The largest scheduled checkpoint count <= processed (0 if none, or interval 0).

    fixed schedules every multiple of interval (--fixed_checkpoint_interval).
    A pure function of its arguments: every worker and every resume agree on it.
    """
    if interval <= 0 or processed <= 0:
        return 0
    step = interval if fixed else checkpoint_step(processed, interval)
    # the band of `processed` starts at a multiple of its step: the result stays in it
    return processed // step * step


def is_scheduled(count: int, interval: int, *, fixed: bool = False) -> bool:
    """Whether a checkpoint is due exactly at count."""
    return count > 0 and scheduled_count(count, interval, fixed=fixed) == count


def prune_snapshots(
    folder: Path, method: str, keep: int, *, current: Path | None = None
) -> list[Path]:
    """Delete this method's numbered snapshots in folder beyond the newest keep (by count).

    Only regular files named checkpoint_{method}_{count}_{stamp}.json are candidates:
    ``latest``, final results, other methods' files, links and anything else stay.
    current (the snapshot just written) is never deleted. keep 0 keeps all.
    Returns the deleted paths.
    """
    if keep <= 0:
        return []
    found: list[tuple[int, str, str]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        numbered = parse_numbered(entry.name, method)
        if numbered is None:
            continue
        try:
            regular = entry.is_file(follow_symlinks=False)
        except OSError:
            continue
        if regular:
            # the stamp (YYYYmmdd_HHMMSS) orders snapshots of one count
            found.append((*numbered, entry.name))
    found.sort(reverse=True)
    removed = []
    for _, _, name in found[keep:]:
        path = folder / name
        if current is not None and path == current:
            continue
        try:
            path.unlink()
        except OSError:
            # gone already (another worker pruned it) or not ours to delete: the next
            # export tries again; a snapshot left over costs disk space, nothing else
            continue
        removed.append(path)
    return removed
