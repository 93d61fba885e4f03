"""Extracting README.md's fenced code blocks, and the small generated files its snippets read.

Used by tests/test_readme.py, which executes every ```python block of the README in order.
"""

from __future__ import annotations

import ast
import dataclasses
import re

import numpy as np
import pandas as pd

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^`\s]*)[ \t]*$")
HEADING = re.compile(r"^(#{1,6})[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block: its language, the heading it sits under, its ordinal among that
    section's blocks of the same language, its first line in README.md (1-based, the line after
    the opening fence) and its code (dedented by the fence's indentation)."""

    lang: str
    section: str
    ordinal: int
    lineno: int
    code: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.section, self.ordinal)

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.code.splitlines() if line.strip()), "")

    @property
    def name(self) -> str:
        return f"{self.section} #{self.ordinal}: {self.first_line}"


def extract_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order. A fence closes at a line of exactly
    three backticks (after any indentation); headings inside fences are not headings."""
    blocks, counts = [], {}
    section, fence = "(top)", None
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            match = FENCE.match(line)
            if match:
                fence = (match["indent"], match["lang"], number + 1, [])
                continue
            heading = HEADING.match(line)
            if heading:
                section = heading["title"]
        elif line.strip() == "```":
            indent, lang, lineno, lines = fence
            ordinal = counts.get((section, lang), 0)
            counts[(section, lang)] = ordinal + 1
            code = "\n".join(row[len(indent):] if row.startswith(indent) else row.lstrip() for row in lines)
            blocks.append(Block(lang, section, ordinal, lineno, code + "\n"))
            fence = None
        else:
            fence[3].append(line)
    if fence is not None:
        raise AssertionError(f"README.md: the ``` fence opened at line {fence[2] - 1} is never closed")
    return blocks


def substitute(block: Block, table, values: dict) -> str:
    """``block.code`` with each ``(old, new[, count])`` of ``table`` applied; ``new`` is a
    ``str.format`` template over ``values``. Every ``old`` must occur exactly ``count`` times
    (default 1) in the code as it stands when its turn comes, so a README edit that removes or
    repeats it fails here and the table gets updated."""
    code = block.code
    for entry in table:
        old, new, count = (*entry, 1) if len(entry) == 2 else entry
        found = code.count(old)
        assert found == count, (f"README.md block {block.name!r} (line {block.lineno}): the substitution "
                                f"{old!r} should match {count} time(s) but matches {found}; update "
                                "tests/test_readme.py's table for this block")
        new = new.format(**values)
        assert "\n" not in new, "substitutions must keep the README's line numbers"
        code = code.replace(old, new)
    return code


def leading_statements(code: str, stop) -> str:
    """The source of the top-level statements of ``code`` before the first one for which
    ``stop(statement source)`` is true (the runnable head of a block that cannot run whole)."""
    tree = ast.parse(code)
    lines = code.splitlines()
    kept = []
    for node in tree.body:
        source = "\n".join(lines[node.lineno - 1:node.end_lineno])
        if stop(source):
            break
        kept.append(source)
    return "\n".join(kept) + "\n"


# --- generated data ---------------------------------------------------------------------------

ML100K_GENRES = 19


def write_ml100k(directory, synthetic) -> dict:
    """Writes ``synthetic`` (an `Interactions` from `generate_synthetic`) in the ml-100k layout:
    ``u.data`` (tab-separated user, item, rating, timestamp) and ``u.item`` (``|``-separated,
    latin-1, 24 fields: id|title|release date|video date|url|19 genre flags). One title holds a
    latin-1 character. Returns what was written, for checks."""
    directory.mkdir(parents=True, exist_ok=True)
    log = synthetic.log
    rows = [f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in zip(log.user_id, log.item_id, log.rating, log.timestamp)]
    (directory / "u.data").write_text("\n".join(rows) + "\n", encoding="latin-1")
    primary = np.asarray(synthetic.metadata["item_category"])
    items = []
    for number, (item_id, title) in enumerate(zip(synthetic.items.index, synthetic.items.title)):
        if number == 0:
            title = f"{title} Café (1995)"
        flags = ["0"] * ML100K_GENRES
        flags[1 + primary[number] % (ML100K_GENRES - 1)] = "1"
        items.append("|".join([item_id, title, "01-Jan-1995", "", "http://example.com/" + item_id, *flags]))
    (directory / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    return {"interactions": len(rows), "users": log.user_id.nunique(), "items": len(items),
            "first_title": items[0].split("|")[1]}


def write_click_log(clicks_path, catalog_path, synthetic) -> dict:
    """A click log (Parquet: uid, sku, ts) and a catalog (CSV: sku, name, cats joined by "|")
    with the column names of the README's `load_interactions` call."""
    log = synthetic.log
    pd.DataFrame({"uid": "u" + log.user_id, "sku": "s" + log.item_id, "ts": log.timestamp}).to_parquet(clicks_path)
    items = synthetic.items
    pd.DataFrame({"sku": "s" + items.index.to_numpy(), "name": items.title.to_numpy(),
                  "cats": ["|".join(c) for c in items.categories]}).to_csv(catalog_path, index=False)
    return {"interactions": len(log), "items": len(items)}


def write_impressions(path, synthetic, slate_size: int = 10, rounds: int = 60, seed: int = 0) -> dict:
    """An impression log (CSV, one row per shown item) with the README's column names:
    impression_id, pos, item_id, click, propensity, history (space-joined ids, oldest first),
    user_id. The logging policy shows ``slate_size`` distinct items uniformly at random, so every
    position's propensity is 1 / (number of items)."""
    rng = np.random.default_rng(seed)
    item_ids = synthetic.items.index.to_numpy()
    by_user = synthetic.log.groupby("user_id", sort=False)["item_id"].apply(list)
    users = by_user.index.to_numpy()
    rows = []
    for r in range(rounds):
        user = users[r % len(users)]
        history = by_user[user][:5]
        shown = rng.choice(item_ids, size=slate_size, replace=False)
        clicks = rng.random(slate_size) < 0.15
        for position, (item, click) in enumerate(zip(shown, clicks)):
            rows.append({"impression_id": f"r{r}", "pos": position, "item_id": item, "click": int(click),
                         "propensity": 1.0 / len(item_ids), "history": " ".join(history), "user_id": user})
    pd.DataFrame(rows).to_csv(path, index=False)
    return {"rounds": rounds, "slate_size": slate_size}
