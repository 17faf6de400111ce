"""CNI error values and their wire form (SPEC §Error; Go's types.Error)."""

from __future__ import annotations

# Well-known codes (SPEC.md "Well-known Error Codes").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
INVALID_NETNS = 8
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
INTERNAL = 999


class CniError(Exception):
    """An error the plugin prints as ``{"code","msg","details"}`` and exits 1 with."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self) -> dict[str, object]:
        """Go's field order: code, msg, details (omitted when empty)."""
        out: dict[str, object] = {"code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.msg} (code {self.code}{': ' + self.details if self.details else ''})"
