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
from flannel.subnet.base import DatastoreHealth
from flannel.tasks import bounded

logger = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT_S = 5
"""A unary call that has no answer after this long fails over to the next endpoint."""
PROGRESS_INTERVAL_S = 2.0
"""A watch asks the member for a progress notification this often (WatchProgressRequest)..."""
WATCH_SILENCE_S = 5.0
"""...and a watch with no response at all for this long is on a member that stopped answering."""
KEEPALIVE_OPTIONS = {
    # HTTP/2 pings on every channel with an open call: a hung member or a silent partition
    # (no RST, TCP stays up) closes the transport within time + timeout. 6 s stays above etcd's
    # default --grpc-keepalive-min-time of 5 s, below which etcd answers pings with GOAWAY.
    "grpc.keepalive_time_ms": 6000,
    "grpc.keepalive_timeout_ms": 3000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
}


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
    create_revision: int = 0


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
        create_revision=int(raw.create_revision),
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


def _short(exc: BaseException) -> str:
    """A gRPC error as one line (its status and details), anything else as its text."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


class WatchSilentError(ConnectionError):
    """A watch stream had no response (not even a progress notification) for too long."""


async def _watch_requests(
    key: str, prefix: bool, start_revision: int, stop: asyncio.Event
) -> AsyncIterator[Any]:
    """The create request, then a progress request every PROGRESS_INTERVAL_S until ``stop``."""
    raw = key.encode()
    create = rpc.WatchCreateRequest(key=raw, start_revision=start_revision)
    if prefix:
        create.range_end = aetcd.utils.prefix_range_end(raw)
    yield rpc.WatchRequest(create_request=create)
    while not stop.is_set():
        try:
            async with asyncio.timeout(PROGRESS_INTERVAL_S):
                await stop.wait()
        except TimeoutError:
            yield rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())


async def _with_silence_limit(call: Any, endpoint: str) -> AsyncIterator[Any]:
    """The stream's responses; WatchSilentError when none arrives for WATCH_SILENCE_S.

    The timeout wraps each read only, never a ``yield``: the consumer runs in this task while the
    generator is suspended, and a deadline firing then would cancel the consumer's work instead.
    """
    while True:
        try:
            async with asyncio.timeout(WATCH_SILENCE_S):
                resp = await call.read()
        except TimeoutError:
            raise WatchSilentError(
                f"no watch response from {endpoint} for {WATCH_SILENCE_S:g}s"
            ) from None
        if resp is grpc.aio.EOF:
            return
        yield resp


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

    def __init__(
        self,
        *,
        endpoint: str,
        index: int,
        credentials: grpc.ChannelCredentials | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.index = index
        self._credentials = credentials

    async def connect(self) -> None:
        """aetcd's connect with ``secure_channel`` instead of ``insecure_channel`` for TLS."""
        if self._connected.is_set():
            return
        if self._is_connecting:
            await bounded(self._connected.wait(), self._connect_wait_timeout)
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


