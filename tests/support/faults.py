"""Faults the tests inject: a TCP proxy that can cut a server off and bring it back."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server. `cut()` drops every connection through it and
    refuses new ones, as a crashed or unreachable server would; `hang()` drops them and takes new
    ones but never answers on them, as a server that is there but stuck (or a network that drops
    every packet) would, so that clients wait for their timeouts; `restore()` forwards again on
    the same port. `accepted` counts the connections clients opened, answered or not."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._hanging = False

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        self._hanging = False
        # abort(): a reset, not a polite close, like a server that vanished.
        self._drop_connections()

    async def hang(self) -> None:
        self._drop_connections()
        self._hanging = True

    async def restore(self) -> None:
        if self._hanging:
            # The connections left hanging: their clients gave up on them long ago, if not, now.
            self._drop_connections()
            self._hanging = False
        if self._server is None:
            await self.start()

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        if self._server is not None:
            await self.cut()

    async def _forward(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        if self._hanging:
            self._writers.add(client_out)
            # Read and drop whatever the client sends, until it gives up or restore() drops it.
            with contextlib.suppress(ConnectionError, OSError):
                while await client_in.read(65536):
                    pass
            self._writers.discard(client_out)
            client_out.transport.abort()
            return
        try:
            server_in, server_out = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            client_out.transport.abort()
            return
        self._writers.update((client_out, server_out))
        try:
            await asyncio.gather(_pipe(client_in, server_out), _pipe(server_in, client_out))
        finally:
            self._writers.discard(client_out)
            self._writers.discard(server_out)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    # One side closed: close the other, as a server's close would.
    sink.transport.abort()
