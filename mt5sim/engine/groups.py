"""MT5 group masks ("*USD*,!EUR*"): comma list, applied left to right, include then exclude.

`*` matches any substring anywhere in a mask, matching is case-insensitive and anchored, a
mask without `*` is an exact name. An item is in the group if the last condition that
matches it is an inclusion.
"""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=256)
def compile_group(group: str) -> tuple[tuple[bool, re.Pattern[str]], ...]:
    conditions = []
    for raw in group.split(","):
        term = raw.strip()
        if not term:
            continue
        include = True
        if term.startswith("!"):
            include = False
            term = term[1:].strip()
        pattern = ".*".join(re.escape(part) for part in term.split("*"))
        conditions.append((include, re.compile(f"^{pattern}$", re.IGNORECASE | re.DOTALL)))
    return tuple(conditions)


def group_matches(group: str, name: str) -> bool:
    """Whether `name` belongs to the group (the sequential include/exclude rule)."""
    selected = False
    for include, pattern in compile_group(group):
        if include:
            if not selected and pattern.match(name):
                selected = True
        elif selected and pattern.match(name):
            selected = False
    return selected
