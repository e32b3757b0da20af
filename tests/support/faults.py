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


class HangingTcpProxy(TcpProxy):
    """A TcpProxy that counts the connections clients open (`accepted`, answered or not) and can
    also `hang()`: drop the connections open and take new ones but never answer on them, as a
    server that is there but stuck (or a network that drops every packet) would, so that each
    client waits for its own timeout. `restore()` forwards again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.accepted = 0
        self._hanging: set[asyncio.StreamWriter] | None = None

    async def hang(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self._hanging = set()

    async def restore(self) -> None:
        if self._hanging is not None:
            # The connections left hanging: their clients gave up on them long ago, if not, now.
            for writer in self._hanging:
                writer.transport.abort()
            self._hanging = None
        if self._server is None:
            await super().restore()

    async def _forward(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        if self._hanging is None:
            await super()._forward(client_in, client_out)
            return
        hanging = self._hanging
        hanging.add(client_out)
        # Read and drop what the client sends, until it gives up or restore() drops it.
        with contextlib.suppress(ConnectionError, OSError):
            while await client_in.read(65536):
                pass
        hanging.discard(client_out)
        client_out.transport.abort()
