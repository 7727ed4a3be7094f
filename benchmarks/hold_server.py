"""Hold server for benchmarks/scaling: keeps GET requests waiting, to measure in-flight memory.

Every request for a path other than /count and /release is held: its connection gets no answer.
`GET /count` answers at once with the number of requests held; `GET /release` answers every held
request (200, a 2-byte body) and then itself. Connections stay alive.

Run: python hold_server.py  ->  prints the port it listens on (127.0.0.1, chosen by the kernel).
"""

from __future__ import annotations

import asyncio
from typing import List

import uvloop

from server_lifetime import GetsByPath, serve_until_stopped

OK = b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'
HELD: List[asyncio.Transport] = []


class Holder(GetsByPath):
    closes_when_asked = False  # a held request is answered later, if ever

    def answer(self, path: bytes) -> None:
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
    await serve_until_stopped(Holder, backlog=16384)


if __name__ == '__main__':
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve())
