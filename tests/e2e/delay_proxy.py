"""A TCP forwarder that delays one direction: a slow datastore for one lab node (issue #11.3).

The kernel here has no ``sch_netem``, so the one-way delay the audit used (``tc … netem delay
1s``) is made in userspace instead. Run inside a node namespace::

    delay_proxy.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT DELAY_SECONDS MARK

Every byte the client sends reaches the upstream ``DELAY_SECONDS`` later (order kept, nothing
dropped); the upstream's answers go back at once. The upstream connection carries ``SO_MARK``
``MARK`` so the nft ``redirect`` rule that sends the node's etcd traffic here can let the proxy's
own traffic pass. It prints ``ready`` once listening and one line per accepted connection, which
the test reads to know the daemon really went through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys


async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk leaving ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await chunks.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            chunks.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await delivering
    finally:
        delivering.cancel()


async def upstream(
    host: str, port: int, mark: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock)


async def main(listen_port: int, host: str, port: int, delay: float, mark: int) -> None:
    async def serve(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        print(f"connection from {client_writer.get_extra_info('peername')}", flush=True)
        try:
            server_reader, server_writer = await upstream(host, port, mark)
        except OSError as exc:
            print(f"upstream {host}:{port} refused: {exc}", flush=True)
            client_writer.close()
            return
        try:
            await asyncio.gather(
                carry(client_reader, server_writer, delay), carry(server_reader, client_writer, 0.0)
            )
        except OSError as exc:  # either side went away: end the pair, keep serving the rest
            print(f"connection ended: {exc}", flush=True)
        finally:
            server_writer.close()
            client_writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", listen_port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, host, port, delay, mark = sys.argv[1:6]
    asyncio.run(main(int(listen), host, int(port), float(delay), int(mark, 0)))
