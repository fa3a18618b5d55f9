"""Small markdown helpers shared by the reports (run, sweep, hwsim, FDG)."""

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


def command_block(command: str | None) -> list[str]:
    """Lines naming the command that produced a page, as a code block (none without one)."""
    return ["Produced by:", "", "```", command, "```", ""] if command else []


def provenance_lines(command: str, versions: dict[str, str]) -> list[str]:
    """The two header lines of a hwsim report: the command and the package versions
    (each ending in a markdown line break)."""
    return [f"Command: `{command}`  ",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "  "]
