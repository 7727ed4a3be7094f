"""Hold server for benchmarks/scaling: keeps GET requests waiting, to measure in-flight memory.

Every request for a path other than /count and /release is held: its connection gets no answer.
`GET /count` answers at once with the number of requests held; `GET /release` answers every held
request (200, a 2-byte body) and then itself. Connections stay alive.

Run: python hold_server.py  ->  prints the port it listens on (127.0.0.1, chosen by the kernel).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import List, Optional

import uvloop

OK = b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'
HELD: List[asyncio.Transport] = []


class Holder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buf = b''

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b'\r\n\r\n' in self.buf:
            head, _, self.buf = self.buf.partition(b'\r\n\r\n')
            self.handle(head.split(b' ', 2)[1])

    def handle(self, path: bytes) -> None:
        assert self.transport is not None
        if path == b'/count':
            body = b'%d' % len(HELD)
            head = b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n' % len(body)
            self.transport.write(head + body)
        elif path == b'/release':
            held = HELD[:]
            HELD.clear()
            for transport in held:
                if not transport.is_closing():
                    transport.write(OK)
            self.transport.write(OK)
        else:
            HELD.append(self.transport)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Holder, '127.0.0.1', 0, backlog=16384)
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


if __name__ == '__main__':
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve())
