"""``history.csv``: one row per epoch, written by the trainer after every epoch
(atomically), read back by reports and the sweep. Writer and reader live together
so the format has one owner."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .files import atomic_write_text


def write_history(path: Path, history: list[dict]) -> None:
    """Rows as CSV; the columns are the union of every row's keys, in first-seen order."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """``history.csv`` as a list of rows with numbers parsed (empty cells -> None)."""
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
