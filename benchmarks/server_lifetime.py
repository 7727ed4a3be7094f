"""What the benchmark's own servers (upload_server.py, hold_server.py, scaling_chunked_server.py)
share: how they run (on 127.0.0.1 at a port the kernel chooses, printed for the harness to read,
until SIGTERM or SIGINT, or until the harness that started them is gone, so that no server
outlives a run), and, for the two that answer GETs only, how they read requests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Callable, Optional


async def serve_until_stopped(protocol_factory: Callable[[], asyncio.BaseProtocol],
                              backlog: int = 100) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory, '127.0.0.1', 0, backlog=backlog)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)

    def stop_when_harness_is_gone() -> None:
        # The harness holds our stdin open: end of file means it died
        if not os.read(sys.stdin.fileno(), 1) and not stop.done():
            stop.set_result(None)

    loop.add_reader(sys.stdin.fileno(), stop_when_harness_is_gone)
    await stop
    server.close()


class GetsByPath(asyncio.Protocol):
    """A server of GET requests without bodies: `answer(path)` for each request head, in order;
    with `closes_when_asked`, the connection is closed after the answer when the request asks
    for that."""

    closes_when_asked = True

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buf = b''

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b'\r\n\r\n' in self.buf:
            head, _, self.buf = self.buf.partition(b'\r\n\r\n')
            self.answer(head.split(b' ', 2)[1])
            if self.closes_when_asked and b'\r\nconnection: close' in head.lower():
                self.transport.close()  # type: ignore[union-attr]  # once the write is sent
                return

    def answer(self, path: bytes) -> None:
        raise NotImplementedError
