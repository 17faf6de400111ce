"""Take secrets out of support-bundle text before it is written (PURE: no I/O).

Two layers, because a bundle holds many formats and one miss leaks a key:

1. By shape: PEM private keys, WireGuard keys in UAPI dumps (``private_key=``/``preshared_key=``)
   and config files (``PrivateKey =``), XFRM state keys (``enc cbc(aes) 0x…``), bearer tokens,
   passwords in URLs, and any ``name: value`` / ``name=value`` / ``"name": "value"`` whose name
   says key, secret, password, psk or token (``PublicKey``, ``*-keyfile`` paths and the like are
   kept: they are what a support engineer needs).
2. By value: secrets known up front (the etcd password from the flags, ``Backend.PSK`` from the
   network config, a WireGuard private key read from a UAPI dump) are replaced wherever they occur,
   in every encoding they are likely to appear in (as given, and base64 ↔ hex for 32-byte keys).

``Redactor`` keeps the count of what it replaced, for the bundle's manifest.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any

MARK = "<redacted>"
MIN_SECRET_LENGTH = 6
"""Known secrets shorter than this are not replaced by value (they would match everywhere)."""

_SECRET_WORDS = re.compile(r"(key|secret|passw(or)?d|psk|token|credential)", re.IGNORECASE)
_KEEP_WORDS = re.compile(
    r"(public|pubkey|file|path|dir|_id$|keys?_?only|keepalive|kind|type|name|mac)", re.IGNORECASE
)

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?(-----END \1-----|\Z)", re.DOTALL)
_INLINE = re.compile(
    r"(?<![\w-])(?P<head>(?P<name>[A-Za-z][A-Za-z0-9_.]{0,60})=)"
    r"(?P<value>'[^'\n]*'|\"[^\"\n]*\"|[^\s,;)\]}]+)"
)
_XFRM = re.compile(r"^(\s*(?:enc|auth|auth-trunc|aead|comp)\s+\S+\s+)0x[0-9a-fA-F]+", re.MULTILINE)
_BEARER = re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+(@)", re.IGNORECASE)
_JSON_FIELD = re.compile(r'("(?P<name>[^"\\]{1,80})"\s*:\s*)"(?:[^"\\]|\\.)*"')
_LINE_FIELD = re.compile(
    r"^(?P<head>[ \t-]*(?:export\s+)?(?P<name>[A-Za-z0-9_.\-/]{1,80})[ \t]*(?:=|:)[ \t]*)"
    r"(?P<value>[^\s\"'{\[][^\n]*|\"[^\"\n]*\"|'[^'\n]*')$",
    re.MULTILINE,
)
_FLAG = re.compile(
    r"(?<!\S)(?P<head>--?(?P<name>[A-Za-z0-9][A-Za-z0-9_-]{0,60})(?:=|\s+))(?P<value>\S+)"
)


def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` holds a secret (``PSK``, ``etcd-password``, ``token``…),
    as opposed to public or path-like fields (``PublicKey``, ``etcd-keyfile``, ``VtepMAC``)."""
    return bool(_SECRET_WORDS.search(name)) and not _KEEP_WORDS.search(name)


def encodings(secret: str) -> set[str]:
    """``secret`` and the other spellings it is stored in: a 32-byte key in base64 is also written
    in hex (UAPI) and the other way round."""
    forms = {secret}
    text = secret.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 32:
        forms.add(raw.hex())
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        forms.add(base64.b64encode(bytes.fromhex(text)).decode())
        forms.add(text.lower())
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


class Redactor:
    """Redacts text and JSON; remembers known secrets and how many replacements it made."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._known: set[str] = set()
        self.count = 0
        for secret in known:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Replace ``secret`` (in all its encodings) wherever it appears from now on."""
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            self._known |= encodings(secret)

    def learn(self, text: str) -> None:
        """Pick up secrets a document states by shape (a UAPI ``private_key=``), so later
        documents that hold the same key in another encoding are caught too."""
        for match in re.finditer(
            r"^\s*(?:private_key|preshared_key)=([0-9a-fA-F]{64})", text, re.M
        ):
            if set(match.group(1)) != {"0"}:
                self.add(match.group(1))

    def text(self, text: str) -> str:
        """``text`` with every secret replaced by ``<redacted>``."""
        self.learn(text)
        out = _PEM.sub(
            lambda m: f"-----BEGIN {m.group(1)}-----{MARK}-----END {m.group(1)}-----", text
        )
        out = _XFRM.sub(lambda m: m.group(1) + MARK, out)
        out = _BEARER.sub(lambda m: m.group(1) + MARK, out)
        out = _URL_PASSWORD.sub(lambda m: m.group(1) + MARK + m.group(2), out)
        out = _JSON_FIELD.sub(self._json_field, out)
        out = _LINE_FIELD.sub(self._line_field, out)
        out = _INLINE.sub(self._inline, out)
        out = _FLAG.sub(self._flag, out)
        for secret in sorted(self._known, key=len, reverse=True):
            out = out.replace(secret, MARK)
        self.count += out.count(MARK) - text.count(MARK)
        return out

    @staticmethod
    def _json_field(match: re.Match[str]) -> str:
        if is_secret_name(match.group("name")):
            return f'{match.group(1)}"{MARK}"'
        return match.group(0)

    @staticmethod
    def _line_field(match: re.Match[str]) -> str:
        if is_secret_name(match.group("name")) and match.group("value").strip("\"'") != MARK:
            return match.group("head") + MARK
        return match.group(0)

    @staticmethod
    def _inline(match: re.Match[str]) -> str:
        value = match.group("value").strip("'\"")
        if is_secret_name(match.group("name")) and value not in ("", MARK):
            return match.group("head") + MARK
        return match.group(0)

    @staticmethod
    def _flag(match: re.Match[str]) -> str:
        value = match.group("value")
        if (
            is_secret_name(match.group("name"))
            and value not in ("''", '""', MARK)
            and value[0] != "-"
        ):
            return match.group("head") + MARK
        return match.group(0)

    def json(self, value: Any) -> Any:
        """A copy of a JSON value with secret-named fields (and known secrets) redacted."""
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if is_secret_name(str(key)) and isinstance(item, (str, int, float)) and item != "":
                    if isinstance(item, str):
                        self.add(item)
                    out[key] = MARK
                    self.count += 1
                else:
                    out[key] = self.json(item)
            return out
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, str):
            return self.text(value) if value else value
        return value

    def json_text(self, text: str) -> str:
        """A JSON document redacted structurally, then as text; non-JSON falls back to text."""
        try:
            value = json.loads(text)
        except ValueError:
            return self.text(text)
        return self.text(json.dumps(self.json(value), indent=2, sort_keys=False))
