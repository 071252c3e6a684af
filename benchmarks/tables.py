"""Tables of benchmark records: one row per group of runs that differ only by their seed, mean ± sd.

A record is a flat dict (one run); ``group`` names the keys that identify a row (the seed is not among
them), ``values`` the numeric keys averaged over the group's seeds. Written as CSV (numbers) and as a
Markdown table (the text docs quote).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation of the finite values; NaN, NaN when there are none; sd NaN
    for one value."""
    v = np.array([x for x in values if x is not None and math.isfinite(float(x))], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), (float(v.std()) if v.size > 1 else math.nan)


def seed_rows(records: Sequence[dict[str, Any]], group: Sequence[str], values: Sequence[str],
              sort_key: Optional[Callable[[tuple[Any, ...]], Any]] = None) -> list[dict[str, Any]]:
    """One row per distinct ``group`` key tuple (first-seen order, or sorted by ``sort_key`` of the tuple):
    the group keys, ``seeds`` (how many runs), and ``(mean, sd)`` per value key."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in group), []).append(r)
    keys = list(groups)
    if sort_key is not None:
        keys.sort(key=sort_key)
    rows = []
    for key in keys:
        rs = groups[key]
        row: dict[str, Any] = dict(zip(group, key))
        row["seeds"] = len(rs)
        for v in values:
            row[v] = mean_sd([r.get(v) for r in rs])
        rows.append(row)
    return rows


def cell(value: Any, fmt: str = "{:.4g}") -> str:
    """A table cell: ``mean ± sd`` for a ``(mean, sd)`` pair (``mean`` alone for one seed), else ``str``."""
    if isinstance(value, tuple):
        mean, sd = value
        if not math.isfinite(mean):
            return "–"
        return fmt.format(mean) + (f" ± {fmt.format(sd)}" if math.isfinite(sd) else "")
    return str(value)


def write_tables(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], stem: Path) -> str:
    """Write ``stem.csv`` (means and sds as separate columns) and ``stem.md`` (a Markdown table) of ``rows``;
    ``columns``: ``(key, header, format)``. Returns the Markdown text."""
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        header: list[str] = []
        for key, _, _ in columns:
            header += [key, f"{key}_sd"] if isinstance(rows[0][key], tuple) else [key]
        writer.writerow(header)
        for r in rows:
            line: list[Any] = []
            for key, _, _ in columns:
                line += list(r[key]) if isinstance(r[key], tuple) else [r[key]]
            writer.writerow(line)
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r[k], fmt) for k, _, fmt in columns) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    return text