def _credentials(
    endpoints: tuple[str, ...], keyfile: str, certfile: str, cafile: str
) -> grpc.ChannelCredentials | None:
    """TLS exactly when the endpoints say https: server verified with ``cafile`` (or the system
    CA store), a client certificate when given. An https endpoint never falls back to plaintext."""
    schemes = {urlsplit(e).scheme if "://" in e else "http" for e in endpoints}
    if len(schemes) > 1:
        raise DatastoreError(
            f"etcd endpoints mix http:// and https:// ({', '.join(endpoints)}): use one scheme"
        )
    if schemes != {"https"}:
        if certfile or cafile:
            raise DatastoreError(
                "etcd TLS files are set but the endpoints are plain http:// "
                f"({', '.join(endpoints)}): write https:// endpoints"
            )
        logger.warning("no certificate provided: connecting to etcd with http. This is insecure")
        return None
    try:
        key = Path(keyfile).read_bytes() if keyfile else None
        cert = Path(certfile).read_bytes() if certfile else None
        ca = Path(cafile).read_bytes() if cafile else None
    except OSError as exc:
        raise DatastoreError(f"cannot read etcd TLS file {exc.filename}: {exc.strerror}") from exc
    if (key is None) != (cert is None):
        raise DatastoreError(
            "an etcd client certificate needs both --etcd-keyfile and --etcd-certfile"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _host_port(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not parts.hostname:
        raise DatastoreError(f"etcd endpoint {endpoint!r} has no host (want http://HOST:PORT)")
    # gRPC targets are HOST:PORT, so an IPv6 literal needs its brackets back (urlsplit drops them).
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host, parts.port or 2379


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
        self._credentials = _credentials(self.endpoints, keyfile, certfile, cafile)
        self._auth = (username, password) if username else (None, None)
        self._index = 0
        self._client: _Client | None = None
        self.health = DatastoreHealth(self.endpoints[0])

    @property
    def endpoint(self) -> str:
        """The endpoint currently in use."""
        return self.endpoints[self._index]

    def _current(self) -> _Client:
        if self._client is None:
            host, port = self._targets[self._index]
            self._client = _Client(
                endpoint=self.endpoints[self._index],
                index=self._index,
                credentials=self._credentials,
                host=host,
                port=port,
                username=self._auth[0],
                password=self._auth[1],
                timeout=CALL_TIMEOUT_S,
                options=KEEPALIVE_OPTIONS,
            )
        return self._client

    async def _drop(self, client: _Client) -> None:
        if self._client is client:
            self._client = None
        try:
            await client.close()
        except Exception as exc:  # closing a broken channel must not mask the real error
            logger.debug("closing etcd client for %s failed: %r", client.endpoint, exc)

    async def _abandon(self, client: _Client, detail: str) -> None:
        """``client``'s endpoint stopped answering: record it, close it, move to the next one.

        Several calls notice the same dead endpoint at once; only the first moves the index, so
        the others retry on the endpoint it chose instead of skipping past it.
        """
        self.health.failed(client.endpoint, detail)
        await self._drop(client)
        if self._index == client.index and len(self.endpoints) > 1:
            self._index = (client.index + 1) % len(self.endpoints)
            logger.warning(
                "etcd endpoint %s stopped answering (%s); failing over to %s",
                client.endpoint,
                detail,
                self.endpoints[self._index],
            )

    async def _call(self, what: str, op: Callable[[_Client], Awaitable[T]]) -> T:
        """Run ``op`` on the current endpoint; on connection errors try each other endpoint once."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints) + 1):
            client = self._current()
            try:
                result = await _uncancelled(op(client))
            except (TimeoutError, aetcd.ClientError, grpc.aio.AioRpcError, OSError) as exc:
                last = exc
                if isinstance(exc, ChannelClosedError):
                    continue  # another call already moved on; retry on the current endpoint
                if _is_stale_token(exc):
                    await self._drop(client)  # re-authenticate on the same endpoint
                    continue
                if not _is_connection_error(exc):
                    raise DatastoreError(f"etcd {what} at {client.endpoint} failed: {exc}") from exc
                await self._abandon(client, f"{what}: {_short(exc)}")
            else:
                self.health.answered(client.endpoint)
                return result
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

    async def lease_keys(self, lease_id: int) -> list[str] | None:
        """Keys attached to an etcd lease, or None when the lease does not exist."""
        resp = await self._call("lease timetolive", lambda c: c.get_lease_info(lease_id, keys=True))
        if int(resp.TTL) < 0:
            return None
        return [bytes(k).decode("utf-8", errors="replace") for k in resp.keys]

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

        One gRPC Watch stream per call, created with require-leader so a member cut off from the
        quorum cancels it instead of leaving us on a stale store. The stream asks for a progress
        notification every PROGRESS_INTERVAL_S; a stream silent for WATCH_SILENCE_S is on a member
        that stopped answering (frozen, silently partitioned): we fail over to the next endpoint.
        The stream ends only by an error.
        """
        client = self._current()
        try:
            await client.connect()
        except (TimeoutError, aetcd.ClientError, grpc.aio.AioRpcError, OSError) as exc:
            if _is_connection_error(exc):
                await self._abandon(client, f"connect: {_short(exc)}")
            raise DatastoreError(f"etcd watch {key} at {client.endpoint}: {exc}") from exc
        stop = asyncio.Event()
        call = rpc.WatchStub(client.channel).Watch(
            _watch_requests(key, prefix, start_revision, stop),
            metadata=(*(client.metadata or ()), ("hasleader", "true")),
        )
        try:
            async for resp in _with_silence_limit(call, client.endpoint):
                self.health.answered(client.endpoint)
                if resp.compact_revision:
                    raise EtcdCompactedError(key, int(resp.compact_revision))
                if resp.canceled:
                    raise DatastoreError(f"etcd cancelled the watch on {key}: {resp.cancel_reason}")
                if resp.events:
                    yield [
                        WatchEvent(deleted=ev.type == rpc.Event.DELETE, kv=_kv(ev.kv))
                        for ev in resp.events
                    ]
            raise DatastoreError(f"etcd watch stream on {key} at {client.endpoint} ended")
        except WatchSilentError as exc:
            await self._abandon(client, str(exc))
            raise DatastoreError(f"etcd watch {key} at {client.endpoint}: {exc}") from None
        except grpc.aio.AioRpcError as exc:
            await self._fail_over(client, exc)
            raise DatastoreError(f"etcd watch {key} at {client.endpoint}: {exc.details()}") from exc
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
        if _is_stale_token(exc):
            await self._drop(client)  # re-authenticate on the same endpoint
        elif _is_connection_error(exc):
            await self._abandon(client, f"watch: {_short(exc)}")

    async def close(self) -> None:
        """Close the channel."""
        if self._client is not None:
            await self._drop(self._client)
