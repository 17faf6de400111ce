"""JSON the way Go's encoding/json writes it, for bytes other tools compare or re-read.

The saved delegate config must be what Go flannel would save (a Go DEL may read a file written by
us and vice versa): compact, map keys sorted, ``<>&`` escaped, and integral floats as integers —
Python would write ``1400.0`` where a Go plugin's ``int`` field then fails to decode.
"""

from __future__ import annotations

from flannel.cni import fastjson

TYPE_CHECKING = False  # typing costs ~4 ms of import; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any


def normalise(value: Any) -> Any:
    """Integral floats become ints, recursively (Go round-trips numbers through float64)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def _escape_html(text: str) -> str:
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def marshal(value: Any) -> bytes:
    """``json.Marshal`` of a ``map[string]interface{}``: compact and key-sorted."""
    text = fastjson.dumps(normalise(value), sort_keys=True)
    return _escape_html(text).encode()


def marshal_indent(value: Any, sort_keys: bool = False) -> bytes:
    """``json.MarshalIndent(v, "", "    ")`` (results and errors are printed this way)."""
    text = fastjson.dumps_indent(normalise(value), sort_keys=sort_keys)
    return _escape_html(text).encode()
