"""The WireGuard private key file, as upstream: ``/run/flannel/wgkey`` or ``$WIREGUARD_KEY_FILE``.

Base64 without a newline, mode 0400, parent directories 0755, reused after a restart so peers keep
trusting this node.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flannel.errors import BackendError, ConfigError
from flannel.model.wgkeys import generate_private_key, parse_key, to_base64

logger = logging.getLogger(__name__)

DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"


def key_file_path(env: dict[str, str] | None = None) -> Path:
    """``$WIREGUARD_KEY_FILE`` or upstream's default."""
    source = os.environ if env is None else env
    return Path(source.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE)


def load_or_create_private_key(path: Path) -> bytes:
    """Read the key file, or create it (0400, parents 0755) with a new key when it is absent.

    A file that exists but does not hold a key is an error naming the file, never silently replaced:
    replacing it would change this node's identity for every peer.
    """
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return _create(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise BackendError(f"cannot read WireGuard key file {path}: {exc}") from exc
    try:
        key = parse_key(text, f"private key in {path} (delete the file to generate a new key)")
    except ConfigError as exc:
        raise BackendError(str(exc)) from exc
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning(
            "WireGuard key file %s is readable by others (mode %o); fixing to 0400", path, mode
        )
        os.chmod(path, 0o400)
    return key


def _create(path: Path) -> bytes:
    key = generate_private_key()
    try:
        _make_parents(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        try:
            os.fchmod(fd, 0o400)  # the umask must not widen or narrow it
            os.write(fd, to_base64(key).encode("ascii"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise BackendError(f"cannot create WireGuard key file {path}: {exc}") from exc
    logger.info("generated a new WireGuard private key in %s", path)
    return key


def _make_parents(directory: Path) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for part in reversed(missing):
        part.mkdir(mode=0o755)
        os.chmod(part, 0o755)
