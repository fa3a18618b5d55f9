"""Reading markdown tables back out of generated reports."""


def markdown_table_rows(md: str, header_start: str) -> list[list[str]]:
    """Cells of the markdown table whose header row starts with ``| header_start``."""
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows
