"""Small markdown helpers shared by the run report and the sweep report."""

from __future__ import annotations

import math
from typing import Any, Sequence


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: floats with ``digits`` decimals (``nan`` for missing), the rest as str."""
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned."""
    def align(col: int) -> str:
        numeric = all(isinstance(r[col], (int, float)) for r in rows if r[col] not in (None, ""))
        return "---:" if rows and numeric else "---"

    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "| " + " | ".join(align(i) for i in range(len(headers))) + " |"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in r) + " |" for r in rows]
    return "\n".join(lines)
