"""JSON request bodies with bounds: the default DRF parser of every endpoint.

Python's ``json`` decoder recurses once per nesting level: a 2 KB body of 1,000 ``[`` exhausts the
interpreter's recursion limit and, unchecked, becomes a 500. Here the nesting depth is measured
first, by a flat scan of the raw bytes (no recursion, strings skipped), and a body nested deeper than
``BRIDGE_MAX_JSON_DEPTH`` (default 32) is refused with ``400 ValidationError`` before the decoder
sees it. The body's size is bounded by ``BRIDGE_MAX_BODY_BYTES`` (Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE``, checked by ``request.body`` with or without a Content-Length):
larger is ``413 PayloadTooLarge``. Checked here again so that no stream reaches the decoder unbounded.

``loads_bounded`` is the same check for code that decodes JSON itself.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils import json as drf_json

from .errors import PayloadTooLarge, ValidationFailed

DEFAULT_MAX_DEPTH = 32

# A JSON string (escapes included): removed before counting, so brackets inside strings do not count.
# An unterminated string is left in place: its brackets are then counted, which can only refuse a
# body that the decoder would refuse anyway.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = frozenset(b"[{")


def max_depth() -> int:
    return int(getattr(settings, "BRIDGE_MAX_JSON_DEPTH", DEFAULT_MAX_DEPTH))


def max_body_bytes() -> int | None:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects deeper than ``limit`` (a flat scan)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def too_deep(limit: int) -> ValidationFailed:
    return ValidationFailed(
        f"JSON body nested deeper than {limit} levels",
        {"body": [f"nested deeper than {limit} levels"]},
    )


def loads_bounded(raw: bytes | str, *, depth: int | None = None, size: int | None = None) -> Any:
    """``json.loads`` for untrusted input: ``ValidationFailed`` (400) when nested deeper than
    ``depth`` (default ``BRIDGE_MAX_JSON_DEPTH``) or malformed, ``PayloadTooLarge`` (413) over ``size``
    bytes (default ``BRIDGE_MAX_BODY_BYTES``)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    size = max_body_bytes() if size is None else size
    if size is not None and len(data) > size:
        raise PayloadTooLarge(f"JSON body over {size} bytes", {"body": [f"over {size} bytes"]})
    depth = max_depth() if depth is None else depth
    if nesting_exceeds(data, depth):
        raise too_deep(depth)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: cannot happen below the depth bound
        raise ValidationFailed(f"malformed JSON: {exc}", {"body": ["malformed JSON"]}) from exc


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser with a nesting-depth bound and a size bound (see the module docstring)."""

    def parse(self, stream, media_type=None, parser_context=None):  # DRF signature
        parser_context = parser_context or {}
        encoding = get_encoding(parser_context)
        size = max_body_bytes()
        raw = stream.read() if size is None else stream.read(size + 1)
        if size is not None and len(raw) > size:
            raise PayloadTooLarge(f"request body over {size} bytes", {"body": [f"over {size} bytes"]})
        limit = max_depth()
        if nesting_exceeds(_as_utf8(raw, encoding), limit):
            raise too_deep(limit)
        try:
            text = codecs.decode(raw, encoding)
            parse_constant = drf_json.strict_constant if self.strict else None
            return json.loads(text, parse_constant=parse_constant)
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc


def _as_utf8(raw: bytes, encoding: str) -> bytes:
    """The body as UTF-8 bytes for the depth scan (a UTF-16/32 body has NULs between brackets)."""
    if codecs.lookup(encoding).name in {"utf-8", "ascii"}:
        return raw
    try:
        return codecs.decode(raw, encoding).encode("utf-8", "surrogatepass")
    except (ValueError, LookupError):
        return raw  # undecodable: the decoder refuses it below
