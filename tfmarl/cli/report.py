"""Plain-text tables for terminal reports."""

from __future__ import annotations


def format_table(rows: list[dict], columns: list[str], floatfmt: str = "{:.4f}") -> str:
    """Renders ``rows`` (dicts) as an aligned text table with the given columns."""
    def cell(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(b) for b in body])


def markdown_table(rows: list[dict], columns: list[str], floatfmt: str = "{:.4f}") -> str:
    """Renders ``rows`` as a GitHub-flavoured Markdown table."""
    def cell(v):
        return floatfmt.format(v) if isinstance(v, float) else ("" if v is None else str(v))

    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)
