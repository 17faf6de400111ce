"""JSON through the C accelerator ``_json`` directly, without importing the ``json`` package.

``import json`` pulls in ``re`` (and ``enum``) to compile a few regexes: about 8 ms on every pod
start, a third of the plugin's import budget. ``_json`` has the scanner and string encoder in C;
this module wires them up with the same semantics as ``json.loads``/``json.dumps``.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"
_TOO_DEEP = "JSON nested too deeply (a CNI network config needs only a few levels)"


class DecodeError(ValueError):
    """Invalid JSON; the message reads like ``json.JSONDecodeError``'s."""


class _Context:
    """The attributes ``_json.make_scanner`` reads from a ``json.JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return _reject_constant(name)


def _reject_constant(name: str) -> float:
    """Go's JSON (what runtimes write) has no NaN/Infinity; ``json.loads`` would accept them."""
    raise DecodeError(f"invalid character {name[0]!r} looking for beginning of value ({name})")


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # duck-typed decoder


def _position(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - text.rfind("\n", 0, index)
    return f"line {line} column {column} (char {index})"


def loads(data: bytes | str) -> Any:
    """``json.loads`` for one document (raises DecodeError, a ValueError)."""
    try:
        text = data.decode("utf-8", errors="surrogatepass") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 at byte {exc.start} of the input") from None
    if text.startswith("\ufeff"):
        raise DecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise DecodeError(f"Expecting value: {_position(text, stop.value)}") from None
    except RecursionError:
        raise DecodeError(_TOO_DEEP) from None
    except DecodeError:
        raise
    except Exception:
        return _slow_loads(text)
    trailing = end + (len(text[end:]) - len(text[end:].lstrip(_WHITESPACE)))
    if trailing != len(text):
        raise DecodeError(f"Extra data: {_position(text, trailing)}")
    return value


def _slow_loads(text: str) -> Any:
    """Errors are rare: let the ``json`` package produce the exact message."""
    import json

    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise DecodeError(_TOO_DEEP) from None
    except ValueError as exc:
        raise DecodeError(str(exc)) from None


def _float_repr(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _compact_encoder(sort_keys: bool, ascii_only: bool) -> Any:
    encode_string = _json.encode_basestring_ascii if ascii_only else _json.encode_basestring
    return _json.make_encoder(
        {}, _unencodable, encode_string, None, ":", ",", sort_keys, False, True
    )


def _unencodable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any, *, sort_keys: bool = False, ascii_only: bool = False) -> str:
    """Compact ``json.dumps(value, separators=(",", ":"))``; a value nested too deeply to encode
    raises ValueError, like any other value that cannot be encoded."""
    try:
        return "".join(_compact_encoder(sort_keys, ascii_only)(value, 0))
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None


def dumps_indent(value: Any, *, indent: int = 4, sort_keys: bool = False) -> str:
    """``json.dumps(value, indent=indent)`` (", " never appears: newline separators)."""
    encode_string = _json.encode_basestring
    pad = " " * indent

    def render(item: Any, depth: int) -> str:
        if isinstance(item, dict):
            if not item:
                return "{}"
            keys = sorted(item) if sort_keys else list(item)
            inner = pad * (depth + 1)
            parts = [f"{inner}{encode_string(str(k))}: {render(item[k], depth + 1)}" for k in keys]
            return "{\n" + ",\n".join(parts) + "\n" + pad * depth + "}"
        if isinstance(item, (list, tuple)):
            if not item:
                return "[]"
            inner = pad * (depth + 1)
            parts = [f"{inner}{render(v, depth + 1)}" for v in item]
            return "[\n" + ",\n".join(parts) + "\n" + pad * depth + "]"
        if isinstance(item, str):
            return str(encode_string(item))
        if item is True:
            return "true"
        if item is False:
            return "false"
        if item is None:
            return "null"
        if isinstance(item, int):
            return int.__repr__(item)
        if isinstance(item, float):
            return _float_repr(item)
        _unencodable(item)
        return ""

    return render(value, 0)
