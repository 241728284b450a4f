"""Symbol names: what a client may send, and how a name is matched to the broker's.

Brokers often decorate symbol names (``EURUSDm``, ``EURUSD.pro``, ``EURUSD#``). The bridge always
answers with the broker's exact name (the ``symbol`` field of every response), and resolves a
requested name in this order: the exact name; else the one symbol whose name equals it ignoring
case; else the one symbol whose name is it plus a broker suffix (ignoring case): at most
``BRIDGE_SYMBOL_SUFFIX_MAX`` characters that are either lower-case letters (``m``, ``pro``) or start
with a separator (``.pro``, ``_i``, ``#``, ``-ecn``). ``US`` never resolves to ``US500``, nor ``EUR``
to ``EURUSD``: upper-case letters and digits are part of a name, not a suffix. Two or more candidates at a step is ambiguous: 404 with the candidates
listed, so the client can pick one. See docs/reads.md, "Symbols and broker suffixes".
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# MT5's Python module refuses symbol strings longer than 29 UTF-16 units; the characters are what
# broker names use in practice (no spaces, no group-mask metacharacters).
SYMBOL_RE = re.compile(r"^[A-Za-z0-9._#+\-$&@^~'!]{1,29}$")
GROUP_RE = re.compile(r"^[\x21-\x7e]{1,256}$")
SUFFIX_RE = re.compile(r"^([._#+\-!$~@][A-Za-z0-9]*|[a-z]+)$")


def valid_symbol(name: str) -> bool:
    return bool(SYMBOL_RE.match(name)) and not name.startswith("!")


def resolve_symbol_name(requested: str, names: Iterable[str], suffix_max: int) -> tuple[str | None, list[str]]:
    """The broker's name for ``requested``: (name, []) when resolved, (None, candidates) otherwise."""
    names = list(names)
    if requested in names:
        return requested, []
    lowered = requested.lower()
    same = [n for n in names if n.lower() == lowered]
    if len(same) == 1:
        return same[0], []
    if len(same) > 1:
        return None, sorted(same)
    if suffix_max <= 0:
        return None, []
    suffixed = [
        n
        for n in names
        if n.lower().startswith(lowered)
        and 0 < len(n) - len(requested) <= suffix_max
        and SUFFIX_RE.match(n[len(requested):])
    ]
    if len(suffixed) == 1:
        return suffixed[0], []
    return None, sorted(suffixed)
