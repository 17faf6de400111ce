"""The health server answers /healthz, /readyz (503 with a reason until ready) and /metrics."""

import asyncio

from flannel.daemon.health import HealthServer, HealthState


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_readyz_turns_200_only_after_ready() -> None:
    state = HealthState()
    server = HealthServer(state, "127.0.0.1", 0)
    await server.start()
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    try:
        assert await _get(port, "/healthz") == (200, "flanneld is running")
        code, body = await _get(port, "/readyz")
        assert code == 503 and body.startswith("flanneld is not ready yet")
        state.set_ready()
        assert await _get(port, "/readyz") == (200, "flanneld is ready")
        state.set_not_ready("task backend failed")
        code, body = await _get(port, "/readyz")
        assert code == 503 and "task backend failed" in body
        assert (await _get(port, "/nope"))[0] == 404
    finally:
        await server.close()


async def test_metrics_render_registered_gauges() -> None:
    state = HealthState()
    state.metrics["flannel_peers"] = lambda: 3
    state.set_ready()
    server = HealthServer(state, "127.0.0.1", 0)
    await server.start()
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    try:
        code, body = await _get(port, "/metrics")
        assert code == 200
        assert "flannel_peers 3" in body and "flannel_ready 1" in body
    finally:
        await server.close()
