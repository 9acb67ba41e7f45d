"""PHP-style bracket forms (amoCRM, Bitrix24): `leads[add][0][id]=1` -> {"leads": {"add": {"0": {"id": "1"}}}}.

Parsed from the raw bytes. Keys stay strings ("0", "1", ...): a PHP array is a dict here, and
php_list() reads it in index order. Stricter than PHP where PHP guesses: a broken percent-escape,
bytes that are not UTF-8, an unbalanced bracket or too many fields or levels refuse the whole body.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from crm2calls.errors import MalformedRequestError

MAX_FIELDS = 10_000
MAX_DEPTH = 32

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def _decode(raw: bytes, what: str) -> str:
    """Form-decode one name or value: "+" is a space, %XX a byte, the bytes UTF-8."""
    if _BAD_ESCAPE.search(raw):
        raise MalformedRequestError(f"the form has a broken percent-escape in a {what}", field="body")
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequestError(f"the form has a {what} that is not UTF-8", field="body") from None


def split_name(name: str, max_depth: int = MAX_DEPTH) -> list[str]:
    """ "a[b][0][]" -> ["a", "b", "0", ""] ("" appends); MalformedRequestError for unbalanced brackets."""
    base, bracket, rest = name.partition("[")
    if not base:
        raise MalformedRequestError(f"form field {name[:80]!r} has no name", field="body")
    if not bracket:
        return [name]
    rest = "[" + rest
    segments = _SEGMENT.findall(rest)
    if "".join(f"[{segment}]" for segment in segments) != rest:
        raise MalformedRequestError(f"form field {name[:80]!r} has unbalanced brackets", field="body")
    if len(segments) > max_depth:
        raise MalformedRequestError(f"form field {name[:80]!r} is nested deeper than {max_depth} levels", field="body")
    return [base, *segments]


def _is_index(key: str) -> bool:
    """A key PHP would treat as an integer: "0", "17", "-3", never "07" or "1.5"."""
    digits = key[1:] if key.startswith("-") else key
    return digits.isascii() and digits.isdigit() and str(int(key)) == key


def parse_php_form(body: bytes, *, max_fields: int = MAX_FIELDS, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Parse an application/x-www-form-urlencoded body with PHP bracket names into nested dicts."""
    form: dict[str, Any] = {}
    next_free: dict[int, int] = {}  # id(dict) -> PHP's next free integer index, for `key[]`
    created: list[dict[str, Any]] = []  # keeps every dict alive, so no id() is reused while parsing
    pieces = [piece for piece in body.split(b"&") if piece]
    if len(pieces) > max_fields:
        raise MalformedRequestError(f"the form has more than {max_fields} fields", field="body")
    for piece in pieces:
        raw_name, _, raw_value = piece.partition(b"=")
        path = split_name(_decode(raw_name, "name"), max_depth)
        value = _decode(raw_value, "value")
        node = form
        for depth, segment in enumerate(path):
            key = segment
            if key == "":
                key = str(next_free.get(id(node), 0))
            if _is_index(key):
                next_free[id(node)] = max(next_free.get(id(node), 0), int(key) + 1)
            if depth == len(path) - 1:
                node[key] = value  # a repeated name: the last value wins, as in PHP
            else:
                child = node.get(key)
                if not isinstance(child, dict):  # PHP too turns a scalar into an array when indexed
                    child = node[key] = {}
                    created.append(child)
                node = child
    return form


def php_list(value: Any) -> list[Any]:
    """A PHP array's values in index order (integer keys by number, then any others); [] for None."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        return [value]
    numbered = sorted(((int(key), item) for key, item in value.items() if _is_index(key)), key=lambda pair: pair[0])
    named = [item for key, item in value.items() if not _is_index(key)]
    return [item for _, item in numbered] + named
