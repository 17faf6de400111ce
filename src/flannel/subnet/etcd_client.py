"""The etcd v3 adapter: aetcd (asyncio gRPC) with TLS client certs, auth and endpoint failover.

This is the only module that touches aetcd or gRPC. Every foreign error is translated here, once,
into ``flannel.errors`` (DatastoreError, or EtcdCompactedError for a watch whose start revision was
compacted) so the subnet manager above reasons about etcd, not about a client library. aetcd has no
TLS option, so ``_Client.connect`` opens a ``grpc.aio.secure_channel`` itself when a key and a
certificate are given (upstream enables TLS only then). Watches use the gRPC Watch stream directly:
we need the compaction revision and the cancel reason, which aetcd's callback watcher swallows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc

from flannel.errors import DatastoreError

logger = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT_S = 10


class EtcdCompactedError(DatastoreError):
    """A watch asked for history etcd has compacted; the caller must re-list."""

    def __init__(self, key: str, compact_revision: int) -> None:
        super().__init__(f"etcd watch on {key}: revision compacted below {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One etcd key as flannel needs it (``lease`` 0 = no lease, i.e. a reservation)."""

    key: str
    value: bytes
    lease: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A PUT (``deleted`` False) or DELETE of one key."""

    deleted: bool
    kv: KeyValue


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        key=bytes(raw.key).decode("utf-8", errors="replace"),
        value=bytes(raw.value),
        lease=int(raw.lease),
        mod_revision=int(raw.mod_revision),
    )


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(
        exc, aetcd.exceptions.ConnectionFailedError | aetcd.exceptions.ConnectionTimeoutError
    ):
        return True
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return isinstance(exc, OSError | asyncio.TimeoutError)


def _is_stale_token(exc: BaseException) -> bool:
    text = str(exc)
    return "invalid auth token" in text or "auth token is expired" in text


class ChannelClosedError(ConnectionError):
    """Our channel was closed under an in-flight call (another call failed over)."""


async def _uncancelled(call: Awaitable[T]) -> T:
    """Await a gRPC call; a local cancel we did not ask for becomes a retryable connection error.

    grpc.aio raises CancelledError in every call on a channel that is closed, and a CancelledError
    escaping here would look like the caller's task being cancelled.
    """
    try:
        return await call
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise ChannelClosedError("etcd channel closed during the call") from None


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd.Client whose channel is TLS when client credentials are given."""

    _is_connecting: bool

    def __init__(self, *, credentials: grpc.ChannelCredentials | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        """aetcd's connect with ``secure_channel`` instead of ``insecure_channel`` for TLS."""
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            options = list(self._options.items())
            if self._credentials is not None:
                self.channel = grpc.aio.secure_channel(target, self._credentials, options=options)
            else:
                self.channel = grpc.aio.insecure_channel(target, options=options)
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                try:
                    resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                except grpc.aio.AioRpcError as exc:
                    await self.channel.close()
                    self._init_channel_attrs()
                    aetcd.exceptions._handle_exception(exc)
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


def _credentials(keyfile: str, certfile: str, cafile: str) -> grpc.ChannelCredentials | None:
    if not (keyfile and certfile):
        logger.warning("no certificate provided: connecting to etcd with http. This is insecure")
        return None
    try:
        key = Path(keyfile).read_bytes()
        cert = Path(certfile).read_bytes()
        ca = Path(cafile).read_bytes() if cafile else None
    except OSError as exc:
        raise DatastoreError(f"cannot read etcd TLS file {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _host_port(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not parts.hostname:
        raise DatastoreError(f"etcd endpoint {endpoint!r} has no host (want http://HOST:PORT)")
    return parts.hostname, parts.port or 2379


class EtcdClient:
    """A few etcd v3 calls, failing over between endpoints in order on connection errors."""

    def __init__(
        self,
        endpoints: tuple[str, ...] | list[str],
        *,
        keyfile: str = "",
        certfile: str = "",
        cafile: str = "",
        username: str = "",
        password: str = "",
    ) -> None:
        if not endpoints:
            raise DatastoreError("no etcd endpoint given (--etcd-endpoints)")
        self.endpoints = tuple(endpoints)
        self._targets = [_host_port(e) for e in self.endpoints]
        self._credentials = _credentials(keyfile, certfile, cafile)
        self._auth = (username, password) if username else (None, None)
        self._index = 0
        self._client: _Client | None = None

    @property
    def endpoint(self) -> str:
        """The endpoint currently in use."""
        return self.endpoints[self._index]

    def _current(self) -> _Client:
        if self._client is None:
            host, port = self._targets[self._index]
            self._client = _Client(
                credentials=self._credentials,
                host=host,
                port=port,
                username=self._auth[0],
                password=self._auth[1],
                timeout=CALL_TIMEOUT_S,
            )
        return self._client

    async def _drop(self, client: _Client) -> None:
        if self._client is client:
            self._client = None
        try:
            await client.close()
        except Exception as exc:  # closing a broken channel must not mask the real error
            logger.debug("closing etcd client for %s failed: %r", self.endpoint, exc)

    async def _call(self, what: str, op: Callable[[_Client], Awaitable[T]]) -> T:
        """Run ``op`` on the current endpoint; on connection errors try each other endpoint once."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints) + 1):
            client = self._current()
            try:
                return await _uncancelled(op(client))
            except (TimeoutError, aetcd.ClientError, grpc.aio.AioRpcError, OSError) as exc:
                last = exc
                if isinstance(exc, ChannelClosedError):
                    continue  # another call already moved on; retry on the current endpoint
                if _is_stale_token(exc):
                    await self._drop(client)  # re-authenticate on the same endpoint
                    continue
                if not _is_connection_error(exc):
                    raise DatastoreError(f"etcd {what} at {self.endpoint} failed: {exc}") from exc
                logger.warning("etcd %s at %s failed: %s", what, self.endpoint, exc)
                await self._drop(client)
                self._index = (self._index + 1) % len(self.endpoints)
        raise DatastoreError(
            f"etcd {what} failed at every endpoint ({', '.join(self.endpoints)}): {last}"
        ) from last

    async def get(self, key: str) -> tuple[KeyValue | None, int]:
        """The key (None if absent) and the store revision of the read."""

        async def op(c: _Client) -> tuple[KeyValue | None, int]:
            resp = await c.kvstub.Range(
                rpc.RangeRequest(key=key.encode()), timeout=CALL_TIMEOUT_S, metadata=c.metadata
            )
            return (_kv(resp.kvs[0]) if resp.kvs else None), int(resp.header.revision)

        return await self._call(f"get {key}", lambda c: self._connected(c, op))

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store revision of the read."""

        async def op(c: _Client) -> tuple[list[KeyValue], int]:
            raw = prefix.encode()
            request = rpc.RangeRequest(key=raw, range_end=aetcd.utils.prefix_range_end(raw))
            resp = await c.kvstub.Range(request, timeout=CALL_TIMEOUT_S, metadata=c.metadata)
            return [_kv(kv) for kv in resp.kvs], int(resp.header.revision)

        return await self._call(f"list {prefix}", lambda c: self._connected(c, op))

    @staticmethod
    async def _connected(c: _Client, op: Callable[[_Client], Awaitable[T]]) -> T:
        await c.connect()
        return await op(c)

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left on an etcd lease (-1 when it does not exist)."""
        resp = await self._call(
            "lease timetolive", lambda c: c.get_lease_info(lease_id, keys=False)
        )
        return int(resp.TTL)

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new etcd lease: (id, granted TTL seconds)."""
        lease = await self._call("lease grant", lambda c: c.lease(ttl))
        return int(lease.id), int(lease.ttl)

    async def revoke(self, lease_id: int) -> None:
        """Revoke an etcd lease (its keys go with it)."""
        await self._call("lease revoke", lambda c: c.revoke_lease(lease_id))

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        """Unconditional put; returns the store revision."""
        resp = await self._call(
            f"put {key}", lambda c: c.put(key.encode(), value.encode(), lease=lease or None)
        )
        return int(resp.header.revision)

    async def create(self, key: str, value: str, lease: int) -> bool:
        """Put only if the key does not exist (txn If version == 0); False when it exists."""

        async def op(c: _Client) -> bool:
            t = c.transactions
            ok, _ = await c.transaction(
                compare=[t.version(key.encode()) == 0],
                success=[t.put(key.encode(), value.encode(), lease=lease or None)],
                failure=[],
            )
            return bool(ok)

        return await self._call(f"create {key}", op)

    async def delete(self, key: str) -> bool:
        """Delete one key; True if it existed."""
        resp = await self._call(f"delete {key}", lambda c: c.delete(key.encode()))
        return resp is not None

    async def compact(self, revision: int) -> None:
        """Compact history up to ``revision`` (tests and the lab use it)."""
        await self._call("compact", lambda c: c.compact(revision, physical=True))

    async def watch(
        self, key: str, *, prefix: bool, start_revision: int
    ) -> AsyncIterator[list[WatchEvent]]:
        """Event batches from ``start_revision`` on; raises EtcdCompactedError or DatastoreError.

        One gRPC Watch stream per call, created with require-leader so a partitioned member does
        not leave us silently watching a stale store. The stream ends only by an error.
        """
        client = self._current()
        try:
            await client.connect()
        except (TimeoutError, aetcd.ClientError, grpc.aio.AioRpcError, OSError) as exc:
            await self._fail_over(client, exc)
            raise DatastoreError(f"etcd watch {key} at {self.endpoint}: {exc}") from exc
        raw = key.encode()
        create = rpc.WatchCreateRequest(key=raw, start_revision=start_revision)
        if prefix:
            create.range_end = aetcd.utils.prefix_range_end(raw)
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=create)
            await stop.wait()

        metadata = (*(client.metadata or ()), ("hasleader", "true"))
        call = rpc.WatchStub(client.channel).Watch(requests(), metadata=metadata)
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise EtcdCompactedError(key, int(resp.compact_revision))
                if resp.canceled:
                    raise DatastoreError(f"etcd cancelled the watch on {key}: {resp.cancel_reason}")
                if resp.events:
                    yield [
                        WatchEvent(deleted=ev.type == rpc.Event.DELETE, kv=_kv(ev.kv))
                        for ev in resp.events
                    ]
            raise DatastoreError(f"etcd watch stream on {key} at {self.endpoint} ended")
        except grpc.aio.AioRpcError as exc:
            await self._fail_over(client, exc)
            raise DatastoreError(f"etcd watch {key} at {self.endpoint}: {exc.details()}") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled
            # The channel was closed under the stream (another call failed over): reconnect.
            raise DatastoreError(f"etcd watch {key}: the connection was closed") from None
        finally:
            stop.set()
            call.cancel()

    async def _fail_over(self, client: _Client, exc: BaseException) -> None:
        if _is_connection_error(exc) or _is_stale_token(exc):
            await self._drop(client)
            if not _is_stale_token(exc):
                self._index = (self._index + 1) % len(self.endpoints)

    async def close(self) -> None:
        """Close the channel."""
        if self._client is not None:
            await self._drop(self._client)
