"""Give freed heap back to the kernel (glibc ``malloc_trim``).

Start-up lists every lease and dumps the kernel's routes, neighbours and FDB entries; the parsed
messages are freed afterwards, but glibc keeps the pages, so RSS stays at the start-up peak. With
upstream's DaemonSet giving flanneld 50 MiB, that peak is what gets a node OOM-killed. Trimming
after start-up and then periodically keeps RSS near what is actually in use.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
from collections.abc import Callable
from typing import cast

logger = logging.getLogger(__name__)

TRIM_AFTER_START_S = 2.0
TRIM_PERIOD_S = 5.0  # trimming costs well under a millisecond; a pass can free ~10 MiB


@functools.cache
def _libc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once (find_library would spawn ldconfig on every call)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols already loaded into this process
    except (OSError, AttributeError):
        return None  # not glibc (e.g. musl)
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


def malloc_trim() -> bool:
    """Call glibc's malloc_trim(0); False where there is no glibc (e.g. musl)."""
    trim = _libc_trim()
    return bool(trim(0)) if trim is not None else False


async def trim_loop() -> None:
    """Trim shortly after start-up, then every few seconds (after each burst of netlink dumps)."""
    await asyncio.sleep(TRIM_AFTER_START_S)
    while True:
        released = malloc_trim()
        logger.debug("malloc_trim released memory: %s", released)
        await asyncio.sleep(TRIM_PERIOD_S)
