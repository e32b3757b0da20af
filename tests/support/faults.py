"""Faults the tests inject: a TCP proxy that can cut a server off and bring it back, or stall
it (a server that keeps its connections open and says nothing)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server. `cut()` drops every connection through it and
    refuses new ones, as a crashed or unreachable server would; `restore()` listens again on the
    same port. `stall()` keeps every connection open but forwards nothing, either way, until
    `resume()`: a server that hangs, or a network that loses every packet, before any timeout
    of TCP or of the protocol's heartbeats notices."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        assert self._server is not None
        server, self._server = self._server, None
        server.close()
        for writer in list(self._writers):
            # abort(): a reset, not a polite close, like a server that vanished.
            writer.transport.abort()
        self._writers.clear()
        # Stalled pipes wake up to write what they held into aborted transports: it is dropped.
        self._flowing.set()
        await server.wait_closed()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self.cut()

    async def _forward(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            client_out.transport.abort()
            return
        self._writers.update((client_out, server_out))
        try:
            await asyncio.gather(
                _pipe(client_in, server_out, self._flowing),
                _pipe(server_in, client_out, self._flowing),
            )
        finally:
            self._writers.discard(client_out)
            self._writers.discard(server_out)


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(65536):
            # Stalled: what was read is held (and dropped if the proxy is cut meanwhile).
            await flowing.wait()
            sink.write(data)
            await sink.drain()
    # One side closed: close the other, as a server's close would.
    sink.transport.abort()
