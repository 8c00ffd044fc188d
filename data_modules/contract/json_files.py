"""The raw folder's JSON files read strictly: every wrong shape is one DataError naming the file, the
entry and what was expected; an unknown key is a warning naming it (a typo must not pass silently,
and a field this version does not know must not stop a run)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data_modules.util.errors import DataError

log = logging.getLogger(__name__)

_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
               float: "a number", type(None): "null"}  # fmt: skip


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error (``a string``, ``an object``, ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def read_json_file(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``: a missing, empty, non-UTF-8 or malformed file is a DataError;
    ``what`` says what the file should hold (for the message)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found", expected=what) from None
    except OSError as err:
        raise DataError(path, f"cannot be read ({err.strerror or err})") from None
    if not data.strip():
        raise DataError(path, "empty file", expected=what)
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is harmless
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})",
                        expected="a UTF-8 encoded JSON file") from None  # fmt: skip
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})",
                        expected=what) from None  # fmt: skip


def entries(path: Path, raw: Any, what: str, *, value_key: str | None = None) -> list[tuple[str, dict]]:
    """A list of objects, or a mapping name -> object (or name -> ``value_key``'s string), as
    (where, object-with-name) pairs; ``where`` names the entry in messages."""
    if isinstance(raw, dict):
        out = []
        for name, body in raw.items():
            where = repr(name)
            if isinstance(body, str) and value_key is not None:
                body = {value_key: body}
            elif body is None:  # name -> null: the name alone (its required fields are checked next)
                body = {}
            elif not isinstance(body, dict):
                shape = f"a {value_key} string or an object" if value_key else "an object"
                raise DataError(path, f"is {json_type(body)}", entry=where, expected=shape)
            if "name" in body and body["name"] != name:
                raise DataError(path, f"has name {body['name']!r}", entry=where,
                                expected="no 'name' in a mapping's entry, or the same as its key")  # fmt: skip
            out.append((where, {"name": name, **body}))
    elif isinstance(raw, list):
        out = []
        for i, item in enumerate(raw):
            name = item.get("name") if isinstance(item, dict) else None
            where = f"{i} ({name})" if isinstance(name, str) else str(i)
            if not isinstance(item, dict):
                raise DataError(path, f"is {json_type(item)}", entry=where, expected="an object")
            out.append((where, item))
    else:
        raise DataError(path, f"the file holds {json_type(raw)}", expected=what)
    if not out:
        raise DataError(path, "no entries", expected=what)
    return out


def text_field(path: Path, where: str, item: dict, key: str, *, required: bool) -> str:
    """``item[key]`` as a string: missing or empty is an error where required, a non-string always."""
    value = item.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        problem = f"no '{key}'" if value is None else f"'{key}' is {json_type(value)}"
        raise DataError(path, problem, entry=where, expected="a non-empty string" if required else "a string")
    if required and not value.strip():
        raise DataError(path, f"'{key}' is empty", entry=where, expected="a non-empty string")
    return value


def string_list(path: Path, where: str, item: dict, key: str) -> tuple[str, ...]:
    """``item[key]`` as a tuple of non-empty strings (missing: empty)."""
    value = item.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(path, f"'{key}' is {json_type(value)}" if not isinstance(value, list) else
                        f"'{key}' holds a value that is not a non-empty string", entry=where,
                        expected="a list of non-empty strings")  # fmt: skip
    return tuple(value)


def warn_unknown_keys(path: Path, where: str, item: dict, known: Iterable[str]) -> list[str]:
    """Log (and return) the keys of ``item`` outside ``known``: ignored, but named."""
    known = list(known)
    unknown = sorted(set(item) - set(known))
    if unknown:
        log.warning("%s, entry %s: unknown key%s %s ignored (known: %s)", path, where,
                    "s" if len(unknown) > 1 else "", ", ".join(map(repr, unknown)), ", ".join(known))  # fmt: skip
    return unknown


def check_unique(path: Path, names: list[tuple[str, str]], what: str) -> None:
    """(where, name) pairs: a repeated name is an error naming both entries."""
    first: dict[str, str] = {}
    for where, name in names:
        if name in first:
            raise DataError(path, f"duplicate {what} name {name!r} (entries {first[name]} and {where})",
                            expected=f"each {what} named once")  # fmt: skip
        first[name] = where
