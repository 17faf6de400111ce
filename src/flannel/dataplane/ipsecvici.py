"""charon's connections behind the kernel port: ``ViciAdapter``, a ``netlink.KindAdapter`` for
``IpsecConn`` objects, spoken over strongSwan's VICI socket with strongSwan's own ``vici`` package.

Why an adapter and not calls from the backend: connections are desired state like the XFRM
policies they go with. ``read`` lists charon's connections; ``apply`` loads (with the shared keys
the connection needs) or unloads one. A charon that restarted has none, the next full pass loads
them all again; a connection for a vanished peer is unloaded by prune.

charon reports a connection by name only, so the adapter remembers what it loaded, per charon
instance (its pid), in a small JSON file next to the socket: a restarted flanneld that adopts the
running charon then reads back exactly what is loaded and reloads nothing. ``vici`` is imported
only here (lazily), so other backends never pay for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flannel.dataplane.ipsecconn import (
    IpsecConn,
    SaStatus,
    load_conn_message,
    load_shared_message,
    parse_list_sas,
    unload_conn_message,
)
from flannel.dataplane.objects import KernelObject
from flannel.errors import KernelError

logger = logging.getLogger(__name__)

VICI_TIMEOUT_S = 5.0


def _connect(path: Path) -> socket.socket:
    """A unix socket connected to ``path`` whatever its length (via an O_PATH directory fd)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(VICI_TIMEOUT_S)
    try:
        directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
        try:
            sock.connect(f"/proc/self/fd/{directory}/{path.name}")
        finally:
            os.close(directory)
    except OSError:
        sock.close()
        raise
    return sock


class ViciAdapter:
    """Loads and unloads flannel's connections in one charon (see the module docstring)."""

    kinds: tuple[type, ...] = (IpsecConn,)

    def __init__(self, *, socket_path: Path, pid_path: Path, psk: str, own_ip: str) -> None:
        self.socket_path = socket_path
        self.pid_path = pid_path
        self.state_path = socket_path.with_name("flannel-vici-state.json")
        self.psk = psk
        self.own_ip = own_ip
        self._instance = ""
        self._loaded: dict[str, IpsecConn] = {}
        self._keys: set[str] = set()

    # ---------------------------------------------------------------- sessions and memory
    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """A VICI session with charon; KernelError when charon is not there."""
        import vici  # type: ignore[import-untyped]

        try:
            sock = _connect(self.socket_path)
        except OSError as exc:
            raise KernelError(f"charon's VICI socket {self.socket_path}: {exc}") from exc
        try:
            yield vici.Session(sock)
        except (OSError, vici.exception.SessionException) as exc:
            raise KernelError(f"charon's VICI socket {self.socket_path}: {exc}") from exc
        finally:
            sock.close()

    def _current_instance(self) -> str:
        try:
            return self.pid_path.read_text().strip()
        except OSError:
            return ""

    def _sync_instance(self) -> None:
        """Forget what was loaded when charon is another process than the one we loaded into."""
        instance = self._current_instance()
        if instance == self._instance:
            return
        self._instance = instance
        self._loaded, self._keys = {}, set()
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            saved = json.loads(self.state_path.read_text())
            if saved.get("instance") == instance and instance:
                self._loaded = {c["name"]: IpsecConn(**c) for c in saved["conns"]}
                self._keys = set(saved["keys"])

    def _save(self) -> None:
        state = {
            "instance": self._instance,
            "conns": [asdict(c) for c in self._loaded.values()],
            "keys": sorted(self._keys),
        }
        tmp = self.state_path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(state))
            tmp.replace(self.state_path)

    # ---------------------------------------------------------------- KindAdapter
    def read(self, netns: str | None) -> list[KernelObject]:
        """charon's connections (none while charon is down: loading them then fails and is
        retried by the reconciler)."""
        try:
            with self.session() as s:
                names = [_text(n) for n in s.get_conns().get("conns", [])]
        except KernelError:
            return []
        self._sync_instance()
        return [self._loaded.get(name) or IpsecConn.stub(name) for name in names]

    def apply(self, netns: str | None, action: str, obj: KernelObject) -> None:
        if not isinstance(obj, IpsecConn):
            raise KernelError(f"not an ipsec connection: {obj.describe()}")
        import vici

        self._sync_instance()
        try:
            with self.session() as s:
                if action == "delete":
                    self._unload(s, obj)
                else:
                    for owner in (self.own_ip, obj.remote_addr):
                        if owner not in self._keys:
                            s.load_shared(load_shared_message(self.psk, owner))
                            self._keys.add(owner)
                            logger.info("loaded shared key for %s", owner)
                    s.load_conn(load_conn_message(obj))
                    self._loaded[obj.name] = obj
                    logger.info("loaded connection %s", obj.name)
        except vici.exception.CommandException as exc:
            raise KernelError(f"{action} {obj.describe()}: charon said: {exc}") from exc
        finally:
            self._save()

    def _unload(self, s: Any, obj: IpsecConn) -> None:
        import vici

        try:
            s.unload_conn(unload_conn_message(obj.name))
        except vici.exception.CommandException as exc:
            if "not found" not in str(exc):
                raise
        self._loaded.pop(obj.name, None)
        logger.info("unloaded connection %s", obj.name)

    # ---------------------------------------------------------------- status
    def sa_status(self) -> dict[str, SaStatus]:
        """Connection name → SA status (``list-sas``); KernelError when charon is not there."""
        with self.session() as s:
            return parse_list_sas(s.list_sas())

    def connection_names(self) -> set[str]:
        with self.session() as s:
            return {_text(n) for n in s.get_conns().get("conns", [])}


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
