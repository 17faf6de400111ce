"""subnet.env file I/O: atomic write (mode 0644, parent created) and read-back.

The content is rendered by the pure ``flannel.model.subnetenv``; this module only touches the disk.
Atomic because the CNI plugin may read the file at any moment: it must see the old or the new file,
never half of one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from flannel.model import subnetenv

logger = logging.getLogger(__name__)


def write_subnet_file(path: str | Path, content: str) -> None:
    """Write ``content`` to ``path`` atomically with mode 0644 exactly (umask ignored)."""
    target = Path(path)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".subnet.env.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_previous(path: str | Path) -> subnetenv.PreviousSubnets:
    """What an earlier run left in subnet.env (all None when the file is absent or unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return subnetenv.PreviousSubnets()
    except OSError as exc:
        logger.warning("cannot read previous subnet file %s: %s", path, exc)
        return subnetenv.PreviousSubnets()
    return subnetenv.parse_previous(text, source=str(path))
