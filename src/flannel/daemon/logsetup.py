"""Logging in klog's line format (upstream's), or JSON lines for log pipelines.

``-v N`` keeps upstream's meaning: 0 shows info and up, 1+ shows the data-path detail that upstream
logs at V(1..10) (we log those at DEBUG).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class KlogFormatter(logging.Formatter):
    """``I1122 09:46:30.123456   12345 main.py:123] message`` as klog prints it."""

    _LEVELS = {"DEBUG": "I", "INFO": "I", "WARNING": "W", "ERROR": "E", "CRITICAL": "F"}

    def format(self, record: logging.LogRecord) -> str:
        """One klog line (plus a traceback when the record carries one)."""
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        letter = self._LEVELS.get(record.levelname, "I")
        line = (
            f"{letter}{stamp}.{micros:06d} {os.getpid():7d} "
            f"{record.filename}:{record.lineno}] {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when present)."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise the record."""
        obj: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj)


def setup_logging(verbosity: int, log_format: str = "text") -> None:
    """Route all pyflannel logging to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    for noisy in (
        "grpc",
        "aetcd",
        "httpx",
        "httpcore",
        "httpx2",
        "httpcore2",
        "asyncio",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
